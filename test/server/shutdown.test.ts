import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { type Client, createClient } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
} from "@connectrpc/connect-node";
import pg from "pg";
import { afterAll, afterEach, beforeAll, expect, test, vi } from "vitest";
import {
  HeartbeatRequestSchema,
  type Lifecycle,
  LifecycleSchema,
  LifecycleService,
  Operation,
  Status,
  type WatchResponse,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { outcomeOf } from "../support/call-outcome.js";
import {
  type ServerProcess,
  spawnServer,
  stopProcess,
} from "../support/server-process.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
} from "../support/test-server.js";

// Spawning tsx and opening the embedded database take seconds each.
const PROCESS_TIMEOUT_MS = 120_000;

let database: TestDatabase;
const started: ServerProcess[] = [];

beforeAll(async () => {
  database = await createTestDatabase();
});

afterEach(async () => {
  for (const server of started.splice(0)) await stopProcess(server.child);
});

afterAll(async () => {
  await database?.drop();
});

function start(env: Record<string, string> = {}): ServerProcess {
  const server = spawnServer({ ...database.env, PORT: "0", ...env });
  started.push(server);
  return server;
}

type LifecycleClient = Client<typeof LifecycleService>;

/** What the server acknowledged before it stopped. */
interface Acknowledged {
  /** Rows whose Accept was answered. */
  readonly accepted: Set<string>;
  /** Rows whose Report to RUNNING was answered. */
  readonly reported: Set<string>;
  /** Rows moved to SUCCEEDED by a Heartbeat stream that closed with OK. */
  readonly succeeded: Set<string>;
}

/**
 * A runner that accepts master-resident rows and reports them RUNNING, until
 * a call fails; returns how that call failed.
 */
async function runner(client: LifecycleClient, acked: Acknowledged) {
  for (;;) {
    let id = "";
    const outcome = await outcomeOf(
      (async () => {
        const accepted = await client.accept({
          operation: Operation.DEPLOY,
          targets: [{ deckyName: deckyName("master") }],
        });
        id = accepted.lifecycleIds[0]!;
        acked.accepted.add(id);
        await client.report({ lifecycleId: id, status: Status.RUNNING });
        acked.reported.add(id);
      })(),
    );
    if (outcome !== "ok") return outcome;
  }
}

/**
 * A worker host that accepts a row for itself and moves it to RUNNING and
 * SUCCEEDED over one Heartbeat stream per row, until a call fails.
 */
async function worker(client: LifecycleClient, acked: Acknowledged) {
  const host = randomUUID();
  for (;;) {
    const outcome = await outcomeOf(
      (async () => {
        const name = deckyName("worker");
        const accepted = await client.accept({
          operation: Operation.DEPLOY,
          targets: [{ deckyName: name, hostUuid: host }],
        });
        const id = accepted.lifecycleIds[0]!;
        acked.accepted.add(id);
        const delta = (status: Status) =>
          create(HeartbeatRequestSchema, {
            hostUuid: host,
            agentVersion: "test-agent/1.0",
            deltas: [
              {
                deckyName: name,
                operation: Operation.DEPLOY,
                status,
                lifecycleId: id,
              },
            ],
          });
        const response = await client.heartbeat(
          (async function* () {
            yield delta(Status.RUNNING);
            yield delta(Status.SUCCEEDED);
          })(),
        );
        expect(response).toMatchObject({ messages: 2, applied: 2 });
        acked.succeeded.add(id);
      })(),
    );
    if (outcome !== "ok") return outcome;
  }
}

/**
 * A sweep interval long enough that no sweep starts during a test, so that
 * the only session waiting for the revision counter is the call's.
 */
const QUIET_SWEEPER_MS = "3600000";

/**
 * How long after the server logs that it is stopping the revision counter
 * is released: past the PING that drains HTTP/2 sessions, well within the
 * share of SHUTDOWN_DEADLINE_MS (10 s) that calls in flight get.
 */
