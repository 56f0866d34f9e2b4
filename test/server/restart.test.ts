import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, expect, test } from "vitest";
import {
  type Lifecycle,
  Operation,
  Status,
  type WatchResponse,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

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

/** Stops the server and starts a new one on the same database. */
async function restart(): Promise<void> {
  await server.close();
  server = await startTestServer(database);
}

// Starting the embedded database again takes seconds on a loaded machine.
const RESTART_TIMEOUT_MS = 120_000;

async function acceptOne(name: string, hostUuid?: string): Promise<Lifecycle> {
  const accepted = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name, ...(hostUuid ? { hostUuid } : {}) }],
  });
  return accepted.rows[0]!;
}

/** Reads `messages` until `last` holds for one (included) or they end. */
async function readUntil(
  messages: AsyncIterator<WatchResponse>,
  last: (message: WatchResponse) => boolean = () => false,
): Promise<WatchResponse[]> {
  const read: WatchResponse[] = [];
  for (;;) {
    const next = await messages.next();
    if (next.done) return read;
    read.push(next.value);
    if (last(next.value)) return read;
  }
}

/** A CHANGE message as (revision, id, status), which the log also gives. */
function changeOf(message: WatchResponse) {
  return {
    kind: message.kind,
    revision: message.revision,
    id: message.row?.id,
    status: message.row?.status,
  };
}

test(
  "every row is still there after a restart, with identical fields",
  async () => {
    const host = randomUUID();
    const pending = await acceptOne(deckyName("kept"), host);
    const running = await acceptOne(deckyName("kept"), host);
    const succeeded = await acceptOne(deckyName("kept"));
    const failed = await acceptOne(deckyName("kept"));
    await server.grpc.report({
      lifecycleId: running.id,
      status: Status.RUNNING,
    });
    await server.grpc.report({
      lifecycleId: succeeded.id,
      status: Status.SUCCEEDED,
    });
    await server.grpc.report({
      lifecycleId: failed.id,
      status: Status.FAILED,
      error: "disk full",
    });
    const ids = [pending.id, running.id, succeeded.id, failed.id];
    const before = await server.grpc.list({ ids });
    expect(
      before.rows.map((row) => [row.id, row.status, row.hostUuid, row.error]),
    ).toEqual([
      [pending.id, Status.PENDING, host, undefined],
      [running.id, Status.RUNNING, host, undefined],
      [succeeded.id, Status.SUCCEEDED, undefined, undefined],
      [failed.id, Status.FAILED, undefined, "disk full"],
    ]);

    await restart();

    const after = await server.grpc.list({ ids });
    expect(after).toEqual(before);
  },
  RESTART_TIMEOUT_MS,
);

test(
  "revisions continue after a restart: the next change takes the next revision",
  async () => {
    const row = await acceptOne(deckyName("counted"));
    const moved = await server.grpc.report({
      lifecycleId: row.id,
      status: Status.RUNNING,
    });
    const lastBefore = moved.row!.revision;

    await restart();
    const next = await server.grpc.report({
      lifecycleId: row.id,
      status: Status.SUCCEEDED,
    });

    expect(next.row!.revision).toBe(lastBefore + 1n);
  },
  RESTART_TIMEOUT_MS,
);

