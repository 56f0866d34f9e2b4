import {
  type Client,
  Code,
  ConnectError,
  createClient,
} from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
} from "@connectrpc/connect-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, test, vi } from "vitest";
import {
  LifecycleService,
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { loadSettings } from "../../src/config/settings.js";
import {
  type RunningServer,
  startServer,
} from "../../src/server/start-server.js";
import { LockingSessions } from "../support/pg-sessions.js";
import {
  createTestDatabase,
  deckyName,
  type TestDatabase,
} from "../support/test-server.js";

/** One line the server logged. */
interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly method?: string;
}

const PINO_WARN = 40;

let database: TestDatabase;
let server: RunningServer;
let grpc: Client<typeof LifecycleService>;
let connect: Client<typeof LifecycleService>;
const logged: LogLine[] = [];

beforeAll(async () => {
  database = await createTestDatabase();
  const settings = loadSettings({
    PORT: "0",
    HOST: "127.0.0.1",
    LOG_LEVEL: "debug",
    ...database.env,
  });
  const logger = pino(
    { level: settings.logLevel },
    { write: (line: string) => logged.push(JSON.parse(line) as LogLine) },
  );
  server = await startServer(settings, logger);
  grpc = createClient(
    LifecycleService,
    createGrpcTransport({ baseUrl: server.url }),
  );
  // HTTP/1.1, as a browser calls; closing the tab closes the connection.
  connect = createClient(
    LifecycleService,
    createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
  );
});

afterAll(async () => {
  await server?.close();
  await database?.drop();
});

/** The error a call failed with; fails the test if the call succeeded. */
async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call succeeded but was expected to fail");
}

/** Reads a stream to its end; the error it ended with, if any. */
async function endOf(stream: AsyncIterable<unknown>): Promise<unknown> {
  try {
    for await (const _ of stream);
    return "ended";
  } catch (error) {
    return ConnectError.from(error);
  }
}

/** Lines logged at warn or above since `from`, the index of a line. */
function warningsSince(from: number): LogLine[] {
  return logged.slice(from).filter((line) => line.level >= PINO_WARN);
}

/** The server's pool: connections lent out, and calls waiting for one. */
function poolUse() {
  const pool = server.orm.em.getKnex().client.pool as {
    numUsed(): number;
    numPendingAcquires(): number;
  };
  return { used: pool.numUsed(), waiting: pool.numPendingAcquires() };
}

/** `count` Lists at once of the rows of decky `name`; all must succeed. */
async function concurrentLists(name: string, count: number) {
  const responses = await Promise.all(
    Array.from({ length: count }, () => grpc.list({ deckyName: name })),
  );
  return responses.map((response) =>
    response.rows.map((row) => [row.deckyName, row.status]),
  );
}

