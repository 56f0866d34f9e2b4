import { readFileSync } from "node:fs";
import {
  type Client,
  createClient,
  type Interceptor,
} from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { type Command, InvalidArgumentError, Option } from "commander";
import type { HostService } from "../../gen/decky/lifecycle/v1/host_pb.js";
import type { TokenService } from "../../gen/decky/lifecycle/v1/token_pb.js";
import { UsageError } from "./errors.js";

/** Where and how to reach a running server. */
export interface Connection {
  readonly url?: string;
  readonly token?: string;
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
}

/** `--url` as given, once it is an http:// or https:// URL. */
function parseUrl(value: string): string {
  const protocol = URL.canParse(value) ? new URL(value).protocol : undefined;
  if (protocol !== "http:" && protocol !== "https:") {
    throw new InvalidArgumentError(
      "It must be an http:// or https:// URL, such as http://127.0.0.1:8080.",
    );
  }
  return value;
}

/** The options every command that calls the server takes. */
export function withConnection(command: Command, defaultUrl?: string): Command {
  const url = new Option(
    "--url <url>",
    "the server's base URL, such as http://127.0.0.1:8080",
  )
    .env("DECKY_URL")
    .argParser(parseUrl);
  return command
    .addOption(defaultUrl === undefined ? url : url.default(defaultUrl))
    .addOption(
      new Option("--token <token>", "an admin bearer token").env("DECKY_TOKEN"),
    )
    .addOption(
      new Option(
        "--ca-file <path>",
        "PEM file of the CA that signed the server's certificate",
      ).env("DECKY_CA_FILE"),
    )
    .addOption(
      new Option(
        "--cert-file <path>",
        "PEM client certificate, for a server that asks for one",
      ).env("DECKY_CERT_FILE"),
    )
    .addOption(
      new Option("--key-file <path>", "PEM key of --cert-file").env(
        "DECKY_KEY_FILE",
      ),
    );
}

/**
 * A client of `service` on the server `connection` names, sending its
 * bearer token and trusting its CA and client certificate files.
 */
export function clientOf<
  Service extends typeof HostService | typeof TokenService,
>(service: Service, connection: Connection): Client<Service> {
  if (connection.url === undefined) {
    throw new UsageError("--url (or DECKY_URL) must name the server");
  }
  const bearer = connection.token;
  const authorize: Interceptor = (next) => (request) => {
    if (bearer !== undefined) {
      request.header.set("authorization", `Bearer ${bearer}`);
    }
    return next(request);
  };
  const read = (path: string | undefined) =>
    path === undefined ? undefined : readFileSync(path);
  const transport = createConnectTransport({
    baseUrl: connection.url,
    httpVersion: "1.1",
    interceptors: [authorize],
    nodeOptions: {
      ...(connection.caFile === undefined
        ? {}
        : { ca: read(connection.caFile) }),
      ...(connection.certFile === undefined
        ? {}
        : { cert: read(connection.certFile) }),
      ...(connection.keyFile === undefined
        ? {}
        : { key: read(connection.keyFile) }),
    },
  });
  return createClient(service, transport);
}

/** Every item of a paged list: asks for page after page until the last. */
export async function allPages<T>(
  fetchPage: (
    pageToken: string,
  ) => Promise<{ readonly items: T[]; readonly nextPageToken: string }>,
): Promise<T[]> {
  const items: T[] = [];
  let pageToken = "";
  do {
    const page = await fetchPage(pageToken);
    items.push(...page.items);
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  return items;
}
