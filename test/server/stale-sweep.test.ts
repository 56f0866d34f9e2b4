import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import type { MikroORM } from "@mikro-orm/postgresql";
import { pino } from "pino";
import { afterAll, afterEach, beforeAll, expect, test } from "vitest";
import {
  type Lifecycle,
  LifecycleSchema,
  Operation,
  Status,
  type WatchResponse,
  WatchResponse_Kind,
  WatchResponseSchema,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { openOrm } from "../../src/storage/orm.js";
import { query } from "../../src/storage/sql.js";
import { failStaleRows } from "../../src/storage/sweeps.js";
import { inWriteTransaction } from "../../src/storage/write-transaction.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

const HOUR_MS = 3600 * 1000;
// Starting the embedded database again takes seconds on a loaded machine.
const RESTART_TIMEOUT_MS = 180_000;
/** Long enough that no timed sweep runs while a test arranges its rows. */
const NEVER_MS = "2147483647";

let database: TestDatabase;
const servers: TestServer[] = [];
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  database = await createTestDatabase();
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
  for (const server of servers.splice(0)) await server.close();
});

afterAll(async () => {
  await database?.drop();
});

async function start(env: Record<string, string>): Promise<TestServer> {
  const server = await startTestServer(database, env);
  servers.push(server);
  return server;
}

async function stop(server: TestServer): Promise<void> {
  servers.splice(servers.indexOf(server), 1);
  await server.close();
}

/** Accepts one PENDING row per name, on a host of its own, in one call. */
async function acceptRows(
  server: TestServer,
  count: number,
): Promise<Lifecycle[]> {
  const { rows } = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: Array.from({ length: count }, () => ({
      deckyName: deckyName(),
      hostUuid: randomUUID(),
    })),
  });
  return rows;
}

/** Moves the rows' times back by `ms`, as if they had been open that long. */
async function age(
  server: TestServer,
  rows: readonly Lifecycle[],
  ms: number,
): Promise<void> {
  await query(
    server.server.orm.em.fork(),
    `update decky_lifecycle
     set started_at = started_at - ? * interval '1 millisecond',
         updated_at = updated_at - ? * interval '1 millisecond'
     where id = any(?::uuid[])`,
    [ms, ms, rows.map((row) => row.id)],
  );
}

/** The rows as stored, in the order of `ids`; List takes 200 ids a call. */
async function stored(
  server: TestServer,
  ids: readonly string[],
): Promise<Lifecycle[]> {
  const byId = new Map<string, Lifecycle>();
  for (let start = 0; start < ids.length; start += 200) {
    const page = await server.grpc.list({
      ids: ids.slice(start, start + 200),
      pageSize: 200,
    });
    for (const row of page.rows) byId.set(row.id, row);
  }
  return ids.map((id) => byId.get(id)!);
}

/** How many FAILED changes the change log holds for each of `ids`. */
async function failedChanges(
  server: TestServer,
  ids: readonly string[],
): Promise<number[]> {
  const rows = await query(
    server.server.orm.em.fork(),
    `select lifecycle_id, count(*) as count from lifecycle_change
     where status = 'failed' and lifecycle_id = any(?::uuid[])
     group by lifecycle_id`,
    [[...ids]],
  );
  const counts = new Map(
    rows.map((row) => [row.lifecycle_id as string, Number(row.count)]),
  );
  return ids.map((id) => counts.get(id) ?? 0);
}

function millis(timestamp: Timestamp | undefined): number {
  return timestampDate(timestamp!).getTime();
}

/** `row` as the sweep leaves it: FAILED with `error`, at its updated_at. */
function swept(row: Lifecycle, after: Lifecycle, error: string): Lifecycle {
  return create(LifecycleSchema, {
    id: row.id,
    deckyName: row.deckyName,
    hostUuid: row.hostUuid!,
    operation: row.operation,
    status: Status.FAILED,
    error,
    startedAt: row.startedAt!,
    updatedAt: after.updatedAt!,
    completedAt: after.updatedAt!,
    revision: after.revision,
  });
}

test(
  "start-up fails open rows with no change for STALE_AFTER_MS and leaves newer ones open",
  async () => {
    const first = await start({ SWEEP_INTERVAL_MS: NEVER_MS });
    const [pending, running, fresh] = await acceptRows(first, 3);
    await first.grpc.report({
      lifecycleId: running!.id,
      status: Status.RUNNING,
    });
    await age(first, [pending!, running!], 2 * HOUR_MS);
    const [agedPending, agedRunning] = await stored(first, [
      pending!.id,
      running!.id,
    ]);
    await stop(first);

    const server = await start({ SWEEP_INTERVAL_MS: NEVER_MS });

    const [afterPending, afterRunning, afterFresh] = await stored(server, [
      pending!.id,
      running!.id,
      fresh!.id,
    ]);
    const error = "no progress for 1h; the runner was lost";
    expect(afterPending).toEqual(swept(agedPending!, afterPending!, error));
    expect(afterRunning).toEqual(swept(agedRunning!, afterRunning!, error));
    expect(afterFresh).toEqual(fresh);
    expect(afterRunning!.revision).toBe(afterPending!.revision + 1n);
    expect(afterPending!.revision).toBeGreaterThan(agedRunning!.revision);
    expect(await failedChanges(server, [pending!.id, running!.id])).toEqual([
      1, 1,
    ]);
  },
  RESTART_TIMEOUT_MS,
);