const RELEASE_AFTER_STOP_MS = 1000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A second session on the PostgreSQL database at `url` that holds the
 * revision counter, which every write transaction and every sweep locks,
 * until `release`.
 */
async function holdRevisionCounter(url: string) {
  const session = new pg.Client({ connectionString: url });
  await session.connect();
  await session.query("begin");
  await session.query(
    "select value from lifecycle_revision where id = 1 for update",
  );
  return {
    /** Resolves once `count` other sessions wait for a lock. */
    waitForWaiters: (count: number) =>
      vi.waitFor(async () => {
        const waiting = await session.query(
          `select count(*)::int as n from pg_stat_activity
           where datname = current_database() and wait_event_type = 'Lock'`,
        );
        expect(waiting.rows[0].n).toBe(count);
      }),
    release: () => session.query("rollback"),
    end: () => session.end(),
  };
}

/** The rows with `ids`, as a fresh server reads them from the database. */
async function storedRows(ids: string[]): Promise<Lifecycle[]> {
  const fresh = await startTestServer(database);
  try {
    return (await fresh.grpc.list({ ids })).rows;
  } finally {
    await fresh.close();
  }
}

test(
  "SIGTERM during traffic: Watch and open Heartbeat streams end with UNAVAILABLE, the process exits 0, and every acknowledged call is in the database",
  async () => {
    const server = start();
    const baseUrl = await server.servingUrl();
    const grpc = createClient(
      LifecycleService,
      createGrpcTransport({ baseUrl }),
    );
    const connect = createClient(
      LifecycleService,
      createConnectTransport({ baseUrl, httpVersion: "1.1" }),
    );
    const acked: Acknowledged = {
      accepted: new Set(),
      reported: new Set(),
      succeeded: new Set(),
    };

    const watch = grpc.watch({})[Symbol.asyncIterator]();
    while (
      (await watch.next()).value?.kind !== WatchResponse_Kind.SNAPSHOT_END
    );
    const watchEnd = outcomeOf(
      (async () => {
        for (;;) if ((await watch.next()).done) return;
      })(),
    );
    // A worker that keeps its stream open and has sent one message.
    const idleHost = randomUUID();
    const idleStream = outcomeOf(
      grpc.heartbeat(
        (async function* () {
          yield create(HeartbeatRequestSchema, {
            hostUuid: idleHost,
            agentVersion: "test-agent/1.0",
          });
          await new Promise(() => {});
        })(),
      ),
    );
    const traffic = [
      runner(grpc, acked),
      runner(connect, acked),
      worker(grpc, acked),
      worker(connect, acked),
    ];
    while (acked.succeeded.size < 10 || acked.reported.size < 10) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }

    server.child.kill("SIGTERM");
    const exit = await server.exited;
    const ended = await Promise.all(traffic);

    expect(exit).toEqual({ code: 0, signal: null });
    expect(server.log.at(-1)?.msg).toBe("decky-lifecycle stopped");
    expect(await watchEnd).toMatch(
      /^14: the server is shutting down; resume from revision \d+$/,
    );
    expect(await idleStream).toBe(
      "14: the server is shutting down; open a new stream and send unacknowledged deltas again",
    );
    // Each client was refused once the server stopped taking calls. An
    // HTTP/1.1 call sent on a kept-alive connection at the instant the server
    // closed it, idle, never reached the server; its client sees the
    // connection drop. An HTTP/2 stream that a client busy elsewhere opened
    // after the final GOAWAY is refused unprocessed (REFUSED_STREAM), which
    // connect-node reports as INTERNAL.
    const [grpcRunner, connectRunner, grpcWorker, connectWorker] = ended;
    const refusedHttp2 =
      /^(14: |13: Stream closed with error code NGHTTP2_REFUSED_STREAM$)/;
    expect([grpcRunner, grpcWorker]).toEqual([
      expect.stringMatching(refusedHttp2),
      expect.stringMatching(refusedHttp2),
    ]);
    expect([connectRunner, connectWorker]).toEqual([
      expect.stringMatching(/^(14: |10: socket hang up$)/),
      expect.stringMatching(/^(14: |10: socket hang up$)/),
    ]);

    const fresh = await startTestServer(database);
    try {
      const rows = new Map<string, Status>();
      const ids = [...acked.accepted];
      for (let at = 0; at < ids.length; at += 200) {
        const page = await fresh.grpc.list({
          ids: ids.slice(at, at + 200),
          pageSize: 200,
        });
        for (const row of page.rows) rows.set(row.id, row.status);
      }
      expect([...acked.accepted].filter((id) => !rows.has(id))).toEqual([]);
      expect(
        [...acked.reported].filter((id) => rows.get(id) !== Status.RUNNING),
      ).toEqual([]);
      expect(
        [...acked.succeeded].filter((id) => rows.get(id) !== Status.SUCCEEDED),
      ).toEqual([]);
    } finally {
      await fresh.close();
    }
  },
  PROCESS_TIMEOUT_MS,
);

