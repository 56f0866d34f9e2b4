import { randomUUID } from "node:crypto";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import {
  WatchResponse_Kind as Kind,
  type Lifecycle,
  type LifecycleService,
  Operation,
  Status,
  type WatchRequestSchema,
  type WatchResponse,
  WatchResponseSchema,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { pruneHistory } from "../../src/storage/maintenance.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

type LifecycleClient = Client<typeof LifecycleService>;
type WatchRequestInit = MessageInitShape<typeof WatchRequestSchema>;

/** Every reader a test opened, cancelled after the test. */
const openReaders = new Set<WatchReader>();

/** A Watch call read message by message, so a test can act between them. */
class WatchReader {
  readonly #abort = new AbortController();
  readonly #messages: AsyncIterator<WatchResponse>;

  constructor(client: LifecycleClient, request: WatchRequestInit) {
    this.#messages = client
      .watch(request, { signal: this.#abort.signal })
      [Symbol.asyncIterator]();
    openReaders.add(this);
  }

  /** The next `count` messages; fails if the stream ends or fails first. */
  async take(count: number): Promise<WatchResponse[]> {
    const messages: WatchResponse[] = [];
    while (messages.length < count) {
      const next = await this.#messages.next();
      if (next.done) {
        throw new Error(
          `the stream ended after ${messages.length} of ${count} messages`,
        );
      }
      messages.push(next.value);
    }
    return messages;
  }

  /** The messages up to and including the SNAPSHOT_END. */
  async takeSnapshot(): Promise<WatchResponse[]> {
    const messages: WatchResponse[] = [];
    while (messages.at(-1)?.kind !== Kind.SNAPSHOT_END) {
      messages.push(...(await this.take(1)));
    }
    return messages;
  }

  /** Every message until the stream ends with OK. */
  async rest(): Promise<WatchResponse[]> {
    const messages: WatchResponse[] = [];
    for (;;) {
      const next = await this.#messages.next();
      if (next.done) return messages;
      messages.push(next.value);
    }
  }

  /** The messages until the stream fails, and its error. */
  async failure(): Promise<{ messages: WatchResponse[]; error: ConnectError }> {
    const messages: WatchResponse[] = [];
    try {
      for (;;) {
        const next = await this.#messages.next();
        if (next.done) break;
        messages.push(next.value);
      }
    } catch (error) {
      return { messages, error: ConnectError.from(error) };
    }
    throw new Error(`the stream ended with OK after ${messages.length}`);
  }

  /** Cancels the call, as a client that goes away does. */
  cancel(): void {
    this.#abort.abort();
    openReaders.delete(this);
  }
}

function snapshot(row: Lifecycle, revision: bigint): WatchResponse {
  return create(WatchResponseSchema, { kind: Kind.SNAPSHOT, revision, row });
}

function snapshotEnd(revision: bigint): WatchResponse {
  return create(WatchResponseSchema, { kind: Kind.SNAPSHOT_END, revision });
}

function change(row: Lifecycle): WatchResponse {
  return create(WatchResponseSchema, {
    kind: Kind.CHANGE,
    revision: row.revision,
    row,
  });
}

function keepalive(revision: bigint): WatchResponse {
  return create(WatchResponseSchema, { kind: Kind.KEEPALIVE, revision });
}

/** Snapshot messages in id order: the contract leaves their order open. */
function byRowId(messages: WatchResponse[]): WatchResponse[] {
  return [...messages].sort((a, b) => a.row!.id.localeCompare(b.row!.id));
}

/** Accepts one row per target and returns the rows, in target order. */
async function accept(
  client: LifecycleClient,
  targets: { deckyName: string; hostUuid?: string }[],
  operation = Operation.DEPLOY,
): Promise<Lifecycle[]> {
  const response = await client.accept({ operation, targets });
  return response.rows;
}

async function report(
  client: LifecycleClient,
  row: Lifecycle,
  status: Status,
  error?: string,
): Promise<Lifecycle> {
  const response = await client.report({
    lifecycleId: row.id,
    status,
    ...(error === undefined ? {} : { error }),
  });
  return response.row!;
}

afterEach(() => {
  for (const reader of openReaders) reader.cancel();
});

describe("on a server with the default keepalive interval", () => {
  let database: TestDatabase;
  let server: TestServer;

  beforeAll(async () => {
    database = await createTestDatabase();
    server = await startTestServer(database);
  });

  afterAll(async () => {
    await server?.close();
    await database?.drop();
  });

  describe("Watch by ids", () => {
    test("Watch by ids sends each row at the snapshot revision, then one SNAPSHOT_END at that revision", async () => {
      const [first, second] = await accept(server.grpc, [
        { deckyName: deckyName() },
        { deckyName: deckyName() },
      ]);
      const running = await report(server.grpc, first!, Status.RUNNING);
      const revision = running.revision;

      const reader = new WatchReader(server.connect, {
        ids: [first!.id, second!.id],
      });
      const messages = await reader.take(3);

      expect(second!.revision).toBeLessThan(revision);
      expect(byRowId(messages.slice(0, 2))).toEqual(
        byRowId([snapshot(running, revision), snapshot(second!, revision)]),
      );
      expect(messages[2]).toEqual(snapshotEnd(revision));
    });

    test("Watch by ids sends a CHANGE with its own revision for every change and ends with OK once every row is terminal", async () => {
      const [first, second] = await accept(server.grpc, [
        { deckyName: deckyName() },
        { deckyName: deckyName() },
      ]);
      const reader = new WatchReader(server.connect, {
        ids: [first!.id, second!.id],
      });
      await reader.takeSnapshot();

      const running = await report(server.grpc, first!, Status.RUNNING);
      const succeeded = await report(server.grpc, first!, Status.SUCCEEDED);
      const failed = await report(
        server.grpc,
        second!,
        Status.FAILED,
        "image pull failed",
      );

      expect(await reader.rest()).toEqual([
        change(running),
        change(succeeded),
        change(failed),
      ]);
    });

    test("Watch by ids ends with OK right after SNAPSHOT_END when every row is already terminal", async () => {
      const [row] = await accept(server.grpc, [{ deckyName: deckyName() }]);
      const succeeded = await report(server.grpc, row!, Status.SUCCEEDED);

      const reader = new WatchReader(server.connect, { ids: [row!.id] });

      expect(await reader.rest()).toEqual([
        snapshot(succeeded, succeeded.revision),
        snapshotEnd(succeeded.revision),
      ]);
    });

    test("Watch by ids fails with NOT_FOUND naming an id that does not exist, before any message", async () => {
      const [row] = await accept(server.grpc, [{ deckyName: deckyName() }]);
      const missing = randomUUID();

      const reader = new WatchReader(server.connect, {
        ids: [row!.id, missing],
      });
      const { messages, error } = await reader.failure();

      expect(messages).toEqual([]);
      expect(error.code).toBe(Code.NotFound);
      expect(error.rawMessage).toBe(`lifecycle row ${missing} does not exist`);
    });

    test("Watch refuses more than 200 ids with INVALID_ARGUMENT", async () => {
      const ids = Array.from({ length: 201 }, () => randomUUID());

      const { messages, error } = await new WatchReader(server.connect, {
        ids,
      }).failure();

      expect(messages).toEqual([]);
      expect(error.code).toBe(Code.InvalidArgument);
      expect(error.rawMessage).toBe(
        "ids has 201 entries; at most 200 are allowed",
      );
    });

    test("Watch refuses an id that is not a UUID with INVALID_ARGUMENT", async () => {
      const { messages, error } = await new WatchReader(server.connect, {
        ids: [randomUUID(), "not-a-uuid"],
      }).failure();

      expect(messages).toEqual([]);
      expect(error.code).toBe(Code.InvalidArgument);
      expect(error.rawMessage).toBe('ids[1] "not-a-uuid" is not a UUID');
    });

    test("Watch refuses ids combined with a filter with INVALID_ARGUMENT", async () => {
      const [row] = await accept(server.grpc, [{ deckyName: deckyName() }]);

      const { messages, error } = await new WatchReader(server.connect, {
        ids: [row!.id],
        deckyName: row!.deckyName,
      }).failure();

      expect(messages).toEqual([]);
      expect(error.code).toBe(Code.InvalidArgument);
      expect(error.rawMessage).toBe(
        "ids cannot be combined with host_uuid, decky_name or operation; watch by ids or by filter",
      );
    });
  });

  describe("Watch by filter", () => {
    test("Watch by filter snapshots only the open rows that match, then SNAPSHOT_END", async () => {
      const name = deckyName();
      const [done] = await accept(server.grpc, [{ deckyName: name }]);
      await report(server.grpc, done!, Status.SUCCEEDED);
      const [mutate] = await accept(
        server.grpc,
        [{ deckyName: name }],
        Operation.MUTATE,
      );
      const [retry] = await accept(server.grpc, [{ deckyName: name }]);
      const running = await report(server.grpc, retry!, Status.RUNNING);
      const [other] = await accept(server.grpc, [{ deckyName: deckyName() }]);
      const revision = other!.revision;

      const reader = new WatchReader(server.connect, { deckyName: name });
      const messages = await reader.take(3);

      expect(byRowId(messages.slice(0, 2))).toEqual(
        byRowId([snapshot(mutate!, revision), snapshot(running, revision)]),
      );
      expect(messages[2]).toEqual(snapshotEnd(revision));
    });

    test("Watch by host_uuid sends changes to its rows, rows accepted later included, and nothing of other hosts", async () => {
      const host = randomUUID();
      const [first] = await accept(server.grpc, [
        { deckyName: deckyName(), hostUuid: host },
      ]);
      const reader = new WatchReader(server.connect, { hostUuid: host });
      expect(await reader.takeSnapshot()).toEqual([
        snapshot(first!, first!.revision),
        snapshotEnd(first!.revision),
      ]);

      const [later] = await accept(server.grpc, [
        { deckyName: deckyName(), hostUuid: host },
      ]);
      const [elsewhere] = await accept(server.grpc, [
        { deckyName: deckyName(), hostUuid: randomUUID() },
      ]);
      await report(server.grpc, elsewhere!, Status.RUNNING);
      const laterRunning = await report(server.grpc, later!, Status.RUNNING);
      const firstFailed = await report(
        server.grpc,
        first!,
        Status.FAILED,
        "host unreachable",
      );

      expect(await reader.take(3)).toEqual([
        change(later!),
        change(laterRunning),
        change(firstFailed),
      ]);
    });

    test("Watch by decky_name sends only that decky's changes", async () => {
      const name = deckyName();
      const reader = new WatchReader(server.connect, { deckyName: name });
      const [end] = await reader.takeSnapshot();
      expect(end!.kind).toBe(Kind.SNAPSHOT_END);

      const [other] = await accept(server.grpc, [{ deckyName: deckyName() }]);
      const [row] = await accept(server.grpc, [{ deckyName: name }]);
      await report(server.grpc, other!, Status.RUNNING);
      const running = await report(server.grpc, row!, Status.RUNNING);

      expect(await reader.take(2)).toEqual([change(row!), change(running)]);
    });

    test("Watch by operation snapshots the open rows of that operation and sends only its changes", async () => {
      const name = deckyName();
      const [deploy] = await accept(server.grpc, [{ deckyName: name }]);
      const open = await server.grpc.list({
        operation: Operation.MUTATE,
        statuses: [Status.PENDING, Status.RUNNING],
        pageSize: 500,
      });
      const revision = deploy!.revision;

      const reader = new WatchReader(server.connect, {
        operation: Operation.MUTATE,
      });
      const messages = await reader.takeSnapshot();

      expect(byRowId(messages.slice(0, -1))).toEqual(
        byRowId(open.rows.map((row) => snapshot(row, revision))),
      );
      expect(messages.at(-1)).toEqual(snapshotEnd(revision));

      await report(server.grpc, deploy!, Status.RUNNING);
      const [mutate] = await accept(
        server.grpc,
        [{ deckyName: name }],
        Operation.MUTATE,
      );
      const running = await report(server.grpc, mutate!, Status.RUNNING);

      expect(await reader.take(2)).toEqual([change(mutate!), change(running)]);
    });
  });

  describe("Watch revisions", () => {
    test("Watch revisions never go backwards within a stream", async () => {
      const host = randomUUID();
      const [first, second] = await accept(server.grpc, [
        { deckyName: deckyName(), hostUuid: host },
        { deckyName: deckyName(), hostUuid: host },
      ]);
      const firstRunning = await report(server.grpc, first!, Status.RUNNING);
      const reader = new WatchReader(server.connect, { hostUuid: host });
      const initial = await reader.take(3);
      const secondRunning = await report(server.grpc, second!, Status.RUNNING);
      const firstSucceeded = await report(
        server.grpc,
        first!,
        Status.SUCCEEDED,
      );
      const changes = await reader.take(2);

      const revisions = [...initial, ...changes].map((m) => m.revision);
      const snapshotAt = firstRunning.revision;
      expect(revisions).toEqual([
        snapshotAt,
        snapshotAt,
        snapshotAt,
        secondRunning.revision,
        firstSucceeded.revision,
      ]);
      expect(revisions).toEqual(
        [...revisions].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)),
      );
    });

    test("Watch sends every change of concurrent writers once, in revision order", async () => {
      const reader = new WatchReader(server.connect, {});
      const [end] = (await reader.takeSnapshot()).slice(-1);
      const clients = [server.grpc, server.connect, server.grpcWeb];

      const accepted = await Promise.all(
        Array.from({ length: 30 }, (_, index) =>
          accept(clients[index % clients.length]!, [
            { deckyName: deckyName() },
          ]),
        ),
      );
      const rows = accepted
        .map(([row]) => row!)
        .sort((a, b) => (a.revision < b.revision ? -1 : 1));

      expect(rows.map((row) => row.revision)).toEqual(
        Array.from(
          { length: 30 },
          (_, index) => end!.revision + 1n + BigInt(index),
        ),
      );
      expect(await reader.take(30)).toEqual(rows.map(change));
    });
  });

  describe("Watch over every protocol", () => {
    test.each(["grpc", "connect", "grpcWeb"] as const)(
      "Watch by ids over %s sends the snapshot, SNAPSHOT_END and every change, then ends with OK",
      async (protocol) => {
        const [row] = await accept(server.grpc, [{ deckyName: deckyName() }]);
        const reader = new WatchReader(server[protocol], { ids: [row!.id] });
        expect(await reader.take(2)).toEqual([
          snapshot(row!, row!.revision),
          snapshotEnd(row!.revision),
        ]);

        const running = await report(server.grpc, row!, Status.RUNNING);
        const failed = await report(
          server.grpc,
          row!,
          Status.FAILED,
          "timeout",
        );

        expect(await reader.rest()).toEqual([change(running), change(failed)]);
      },
    );
  });

  describe("Watch cancellation", () => {
    test.each(["grpc", "connect", "grpcWeb"] as const)(
      "Aborting a watch over %s cancels it, and the server goes on serving watches",
      async (protocol) => {
        const host = randomUUID();
        const reader = new WatchReader(server[protocol], { hostUuid: host });
        await reader.takeSnapshot();

        reader.cancel();
        const { messages, error } = await reader.failure();

        expect(messages).toEqual([]);
        expect(error.code).toBe(Code.Canceled);
        expect(error.rawMessage).toBe("This operation was aborted");

        const [row] = await accept(server.grpc, [
          { deckyName: deckyName(), hostUuid: host },
        ]);
        const next = new WatchReader(server[protocol], { ids: [row!.id] });
        await next.takeSnapshot();
        const succeeded = await report(server.grpc, row!, Status.SUCCEEDED);
        expect(await next.rest()).toEqual([change(succeeded)]);
      },
    );
  });

  // Resuming is last: the final test prunes the change log.
  describe("Watch resume", () => {
    test("Watch with after_revision skips the snapshot, sends the matching changes after it, then continues live", async () => {
      const name = deckyName();
      const [row] = await accept(server.grpc, [{ deckyName: name }]);
      const running = await report(server.grpc, row!, Status.RUNNING);
      await accept(server.grpc, [{ deckyName: deckyName() }]);

      const reader = new WatchReader(server.connect, {
        deckyName: name,
        afterRevision: row!.revision,
      });
      expect(await reader.take(1)).toEqual([change(running)]);

      const succeeded = await report(server.grpc, row!, Status.SUCCEEDED);
      expect(await reader.take(1)).toEqual([change(succeeded)]);
    });

    test("Watch by ids with after_revision replays the rows' changes and ends with OK once they are terminal", async () => {
      const [row] = await accept(server.grpc, [{ deckyName: deckyName() }]);
      const running = await report(server.grpc, row!, Status.RUNNING);
      const succeeded = await report(server.grpc, row!, Status.SUCCEEDED);

      const reader = new WatchReader(server.connect, {
        ids: [row!.id],
        afterRevision: row!.revision,
      });

      expect(await reader.rest()).toEqual([change(running), change(succeeded)]);
    });

    test("Watch resumed from every revision a watcher saw sends exactly the changes after it", async () => {
      const host = randomUUID();
      const watcher = new WatchReader(server.connect, { hostUuid: host });
      const [end] = await watcher.takeSnapshot();
      const on = (name = deckyName()) => ({ deckyName: name, hostUuid: host });

      const [p, q] = await accept(server.grpc, [on(), on()]);
      await report(server.grpc, p!, Status.RUNNING);
      await accept(server.grpc, [{ deckyName: deckyName() }]);
      await report(server.grpc, q!, Status.FAILED, "no space left");
      await report(server.grpc, p!, Status.SUCCEEDED);
      await accept(server.connect, [on()], Operation.MUTATE);
      const seen = await watcher.take(6);
      const cursors = [end!.revision, ...seen.map((m) => m.revision)];

      const resumed = cursors.map((cursor) => ({
        reader: new WatchReader(server.connect, {
          hostUuid: host,
          afterRevision: cursor,
        }),
        expected: seen.filter((m) => m.revision > cursor),
      }));
      for (const { reader, expected } of resumed) {
        expect(await reader.take(expected.length)).toEqual(expected);
      }
      const [marker] = await accept(server.grpc, [on()]);

      for (const { reader } of resumed) {
        expect(await reader.take(1)).toEqual([change(marker!)]);
      }
    });

    test("Watch refuses an after_revision above the current revision with OUT_OF_RANGE", async () => {
      const [row] = await accept(server.grpc, [{ deckyName: deckyName() }]);
      const ahead = row!.revision + 1n;

      const { messages, error } = await new WatchReader(server.connect, {
        afterRevision: ahead,
      }).failure();

      expect(messages).toEqual([]);
      expect(error.code).toBe(Code.OutOfRange);
      expect(error.rawMessage).toBe(
        `after_revision ${ahead} is outside the kept history (0 to ${row!.revision}); watch again without after_revision`,
      );
    });

    test("Watch refuses a negative after_revision with INVALID_ARGUMENT", async () => {
      const { messages, error } = await new WatchReader(server.connect, {
        afterRevision: -1n,
      }).failure();

      expect(messages).toEqual([]);
      expect(error.code).toBe(Code.InvalidArgument);
      expect(error.rawMessage).toBe("after_revision -1 must not be negative");
    });

    test("Watch refuses an after_revision older than the kept history with OUT_OF_RANGE", async () => {
      const [row] = await accept(server.grpc, [{ deckyName: deckyName() }]);
      const current = row!.revision;
      const prunedThrough = await pruneHistory(
        server.server.orm.em.fork(),
        0,
        86_400_000,
      );
      expect(prunedThrough).toBe(current - 1n);

      const { messages, error } = await new WatchReader(server.connect, {
        afterRevision: 1n,
      }).failure();

      expect(messages).toEqual([]);
      expect(error.code).toBe(Code.OutOfRange);
      expect(error.rawMessage).toBe(
        `after_revision 1 is outside the kept history (${current - 1n} to ${current}); watch again without after_revision`,
      );
    });
  });
});

describe("on a server with a 200 ms keepalive interval", () => {
  const interval = 200;
  let database: TestDatabase;
  let server: TestServer;

  beforeAll(async () => {
    database = await createTestDatabase();
    server = await startTestServer(database, {
      KEEPALIVE_INTERVAL_MS: String(interval),
    });
  });

  afterAll(async () => {
    await server?.close();
    await database?.drop();
  });

  test("Watch by filter with nothing to send gets KEEPALIVEs carrying the current revision and no row", async () => {
    const [row] = await accept(server.grpc, [{ deckyName: deckyName() }]);
    const current = row!.revision;

    const reader = new WatchReader(server.connect, { deckyName: deckyName() });

    expect(await reader.take(3)).toEqual([
      snapshotEnd(current),
      keepalive(current),
      keepalive(current),
    ]);
  });

  test("Watch by filter gets KEEPALIVEs while only rows it does not match change", async () => {
    const reader = new WatchReader(server.connect, { deckyName: deckyName() });
    const [end] = await reader.takeSnapshot();
    let received: WatchResponse | undefined;
    const receiving = reader.take(1).then(([message]) => {
      received = message;
    });
    receiving.catch(() => {});

    // Other rows change far more often than the interval; the watcher must
    // still hear something within a few intervals. The keepalive carries the
    // cursor: the revision of whichever change the stream had seen last.
    const revisions = [end!.revision];
    const deadline = performance.now() + 10 * interval;
    while (received === undefined && performance.now() < deadline) {
      const [other] = await accept(server.grpc, [{ deckyName: deckyName() }]);
      revisions.push(other!.revision);
    }

    expect(received).toBeDefined();
    expect(received).toEqual(keepalive(received!.revision));
    expect(revisions).toContain(received!.revision);
  });
});
