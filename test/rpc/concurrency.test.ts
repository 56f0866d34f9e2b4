import { randomUUID } from "node:crypto";
import http from "node:http";
import net from "node:net";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  type Client,
  Code,
  ConnectError,
  createClient,
} from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import { afterAll, beforeAll, expect, test } from "vitest";
import {
  type DeltaOutcome,
  DeltaOutcome_Result,
  type HeartbeatRequestSchema,
  type Lifecycle,
  LifecycleService,
  Operation,
  Status,
  type WatchRequestSchema,
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
  // No KEEPALIVE should interleave with the changes these tests compare.
  server = await startTestServer(database, {
    KEEPALIVE_INTERVAL_MS: "600000",
  });
});

afterAll(async () => {
  await server?.close();
  await database?.drop();
});

type LifecycleClient = Client<typeof LifecycleService>;

/**
 * `count` clients, each with its own transport, taking turns at gRPC over
 * HTTP/2, Connect over HTTP/1.1 and gRPC-Web over HTTP/1.1.
 */
function clients(count: number, baseUrl = server.url): LifecycleClient[] {
  return Array.from({ length: count }, (_, index) => {
    const transport = [
      () => createGrpcTransport({ baseUrl }),
      () => createConnectTransport({ baseUrl, httpVersion: "1.1" }),
      () => createGrpcWebTransport({ baseUrl, httpVersion: "1.1" }),
    ][index % 3]!();
    return createClient(LifecycleService, transport);
  });
}

const STATUS_NAMES: Record<number, string> = {
  [Status.PENDING]: "pending",
  [Status.RUNNING]: "running",
  [Status.SUCCEEDED]: "succeeded",
  [Status.FAILED]: "failed",
};

/** A status as Report's refusals spell it: STATUS_SUCCEEDED. */
function statusLabel(status: Status): string {
  return `STATUS_${STATUS_NAMES[status]!.toUpperCase()}`;
}

/** One change, as the change log holds it and as a watcher receives it. */
interface Change {
  readonly revision: bigint;
  readonly id: string;
  readonly status: string;
}

/** The logged changes of one row, or of one host's rows, oldest first. */
async function changeLog(
  where: { lifecycleId: string } | { hostUuid: string },
): Promise<Change[]> {
  const [column, value] =
    "lifecycleId" in where
      ? ["lifecycle_id", where.lifecycleId]
      : ["host_uuid", where.hostUuid];
  const rows = await server.server.orm.em
    .fork()
    .getConnection()
    .execute<{ revision: string; lifecycle_id: string; status: string }[]>(
      `select revision, lifecycle_id, status from lifecycle_change
       where ${column} = ? order by revision`,
      [value],
    );
  return rows.map((row) => ({
    revision: BigInt(row.revision),
    id: row.lifecycle_id,
    status: row.status,
  }));
}

/** A CHANGE message as a change; anything else fails the comparison. */
function changeOf(message: WatchResponse): Change | WatchResponse {
  if (message.kind !== WatchResponse_Kind.CHANGE || !message.row) {
    return message;
  }
  return {
    revision: message.revision,
    id: message.row.id,
    status: STATUS_NAMES[message.row.status]!,
  };
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

/**
 * Opens a Watch stream and reads it up to its SNAPSHOT_END. The client
 * cancels the stream when `signal` aborts.
 */
async function watchAfterSnapshot(
  request: MessageInitShape<typeof WatchRequestSchema>,
  signal?: AbortSignal,
): Promise<{
  snapshot: WatchResponse[];
  messages: AsyncIterator<WatchResponse>;
}> {
  const messages = server.grpc
    .watch(request, signal ? { signal } : {})
    [Symbol.asyncIterator]();
  const snapshot = await readUntil(
    messages,
    (message) => message.kind === WatchResponse_Kind.SNAPSHOT_END,
  );
  return { snapshot, messages };
}

async function acceptOne(
  client: LifecycleClient,
  name: string,
  hostUuid?: string,
): Promise<Lifecycle> {
  const accepted = await client.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name, ...(hostUuid ? { hostUuid } : {}) }],
  });
  return accepted.rows[0]!;
}

type HeartbeatMessage = MessageInitShape<typeof HeartbeatRequestSchema>;

async function* stream(
  messages: HeartbeatMessage[],
): AsyncIterable<HeartbeatMessage> {
  yield* messages;
}

/** An RPC's result in a form that compares whole: a value or code and text. */
type Outcome<T> =
  | { readonly value: T }
  | { readonly code: Code; readonly message: string };