describe.skipIf(!process.env.TEST_DATABASE_URL)(
  "on PostgreSQL (the embedded database has one connection, so nothing there can hold a lock that a statement waits for)",
  () => {
    let sessions: LockingSessions;
    let seeded: string;

    beforeAll(async () => {
      sessions = await LockingSessions.open(database.url!);
      seeded = deckyName("seeded");
      await grpc.accept({
        operation: Operation.DEPLOY,
        targets: [{ deckyName: seeded }],
      });
    });

    afterAll(async () => {
      await sessions?.close();
    });

    /** Holds an ACCESS EXCLUSIVE lock on decky_lifecycle until `release`. */
    async function lockRows() {
      const { locker } = sessions;
      await locker.query("begin");
      await locker.query("lock table decky_lifecycle in access exclusive mode");
      return { release: () => locker.query("commit") };
    }

    /**
     * Waits until every backend of the server is idle, outside any
     * transaction, while the locker still holds its lock.
     */
    async function untilServerIdleUnderLock() {
      await sessions.untilServerIdle();
      const { rows } = await sessions.observer.query(
        `select count(*)::int as held from pg_locks
         where pid = $1 and mode = 'AccessExclusiveLock' and granted`,
        [sessions.lockerPid],
      );
      expect(rows).toEqual([{ held: 1 }]);
    }

    /** After the lock is gone: the server answers calls with its whole pool. */
    async function expectServesNormally() {
      expect(await concurrentLists(seeded, 30)).toEqual(
        Array.from({ length: 30 }, () => [[seeded, Status.PENDING]]),
      );
      expect(poolUse()).toEqual({ used: 0, waiting: 0 });
    }

    test("a List whose deadline passes while its statement waits for a lock ends DEADLINE_EXCEEDED, and the statement is cancelled before the lock is released", async () => {
      const from = logged.length;
      const lock = await lockRows();
      try {
        const call = failure(grpc.list({}, { timeoutMs: 1_000 }));
        await sessions.untilServerWaitsForLock();
        expect(await call).toMatchObject({ code: Code.DeadlineExceeded });
        await untilServerIdleUnderLock();
      } finally {
        await lock.release();
      }

      await expectServesNormally();
      expect(warningsSince(from)).toEqual([]);
      expect(logged.slice(from)).toContainEqual(
        expect.objectContaining({
          level: 20,
          method: "List",
          msg: "call ended by the client",
        }),
      );
    });

    test("a List that the client aborts while its statement waits for a lock ends CANCELED, and the statement is cancelled before the lock is released", async () => {
      const from = logged.length;
      const lock = await lockRows();
      try {
        const abort = new AbortController();
        const call = failure(connect.list({}, { signal: abort.signal }));
        await sessions.untilServerWaitsForLock();
        abort.abort();
        expect(await call).toMatchObject({ code: Code.Canceled });
        await untilServerIdleUnderLock();
      } finally {
        await lock.release();
      }

      await expectServesNormally();
      expect(warningsSince(from)).toEqual([]);
    });

    test("a Watch whose deadline passes while its snapshot waits for a lock ends DEADLINE_EXCEEDED, and the snapshot's transaction is cancelled before the lock is released", async () => {
      const from = logged.length;
      const lock = await lockRows();
      try {
        const stream = endOf(grpc.watch({}, { timeoutMs: 1_000 }));
        await sessions.untilServerWaitsForLock();
        expect(await stream).toMatchObject({ code: Code.DeadlineExceeded });
        await untilServerIdleUnderLock();
      } finally {
        await lock.release();
      }

      await expectServesNormally();
      expect(warningsSince(from)).toEqual([]);
    });

    test("a Watch that the client aborts while its snapshot waits for a lock ends CANCELED, and the snapshot's transaction is cancelled before the lock is released", async () => {
      const from = logged.length;
      const lock = await lockRows();
      try {
        const abort = new AbortController();
        const stream = endOf(connect.watch({}, { signal: abort.signal }));
        await sessions.untilServerWaitsForLock();
        abort.abort();
        expect(await stream).toMatchObject({ code: Code.Canceled });
        await untilServerIdleUnderLock();
      } finally {
        await lock.release();
      }

      await expectServesNormally();
      expect(warningsSince(from)).toEqual([]);
    });

    test("an Accept that the client aborts while its insert waits for a lock ends CANCELED, writes nothing and holds no lock", async () => {
      const from = logged.length;
      const name = deckyName("aborted");
      const lock = await lockRows();
      try {
        const abort = new AbortController();
        const call = failure(
          connect.accept(
            { operation: Operation.DEPLOY, targets: [{ deckyName: name }] },
            { signal: abort.signal },
          ),
        );
        await sessions.untilServerWaitsForLock();
        abort.abort();
        expect(await call).toMatchObject({ code: Code.Canceled });
        await untilServerIdleUnderLock();
      } finally {
        await lock.release();
      }

      expect((await grpc.list({ deckyName: name })).rows).toEqual([]);
      const accepted = await grpc.accept({
        operation: Operation.DEPLOY,
        targets: [{ deckyName: name }],
      });
      expect(accepted.rows.map((row) => [row.deckyName, row.status])).toEqual([
        [name, Status.PENDING],
      ]);
      await expectServesNormally();
      expect(warningsSince(from)).toEqual([]);
    });
  },
);

test("Lists and Watches aborted at any point end CANCELED or complete, calls running beside them all succeed, and the server then answers every call with its whole pool", async () => {
  const from = logged.length;
  const name = deckyName("abort-points");
  await grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
  });

  // Calls at once, each aborted a millisecond later than the one before:
  // before the server has seen it, while it waits for a connection (the
  // embedded database has one), while its statement runs, or once done.
  const aborted = Array.from({ length: 60 }, async (_, i) => {
    const abort = new AbortController();
    setTimeout(() => abort.abort(), i);
    const client = i % 2 === 0 ? grpc : connect;
    if (i % 3 === 0) {
      const end = await endOf(
        client.watch({ deckyName: name }, { signal: abort.signal }),
      );
      return ["Watch", end instanceof ConnectError ? Code[end.code] : end];
    }
    try {
      await client.list({ deckyName: name }, { signal: abort.signal });
      return ["List", "OK"];
    } catch (error) {
      return ["List", Code[ConnectError.from(error).code]];
    }
  });
  const beside = concurrentLists(name, 30);

  expect(
    (await Promise.all(aborted)).filter(
      ([method, outcome]) =>
        outcome !== "Canceled" && !(method === "List" && outcome === "OK"),
    ),
  ).toEqual([]);
  expect(await beside).toEqual(
    Array.from({ length: 30 }, () => [[name, Status.PENDING]]),
  );
  expect(await concurrentLists(name, 20)).toEqual(
    Array.from({ length: 20 }, () => [[name, Status.PENDING]]),
  );
  // A cancelled statement's connection goes back to the pool once the
  // statement has ended on the server, which can be after its client saw
  // CANCELED.
  await vi.waitFor(() => expect(poolUse()).toEqual({ used: 0, waiting: 0 }), {
    timeout: 5_000,
    interval: 20,
  });
  expect(warningsSince(from)).toEqual([]);
});
