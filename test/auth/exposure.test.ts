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

/** The refusal for `host` with AUTH=none. */
function refusal(host: string): string {
  return `refusing to listen on ${host} with AUTH=none: every caller that reaches it would act as an admin, and TLS, even mutual TLS, encrypts the calls but does not say who is calling. Set AUTH=tokens (create the first admin token with "npm run cli -- token create --role admin --name <name>"), or listen on 127.0.0.1 (HOST=127.0.0.1)`;
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
    ).rejects.toMatchObject({
      name: "ExposureError",
      message: refusal("0.0.0.0"),
    });
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

test("beyond loopback, AUTH=none is refused; tokens are allowed anywhere, and loopback with either", () => {
  const hosts = ["127.0.0.1", "0.0.0.0", "10.1.2.3"];
  const verdicts = hosts.flatMap((host) =>
    (["none", "tokens"] as const).map((auth) => [
      `${host} AUTH=${auth}`,
      verdict({ host, auth }),
    ]),
  );

  expect(Object.fromEntries(verdicts)).toEqual({
    "127.0.0.1 AUTH=none": "allowed",
    "127.0.0.1 AUTH=tokens": "allowed",
    "0.0.0.0 AUTH=none": `ExposureError: ${refusal("0.0.0.0")}`,
    "0.0.0.0 AUTH=tokens": "allowed",
    "10.1.2.3 AUTH=none": `ExposureError: ${refusal("10.1.2.3")}`,
    "10.1.2.3 AUTH=tokens": "allowed",
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
