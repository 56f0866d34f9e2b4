import { readFileSync } from "node:fs";
import {
  type DescMessage,
  type MessageShape,
  toJsonString,
} from "@bufbuild/protobuf";
import {
  type Client,
  Code,
  ConnectError,
  createClient,
  type Interceptor,
} from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import type { EntityManager } from "@mikro-orm/postgresql";
import { Command, InvalidArgumentError, Option } from "commander";
import { pino } from "pino";
import {
  DecommissionHostResponseSchema,
  EnrollHostResponseSchema,
  HostService,
  HostState,
  ListHostsResponseSchema,
  RotateHostTokenResponseSchema,
} from "../../gen/decky/lifecycle/v1/host_pb.js";
import {
  CreateTokenResponseSchema,
  ListTokensResponseSchema,
  RevokeTokenResponseSchema,
  Role,
  TokenService,
} from "../../gen/decky/lifecycle/v1/token_pb.js";
import { issueToken } from "../auth/token.js";
import { loadSettings } from "../config/settings.js";
import { checkName } from "../rpc/host-enrolment.js";
import { checkCreatableRole, toApiTokenMessage } from "../rpc/token-service.js";
import { insertToken, listTokens, revokeToken } from "../storage/api-tokens.js";
import { type Database, openDatabase } from "../storage/database.js";

/** Where and how to reach a running server. */
interface Connection {
  readonly url?: string;
  readonly token?: string;
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
}

const roles = {
  admin: Role.ADMIN,
  operator: Role.OPERATOR,
  viewer: Role.VIEWER,
} as const;

const hostStates = {
  enrolled: HostState.ENROLLED,
  alive: HostState.ALIVE,
  lost: HostState.LOST,
  decommissioned: HostState.DECOMMISSIONED,
} as const;

/** A code as gRPC spells it, such as PERMISSION_DENIED. */
function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** Thrown for a mistake in how the CLI was called; printed without a trace. */
class UsageError extends Error {}

function print<Desc extends DescMessage>(
  schema: Desc,
  message: MessageShape<Desc>,
): void {
  process.stdout.write(
    `${toJsonString(schema, message, { prettySpaces: 2 })}\n`,
  );
}