test.skipIf(!process.env.TEST_DATABASE_URL)(
  "a stop that a sweep stuck in the database holds up past SHUTDOWN_DEADLINE_MS exits with status 1, saying so (needs TEST_DATABASE_URL: only another session on a real PostgreSQL can hold the sweep up)",
  async () => {
    const server = start({
      SHUTDOWN_DEADLINE_MS: "1000",
      SWEEP_INTERVAL_MS: "50",
    });
    await server.servingUrl();
    // Unlike a call's statements, the sweeper's are not cancelled at stop.
    const counter = await holdRevisionCounter(database.url!);
    try {
      await counter.waitForWaiters(1);

      server.child.kill("SIGTERM");
      const exit = await server.exited;

      expect(exit).toEqual({ code: 1, signal: null });
      expect(server.log.at(-1)).toMatchObject({
        level: 50,
        msg: "could not stop within SHUTDOWN_DEADLINE_MS; exiting anyway",
        shutdownDeadlineMs: 1000,
      });
    } finally {
      await counter.end();
    }
  },
  PROCESS_TIMEOUT_MS,
);

test.skipIf(!process.env.TEST_DATABASE_URL).each([
  ["gRPC over HTTP/2", createGrpcTransport],
  [
    "the Connect protocol over HTTP/1.1",
    (options: { baseUrl: string }) =>
      createConnectTransport({ ...options, httpVersion: "1.1" }),
  ],
] as const)(
  "an Accept (%s) that waits in the database when SIGTERM arrives is answered OK, the process exits 0, and the row it created is in the database (needs TEST_DATABASE_URL: only another session on a real PostgreSQL can hold the call in flight)",
  async (_protocol, transport) => {
    const server = start({ SWEEP_INTERVAL_MS: QUIET_SWEEPER_MS });
    const client = createClient(
      LifecycleService,
      transport({ baseUrl: await server.servingUrl() }),
    );
    const name = deckyName("in-flight");
    const counter = await holdRevisionCounter(database.url!);
    try {
      const accepting = client.accept({
        operation: Operation.DEPLOY,
        targets: [{ deckyName: name }],
      });
      await counter.waitForWaiters(1);

      server.child.kill("SIGTERM");
      await server.logged("stopping");
      await sleep(RELEASE_AFTER_STOP_MS);
      await counter.release();
      const accepted = await accepting;
      const exit = await server.exited;

      expect(exit).toEqual({ code: 0, signal: null });
      expect(server.log.at(-1)?.msg).toBe("decky-lifecycle stopped");
      const [row] = accepted.rows;
      expect(accepted.rows).toEqual([
        create(LifecycleSchema, {
          id: accepted.lifecycleIds[0]!,
          deckyName: name,
          operation: Operation.DEPLOY,
          status: Status.PENDING,
          startedAt: row!.startedAt!,
          updatedAt: row!.startedAt!,
          revision: row!.revision,
        }),
      ]);
      expect(await storedRows(accepted.lifecycleIds)).toEqual(accepted.rows);
    } finally {
      await counter.end();
    }
  },
  PROCESS_TIMEOUT_MS,
);

