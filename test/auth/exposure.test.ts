import { pino } from "pino";
import { expect, test } from "vitest";
import { checkExposure, isLoopback } from "../../src/auth/exposure.js";
import { loadSettings } from "../../src/config/settings.js";
import { startServer } from "../../src/server/start-server.js";
import { createTestDatabase } from "../support/test-server.js";

const REFUSAL =
  'refusing to listen on 0.0.0.0 with AUTH=none and no TLS: anyone who can reach it could call every method. Set AUTH=tokens (create the first admin token with "npm run cli -- token create --role admin --name <name>"), or serve TLS with TLS_CERT_FILE and TLS_KEY_FILE, or listen on a loopback address such as HOST=127.0.0.1';

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
    ).rejects.toThrow(REFUSAL);
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

test("TLS alone is enough to listen beyond loopback", () => {
  expect(() =>
    checkExposure({ host: "0.0.0.0", auth: "none", tlsConfigured: true }),
  ).not.toThrow();
  expect(() =>
    checkExposure({ host: "10.1.2.3", auth: "none", tlsConfigured: false }),
  ).toThrow(/^refusing to listen on 10\.1\.2\.3 with AUTH=none and no TLS/);
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
