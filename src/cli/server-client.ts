import { readFileSync } from "node:fs";
import type { SecureContextOptions } from "node:tls";
import {
  type Client,
  ConnectError,
  createClient,
  type Interceptor,
  type Transport,
} from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import type { HostService } from "../../gen/decky/lifecycle/v1/host_pb.js";
import type { TokenService } from "../../gen/decky/lifecycle/v1/token_pb.js";
import type { Connection } from "./connection-options.js";
import { ServerCallError, UsageError } from "./errors.js";
import { handshakeRefusal } from "./handshake-probe.js";

/**
 * A client of `service` on the server `connection` names, sending its
 * bearer token and trusting its CA and client certificate files. A call
 * that fails throws a ServerCallError naming the server.
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
  const { caFile, certFile, keyFile } = connection;
  const tls: SecureContextOptions = {
    ...(caFile === undefined ? {} : { ca: readFileSync(caFile) }),
    ...(certFile === undefined ? {} : { cert: readFileSync(certFile) }),
    ...(keyFile === undefined ? {} : { key: readFileSync(keyFile) }),
  };
  const transport = createConnectTransport({
    baseUrl: connection.url,
    httpVersion: "1.1",
    interceptors: [authorize],
    nodeOptions: tls,
  });
  return createClient(service, namingServer(connection.url, tls, transport));
}

/**
 * `transport`, whose failed calls throw a ServerCallError naming `url` and,
 * when the server closed the connection under the call, why.
 */
function namingServer(
  url: string,
  tls: SecureContextOptions,
  transport: Transport,
): Transport {
  const fail = async (error: unknown): Promise<never> => {
    const failure = ConnectError.from(error);
    throw new ServerCallError(
      url,
      failure,
      await handshakeRefusal(url, tls, failure),
    );
  };
  return {
    unary: (method, signal, timeoutMs, header, input, contextValues) =>
      transport
        .unary(method, signal, timeoutMs, header, input, contextValues)
        .catch(fail),
    stream: (method, signal, timeoutMs, header, input, contextValues) =>
      transport
        .stream(method, signal, timeoutMs, header, input, contextValues)
        .catch(fail),
  };
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