test.skipIf(!process.env.TEST_DATABASE_URL)(
  "a Heartbeat message that waits in the database when SIGTERM arrives is applied, though its stream ends with UNAVAILABLE and the process exits 0 (needs TEST_DATABASE_URL: only another session on a real PostgreSQL can hold the message in flight)",
  async () => {
    const server = start({ SWEEP_INTERVAL_MS: QUIET_SWEEPER_MS });
    const client = createClient(
      LifecycleService,
      createGrpcTransport({ baseUrl: await server.servingUrl() }),
    );
    const host = randomUUID();
    const name = deckyName("in-flight");
    const accepted = await client.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name, hostUuid: host }],
    });
    const id = accepted.lifecycleIds[0]!;
    const counter = await holdRevisionCounter(database.url!);
    try {
      // The worker keeps its stream open after its one message.
      const stream = outcomeOf(
        client.heartbeat(
          (async function* () {
            yield create(HeartbeatRequestSchema, {
              hostUuid: host,
              agentVersion: "test-agent/1.0",
              deltas: [
                {
                  deckyName: name,
                  operation: Operation.DEPLOY,
                  status: Status.RUNNING,
                  lifecycleId: id,
                },
              ],
            });
            await new Promise(() => {});
          })(),
        ),
      );
      await counter.waitForWaiters(1);

      server.child.kill("SIGTERM");
      await server.logged("stopping");
      await sleep(RELEASE_AFTER_STOP_MS);
      await counter.release();
      const exit = await server.exited;

      expect(exit).toEqual({ code: 0, signal: null });
      expect(server.log.at(-1)?.msg).toBe("decky-lifecycle stopped");
      expect(await stream).toBe(
        "14: the server is shutting down; open a new stream and send unacknowledged deltas again",
      );
      const [stored] = await storedRows([id]);
      expect(stored).toEqual(
        create(LifecycleSchema, {
          id,
          deckyName: name,
          hostUuid: host,
          operation: Operation.DEPLOY,
          status: Status.RUNNING,
          startedAt: accepted.rows[0]!.startedAt!,
          updatedAt: stored!.updatedAt!,
          revision: accepted.rows[0]!.revision + 1n,
        }),
      );
    } finally {
      await counter.end();
    }
  },
  PROCESS_TIMEOUT_MS,
);

test(
  "SIGINT stops the server as SIGTERM does: an open Watch stream ends with UNAVAILABLE naming its revision, the last line logged is decky-lifecycle stopped, and the process exits 0",
  async () => {
    const server = start();
    const client = createClient(
      LifecycleService,
      createGrpcTransport({ baseUrl: await server.servingUrl() }),
    );
    const watch = client.watch({})[Symbol.asyncIterator]();
    let snapshotEnd: WatchResponse | undefined;
    while (snapshotEnd === undefined) {
      const { value } = await watch.next();
      if (value?.kind === WatchResponse_Kind.SNAPSHOT_END) snapshotEnd = value;
    }
    const watchEnd = outcomeOf(
      (async () => {
        for (;;) if ((await watch.next()).done) return;
      })(),
    );

    server.child.kill("SIGINT");
    const exit = await server.exited;

    expect(exit).toEqual({ code: 0, signal: null });
    expect(server.log.find((line) => line.msg === "stopping")).toMatchObject({
      signal: "SIGINT",
    });
    expect(server.log.at(-1)?.msg).toBe("decky-lifecycle stopped");
    expect(await watchEnd).toBe(
      `14: the server is shutting down; resume from revision ${snapshotEnd.revision}`,
    );
  },
  PROCESS_TIMEOUT_MS,
);
