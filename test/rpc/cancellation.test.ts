import { getEventListeners } from "node:events";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { Code, ConnectError } from "@connectrpc/connect";
import pg from "pg";
import { expect, test, vi } from "vitest";
import {
  Operation,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

// A resumed Watch sends nothing until its first KEEPALIVE; a short interval
// shows soon that the server is following the feed for it.
const server = serveThisFile({ KEEPALIVE_INTERVAL_MS: "50" });

// Heap sizes mean something only right after a full collection.
setFlagsFromString("--expose-gc");
const collectGarbage = runInNewContext("gc") as () => void;

/** How many of each kind of handle (socket, timer…) keep the process alive. */
function activeResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) {
    counts[kind] = (counts[kind] ?? 0) + 1;
  }
  return counts;
}

/** What a Watch stream could leave behind in this process. */
function footprint() {
  return {
    watchers: server.server.feed.subscribers,
    shutdownListeners: getEventListeners(server.server.stopping, "abort")
      .length,
    resources: activeResources(),
  };
}

/**
 * Timers that the embedded database and the HTTP/2 client library arm and
 * re-arm on their own make the count of handles vary by a few; a stream that
 * left one behind would leave a thousand.
 */
const HANDLE_NOISE = 3;

/**
 * The kinds of handle of which there are more now than before, beyond
 * HANDLE_NOISE, with both counts.
 */
function grown(
  now: Record<string, number>,
  before: Record<string, number>,
): Record<string, string> {
  return Object.fromEntries(
    Object.entries(now)
      .filter(([kind, n]) => n > (before[kind] ?? 0) + HANDLE_NOISE)
      .map(([kind, n]) => [kind, `${before[kind] ?? 0} -> ${n}`]),
  );
}

/** How a stream ends, once the messages it had already received are read. */
async function endOf(stream: AsyncIterator<unknown>) {
  try {
    while (!(await stream.next()).done);
    return "ended";
  } catch (error) {
    return ConnectError.from(error);
  }
}

/** When a stream is aborted. */
const abortPoints = [
  // At once: the server may still be reading the snapshot, or not have
  // seen the call at all.
  "opened",
  // Once the snapshot has arrived, while the server waits for changes.
  "snapshot",
  // A watcher resuming from a revision, once it is following changes.
  "resumed",
] as const;

/**
 * Opens `count` Watch streams, 50 at a time, over each protocol and with
 * each abort point in turn, and aborts each the way a closed browser tab or
 * a killed client does.
 */
async function openAndAbort(count: number): Promise<void> {
  const clients = [server.grpc, server.connect, server.grpcWeb];
  const revision = server.server.feed.revision;
  for (let opened = 0; opened < count; opened += 50) {
    await Promise.all(
      Array.from({ length: Math.min(50, count - opened) }, async (_, i) => {
        const client = clients[i % clients.length]!;
        const point = abortPoints[Math.floor(i / 3) % abortPoints.length]!;
        const abort = new AbortController();
        const stream = client
          .watch(point === "resumed" ? { afterRevision: revision } : {}, {
            signal: abort.signal,
          })
          [Symbol.asyncIterator]();
        const awaited =
          point === "snapshot"
            ? WatchResponse_Kind.SNAPSHOT_END
            : WatchResponse_Kind.KEEPALIVE;
        if (point !== "opened") {
          while ((await stream.next()).value?.kind !== awaited);
        }
        abort.abort();
        expect(await endOf(stream)).toMatchObject({ code: Code.Canceled });
      }),
    );
  }
}

test("an open Watch stream holds one watcher on the feed and one listener for the shutdown, and gives both back when aborted", async () => {
  const before = footprint();
  const abort = new AbortController();
  const stream = server.grpc
    .watch({}, { signal: abort.signal })
    [Symbol.asyncIterator]();
  while ((await stream.next()).value?.kind !== WatchResponse_Kind.SNAPSHOT_END);

  const open = footprint();
  abort.abort();
  await endOf(stream);

  expect([open.watchers, open.shutdownListeners]).toEqual([
    before.watchers + 1,
    before.shutdownListeners + 1,
  ]);
  await vi.waitFor(() =>
    expect([footprint().watchers, footprint().shutdownListeners]).toEqual([
      before.watchers,
      before.shutdownListeners,
    ]),
  );
});

test("1,000 Watch streams opened and aborted leave no watcher, shutdown listener, handle or memory behind", async () => {
  // Rows to snapshot, so that each stream does some work.
  await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: Array.from({ length: 20 }, () => ({ deckyName: deckyName() })),
  });
  // The first streams warm up connections, pools and compiled code.
  await openAndAbort(300);
  await vi.waitFor(() => expect(footprint().watchers).toBe(0), {
    timeout: 10_000,
  });
  collectGarbage();
  const before = { ...footprint(), heap: process.memoryUsage().heapUsed };

  await openAndAbort(1000);

  // The server learns of each abort asynchronously, and kept-alive
  // connections left idle close after a few seconds.
  await vi.waitFor(
    () => {
      const now = footprint();
      expect(now.watchers).toBe(0);
      expect(now.shutdownListeners).toBe(before.shutdownListeners);
      expect(grown(now.resources, before.resources)).toEqual({});
    },
    { timeout: 30_000, interval: 200 },
  );
  collectGarbage();
  const heapGrowth = process.memoryUsage().heapUsed - before.heap;
  // What remains is code the engine compiled meanwhile, about 1 KB a stream
  // after this warm-up; a stream that kept its call, its generator or its
  // HTTP/2 stream alive would keep several KB more.
  expect(heapGrowth).toBeLessThan(1000 * 4096);
}, 120_000);

test.each([
  ["gRPC", "grpc"],
  ["Connect", "connect"],
  ["gRPC-Web", "grpcWeb"],
] as const)(
  "a %s Watch whose deadline passes ends with DEADLINE_EXCEEDED, and the server releases its watcher",
  async (_, protocol) => {
    const client = server[protocol];

    const ended = await (async () => {
      for await (const _ of client.watch({}, { timeoutMs: 300 }));
    })().catch(ConnectError.from);

    expect(ended).toMatchObject({ code: Code.DeadlineExceeded });
    await vi.waitFor(() => expect(server.server.feed.subscribers).toBe(0));
  },
);

test.skipIf(!process.env.TEST_DATABASE_URL)(
  "a List whose deadline passes while the database holds it up ends with DEADLINE_EXCEEDED, and the server serves on (needs TEST_DATABASE_URL: only another session on a real PostgreSQL can hold a lock)",
  async () => {
    const blocker = new pg.Client({
      connectionString: server.settings.databaseUrl,
    });
    await blocker.connect();
    try {
      await blocker.query("begin");
      await blocker.query(
        "lock table decky_lifecycle in access exclusive mode",
      );

      const ended = await server.grpc
        .list({}, { timeoutMs: 300 })
        .catch(ConnectError.from);
      await blocker.query("rollback");
      const name = deckyName("after");
      await server.grpc.accept({
        operation: Operation.DEPLOY,
        targets: [{ deckyName: name }],
      });
      const listed = await server.grpc.list(
        { deckyName: name },
        { timeoutMs: 5000 },
      );

      expect(ended).toMatchObject({ code: Code.DeadlineExceeded });
      expect(listed.rows.map((row) => row.deckyName)).toEqual([name]);
    } finally {
      await blocker.end();
    }
  },
);
