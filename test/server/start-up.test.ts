import type { ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, afterEach, beforeAll, expect, test, vi } from "vitest";
import {
  LifecycleService,
  Operation,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import {
  type ServerProcess,
  spawnServer as spawnProcess,
  stopProcess,
} from "../support/server-process.js";
import {
  createTestDatabase,
  deckyName,
  type TestDatabase,
} from "../support/test-server.js";

// Spawning tsx and opening the embedded database take seconds each.
const PROCESS_TIMEOUT_MS = 120_000;

const started: ChildProcess[] = [];

function spawnServer(env: Record<string, string>): ServerProcess {
  const server = spawnProcess(env);
  started.push(server.child);
  return server;
}

/** The URL a serving process logged. */
function servingUrl(server: ServerProcess): Promise<string> {
  return server.servingUrl();
}

let database: TestDatabase;
const dataDirs: string[] = [];

/** A new empty directory for an embedded database. */
async function newDataDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "dl-start-up-"));
  dataDirs.push(dir);
  return dir;
}

beforeAll(async () => {
  database = await createTestDatabase();
});

// Stopped the way an operator stops them, so that each releases its
// DATA_DIR before the next test starts a server on it.
afterEach(async () => {
  for (const child of started.splice(0)) await stopProcess(child);
});

afterAll(async () => {
  await database?.drop();
  for (const dir of dataDirs) await rm(dir, { recursive: true, force: true });
});

test.each([
  ["PORT", "abc", 'PORT="abc" must be a whole number'],
  [
    "KEEPALIVE_INTERVAL_MS",
    "5",
    'KEEPALIVE_INTERVAL_MS="5" must be at least 10 ms',
  ],
  [
    "DATABASE_URL",
    "mysql://x",
    'DATABASE_URL="mysql://x" must be a postgres:// or postgresql:// URL',
  ],
])(
  "the server refuses %s=%s: it exits with status 2 before opening anything, naming the variable and the value",
  async (name, value, problem) => {
    const dataDir = join(await newDataDir(), "never-created");

    const server = spawnServer({ DATA_DIR: dataDir, [name]: value });
    const exit = await server.exited;

    expect(exit).toEqual({ code: 2, signal: null });
    expect(server.log.map((line) => [line.level, line.msg])).toEqual([
      [60, `invalid settings: ${problem}`],
    ]);
    expect(existsSync(dataDir)).toBe(false);
  },
  PROCESS_TIMEOUT_MS,
);

test(
  "a second server on the DATA_DIR of a running one exits at once with the in-use message, and the first keeps serving",
  async () => {
    const dataDir = await newDataDir();
    const first = spawnServer({ DATA_DIR: dataDir, PORT: "0" });
    const url = await servingUrl(first);

    const second = spawnServer({ DATA_DIR: dataDir, PORT: "0" });
    const exit = await second.exited;

    expect(exit).toEqual({ code: 1, signal: null });
    expect(
      second.log.filter((line) => line.level >= 50).map((line) => line.msg),
    ).toEqual([
      `could not start: data directory ${dataDir} is in use by another decky-lifecycle process (pid ${first.child.pid}); stop it or set DATA_DIR to another directory`,
    ]);
    const client = createClient(
      LifecycleService,
      createGrpcTransport({ baseUrl: url }),
    );
    const name = deckyName("still-serving");
    const accepted = await client.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
    });
    const listed = await client.list({ deckyName: name });
    expect(listed.rows).toEqual(accepted.rows);
  },
  PROCESS_TIMEOUT_MS,
);

test(
  "SIGTERM makes a serving server end its Watch streams with UNAVAILABLE and exit with status 0",
  async () => {
    const server = spawnServer({ ...database.env, PORT: "0" });
    const client = createClient(
      LifecycleService,
      createGrpcTransport({ baseUrl: await servingUrl(server) }),
    );
    const watch = client.watch({})[Symbol.asyncIterator]();
    const snapshotEnd = await (async () => {
      for (;;) {
        const next = await watch.next();
        if (next.value?.kind === WatchResponse_Kind.SNAPSHOT_END) {
          return next.value;
        }
      }
    })();

    server.child.kill("SIGTERM");
    const ended = await watch.next().then(
      (next) => next,
      (error: unknown) => ConnectError.from(error),
    );
    const exit = await server.exited;

    expect(ended).toBeInstanceOf(ConnectError);
    const error = ended as ConnectError;
    expect([error.code, error.rawMessage]).toEqual([
      Code.Unavailable,
      `the server is shutting down; resume from revision ${snapshotEnd.revision}`,
    ]);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(server.log.at(-1)!.msg).toBe("decky-lifecycle stopped");
    expect(server.log.find((line) => line.msg === "stopping")!.signal).toBe(
      "SIGTERM",
    );
  },
  PROCESS_TIMEOUT_MS,
);

