import { randomUUID } from "node:crypto";
import { setMaxListeners } from "node:events";
import { readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Client, createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  type HeartbeatRequestSchema,
  type HeartbeatResponse,
  LifecycleService,
  Operation,
  Status,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { AsyncQueue } from "../../src/worker/async-queue.js";
import {
  type ServerProcess,
  spawnServer,
  stopProcess,
} from "../support/server-process.js";
import {
  createTestDatabase,
  type TestDatabase,
} from "../support/test-server.js";

// The load test: many worker hosts streaming heartbeats while many watchers
// follow the rows, against a server in its own process on real PostgreSQL.
// LOAD_DURATION_MS shortens or lengthens the traffic phase.
const DURATION_MS = Number(process.env.LOAD_DURATION_MS ?? 60_000);
const WORKERS = 200;
const WATCHERS = 500;
/** Watchers with no filter, who see every row; the rest watch one host. */
const GLOBAL_WATCHERS = 20;
/** HTTP/2 connections the clients share, like a fleet behind a few proxies. */
const CONNECTIONS = 10;
/** A worker closes its stream and opens a new one after this many rows. */
const ROWS_PER_STREAM = 4;
/** How long a worker's simulated operation takes: between 1 and 5 s. */
const WORK_MS = { min: 1_000, max: 5_000 };
const SAMPLE_EVERY_MS = 5_000;

type HeartbeatInit = MessageInitShape<typeof HeartbeatRequestSchema>;

interface ExpectedRow {
  readonly hostUuid: string;
  readonly status: Status;
  readonly error: string | undefined;
}

/** A watcher's view: every row it has seen, with its latest state. */
interface WatcherView {
  readonly hostUuid: string | undefined;
  readonly rows: Map<string, { status: Status; error: string | undefined }>;
  cursor: bigint;
  /** Whether the initial snapshot has been received. */
  ready: boolean;
  failure: unknown;
  readonly done: Promise<void>;
}

const hasPostgres = Boolean(process.env.TEST_DATABASE_URL);

describe.skipIf(!hasPostgres)(
  "load on PostgreSQL (runs when TEST_DATABASE_URL is set)",
  () => {
    let database: TestDatabase;
    let server: ServerProcess;
    let transports: Transport[];
    let clients: Client<typeof LifecycleService>[];

    beforeAll(async () => {
      database = await createTestDatabase();
      server = spawnServer({
        ...database.env,
        PORT: "0",
        LOG_LEVEL: "info",
        KEEPALIVE_INTERVAL_MS: "1000",
      });
      const url = await server.servingUrl();
      transports = Array.from({ length: CONNECTIONS }, () =>
        createGrpcTransport({ baseUrl: url }),
      );
      clients = transports.map((transport) =>
        createClient(LifecycleService, transport),
      );
    });

    afterAll(async () => {
      if (server) await stopProcess(server.child);
      // What the server warned of, to explain a failure.
      const warnings = server?.log.filter((line) => line.level >= 40) ?? [];
      for (const line of warnings.slice(0, 20)) console.warn(line);
      await database?.drop();
    });

    test(`${WORKERS} worker streams and ${WATCHERS} watchers: no error, no lost delta, every watcher ends with the final states, memory flat`, {
      timeout: DURATION_MS + 180_000,
    }, async () => {
      const hosts = Array.from({ length: WORKERS }, () => randomUUID());
      const expected = new Map<string, ExpectedRow>();
      const stop = new AbortController();
      setMaxListeners(0, stop.signal);

      const watchers = Array.from({ length: WATCHERS }, (_, index) =>
        watch(
          clients[index % CONNECTIONS]!,
          index < GLOBAL_WATCHERS ? undefined : hosts[index % WORKERS],
          stop.signal,
        ),
      );
      await waitFor("every watcher's snapshot", () =>
        watchers.every((view) => view.ready || view.failure !== undefined),
      );
      expect(watchers.map((view) => String(view.failure ?? "ready"))).toEqual(
        watchers.map(() => "ready"),
      );

      const memory: number[] = [];
      const sampler = setInterval(() => {
        void residentBytes(server.child.pid!).then((bytes) =>
          memory.push(bytes),
        );
      }, SAMPLE_EVERY_MS);

      const deadline = Date.now() + DURATION_MS;
      const workers = hosts.map((hostUuid, index) =>
        runWorker(clients[index % CONNECTIONS]!, hostUuid, deadline, expected),
      );
      const sent = (await Promise.all(workers)).reduce(
        (total, worker) => ({
          deltas: total.deltas + worker.deltas,
          applied: total.applied + worker.applied,
          notApplied: total.notApplied + worker.notApplied,
        }),
        { deltas: 0, applied: 0, notApplied: 0 },
      );
      clearInterval(sampler);

      // Every delta was applied, once, and nothing else happened.
      expect(sent.deltas).toBe(expected.size * 2);
      expect(sent.applied).toBe(sent.deltas);
      expect(sent.notApplied).toBe(0);
      expect(expected.size).toBeGreaterThan(WORKERS);

      const stored = await storedRows(database.url!);
      expect(stored.rows).toEqual(
        new Map(
          [...expected].map(([id, row]) => [
            id,
            { status: row.status, error: row.error },
          ]),
        ),
      );
      expect(stored.changesPerRow).toEqual(new Set([3]));

      // Every watcher has caught up with the last revision and holds the
      // final state of exactly the rows it watches.
      await waitFor("every watcher to reach the last revision", () =>
        watchers.every(
          (view) => view.failure !== undefined || view.cursor >= stored.last,
        ),
      );
      stop.abort();
      await Promise.all(watchers.map((view) => view.done));
      for (const view of watchers) {
        expect(view.failure).toBeUndefined();
        expect(view.rows).toEqual(
          new Map(
            [...expected]
              .filter(
                ([, row]) =>
                  view.hostUuid === undefined || row.hostUuid === view.hostUuid,
              )
              .map(([id, row]) => [
                id,
                { status: row.status, error: row.error },
              ]),
          ),
        );
      }

      // Memory: the server's resident size at the end of the traffic is
      // within a generous factor of its size once warmed up; a leak per
      // row, delta or stream would grow it without bound.
      const warm = memory[Math.min(2, memory.length - 1)]!;
      const last = memory.at(-1)!;
      console.info(
        `load: ${expected.size} rows, ${sent.deltas} deltas, server RSS MiB per ${SAMPLE_EVERY_MS / 1000} s: ${memory.map((bytes) => Math.round(bytes / 2 ** 20)).join(" ")}`,
      );
      expect(memory.length).toBeGreaterThanOrEqual(3);
      expect(last).toBeLessThan(warm * 1.5);

      // The server warned of nothing and failed nothing under the load.
      expect(
        server.log
          .filter((line) => line.level >= 40)
          .map(({ level, msg }) => ({ level, msg })),
      ).toEqual([]);
    });
  },
);

/**
 * One worker host: accepts a row for itself, runs it (RUNNING, then
 * SUCCEEDED or FAILED after a while) and reports over its Heartbeat stream,
 * opening a new stream every few rows, until `deadline`.
 */
async function runWorker(
  client: Client<typeof LifecycleService>,
  hostUuid: string,
  deadline: number,
  expected: Map<string, ExpectedRow>,
): Promise<{ deltas: number; applied: number; notApplied: number }> {
  const totals = { deltas: 0, applied: 0, notApplied: 0 };
  let row = 0;
  while (Date.now() < deadline) {
    const stream = new AsyncQueue<HeartbeatInit>();
    const response: Promise<HeartbeatResponse> = client.heartbeat(stream);
    // Observed at once: if this worker fails, the test reports that failure,
    // not the stream's.
    response.catch(() => undefined);
    let deltasInStream = 0;
    try {
      for (let n = 0; n < ROWS_PER_STREAM && Date.now() < deadline; n++) {
        const deckyName = `load-${hostUuid.slice(0, 8)}-${row++}`;
        const { lifecycleIds } = await client.accept({
          operation: Operation.DEPLOY,
          targets: [{ deckyName, hostUuid }],
        });
        const lifecycleId = lifecycleIds[0]!;
        const operation = Operation.DEPLOY;
        stream.push({
          hostUuid,
          agentVersion: "load/1",
          deltas: [
            { deckyName, operation, status: Status.RUNNING, lifecycleId },
          ],
        });
        await sleep(WORK_MS.min + Math.random() * (WORK_MS.max - WORK_MS.min));
        const failed = Math.random() < 0.2;
        const error = failed ? `decky ${deckyName} did not boot` : undefined;
        stream.push({
          hostUuid,
          agentVersion: "load/1",
          deltas: [
            {
              deckyName,
              operation,
              status: failed ? Status.FAILED : Status.SUCCEEDED,
              lifecycleId,
              ...(error === undefined ? {} : { error }),
            },
          ],
        });
        expected.set(lifecycleId, {
          hostUuid,
          status: failed ? Status.FAILED : Status.SUCCEEDED,
          error,
        });
        deltasInStream += 2;
      }
    } finally {
      stream.close();
    }
    const result = await response;
    totals.deltas += deltasInStream;
    totals.applied += result.applied;
    totals.notApplied += result.outcomes.length;
  }
  return totals;
}

/** Follows the rows of `hostUuid` (or every row) until `signal` aborts. */
function watch(
  client: Client<typeof LifecycleService>,
  hostUuid: string | undefined,
  signal: AbortSignal,
): WatcherView {
  const view: Omit<WatcherView, "done"> = {
    hostUuid,
    rows: new Map(),
    cursor: 0n,
    ready: false,
    failure: undefined,
  };
  const done = (async () => {
    try {
      for await (const message of client.watch(
        hostUuid === undefined ? {} : { hostUuid },
        { signal },
      )) {
        if (
          message.row &&
          (message.kind === WatchResponse_Kind.SNAPSHOT ||
            message.kind === WatchResponse_Kind.CHANGE)
        ) {
          view.rows.set(message.row.id, {
            status: message.row.status,
            error: message.row.error,
          });
        }
        if (message.kind === WatchResponse_Kind.SNAPSHOT_END) view.ready = true;
        view.cursor = message.revision;
      }
    } catch (error) {
      if (!signal.aborted) view.failure = error;
    }
  })();
  return Object.assign(view, { done });
}

/** Every row as stored, the number of changes each got, the last revision. */
async function storedRows(url: string) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const rows = await client.query<{
      id: string;
      status: string;
      error: string | null;
      changes: string;
    }>(
      `select l.id, l.status, l.error, count(c.revision) as changes
       from decky_lifecycle l join lifecycle_change c on c.lifecycle_id = l.id
       group by l.id`,
    );
    const last = await client.query<{ value: string }>(
      "select value from lifecycle_revision",
    );
    return {
      rows: new Map(
        rows.rows.map((row) => [
          row.id,
          {
            status: STORED_STATUS[row.status] ?? Status.UNSPECIFIED,
            error: row.error ?? undefined,
          },
        ]),
      ),
      changesPerRow: new Set(rows.rows.map((row) => Number(row.changes))),
      last: BigInt(last.rows[0]!.value),
    };
  } finally {
    await client.end();
  }
}

const STORED_STATUS: Record<string, Status> = {
  pending: Status.PENDING,
  running: Status.RUNNING,
  succeeded: Status.SUCCEEDED,
  failed: Status.FAILED,
};

/** The resident set size of process `pid`, from /proc. */
async function residentBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kib = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1];
  return Number(kib) * 1024;
}

/** Waits until `condition` holds; fails, naming `what`, after a minute. */
async function waitFor(what: string, condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting: ${what}`);
    await sleep(100);
  }
}