test(
  "a watcher resuming from the last revision it saw before a restart misses no change from before or after it",
  async () => {
    const host = randomUUID();
    const watch = server.grpc.watch({ hostUuid: host })[Symbol.asyncIterator]();
    const [snapshotEnd] = await readUntil(watch, () => true);
    const first = await acceptOne(deckyName("resume"), host);
    await server.grpc.report({ lifecycleId: first.id, status: Status.RUNNING });
    const seenLive = await readUntil(
      watch,
      (message) => message.row?.status === Status.RUNNING,
    );
    // Changes right before the close: the watcher may or may not get them.
    await server.grpc.report({
      lifecycleId: first.id,
      status: Status.SUCCEEDED,
    });
    const second = await acceptOne(deckyName("resume"), host);
    const closing = server.close();
    const seenBeforeClose: WatchResponse[] = [];
    const ended = await readUntil(watch, (message) => {
      seenBeforeClose.push(message);
      return false;
    }).catch((error: unknown) => ConnectError.from(error));
    await closing;
    const seen = [...seenLive, ...seenBeforeClose];
    const lastSeen = seen.at(-1)!.revision;
    expect(ended).toBeInstanceOf(ConnectError);
    expect([
      (ended as ConnectError).code,
      (ended as ConnectError).rawMessage,
    ]).toEqual([
      Code.Unavailable,
      `the server is shutting down; resume from revision ${lastSeen}`,
    ]);

    server = await startTestServer(database);
    await server.grpc.report({
      lifecycleId: second.id,
      status: Status.FAILED,
      error: "lost",
    });
    const third = await acceptOne(deckyName("resume"), host);
    const stopResuming = new AbortController();
    const resumed = await readUntil(
      server.grpc
        .watch(
          { hostUuid: host, afterRevision: lastSeen },
          { signal: stopResuming.signal },
        )
        [Symbol.asyncIterator](),
      (message) => message.row?.id === third.id,
    );
    stopResuming.abort();

    const expected = [
      [first.id, Status.PENDING],
      [first.id, Status.RUNNING],
      [first.id, Status.SUCCEEDED],
      [second.id, Status.PENDING],
      [second.id, Status.FAILED],
      [third.id, Status.PENDING],
    ];
    const received = [...seen, ...resumed].map(changeOf);
    expect(received.map((change) => [change.id, change.status])).toEqual(
      expected,
    );
    expect(received.map((change) => change.kind)).toEqual(
      expected.map(() => WatchResponse_Kind.CHANGE),
    );
    expect(received.map((change) => change.revision)).toEqual(
      expected.map((_, index) => snapshotEnd!.revision + BigInt(index + 1)),
    );
  },
  RESTART_TIMEOUT_MS,
);

test(
  "a page token issued before a restart reads the next page after it",
  async () => {
    const host = randomUUID();
    const accepted = await server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: Array.from({ length: 5 }, () => ({
        deckyName: deckyName("paged"),
        hostUuid: host,
      })),
    });
    const all = await server.grpc.list({ hostUuid: host });
    const firstPage = await server.grpc.list({ hostUuid: host, pageSize: 2 });
    expect(all.rows.map((row) => row.id).sort()).toEqual(
      [...accepted.lifecycleIds].sort(),
    );
    expect(firstPage.rows).toEqual(all.rows.slice(0, 2));

    await restart();
    const secondPage = await server.grpc.list({
      hostUuid: host,
      pageSize: 2,
      pageToken: firstPage.nextPageToken,
    });
    const lastPage = await server.grpc.list({
      hostUuid: host,
      pageSize: 2,
      pageToken: secondPage.nextPageToken,
    });

    expect(secondPage.rows).toEqual(all.rows.slice(2, 4));
    expect(lastPage.rows).toEqual(all.rows.slice(4));
    expect(lastPage.nextPageToken).toBe("");
  },
  RESTART_TIMEOUT_MS,
);

test(
  "an Accept request_id sent again after a restart returns the first response and creates nothing",
  async () => {
    const name = deckyName("idem");
    const request = {
      operation: Operation.MUTATE,
      targets: [{ deckyName: name }],
      requestId: `restart-${randomUUID()}`,
    };
    const first = await server.grpc.accept(request);

    await restart();
    const again = await server.grpc.accept(request);

    expect(again).toEqual(first);
    const listed = await server.grpc.list({ deckyName: name });
    expect(listed.rows).toEqual(first.rows);
  },
  RESTART_TIMEOUT_MS,
);

test(
  "the server stops while a client keeps its HTTP/2 connection and an unread Watch stream open",
  async () => {
    // The client reads the snapshot and then nothing more: the changes
    // sent after it wait unread, so the client does not hang up on its own
    // after the server's GOAWAY.
    const host = randomUUID();
    const watch = server.grpc.watch({ hostUuid: host })[Symbol.asyncIterator]();
    const [snapshotEnd] = await readUntil(watch, () => true);
    expect(snapshotEnd!.kind).toBe(WatchResponse_Kind.SNAPSHOT_END);
    await acceptOne(deckyName("unread"), host);
    await acceptOne(deckyName("unread"), host);

    await restart();

    const row = await acceptOne(deckyName("after-stop"));
    expect(row.status).toBe(Status.PENDING);
  },
  RESTART_TIMEOUT_MS,
);
