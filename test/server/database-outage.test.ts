import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  Operation,
  Status,
  type WatchResponse,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { AsyncQueue } from "../../src/worker/async-queue.js";
import { outcomeOf } from "../support/call-outcome.js";
import { TcpProxy } from "../support/tcp-proxy.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

/** Every call in this file carries this deadline, as a careful client's do. */
const DEADLINE_MS = 5000;
/** How long the database stays cut off during traffic. */
const OUTAGE_MS = 4000;
const UNAVAILABLE = "the database is unavailable; retry later";

const adminUrl = process.env.TEST_DATABASE_URL;

describe.skipIf(!adminUrl)(
  "database outage (needs TEST_DATABASE_URL: only a real PostgreSQL database can be cut off)",
  () => {
    let database: TestDatabase;
    let server: TestServer;
    let admin: pg.Client;
    let name: string;

    beforeAll(async () => {
      database = await createTestDatabase();
      server = await startTestServer(database);
      name = new URL(database.url!).pathname.slice(1);
      admin = new pg.Client({ connectionString: adminUrl });
      await admin.connect();
    });

    afterAll(async () => {
      await reconnect();
      await admin?.end();
      await server?.close();
      await database?.drop();
    });

    /**
     * Cuts the server off its database the way a crashed or unreachable
     * PostgreSQL would: new connections are refused and the open ones are
     * closed under it. The shared PostgreSQL server itself keeps running.
     */
    async function cutOff(): Promise<void> {
      await admin.query(`alter database ${name} allow_connections false`);
      await admin.query(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1",
        [name],
      );
    }

    async function reconnect(): Promise<void> {
      await admin?.query(`alter database ${name} allow_connections true`);
    }

    /** The error a call failed with, or undefined if it succeeded. */
    async function failureOf(call: Promise<unknown>) {
      try {
        await call;
        return undefined;
      } catch (error) {
        const { code, rawMessage } = ConnectError.from(error);
        return { code, rawMessage };
      }
    }

    /** The change log after `after` as (revision, id, status), oldest first. */
    async function changeLog(after: bigint) {
      const client = new pg.Client({ connectionString: database.url });
      await client.connect();
      try {
        const log = await client.query<{
          revision: string;
          lifecycle_id: string;
          status: string;
        }>(
          `select revision::text, lifecycle_id, status from lifecycle_change
           where revision > $1 order by lifecycle_change.revision`,
          [after.toString()],
        );
        return log.rows;
      } finally {
        await client.end();
      }
    }

    test("every RPC fails with UNAVAILABLE within its deadline while the database is cut off, and succeeds again once it is back, without a restart", async () => {
      const kept = await server.grpc.accept({
        operation: Operation.DEPLOY,
        targets: [{ deckyName: deckyName("kept") }],
      });
      const options = { timeoutMs: DEADLINE_MS };

      await cutOff();
      const failures = [
        await failureOf(
          server.grpc.accept(
            {
              operation: Operation.DEPLOY,
              targets: [{ deckyName: deckyName("refused") }],
            },
            options,
          ),
        ),
        await failureOf(
          server.connect.list({ ids: kept.lifecycleIds }, options),
        ),
        await failureOf(
          server.grpcWeb.report(
            { lifecycleId: kept.lifecycleIds[0]!, status: Status.RUNNING },
            options,
          ),
        ),
        await failureOf(
          (async () => {
            for await (const _ of server.grpc.watch({}, options));
          })(),
        ),
      ];
      await reconnect();

      expect(failures).toEqual(
        Array(4).fill({ code: Code.Unavailable, rawMessage: UNAVAILABLE }),
      );
      const listed = await server.grpc.list(
        { ids: kept.lifecycleIds },
        options,
      );
      expect(listed.rows).toEqual(kept.rows);
      const reported = await server.grpc.report(
        { lifecycleId: kept.lifecycleIds[0]!, status: Status.RUNNING },
        options,
      );
      expect(reported.row?.status).toBe(Status.RUNNING);
    });

    test("a Heartbeat message that cannot be applied ends its stream with UNAVAILABLE; sent again once the database is back, it is applied", async () => {
      const host = randomUUID();
      const accepted = await server.grpc.accept({
        operation: Operation.DEPLOY,
        targets: [{ deckyName: deckyName("beat"), hostUuid: host }],
      });
      const [row] = accepted.rows;
      const running = create(HeartbeatRequestSchema, {
        hostUuid: host,
        agentVersion: "test-agent/1.0",
        deltas: [
          {
            deckyName: row!.deckyName,
            operation: Operation.DEPLOY,
            status: Status.RUNNING,
            lifecycleId: row!.id,
          },
        ],
      });
      const queue = new AsyncQueue<HeartbeatRequest>();
      const stream = failureOf(server.grpc.heartbeat(queue));

      await cutOff();
      queue.push(running);
      const failure = await stream;
      queue.close();
      await reconnect();
      const unchanged = await server.grpc.list({ ids: [row!.id] });
      const resent = await server.grpc.heartbeat(
        (async function* () {
          yield running;
        })(),
      );
      const moved = await server.grpc.list({ ids: [row!.id] });

      expect(failure).toEqual({
        code: Code.Unavailable,
        rawMessage: UNAVAILABLE,
      });
      expect(unchanged.rows).toEqual([row]);
      expect(resent).toMatchObject({ messages: 1, applied: 1, outcomes: [] });
      expect(moved.rows[0]?.status).toBe(Status.RUNNING);
    });

    test("during traffic, an outage of several seconds fails calls with UNAVAILABLE only, ends an idle Watch with the revision to resume from, and a watcher resuming from it misses no change", async () => {
      // A watcher that follows every row from the start.
      const watch = server.grpc
        .watch({}, { timeoutMs: 120_000 })
        [Symbol.asyncIterator]();
      const seen: WatchResponse[] = [];
      let first: WatchResponse;
      do {
        first = (await watch.next()).value as WatchResponse;
      } while (first.kind !== WatchResponse_Kind.SNAPSHOT_END);
      const from = first.revision;
      const watchEnded = (async () => {
        try {
          for (;;) {
            const next = await watch.next();
            if (next.done) return undefined;
            if (next.value.kind !== WatchResponse_Kind.KEEPALIVE) {
              seen.push(next.value);
            }
          }
        } catch (error) {
          const { code, rawMessage } = ConnectError.from(error);
          return { code, rawMessage };
        }
      })();

      // Workers and runners keep calling throughout.
      let traffic = true;
      const failures = new Map<string, number>();
      let succeeded = 0;
      const calls = Array.from({ length: 4 }, async (_, worker) => {
        while (traffic) {
          const failure = await failureOf(
            (async () => {
              const { lifecycleIds } = await server.grpc.accept(
                {
                  operation: Operation.DEPLOY,
                  targets: [{ deckyName: deckyName(`traffic-${worker}`) }],
                },
                { timeoutMs: DEADLINE_MS },
              );
              await server.connect.report(
                { lifecycleId: lifecycleIds[0]!, status: Status.SUCCEEDED },
                { timeoutMs: DEADLINE_MS },
              );
            })(),
          );
          if (failure) {
            const key = `${Code[failure.code]}: ${failure.rawMessage}`;
            failures.set(key, (failures.get(key) ?? 0) + 1);
            await new Promise((resolve) => setTimeout(resolve, 50));
          } else {
            succeeded += 1;
          }
        }
      });
      const succeededBy = async (count: number) => {
        while (succeeded < count) {
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      };

      await succeededBy(20);
      await cutOff();
      const ended = await watchEnded;
      await new Promise((resolve) => setTimeout(resolve, OUTAGE_MS));
      const watchersDuringOutage = server.server.feed.subscribers;
      const succeededDuringOutage = succeeded;
      await reconnect();
      await succeededBy(succeededDuringOutage + 20);
      traffic = false;
      await Promise.all(calls);

      const last = seen.at(-1)?.revision ?? from;
      expect(ended).toEqual({
        code: Code.Unavailable,
        rawMessage: `the database is unavailable; resume from revision ${last}`,
      });
      expect(watchersDuringOutage).toBe(0);
      expect([...failures.keys()]).toEqual([`Unavailable: ${UNAVAILABLE}`]);

      // Resuming from the last revision received gives every change the
      // log holds after it, in order, and the changes before it were
      // all received on the first stream.
      const log = await changeLog(from);
      const newest = BigInt(log.at(-1)!.revision);
      const resumed = server.grpc
        .watch({ afterRevision: last }, { timeoutMs: 60_000 })
        [Symbol.asyncIterator]();
      for (;;) {
        const next = await resumed.next();
        if (next.done) break;
        if (next.value.kind === WatchResponse_Kind.KEEPALIVE) continue;
        seen.push(next.value);
        if (next.value.revision === newest) break;
      }
      await resumed.return?.();
      expect(
        seen.map((message) => ({
          kind: message.kind,
          revision: message.revision.toString(),
          lifecycle_id: message.row?.id,
          status: Status[message.row!.status].toLowerCase(),
        })),
      ).toEqual(
        log.map((change) => ({
          kind: WatchResponse_Kind.CHANGE,
          ...change,
        })),
      );
    }, 120_000);
  },
);

describe.skipIf(!adminUrl)(
  "unreachable database (needs TEST_DATABASE_URL: the embedded database is in the process, with no network in between)",
  () => {
    /** DATABASE_TIMEOUT_MS of the server under test. */
    const TIMEOUT_MS = 1000;
    let database: TestDatabase;
    let proxy: TcpProxy;
    let server: TestServer;

    beforeAll(async () => {
      database = await createTestDatabase();
      const direct = new URL(database.url!);
      proxy = await TcpProxy.start(`http://${direct.host}`);
      const throughProxy = new URL(database.url!);
      throughProxy.port = new URL(proxy.url).port;
      server = await startTestServer(database, {
        DATABASE_URL: throughProxy.toString(),
        DATABASE_TIMEOUT_MS: String(TIMEOUT_MS),
      });
    });

    afterAll(async () => {
      proxy?.thaw();
      await server?.close();
      await proxy?.close();
      await database?.drop();
    });

    test("while the network to the database drops every packet, calls fail with UNAVAILABLE before their deadline, an open Watch ends with the revision to resume from, and once it is back the server serves again without a restart", async () => {
      // Connections in the pool, and a watcher following every row.
      const kept = await server.grpc.accept({
        operation: Operation.DEPLOY,
        targets: [{ deckyName: deckyName("kept") }],
      });
      await Promise.all(
        Array.from({ length: 4 }, () =>
          server.grpc.list({ ids: kept.lifecycleIds }),
        ),
      );
      const watch = server.grpc.watch({}, { timeoutMs: 60_000 });
      const messages = watch[Symbol.asyncIterator]();
      let snapshotEnd: WatchResponse;
      do {
        snapshotEnd = (await messages.next()).value as WatchResponse;
      } while (snapshotEnd.kind !== WatchResponse_Kind.SNAPSHOT_END);
      const watchEnd = outcomeOf(
        (async () => {
          for (;;) if ((await messages.next()).done) return;
        })(),
      );
      const options = { timeoutMs: 3 * TIMEOUT_MS + 2000 };

      proxy.freeze();
      const during = await Promise.all([
        outcomeOf(
          server.grpc.accept(
            {
              operation: Operation.DEPLOY,
              targets: [{ deckyName: deckyName("refused") }],
            },
            options,
          ),
        ),
        outcomeOf(server.connect.list({ ids: kept.lifecycleIds }, options)),
        outcomeOf(
          server.grpcWeb.report(
            { lifecycleId: kept.lifecycleIds[0]!, status: Status.RUNNING },
            options,
          ),
        ),
        watchEnd,
      ]);
      proxy.thaw();
      const listed = await server.grpc.list(
        { ids: kept.lifecycleIds },
        options,
      );
      const reported = await server.grpc.report(
        { lifecycleId: kept.lifecycleIds[0]!, status: Status.RUNNING },
        options,
      );

      expect(during).toEqual([
        `14: ${UNAVAILABLE}`,
        `14: ${UNAVAILABLE}`,
        `14: ${UNAVAILABLE}`,
        `14: the database is unavailable; resume from revision ${snapshotEnd.revision}`,
      ]);
      expect(listed.rows).toEqual(kept.rows);
      expect(reported.row?.status).toBe(Status.RUNNING);
    }, 60_000);
  },
);