test(
  "start-up fails stale rows beyond one batch of the sweep",
  async () => {
    const first = await start({ SWEEP_INTERVAL_MS: NEVER_MS });
    const rows = [
      ...(await acceptRows(first, 500)),
      ...(await acceptRows(first, 500)),
      ...(await acceptRows(first, 7)),
    ];
    await age(first, rows, 2 * HOUR_MS);
    await stop(first);

    const server = await start({ SWEEP_INTERVAL_MS: NEVER_MS });

    const after = await stored(
      server,
      rows.map((row) => row.id),
    );
    expect(after.map((row) => row.status)).toEqual(
      rows.map(() => Status.FAILED),
    );
    const revisions = after
      .map((row) => row.revision)
      .sort((a, b) => (a < b ? -1 : 1));
    expect(revisions.at(-1)! - revisions[0]!).toBe(BigInt(rows.length - 1));
    expect(
      new Set(
        await failedChanges(
          server,
          rows.map((row) => row.id),
        ),
      ),
    ).toEqual(new Set([1]));
  },
  RESTART_TIMEOUT_MS,
);

test(
  "the timed sweep fails a row with no progress, and a watcher sees the change with its revision",
  async () => {
    const server = await start({
      STALE_AFTER_MS: "300",
      SWEEP_INTERVAL_MS: "50",
    });
    const hostUuid = randomUUID();
    const abort = new AbortController();
    cleanups.push(() => abort.abort());
    const stream = server.connect
      .watch({ hostUuid }, { signal: abort.signal })
      [Symbol.asyncIterator]();
    const next = async (): Promise<WatchResponse> => {
      for (;;) {
        const { value, done } = await stream.next();
        if (done) throw new Error("the Watch stream ended");
        if (value.kind !== WatchResponse_Kind.KEEPALIVE) return value;
      }
    };
    expect((await next()).kind).toBe(WatchResponse_Kind.SNAPSHOT_END);

    const { rows } = await server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: deckyName(), hostUuid }],
    });
    const row = rows[0]!;
    const accepted = await next();
    const change = await next();

    expect(accepted).toEqual(
      create(WatchResponseSchema, {
        kind: WatchResponse_Kind.CHANGE,
        row,
        revision: row.revision,
      }),
    );
    expect(change).toEqual(
      create(WatchResponseSchema, {
        kind: WatchResponse_Kind.CHANGE,
        row: swept(
          row,
          change.row!,
          "no progress for 300ms; the runner was lost",
        ),
        revision: change.row!.revision,
      }),
    );
    expect(change.revision).toBeGreaterThan(row.revision);
    expect(
      millis(change.row!.updatedAt) - millis(row.updatedAt),
    ).toBeGreaterThan(300);
    expect(await stored(server, [row.id])).toEqual([change.row]);
  },
  RESTART_TIMEOUT_MS,
);

test(
  "two sweepers racing on one database fail each stale row exactly once",
  async () => {
    const server = await start({ SWEEP_INTERVAL_MS: NEVER_MS });
    const rows = await acceptRows(server, 40);
    await age(server, rows, 2 * HOUR_MS);
    // Two ORM instances, as two replicas have. The embedded database serves
    // one connection, so there both sweepers share the server's.
    let other: MikroORM | undefined;
    if (database.url !== undefined) {
      other = await openOrm({ url: database.url }, pino({ level: "silent" }), {
        poolSize: 2,
        timeoutMs: 10_000,
      });
      const opened = other;
      cleanups.push(() => opened.close(true));
    }
    const orms = [server.server.orm, other ?? server.server.orm];

    const sweeps = await Promise.all(
      [...orms, ...orms].map((orm) =>
        inWriteTransaction(orm.em.fork(), (tx) =>
          failStaleRows(tx, HOUR_MS, 500),
        ),
      ),
    );

    const changes = sweeps.flatMap((sweep) => sweep.changes);
    expect(changes.map((change) => change.row.id).sort()).toEqual(
      rows.map((row) => row.id).sort(),
    );
    expect(new Set(changes.map((change) => change.revision)).size).toBe(40);
    expect(
      new Set(
        await failedChanges(
          server,
          rows.map((row) => row.id),
        ),
      ),
    ).toEqual(new Set([1]));
    const after = await stored(
      server,
      rows.map((row) => row.id),
    );
    expect(after.map((row) => row.error)).toEqual(
      rows.map(() => "no progress for 1h; the runner was lost"),
    );
  },
  RESTART_TIMEOUT_MS,
);

test.runIf(process.env.TEST_DATABASE_URL)(
  "two servers starting at once on one PostgreSQL database fail each stale row exactly once",
  async () => {
    const first = await start({ SWEEP_INTERVAL_MS: NEVER_MS });
    const rows = await acceptRows(first, 40);
    await age(first, rows, 2 * HOUR_MS);
    await stop(first);

    const [one, two] = await Promise.all([
      start({ SWEEP_INTERVAL_MS: NEVER_MS }),
      start({ SWEEP_INTERVAL_MS: NEVER_MS }),
    ]);

    const ids = rows.map((row) => row.id);
    expect(new Set(await failedChanges(one!, ids))).toEqual(new Set([1]));
    expect((await stored(two!, ids)).map((row) => row.status)).toEqual(
      rows.map(() => Status.FAILED),
    );
  },
  RESTART_TIMEOUT_MS,
);