function outcomeOf<T>(result: PromiseSettledResult<T>): Outcome<T> {
  if (result.status === "fulfilled") return { value: result.value };
  const error = ConnectError.from(result.reason);
  return { code: error.code, message: error.rawMessage };
}

function deltaOutcome(outcome: DeltaOutcome) {
  return {
    messageIndex: outcome.messageIndex,
    deltaIndex: outcome.deltaIndex,
    lifecycleId: outcome.lifecycleId,
    result: outcome.result,
    detail: outcome.detail,
  };
}

test("Reports and Heartbeat deltas racing on one PENDING row leave exactly one terminal transition", async () => {
  const host = randomUUID();
  const name = deckyName("race");
  const accepted = await acceptOne(server.grpc, name, host);
  const id = accepted.id;
  const watch = await watchAfterSnapshot({ ids: [id] });
  const reportStatuses = Array.from(
    { length: 20 },
    (_, index) => [Status.SUCCEEDED, Status.FAILED, Status.RUNNING][index % 3]!,
  );
  // Each Heartbeat stream sends two messages of one delta each.
  const streamStatuses = [
    [Status.RUNNING, Status.SUCCEEDED],
    [Status.RUNNING, Status.FAILED],
    [Status.SUCCEEDED, Status.RUNNING],
    [Status.FAILED, Status.SUCCEEDED],
  ];

  const [reports, heartbeats] = await Promise.all([
    Promise.allSettled(
      clients(20).map((client, index) =>
        client.report({
          lifecycleId: id,
          status: reportStatuses[index]!,
          ...(reportStatuses[index] === Status.FAILED
            ? { error: "runner crashed" }
            : {}),
        }),
      ),
    ),
    Promise.all(
      streamStatuses.map((statuses, streamIndex) =>
        clients(1)[0]!.heartbeat(
          stream(
            statuses.map((status) => ({
              hostUuid: host,
              agentVersion: "agent 1.0",
              deltas: [
                {
                  deckyName: name,
                  operation: Operation.DEPLOY,
                  status,
                  // Half the streams name the row; the rest leave it to the
                  // server to find the host's open row for the decky.
                  ...(streamIndex % 2 === 0 ? { lifecycleId: id } : {}),
                  ...(status === Status.FAILED
                    ? { error: "agent crashed" }
                    : {}),
                },
              ],
            })),
          ),
        ),
      ),
    ),
  ]);
  const changes = await readUntil(watch.messages);

  const [row] = (await server.grpc.list({ ids: [id] })).rows;
  const final = row!.status;
  expect([Status.SUCCEEDED, Status.FAILED]).toContain(final);
  const log = await changeLog({ lifecycleId: id });
  expect([
    ["pending", STATUS_NAMES[final]],
    ["pending", "running", STATUS_NAMES[final]],
  ]).toContainEqual(log.map((change) => change.status));
  expect(log[0]!.revision).toBe(accepted.revision);
  expect(log.at(-1)!.revision).toBe(row!.revision);
  expect(watch.snapshot.map((message) => message.row)).toEqual([
    accepted,
    undefined,
  ]);
  expect(changes.map(changeOf)).toEqual(log.slice(1));
  expect(changes.at(-1)!.row).toEqual(row);

  const running = changes.find(
    (change) => change.row!.status === Status.RUNNING,
  )?.row;
  for (const [index, result] of reports.entries()) {
    const status = reportStatuses[index]!;
    const refused = {
      code: Code.FailedPrecondition,
      message: `lifecycle row ${id} is ${statusLabel(final)} and cannot move to ${statusLabel(status)}`,
    };
    const outcome = outcomeOf(result);
    if (status === final) {
      expect(outcome).toEqual({ value: expect.objectContaining({ row }) });
    } else if (status === Status.RUNNING && running) {
      // A RUNNING report either moved the row, found it RUNNING, or came
      // after the terminal move.
      expect([
        { value: expect.objectContaining({ row: running }) },
        refused,
      ]).toContainEqual(outcome);
    } else {
      expect(outcome).toEqual(refused);
    }
  }

  let appliedByHeartbeats = 0;
  for (const [streamIndex, response] of heartbeats.entries()) {
    expect(response.messages).toBe(2);
    expect(response.outcomes).toHaveLength(2 - response.applied);
    appliedByHeartbeats += response.applied;
    for (const outcome of response.outcomes) {
      const status = streamStatuses[streamIndex]![outcome.messageIndex]!;
      const at = { messageIndex: outcome.messageIndex, deltaIndex: 0 };
      const duplicate = {
        ...at,
        lifecycleId: id,
        result: DeltaOutcome_Result.DUPLICATE,
        detail: `lifecycle row ${id} is already ${STATUS_NAMES[status]}`,
      };
      const alreadyTerminal = {
        ...at,
        lifecycleId: id,
        result: DeltaOutcome_Result.ALREADY_TERMINAL,
        detail: `lifecycle row ${id} is ${STATUS_NAMES[final]} and cannot become ${STATUS_NAMES[status]}`,
      };
      const possible =
        status === final
          ? [duplicate]
          : status === Status.RUNNING && running
            ? [duplicate, alreadyTerminal]
            : [alreadyTerminal];
      expect(possible).toContainEqual(deltaOutcome(outcome));
    }
  }
  expect(appliedByHeartbeats).toBeLessThanOrEqual(log.length - 1);
});

