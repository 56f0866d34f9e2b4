import { readFileSync } from "node:fs";
import { type Command, InvalidArgumentError, Option } from "commander";

/** Where and how to reach a running server, as the options give it. */
export interface Connection {
  readonly url?: string;
  readonly token?: string;
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
}

/**
 * `--url` as given, once it is an http:// or https:// URL of the server
 * itself: the service is served at the root, so a path cannot reach it.
 */
function parseUrl(value: string): string {
  const url = URL.canParse(value) ? new URL(value) : undefined;
  if (url?.protocol !== "http:" && url?.protocol !== "https:") {
    throw new InvalidArgumentError(
      "It must be an http:// or https:// URL, such as http://127.0.0.1:8080.",
    );
  }
  if (url.pathname !== "/" || url.search !== "" || url.hash !== "") {
    throw new InvalidArgumentError(
      "The service is served at the root: give the scheme, host and port only, such as http://127.0.0.1:8080.",
    );
  }
  return value;
}

const FILE_ERRORS: Record<string, string> = {
  ENOENT: "No such file.",
  EACCES: "Permission denied.",
  EISDIR: "It is a directory.",
};

/** A file option's path as given, once the file can be read. */
function parseReadableFile(path: string): string {
  try {
    readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "";
    throw new InvalidArgumentError(
      FILE_ERRORS[code] ?? `It cannot be read (${code}).`,
    );
  }
  return path;
}

/**
 * `option`, read from the variable `name` too unless that is empty: the CLI,
 * like the server, counts an empty variable as unset. Commander takes any
 * variable that is set, so the option names its variable only while that
 * holds something.
 */
function fromEnv(option: Option, name: string): Option {
  option.env(name);
  Object.defineProperty(option, "envVar", {
    get: () => (process.env[name] === "" ? undefined : name),
  });
  return option;
}

/** Refuses a client certificate without its key, or a key without one. */
function checkClientCertificate(command: Command): void {
  const { certFile, keyFile } = command.opts<Connection>();
  if ((certFile === undefined) === (keyFile === undefined)) return;
  const [given, missing] =
    certFile === undefined
      ? ["--key-file", "--cert-file"]
      : ["--cert-file", "--key-file"];
  command.error(
    `error: ${given} is given without ${missing}: give both --cert-file and --key-file (or DECKY_CERT_FILE and DECKY_KEY_FILE) to present a client certificate, or neither`,
  );
}

/** The options every command that calls the server takes. */
export function withConnection(command: Command, defaultUrl?: string): Command {
  const url = fromEnv(
    new Option(
      "--url <url>",
      "the server's base URL, such as http://127.0.0.1:8080",
    ).argParser(parseUrl),
    "DECKY_URL",
  );
  const file = (flags: string, description: string, name: string) =>
    fromEnv(new Option(flags, description).argParser(parseReadableFile), name);
  return command
    .addOption(defaultUrl === undefined ? url : url.default(defaultUrl))
    .addOption(
      fromEnv(
        new Option("--token <token>", "an admin bearer token"),
        "DECKY_TOKEN",
      ),
    )
    .addOption(
      file(
        "--ca-file <path>",
        "PEM file of the CA that signed the server's certificate",
        "DECKY_CA_FILE",
      ),
    )
    .addOption(
      file(
        "--cert-file <path>",
        "PEM client certificate, for a server that asks for one",
        "DECKY_CERT_FILE",
      ),
    )
    .addOption(
      file("--key-file <path>", "PEM key of --cert-file", "DECKY_KEY_FILE"),
    )
    .hook("preAction", (_, action) => checkClientCertificate(action));
}
