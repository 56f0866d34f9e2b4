import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, expect, test } from "vitest";
import { SETTING_NAMES } from "../../src/config/settings.js";
import { clientsWith } from "../support/callers.js";
import {
  createTestDatabase,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

let database: TestDatabase;
let server: TestServer | undefined;

beforeAll(async () => {
  database = await createTestDatabase();
});

afterAll(async () => {
  await server?.close();
  await database?.drop();
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

  // With the server stopped, straight on the database again.
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
  "the CLI refuses a server URL that is not http:// or https:// (%j %j), naming the option and the value, before calling anything",
  { timeout: 60_000 },
  async (args, env, problem) => {
    const run = await cli(["host", "list", ...args], env);

    expect(run.code).toBe(1);
    expect(run.stdout).toBe("");
    const [first, blank, usage] = run.stderr.split("\n");
    expect([first, blank, usage]).toEqual([
      problem,
      "",
      "Usage: cli host list [options]",
    ]);
  },
);