test(
  "PORT=0 makes the server listen on a port the operating system chooses",
  async () => {
    const server = spawnServer({ ...database.env, PORT: "0" });

    const url = new URL(await servingUrl(server));

    expect(url.hostname).toBe("127.0.0.1");
    expect(Number(url.port)).toBeGreaterThan(0);
    const client = createClient(
      LifecycleService,
      createGrpcTransport({ baseUrl: url.toString() }),
    );
    const listed = await client.list({ deckyName: deckyName("none") });
    expect(listed.rows).toEqual([]);
  },
  PROCESS_TIMEOUT_MS,
);

test(
  "SIGTERM while the embedded database opens stops the server once it is up, with status 0 and DATA_DIR released",
  async () => {
    const dataDir = await newDataDir();
    const server = spawnServer({ DATA_DIR: dataDir, PORT: "0" });
    await server.logged("embedded database ready");

    server.child.kill("SIGTERM");
    const exit = await server.exited;

    expect(exit).toEqual({ code: 0, signal: null });
    expect(server.log.at(-1)!.msg).toBe("decky-lifecycle stopped");
    const next = spawnServer({ DATA_DIR: dataDir, PORT: "0" });
    await servingUrl(next);
    next.child.kill("SIGTERM");
    expect(await next.exited).toEqual({ code: 0, signal: null });
  },
  PROCESS_TIMEOUT_MS,
);

test(
  "a PORT already in use makes the server exit with status 1, naming the address",
  async () => {
    const taken = net.createServer();
    taken.listen(0, "127.0.0.1");
    await new Promise((resolve) => taken.once("listening", resolve));
    const { port } = taken.address() as net.AddressInfo;

    try {
      const server = spawnServer({ ...database.env, PORT: String(port) });
      const exit = await server.exited;

      expect(exit).toEqual({ code: 1, signal: null });
      expect(
        server.log.filter((line) => line.level >= 50).map((line) => line.msg),
      ).toEqual([
        `could not start: listen EADDRINUSE: address already in use 127.0.0.1:${port}`,
      ]);
    } finally {
      taken.close();
    }
  },
  PROCESS_TIMEOUT_MS,
);

test.each([
  {
    what: "is a file",
    under: "afile",
    code: "EEXIST",
    reason: () => "it is a file, not a directory",
  },
  {
    what: "lies under a file",
    under: "afile/sub/db",
    code: "ENOTDIR",
    reason: (dir: string) => `${dir}/afile is a file, not a directory`,
  },
])(
  "a DATA_DIR that $what makes the server exit with status 1 and one line naming DATA_DIR, the path and the reason",
  async ({ under, code, reason }) => {
    const dir = await newDataDir();
    await writeFile(join(dir, "afile"), "not a directory\n");
    const dataDir = join(dir, under);

    const server = spawnServer({ DATA_DIR: dataDir, PORT: "0" });
    const exit = await server.exited;

    expect(exit).toEqual({ code: 1, signal: null });
    const problem = `DATA_DIR ${dataDir} cannot be used: ${reason(dir)}; set DATA_DIR to another directory`;
    expect(
      server.log
        .filter((line) => line.level >= 50)
        .map((line) => [line.msg, line.cause]),
    ).toEqual([
      [
        `could not start: ${problem}`,
        { type: "DataDirError", code, message: problem },
      ],
    ]);
    expect(server.stderr()).toBe("");
  },
  PROCESS_TIMEOUT_MS,
);

test(
  "SIGTERM while start-up waits on a database that never answers exits with status 1 at SHUTDOWN_DEADLINE_MS",
  async () => {
    const sockets: net.Socket[] = [];
    const silent = net.createServer((socket) => sockets.push(socket));
    silent.listen(0, "127.0.0.1");
    await new Promise((resolve) => silent.once("listening", resolve));
    const { port } = silent.address() as net.AddressInfo;
    try {
      const server = spawnServer({
        DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/silent`,
        DATABASE_TIMEOUT_MS: "60000",
        SHUTDOWN_DEADLINE_MS: "1000",
        PORT: "0",
      });
      await vi.waitFor(() => expect(sockets.length).toBeGreaterThan(0), {
        timeout: 30_000,
      });

      server.child.kill("SIGTERM");
      const exit = await server.exited;

      expect(exit).toEqual({ code: 1, signal: null });
      expect(server.log.map((line) => line.msg).slice(-2)).toEqual([
        "stopping",
        "could not stop within SHUTDOWN_DEADLINE_MS; exiting anyway",
      ]);
    } finally {
      for (const socket of sockets) socket.destroy();
      silent.close();
    }
  },
  PROCESS_TIMEOUT_MS,
);
