import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Client, createClient, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import pg from "pg";
import { pino } from "pino";
import { afterAll, beforeAll } from "vitest";
import { LifecycleService } from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { loadSettings, type Settings } from "../../src/config/settings.js";
import { createLogger } from "../../src/logging/logger.js";
import {
  type RunningServer,
  startServer,
} from "../../src/server/start-server.js";

/**
 * The database a test file runs on: a new PostgreSQL database made from
 * TEST_DATABASE_URL when it is set, else a new embedded one in a temporary
 * DATA_DIR. The same database outlives server restarts until `drop`.
 */
export interface TestDatabase {
  readonly env: Record<string, string>;
  readonly kind: "postgresql" | "embedded";
  /** A PostgreSQL URL to reach the database directly, when it is PostgreSQL. */
  readonly url: string | undefined;
  drop(): Promise<void>;
}

export async function createTestDatabase(): Promise<TestDatabase> {
  const base = process.env.TEST_DATABASE_URL;
  if (base) {
    const name = `dl_test_${randomBytes(6).toString("hex")}`;
    const admin = new pg.Client({ connectionString: base });
    await admin.connect();
    await admin.query(`create database ${name}`);
    await admin.end();
    const url = new URL(base);
    url.pathname = `/${name}`;
    return {
      env: { DATABASE_URL: url.toString() },
      kind: "postgresql",
      url: url.toString(),
      async drop() {
        const client = new pg.Client({ connectionString: base });
        await client.connect();
        await client.query(`drop database if exists ${name} with (force)`);
        await client.end();
      },
    };
  }
  const dataDir = await mkdtemp(join(tmpdir(), "dl-test-"));
  return {
    env: { DATA_DIR: dataDir },
    kind: "embedded",
    url: undefined,
    async drop() {
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** A real server on a free port of 127.0.0.1, with clients for each protocol. */
export interface TestServer {
  readonly server: RunningServer;
  readonly settings: Settings;
  readonly url: string;
  /** gRPC over HTTP/2, as grpc-js and connect-node workers use. */
  readonly grpc: Client<typeof LifecycleService>;
  /** The Connect protocol over HTTP/1.1, as a browser sends it. */
  readonly connect: Client<typeof LifecycleService>;
  /** gRPC-Web over HTTP/1.1. */
  readonly grpcWeb: Client<typeof LifecycleService>;
  /** Transports of the clients above, to build more clients from. */
  readonly transports: {
    readonly grpc: Transport;
    readonly connect: Transport;
    readonly grpcWeb: Transport;
  };
  close(): Promise<void>;
}

/**
 * Starts a server on `database` with test settings; `env` overrides any
 * setting (KEEPALIVE_INTERVAL_MS, say).
 */
export async function startTestServer(
  database: TestDatabase,
  env: Record<string, string> = {},
): Promise<TestServer> {
  const settings = loadSettings({
    PORT: "0",
    HOST: "127.0.0.1",
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "silent",
    ...database.env,
    ...env,
  });
  const logger = pino({ level: settings.logLevel });
  const server = await startServer(settings, logger);
  const transports = {
    grpc: createGrpcTransport({ baseUrl: server.url }),
    connect: createConnectTransport({
      baseUrl: server.url,
      httpVersion: "1.1",
    }),
    grpcWeb: createGrpcWebTransport({
      baseUrl: server.url,
      httpVersion: "1.1",
    }),
  };
  return {
    server,
    settings,
    url: server.url,
    grpc: createClient(LifecycleService, transports.grpc),
    connect: createClient(LifecycleService, transports.connect),
    grpcWeb: createClient(LifecycleService, transports.grpcWeb),
    transports,
    close: () => server.close(),
  };
}

/** A server whose log lines a test reads, as the process logger wrote them. */
export interface LoggedServer {
  readonly server: RunningServer;
  readonly settings: Settings;
  /** Every JSON line logged so far, oldest first. */
  readonly lines: string[];
}

/**
 * Starts a server on `database` with the process logger, keeping what it
 * writes; `env` overrides any setting (LOG_LEVEL, say).
 */
export async function startLoggedServer(
  database: TestDatabase,
  env: Record<string, string> = {},
): Promise<LoggedServer> {
  const settings = loadSettings({
    PORT: "0",
    HOST: "127.0.0.1",
    ...database.env,
    ...env,
  });
  const lines: string[] = [];
  const logger = createLogger(settings.logLevel, {
    write: (line: string) => {
      lines.push(line);
    },
  });
  return { server: await startServer(settings, logger), settings, lines };
}

/** A random decky name, unique within a test run. */
export function deckyName(prefix = "decky"): string {
  return `${prefix}-${randomBytes(8).toString("hex")}`;
}

/**
 * Gives the calling test file its own database and server: both start in
 * `beforeAll` and stop in `afterAll`. The returned object stands for the
 * server once `beforeAll` has run; every property reads through to it.
 */
export function serveThisFile(env: Record<string, string> = {}): TestServer {
  let database: TestDatabase | undefined;
  let server: TestServer | undefined;
  beforeAll(async () => {
    database = await createTestDatabase();
    server = await startTestServer(database, env);
  });
  afterAll(async () => {
    await server?.close();
    await database?.drop();
  });
  return new Proxy({} as TestServer, {
    get(_, property) {
      if (!server) throw new Error("the test server starts in beforeAll");
      return server[property as keyof TestServer];
    },
  });
}
