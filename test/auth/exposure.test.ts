import { pino } from "pino";
import { expect, test } from "vitest";
import {
  checkExposure,
  type Exposure,
  isLoopback,
} from "../../src/auth/exposure.js";
import { loadSettings } from "../../src/config/settings.js";
import { startServer } from "../../src/server/start-server.js";
import { createTestDatabase } from "../support/test-server.js";

/** The refusal for `host` with AUTH=none over `transport`. */
function refusal(host: string, transport: string): string {
  return `refusing to listen on ${host} with AUTH=none and ${transport}: anyone who can reach it could call every method as an admin. Set AUTH=tokens (create the first admin token with "npm run cli -- token create --role admin --name <name>"), or turn on mutual TLS with TLS_CERT_FILE, TLS_KEY_FILE and TLS_CLIENT_CA_FILE so that only callers holding a certificate your CA signed get in, or listen on 127.0.0.1 (HOST=127.0.0.1)`;
}

/** What `checkExposure` says of `exposure`: "allowed", or its message. */
function verdict(exposure: Exposure): string {
  try {
    checkExposure(exposure);
    return "allowed";
  } catch (error) {
    return `${(error as Error).name}: ${(error as Error).message}`;
  }
}

test("the server refuses to listen beyond loopback with AUTH=none and no TLS, saying how to fix it", async () => {
  const database = await createTestDatabase();
  try {
    const settings = loadSettings({
      ...database.env,
      HOST: "0.0.0.0",
      PORT: "0",
      AUTH: "none",
    });

    await expect(
      startServer(settings, pino({ level: "silent" })),
    ).rejects.toThrow(refusal("0.0.0.0", "no TLS"));
  } finally {
    await database.drop();
  }
});

test("the server listens beyond loopback when it requires tokens", async () => {
  const database = await createTestDatabase();
  try {
    const settings = loadSettings({
      ...database.env,
      HOST: "0.0.0.0",
      PORT: "0",
      AUTH: "tokens",
    });
    const server = await startServer(settings, pino({ level: "silent" }));
    await server.close();
    expect(server.url).toBe(`http://0.0.0.0:${server.port}`);
  } finally {
    await database.drop();
  }
});

test("beyond loopback, AUTH=none is allowed only with mutual TLS; tokens are allowed with any TLS, and loopback with anything", () => {
  const hosts = ["127.0.0.1", "0.0.0.0", "10.1.2.3"];
  const tlsModes = ["off", "server", "mutual"] as const;
  const verdicts = hosts.flatMap((host) =>
    (["none", "tokens"] as const).flatMap((auth) =>
      tlsModes.map((tls) => [
        `${host} AUTH=${auth} TLS=${tls}`,
        verdict({ host, auth, tls }),
      ]),
    ),
  );

  expect(Object.fromEntries(verdicts)).toEqual({
    "127.0.0.1 AUTH=none TLS=off": "allowed",
    "127.0.0.1 AUTH=none TLS=server": "allowed",
    "127.0.0.1 AUTH=none TLS=mutual": "allowed",
    "127.0.0.1 AUTH=tokens TLS=off": "allowed",
    "127.0.0.1 AUTH=tokens TLS=server": "allowed",
    "127.0.0.1 AUTH=tokens TLS=mutual": "allowed",
    "0.0.0.0 AUTH=none TLS=off": `ExposureError: ${refusal("0.0.0.0", "no TLS")}`,
    "0.0.0.0 AUTH=none TLS=server": `ExposureError: ${refusal("0.0.0.0", "TLS without TLS_CLIENT_CA_FILE")}`,
    "0.0.0.0 AUTH=none TLS=mutual": "allowed",
    "0.0.0.0 AUTH=tokens TLS=off": "allowed",
    "0.0.0.0 AUTH=tokens TLS=server": "allowed",
    "0.0.0.0 AUTH=tokens TLS=mutual": "allowed",
    "10.1.2.3 AUTH=none TLS=off": `ExposureError: ${refusal("10.1.2.3", "no TLS")}`,
    "10.1.2.3 AUTH=none TLS=server": `ExposureError: ${refusal("10.1.2.3", "TLS without TLS_CLIENT_CA_FILE")}`,
    "10.1.2.3 AUTH=none TLS=mutual": "allowed",
    "10.1.2.3 AUTH=tokens TLS=off": "allowed",
    "10.1.2.3 AUTH=tokens TLS=server": "allowed",
    "10.1.2.3 AUTH=tokens TLS=mutual": "allowed",
  });
});

test("only addresses this machine alone can reach count as loopback", () => {
  const loopback = [
    "127.0.0.1",
    "127.1.2.3",
    "::1",
    "[::1]",
    "localhost",
    "LOCALHOST",
    "::ffff:127.0.0.1",
  ];
  const reachable = [
    "0.0.0.0",
    "::",
    "10.0.0.1",
    "192.168.1.10",
    "::ffff:10.0.0.1",
    "example.com",
    "localhost.example.com",
  ];
  expect(loopback.filter((host) => !isLoopback(host))).toEqual([]);
  expect(reachable.filter((host) => isLoopback(host))).toEqual([]);
});