function warnShownOnce(): void {
  process.stderr.write(
    "The token above is shown this once and stored only as a hash; keep it somewhere safe.\n",
  );
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
function withConnection(command: Command, defaultUrl?: string): Command {
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

function clientOf<Service extends typeof HostService | typeof TokenService>(
  service: Service,
  connection: Connection,
): Client<Service> {
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

/**
 * Runs `work` on the database the server would use (DATABASE_URL, else the
 * embedded database in DATA_DIR), after applying any pending migration.
 */
async function onDatabase<T>(work: (em: EntityManager) => Promise<T>) {
  const settings = loadSettings();
  const logger = pino(
    { level: "warn" },
    pino.destination({ dest: 2, sync: true }),
  );
  let database: Database | undefined;
  try {
    database = await openDatabase(settings, logger, 1);
    return await work(database.orm.em.fork());
  } catch (error) {
    if (error instanceof ConnectError) throw error;
    throw new UsageError(
      `cannot use the database: ${error instanceof Error ? error.message : String(error)}. To go through a running server instead, pass --url and an admin --token`,
    );
  } finally {
    await database?.close();
  }
}

const program = new Command("cli")
  .description(
    "Manage decky-lifecycle's bearer tokens and worker hosts.\n\n" +
      "Token commands without --url work directly on the database the server uses " +
      "(DATABASE_URL, else the embedded database in DATA_DIR, which only one process " +
      "can open at a time: make the first admin token before starting the server). " +
      "Everything else calls a running server with an admin token.",
  )
  .showHelpAfterError();

const token = program
  .command("token")
  .description("create, list and revoke bearer tokens");

withConnection(
  token
    .command("create")
    .description("create a token and print it, this once")
    .addOption(
      new Option("--role <role>", "what the token may do")
        .choices(Object.keys(roles))
        .makeOptionMandatory(),
    )
    .requiredOption("--name <name>", "who or what holds the token"),
).action(
  async (options: Connection & { role: keyof typeof roles; name: string }) => {
    if (options.url !== undefined) {
      const response = await clientOf(TokenService, options).createToken({
        name: options.name,
        role: roles[options.role],
      });
      print(CreateTokenResponseSchema, response);
    } else {
      const name = checkName("name", options.name);
      const role = checkCreatableRole(roles[options.role]);
      const issued = issueToken();
      const stored = await onDatabase((em) =>
        insertToken(em, {
          id: issued.id,
          name,
          role,
          hostUuid: null,
          secretHash: issued.secretHash,
        }),
      );
      print(CreateTokenResponseSchema, {
        $typeName: CreateTokenResponseSchema.typeName,
        apiToken: toApiTokenMessage(stored),
        token: issued.text,
      });
    }
    warnShownOnce();
  },
);

withConnection(
  token
    .command("list")
    .description("list the tokens (never their secrets)")
    .option("--show-revoked", "include revoked tokens", false),
).action(async (options: Connection & { showRevoked: boolean }) => {
  if (options.url !== undefined) {
    const client = clientOf(TokenService, options);
    const apiTokens = [];
    let pageToken = "";
    do {
      const page = await client.listTokens({
        showRevoked: options.showRevoked,
        pageToken,
        pageSize: 500,
      });
      apiTokens.push(...page.apiTokens);
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    print(ListTokensResponseSchema, {
      $typeName: ListTokensResponseSchema.typeName,
      apiTokens,
      nextPageToken: "",
    });
    return;
  }
  const stored = await onDatabase((em) =>
    listTokens(em, options.showRevoked, undefined, Number.MAX_SAFE_INTEGER),
  );
  print(ListTokensResponseSchema, {
    $typeName: ListTokensResponseSchema.typeName,
    apiTokens: stored.map(toApiTokenMessage),
    nextPageToken: "",
  });
});

withConnection(
  token
    .command("revoke")
    .description(
      "revoke a token; through a server (--url), its open streams end too",
    )
    .argument("<token-id>", "the token's id, as `token list` shows it"),
).action(async (tokenId: string, options: Connection) => {
  if (options.url !== undefined) {
    const response = await clientOf(TokenService, options).revokeToken({
      tokenId,
    });
    print(RevokeTokenResponseSchema, response);
    return;
  }
  if (!/^[0-9a-f-]{36}$/i.test(tokenId)) {
    throw new UsageError(`token id ${JSON.stringify(tokenId)} is not a UUID`);
  }
  const revoked = await onDatabase((em) => revokeToken(em, tokenId));
  if (!revoked) throw new UsageError(`token ${tokenId} does not exist`);
  print(RevokeTokenResponseSchema, {
    $typeName: RevokeTokenResponseSchema.typeName,
    apiToken: toApiTokenMessage(revoked),
  });
});

const host = program
  .command("host")
  .description("enrol, list, rotate and decommission worker hosts");
const DEFAULT_URL = "http://127.0.0.1:8080";

withConnection(
  host
    .command("enrol")
    .alias("enroll")
    .description("enrol a worker host and print its id and worker token, once")
    .requiredOption("--name <name>", "a name to recognise the host by")
    .option(
      "--host-uuid <uuid>",
      "the host's id; the server picks one if unset",
    )
    .option(
      "--certificate-fingerprint <sha256>",
      "pin this client certificate (SHA-256, hex) to the host",
    ),
  DEFAULT_URL,
).action(
  async (
    options: Connection & {
      name: string;
      hostUuid?: string;
      certificateFingerprint?: string;
    },
  ) => {
    const response = await clientOf(HostService, options).enrollHost({
      name: options.name,
      ...(options.hostUuid === undefined ? {} : { hostUuid: options.hostUuid }),
      ...(options.certificateFingerprint === undefined
        ? {}
        : { certificateFingerprint: options.certificateFingerprint }),
    });
    print(EnrollHostResponseSchema, response);
    warnShownOnce();
  },
);

withConnection(
  host
    .command("list")
    .description("list the worker hosts")
    .addOption(
      new Option("--state <state...>", "only hosts in these states").choices(
        Object.keys(hostStates),
      ),
    ),
  DEFAULT_URL,
).action(
  async (options: Connection & { state?: (keyof typeof hostStates)[] }) => {
    const client = clientOf(HostService, options);
    const states = (options.state ?? []).map((state) => hostStates[state]);
    const hosts = [];
    let pageToken = "";
    do {
      const page = await client.listHosts({ states, pageToken, pageSize: 500 });
      hosts.push(...page.hosts);
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    print(ListHostsResponseSchema, {
      $typeName: ListHostsResponseSchema.typeName,
      hosts,
      nextPageToken: "",
    });
  },
);

withConnection(
  host
    .command("rotate")
    .description(
      "revoke a host's worker tokens and print its new one, once; its open streams end",
    )
    .argument("<host-uuid>"),
  DEFAULT_URL,
).action(async (hostUuid: string, options: Connection) => {
  const response = await clientOf(HostService, options).rotateHostToken({
    hostUuid,
  });
  print(RotateHostTokenResponseSchema, response);
  warnShownOnce();
});

withConnection(
  host
    .command("decommission")
    .description(
      "retire a host for good: its tokens are refused, its streams end, its open rows fail",
    )
    .argument("<host-uuid>"),
  DEFAULT_URL,
).action(async (hostUuid: string, options: Connection) => {
  const response = await clientOf(HostService, options).decommissionHost({
    hostUuid,
  });
  print(DecommissionHostResponseSchema, response);
});

try {
  await program.parseAsync();
} catch (error) {
  const text =
    error instanceof ConnectError
      ? `${error.rawMessage} (${codeName(error.code)})`
      : error instanceof UsageError
        ? error.message
        : String(error);
  process.stderr.write(`error: ${text}\n`);
  process.exitCode = 1;
}