test("20 concurrent Accepts for one decky and operation create exactly one row", async () => {
  const name = deckyName("accept-race");

  const results = await Promise.allSettled(
    clients(20).map((client) => acceptOne(client, name)),
  );

  const outcomes = results.map(outcomeOf);
  const created = outcomes.flatMap((outcome) =>
    "value" in outcome ? [outcome.value] : [],
  );
  expect(created).toHaveLength(1);
  const winner = created[0]!;
  expect(outcomes.filter((outcome) => !("value" in outcome))).toEqual(
    Array.from({ length: 19 }, () => ({
      code: Code.FailedPrecondition,
      message: `decky ${name} already has an open deploy row ${winner.id}; wait for it to finish`,
    })),
  );
  const listed = await server.grpc.list({ deckyName: name });
  expect(listed.rows).toEqual([winner]);
});

test("20 concurrent Accepts with one request_id and body create one row set and all get the same answer", async () => {
  const names = [deckyName("idem"), deckyName("idem")];
  const requestId = `idem-${randomUUID()}`;

  const responses = await Promise.all(
    clients(20).map((client) =>
      client.accept({
        operation: Operation.MUTATE,
        targets: names.map((name) => ({ deckyName: name })),
        requestId,
      }),
    ),
  );

  const first = responses[0]!;
  expect(first.rows.map((row) => row.deckyName)).toEqual(names);
  expect(responses).toEqual(responses.map(() => first));
  for (const [index, name] of names.entries()) {
    const listed = await server.grpc.list({ deckyName: name });
    expect(listed.rows).toEqual([first.rows[index]]);
  }
});

test("a filter watcher under 8 concurrent writers gets every matching change in order, and resuming from any revision it saw replays exactly the changes after it", async () => {
  const host = randomUUID();
  const otherHost = randomUUID();
  const prefix = deckyName("load");
  const markerName = `${prefix}-marker`;
  const stopWatching = new AbortController();
  const watch = await watchAfterSnapshot(
    { hostUuid: host },
    stopWatching.signal,
  );
  const watching = readUntil(
    watch.messages,
    (message) => message.row?.deckyName === markerName,
  );

  let changes: WatchResponse[];
  let marker: Lifecycle;
  try {
    await Promise.all(
      clients(8).map(async (client, writer) => {
        // Two writers work for another host: the watcher must skip their rows.
        const hostUuid = writer < 6 ? host : otherHost;
        for (let round = 0; round < 5; round += 1) {
          const name = `${prefix}-${writer}-${round}`;
          const row = await acceptOne(client, name, hostUuid);
          await client.report({ lifecycleId: row.id, status: Status.RUNNING });
          await client.report(
            round % 2 === 0
              ? { lifecycleId: row.id, status: Status.SUCCEEDED }
              : { lifecycleId: row.id, status: Status.FAILED, error: "failed" },
          );
        }
      }),
    );
    marker = await acceptOne(server.grpc, markerName, host);
    changes = await watching;
  } finally {
    stopWatching.abort();
  }
  // One change after everything the watcher saw, so that a resume from its
  // last revision has something to replay too.
  const last = await server.grpc.report({
    lifecycleId: marker.id,
    status: Status.RUNNING,
  });

  const [snapshotEnd] = watch.snapshot;
  expect(watch.snapshot).toHaveLength(1);
  expect(snapshotEnd!.kind).toBe(WatchResponse_Kind.SNAPSHOT_END);
  const log = await changeLog({ hostUuid: host });
  expect(log).toHaveLength(6 * 5 * 3 + 2);
  expect(log[0]!.revision).toBeGreaterThan(snapshotEnd!.revision);
  expect(log.at(-1)!.revision).toBe(last.row!.revision);
  const revisions = changes.map((change) => change.revision);
  for (const [index, revision] of revisions.slice(1).entries()) {
    expect(revision).toBeGreaterThan(revisions[index]!);
  }
  expect(changes.map(changeOf)).toEqual(log.slice(0, -1));

  for (const after of [snapshotEnd!.revision, ...revisions]) {
    const stopResuming = new AbortController();
    const resumed = server.grpc
      .watch(
        { hostUuid: host, afterRevision: after },
        { signal: stopResuming.signal },
      )
      [Symbol.asyncIterator]();
    const replayed = await readUntil(
      resumed,
      (message) => message.revision === last.row!.revision,
    );
    stopResuming.abort();
    expect(replayed.map(changeOf)).toEqual(
      log.filter((change) => change.revision > after),
    );
  }
});

