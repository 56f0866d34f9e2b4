import { execFile, spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer as createHttpServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer as createTlsServer } from "node:tls";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, expect, test } from "vitest";
import { SETTING_NAMES } from "../../src/config/settings.js";
import { clientsWith } from "../support/callers.js";
import {
  type CertificateAuthority,
  type CertificateWorkshop,
  type KeyPair,
  openCertificateWorkshop,
} from "../support/certificates.js";
import {
  createTestDatabase,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

let database: TestDatabase;
let server: TestServer | undefined;
let certificates: CertificateWorkshop;
let ca: CertificateAuthority;
let serverPair: KeyPair;
let consolePair: KeyPair;
/** A client certificate that another CA signed. */
let strangerPair: KeyPair;

beforeAll(async () => {
  database = await createTestDatabase();
  certificates = await openCertificateWorkshop();
  ca = await certificates.createAuthority("cli-test-ca");
  serverPair = await ca.issueServer("decky-lifecycle");
  consolePair = await ca.issueClient("console");
  const otherCa = await certificates.createAuthority("other-ca");
  strangerPair = await otherCa.issueClient("stranger");
});

afterAll(async () => {
  await server?.close();
  await database?.drop();
  await certificates?.remove();
});

interface CliRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs `npm run cli -- <args>` as an operator would, with the test
 * database's settings and `env`, and none of this process's settings.
 */
function cli(
  args: string[],
  env: Record<string, string> = {},
): Promise<CliRun> {
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(
      ([name]) =>
        !(SETTING_NAMES as readonly string[]).includes(name) &&
        !name.startsWith("DECKY_"),
    ),
  );
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "src/bin/cli.ts", ...args],
    { cwd: ROOT, env: { ...inherited, ...database.env, ...env } },
  );
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (text: string) => {
    stdout += text;
  });
  child.stderr.setEncoding("utf8").on("data", (text: string) => {
    stderr += text;
  });
  return new Promise((resolve) => {
    child.once("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** The JSON a successful run printed. */
function printed<T>(run: CliRun): T {
  expect(run.code, `${run.stderr}${run.stdout}`).toBe(0);
  return JSON.parse(run.stdout) as T;
}

interface CreatedToken {
  apiToken: { tokenId: string; name: string; role: string; createdAt: string };
  token: string;
}

interface Host {
  hostUuid: string;
  state: string;
  name?: string;
}

const SHOWN_ONCE =
  "The token above is shown this once and stored only as a hash; keep it somewhere safe.\n";

/** A `host list` run refused for `problem` before it called anything. */
function expectUsageError(run: CliRun, problem: string): void {
  expect(run.code).toBe(1);
  expect(run.stdout).toBe("");
  const [first, blank, usage] = run.stderr.split("\n");
  expect([first, blank, usage]).toEqual([
    problem,
    "",
    "Usage: cli host list [options]",
  ]);
}

test("the CLI makes the first admin token on the database, then manages hosts and tokens through the server", {
  timeout: 300_000,
}, async () => {
  // Before the server runs: straight on its database.
  const first = await cli([
    "token",
    "create",
    "--role",
    "admin",
    "--name",
    "ops",
  ]);
  const admin = printed<CreatedToken>(first);
  expect(admin.apiToken).toMatchObject({ name: "ops", role: "ROLE_ADMIN" });
  expect(admin.token).toMatch(/^dl_[0-9a-f]{32}_[A-Za-z0-9_-]{43}$/);
  expect(first.stderr).toBe(SHOWN_ONCE);

  server = await startTestServer(database, { AUTH: "tokens" });
  const url = server.url;
  // The token comes from DECKY_TOKEN, read through commander's .env().
  const asAdmin = { DECKY_TOKEN: admin.token };

  const enrolled = printed<{ host: Host; token: string }>(
    await cli(["host", "enrol", "--name", "web-1", "--url", url], asAdmin),
  );
  expect(enrolled.host).toMatchObject({
    state: "HOST_STATE_ENROLLED",
    name: "web-1",
  });
  const hostUuid = enrolled.host.hostUuid;

  const listed = printed<{ hosts: Host[] }>(
    await cli(["host", "list", "--url", url, "--token", admin.token]),
  );
  expect(listed.hosts.map((host) => [host.hostUuid, host.name])).toEqual([
    [hostUuid, "web-1"],
  ]);

  const rotated = printed<{ host: Host; token: string }>(
    await cli(["host", "rotate", hostUuid, "--url", url], asAdmin),
  );
  expect(rotated.token).not.toBe(enrolled.token);
  const oldWorker = clientsWith(url, `Bearer ${enrolled.token}`);
  const refusal = await oldWorker.lifecycle.list({}).then(
    () => undefined,
    (error: unknown) => ConnectError.from(error),
  );
  expect([refusal?.code, refusal?.rawMessage]).toEqual([
    Code.Unauthenticated,
    "the bearer token was revoked",
  ]);

  const viewer = printed<CreatedToken>(
    await cli(["token", "create", "--role", "viewer", "--name", "dashboard"], {
      ...asAdmin,
      DECKY_URL: url,
    }),
  );
  expect(viewer.apiToken).toMatchObject({
    name: "dashboard",
    role: "ROLE_VIEWER",
  });
  await clientsWith(url, `Bearer ${viewer.token}`).lifecycle.list({});

  const revoked = printed<{ apiToken: { revokedAt?: string } }>(
    await cli(
      ["token", "revoke", viewer.apiToken.tokenId, "--url", url],
      asAdmin,
    ),
  );
  expect(revoked.apiToken.revokedAt).toBeDefined();

  const tokens = printed<{ apiTokens: { name: string; role: string }[] }>(
    await cli(["token", "list", "--url", url], asAdmin),
  );
  expect(
    tokens.apiTokens.map((token) => [token.name, token.role]).sort(),
  ).toEqual([
    ["ops", "ROLE_ADMIN"],
    ["web-1", "ROLE_WORKER"],
  ]);

  const notAdmin = await cli(["host", "list", "--url", url], {
    DECKY_TOKEN: rotated.token,
  });
  expect(notAdmin.stderr).toBe(
    "error: the worker role may not call decky.lifecycle.v1.HostService.ListHosts (PERMISSION_DENIED)\n",
  );

  const retired = printed<{ host: Host; failedRows: number }>(
    await cli(["host", "decommission", hostUuid, "--url", url], asAdmin),
  );
  expect(retired.host).toMatchObject({
    hostUuid,
    state: "HOST_STATE_DECOMMISSIONED",
  });

  const refused = await cli(["host", "list", "--url", url]);
  expect(refused).toEqual({
    code: 1,
    stdout: "",
    stderr:
      'error: this call needs a bearer token: send the header "authorization: Bearer <token>" (UNAUTHENTICATED)\n',
  });

  await server.close();
  server = undefined;

  // With the server stopped, straight on the database again; a token
  // pasted where its id belongs is not printed back whole.
  const pasted = await cli(["token", "revoke", admin.token]);
  expect(pasted).toEqual({
    code: 1,
    stdout: "",
    stderr: `error: token id "dl_${admin.apiToken.tokenId.replaceAll("-", "")}_<secret withheld>" is not a UUID\n`,
  });
  const all = printed<{
    apiTokens: { name: string; revokedAt?: string }[];
  }>(await cli(["token", "list", "--show-revoked"]));
  expect(
    all.apiTokens
      .map((token) => [token.name, token.revokedAt !== undefined])
      .sort(),
  ).toEqual([
    ["dashboard", true],
    ["ops", false],
    ["web-1", true],
    ["web-1", true],
  ]);
});

test("the CLI says how to go on when the embedded database is held by a running server", {
  timeout: 300_000,
}, async () => {
  if (database.kind === "postgresql") {
    // PostgreSQL serves the CLI and the server at once.
    server = await startTestServer(database, { AUTH: "tokens" });
    const run = await cli(["token", "list"]);
    expect(run.code, `${run.stderr}${run.stdout}`).toBe(0);
    await server.close();
    server = undefined;
    return;
  }
  server = await startTestServer(database, { AUTH: "tokens" });

  const run = await cli([
    "token",
    "create",
    "--role",
    "admin",
    "--name",
    "second",
  ]);

  expect(run.code).toBe(1);
  expect(run.stdout).toBe("");
  expect(run.stderr).toMatch(
    /^error: cannot use the database: data directory .* is in use by another decky-lifecycle process \(pid \d+\); stop it or set DATA_DIR to another directory\. To go through a running server instead, pass --url and an admin --token\n$/,
  );
  await server.close();
  server = undefined;
});

test.each([
  [
    ["--url", "http://127.0.0.1:8080/decky"],
    {},
    "error: option '--url <url>' argument 'http://127.0.0.1:8080/decky' is invalid. The service is served at the root: give the scheme, host and port only, such as http://127.0.0.1:8080.",
  ],
  [
    [],
    { DECKY_URL: "https://127.0.0.1:8080/decky.lifecycle.v1.HostService" },
    "error: option '--url <url>' value 'https://127.0.0.1:8080/decky.lifecycle.v1.HostService' from env 'DECKY_URL' is invalid. The service is served at the root: give the scheme, host and port only, such as http://127.0.0.1:8080.",
  ],
  [
    ["--url", "http://127.0.0.1:8080?tenant=a"],
    {},
    "error: option '--url <url>' argument 'http://127.0.0.1:8080?tenant=a' is invalid. The service is served at the root: give the scheme, host and port only, such as http://127.0.0.1:8080.",
  ],
  [
    ["--url", "notaurl"],
    {},
    "error: option '--url <url>' argument 'notaurl' is invalid. It must be an http:// or https:// URL, such as http://127.0.0.1:8080.",
  ],
  [
    ["--url", "ftp://127.0.0.1:8080"],
    {},
    "error: option '--url <url>' argument 'ftp://127.0.0.1:8080' is invalid. It must be an http:// or https:// URL, such as http://127.0.0.1:8080.",
  ],
  [
    [],
    { DECKY_URL: "notaurl" },
    "error: option '--url <url>' value 'notaurl' from env 'DECKY_URL' is invalid. It must be an http:// or https:// URL, such as http://127.0.0.1:8080.",
  ],
])(
  "the CLI refuses a server URL that is not the root of an http:// or https:// server (%j %j), naming the option and the value, before calling anything",
  { timeout: 60_000 },
  async (args, env, problem) => {
    const run = await cli(["host", "list", ...args], env);

    expectUsageError(run, problem);
  },
);

test("the CLI counts an empty DECKY_* variable as unset, as the server does with its settings", {
  timeout: 300_000,
}, async () => {
  const empty = {
    DECKY_URL: "",
    DECKY_TOKEN: "",
    DECKY_CA_FILE: "",
    DECKY_CERT_FILE: "",
    DECKY_KEY_FILE: "",
  };

  // No URL: straight on the database, as with DECKY_URL unset.
  const onDatabase = await cli(["token", "list"], empty);
  expect(onDatabase.code, onDatabase.stderr).toBe(0);
  expect(onDatabase.stderr).toBe("");
  expect(JSON.parse(onDatabase.stdout)).toHaveProperty("apiTokens");

  server = await startTestServer(database, { AUTH: "tokens" });
  const noToken = await cli(["host", "list", "--url", server.url], empty);
  await server.close();
  server = undefined;

  expect(noToken).toEqual({
    code: 1,
    stdout: "",
    stderr:
      'error: this call needs a bearer token: send the header "authorization: Bearer <token>" (UNAUTHENTICATED)\n',
  });
});

test.each([
  ["--ca-file", "DECKY_CA_FILE"],
  ["--cert-file", "DECKY_CERT_FILE"],
  ["--key-file", "DECKY_KEY_FILE"],
])(
  "the CLI refuses %s (or %s) naming a file that does not exist, naming the option and the path, before calling anything",
  { timeout: 60_000 },
  async (option, variable) => {
    const missing = join(tmpdir(), "dl-no-such-dir", "missing.pem");

    const given = await cli(["host", "list", `${option}`, missing]);
    const fromEnv = await cli(["host", "list"], { [variable]: missing });

    expect([given.code, given.stdout, given.stderr.split("\n")[0]]).toEqual([
      1,
      "",
      `error: option '${option} <path>' argument '${missing}' is invalid. No such file.`,
    ]);
    expect([
      fromEnv.code,
      fromEnv.stdout,
      fromEnv.stderr.split("\n")[0],
    ]).toEqual([
      1,
      "",
      `error: option '${option} <path>' value '${missing}' from env '${variable}' is invalid. No such file.`,
    ]);
  },
);

test.each([
  [
    "--cert-file",
    "error: --cert-file is given without --key-file: give both --cert-file and --key-file (or DECKY_CERT_FILE and DECKY_KEY_FILE) to present a client certificate, or neither",
  ],
  [
    "--key-file",
    "error: --key-file is given without --cert-file: give both --cert-file and --key-file (or DECKY_CERT_FILE and DECKY_KEY_FILE) to present a client certificate, or neither",
  ],
])(
  "the CLI refuses %s without the other half of the client certificate, before calling anything",
  { timeout: 60_000 },
  async (option, problem) => {
    const path =
      option === "--cert-file" ? consolePair.certFile : consolePair.keyFile;

    const run = await cli(["host", "list", option, path]);

    expectUsageError(run, problem);
  },
);

test("under mutual TLS the CLI says which of --ca-file, --cert-file and --key-file the server wants", {
  timeout: 300_000,
}, async () => {
  server = await startTestServer(database, {
    TLS_CERT_FILE: serverPair.certFile,
    TLS_KEY_FILE: serverPair.keyFile,
    TLS_CLIENT_CA_FILE: ca.certFile,
  });
  const url = server.url;
  const hostList = (...options: string[]) =>
    cli(["host", "list", "--url", url, ...options]);

  const untrusted = await hostList();
  const noCertificate = await hostList("--ca-file", ca.certFile);
  const strangersCertificate = await hostList(
    "--ca-file",
    ca.certFile,
    "--cert-file",
    strangerPair.certFile,
    "--key-file",
    strangerPair.keyFile,
  );
  const fromEnv = await cli(["host", "list"], {
    DECKY_URL: url,
    DECKY_CA_FILE: ca.certFile,
    DECKY_CERT_FILE: consolePair.certFile,
    DECKY_KEY_FILE: consolePair.keyFile,
  });
  await server.close();
  server = undefined;

  expect(untrusted).toEqual({
    code: 1,
    stdout: "",
    stderr: `error: the server at ${url} presented a certificate this system does not trust (self-signed certificate in certificate chain): pass --ca-file (or DECKY_CA_FILE) with the CA that signed it\n`,
  });
  expect(noCertificate).toEqual({
    code: 1,
    stdout: "",
    stderr: `error: the server at ${url} asks for a client certificate (TLS alert "certificate required"): pass --cert-file and --key-file (or DECKY_CERT_FILE and DECKY_KEY_FILE)\n`,
  });
  expect(strangersCertificate).toEqual({
    code: 1,
    stdout: "",
    stderr: `error: the server at ${url} closed the connection as soon as the TLS handshake was done, as a server under mutual TLS does with a client certificate its client CA did not sign: pass --cert-file and --key-file of one it signed\n`,
  });
  expect(printed<{ hosts?: Host[] }>(fromEnv)).toBeTypeOf("object");
  expect(fromEnv.stderr).toBe("");
});

test("the CLI says so when the server's certificate is self-signed or names another host", {
  timeout: 120_000,
}, async () => {
  const elsewhere = await selfSignedCertificate("elsewhere.example");
  const tlsServer = createTlsServer({
    cert: elsewhere.cert,
    key: elsewhere.key,
  });
  const url = `https://127.0.0.1:${await listen(tlsServer)}`;
  try {
    const untrusted = await cli(["host", "list", "--url", url]);
    const otherHost = await cli([
      "host",
      "list",
      "--url",
      url,
      "--ca-file",
      elsewhere.certFile,
    ]);

    expect(untrusted).toEqual({
      code: 1,
      stdout: "",
      stderr: `error: the server at ${url} presented a certificate this system does not trust (self-signed certificate): pass --ca-file (or DECKY_CA_FILE) with the CA that signed it\n`,
    });
    expect(otherHost).toEqual({
      code: 1,
      stdout: "",
      stderr: `error: the certificate of the server at ${url} is not for that host (Hostname/IP does not match certificate's altnames: IP: 127.0.0.1 is not in the cert's list: 192.0.2.1): call the server by a name or address its certificate holds\n`,
    });
  } finally {
    tlsServer.close();
    await elsewhere.remove();
  }
});

test("the CLI says no decky-lifecycle service answers at a URL where another HTTP server does, or where TLS is not spoken", {
  timeout: 120_000,
}, async () => {
  const httpServer = createHttpServer((_, response) => {
    response.writeHead(404).end();
  });
  const port = await listen(httpServer);
  try {
    const notFound = await cli([
      "host",
      "list",
      "--url",
      `http://127.0.0.1:${port}`,
    ]);
    const noTls = await cli([
      "host",
      "list",
      "--url",
      `https://127.0.0.1:${port}`,
    ]);

    expect(notFound).toEqual({
      code: 1,
      stdout: "",
      stderr: `error: no decky-lifecycle service answers at http://127.0.0.1:${port}: HTTP 404 (UNIMPLEMENTED)\n`,
    });
    expect(noTls).toEqual({
      code: 1,
      stdout: "",
      stderr: `error: the server at https://127.0.0.1:${port} does not answer in TLS (wrong version number): for a server without TLS, give an http:// URL\n`,
    });
  } finally {
    httpServer.close();
  }
});

/** Listens on a free port of 127.0.0.1 and resolves with the port. */
async function listen(listener: Server | ReturnType<typeof createTlsServer>) {
  await new Promise<void>((resolve) =>
    listener.listen(0, "127.0.0.1", resolve),
  );
  return (listener.address() as AddressInfo).port;
}

/**
 * A self-signed server certificate for `name` and 192.0.2.1 only, made
 * with openssl in a temporary directory that `remove` deletes.
 */
async function selfSignedCertificate(name: string) {
  const dir = await mkdtemp(join(tmpdir(), "dl-cli-certificate-"));
  const certFile = join(dir, "server.crt");
  const keyFile = join(dir, "server.key");
  await promisify(execFile)("openssl", [
    "req",
    "-x509",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-days",
    "1",
    "-subj",
    `/CN=${name}`,
    "-addext",
    `subjectAltName=DNS:${name},IP:192.0.2.1`,
    "-addext",
    "extendedKeyUsage=serverAuth",
    "-keyout",
    keyFile,
    "-out",
    certFile,
  ]);
  return {
    certFile,
    cert: await readFile(certFile),
    key: await readFile(keyFile),
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}