test("many HTTP/2 and HTTP/1.1 connections at once on one port are each served", async () => {
  const name = deckyName("conn");
  // No keep-alive: every HTTP/1.1 call opens a connection of its own, as
  // does every gRPC transport.
  const agent = new http.Agent({ keepAlive: false });
  const http2Clients = Array.from({ length: 16 }, () =>
    createClient(
      LifecycleService,
      createGrpcTransport({ baseUrl: server.url }),
    ),
  );
  const http1Clients = Array.from({ length: 16 }, (_, index) =>
    createClient(
      LifecycleService,
      index % 2 === 0
        ? createConnectTransport({
            baseUrl: server.url,
            httpVersion: "1.1",
            nodeOptions: { agent },
          })
        : createGrpcWebTransport({
            baseUrl: server.url,
            httpVersion: "1.1",
            nodeOptions: { agent },
          }),
    ),
  );
  const names = Array.from({ length: 32 }, (_, index) => `${name}-${index}`);

  const rows = await Promise.all(
    [...http2Clients, ...http1Clients].map((client, index) =>
      acceptOne(client, names[index]!),
    ),
  );

  expect(rows.map((row) => row.deckyName)).toEqual(names);
  const listed = await server.grpc.list({
    ids: rows.map((row) => row.id),
    pageSize: 100,
  });
  expect(listed.rows.map((row) => row.id).sort()).toEqual(
    rows.map((row) => row.id).sort(),
  );
  agent.destroy();
});

/**
 * A proxy to `target` that passes each connection's first `count` bytes on
 * one write at a time, so the server reads the start of the HTTP/2 preface
 * or of an HTTP/1.1 request in pieces.
 */
async function startTricklingProxy(target: URL, count: number) {
  const sockets = new Set<net.Socket>();
  const proxy = net.createServer((client) => {
    const upstream = net.connect(Number(target.port), target.hostname);
    upstream.setNoDelay(true);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
    let sent = 0;
    client.on("data", (chunk: Buffer) => {
      client.pause();
      void (async () => {
        const head = chunk.subarray(0, Math.max(0, count - sent));
        for (const byte of head) {
          upstream.write(Buffer.from([byte]));
          await new Promise((resolve) => setImmediate(resolve));
        }
        sent += head.length;
        if (head.length < chunk.length) {
          upstream.write(chunk.subarray(head.length));
        }
        client.resume();
      })();
    });
    client.on("end", () => upstream.end());
    upstream.pipe(client);
  });
  proxy.listen(0, "127.0.0.1");
  await new Promise((resolve) => proxy.once("listening", resolve));
  const { port } = proxy.address() as net.AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    close() {
      proxy.close();
      for (const socket of sockets) socket.destroy();
    },
  };
}

test("connections whose first bytes arrive one at a time are served over HTTP/2 and HTTP/1.1", async () => {
  const proxy = await startTricklingProxy(new URL(server.url), 40);
  const [overGrpc, overConnect, overGrpcWeb] = clients(3, proxy.url);
  const name = deckyName("trickle");

  try {
    const rows = [
      await acceptOne(overGrpc!, `${name}-grpc`),
      await acceptOne(overConnect!, `${name}-connect`),
      await acceptOne(overGrpcWeb!, `${name}-grpc-web`),
    ];

    expect(rows.map((row) => row.deckyName)).toEqual([
      `${name}-grpc`,
      `${name}-connect`,
      `${name}-grpc-web`,
    ]);
  } finally {
    proxy.close();
  }
});
