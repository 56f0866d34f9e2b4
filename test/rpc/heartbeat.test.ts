import { randomUUID } from "node:crypto";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, afterEach, beforeAll, expect, test } from "vitest";
import {
  DeltaOutcome_Result,
  type DeltaOutcomeSchema,
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
  HeartbeatResponseSchema,
  type Lifecycle,
  type LifecycleDeltaSchema,
  LifecycleSchema,
  Operation,
  Status,
  type WatchResponse,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { AsyncQueue } from "../../src/worker/async-queue.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

let database: TestDatabase;
let server: TestServer;
const cleanups: (() => void)[] = [];

beforeAll(async () => {
  database = await createTestDatabase();
  server = await startTestServer(database);
});

afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

afterAll(async () => {
  await server?.close();
  await database?.drop();
});

type DeltaInit = MessageInitShape<typeof LifecycleDeltaSchema>;
type OutcomeInit = MessageInitShape<typeof DeltaOutcomeSchema>;

/** An open Heartbeat call whose messages the test sends one by one. */
interface HeartbeatCall {
  send(hostUuid: string, deltas: DeltaInit[], agentVersion?: string): void;
  /** Closes the request stream; resolves with the response. */
  close(): Promise<HeartbeatResponse>;
  /** Resolves with the error the call failed with. */
  failure(): Promise<ConnectError>;
}

function openHeartbeat(): HeartbeatCall {
  const queue = new AsyncQueue<HeartbeatRequest>();
  cleanups.push(() => queue.close());
  const settled = server.grpc.heartbeat(queue).then(
    (response) => ({ response }),
    (error: unknown) => ({ error: ConnectError.from(error) }),
  );
  return {
    send(hostUuid, deltas, agentVersion = "test-agent/1.0") {
      queue.push(
        create(HeartbeatRequestSchema, { hostUuid, agentVersion, deltas }),
      );
    },
    async close() {
      queue.close();
      const outcome = await settled;
      if ("error" in outcome) throw outcome.error;
      return outcome.response;
    },
    async failure() {
      const outcome = await settled;
      if ("response" in outcome) {
        throw new Error("the Heartbeat call succeeded; expected it to fail");
      }
      return outcome.error;
    },
  };
}

/** Sends `messages` on one stream, closes it, and returns the response. */
async function heartbeat(
  hostUuid: string,
  ...messages: DeltaInit[][]
): Promise<HeartbeatResponse> {
  const call = openHeartbeat();
  for (const deltas of messages) call.send(hostUuid, deltas);
  return call.close();
}

/** A Watch by ids past its snapshot: yields each change as it arrives. */
async function watchChanges(
  ids: string[],
): Promise<{ next(): Promise<Lifecycle> }> {
  const abort = new AbortController();
  cleanups.push(() => abort.abort());
  const stream = server.connect
    .watch({ ids }, { signal: abort.signal })
    [Symbol.asyncIterator]();
  const read = async (): Promise<WatchResponse> => {
    for (;;) {
      const { value, done } = await stream.next();
      if (done) throw new Error("the Watch stream ended");
      if (value.kind !== WatchResponse_Kind.KEEPALIVE) return value;
    }
  };
  while ((await read()).kind !== WatchResponse_Kind.SNAPSHOT_END);
  return {
    async next() {
      const message = await read();
      expect(message.kind).toBe(WatchResponse_Kind.CHANGE);
      return message.row!;
    },
  };
}

async function accept(
  name: string,
  hostUuid: string | undefined,
  operation = Operation.DEPLOY,
): Promise<Lifecycle> {
  const response = await server.grpc.accept({
    operation,
    targets: [
      hostUuid === undefined
        ? { deckyName: name }
        : { deckyName: name, hostUuid },
    ],
  });
  return response.rows[0]!;
}

async function listRow(id: string): Promise<Lifecycle> {
  const { rows } = await server.grpc.list({ ids: [id] });
  expect(rows).toHaveLength(1);
  return rows[0]!;
}

/** `row` after a change: the given fields, a later update and `revision`. */
function moved(
  row: Lifecycle,
  after: Lifecycle,
  changes: Partial<Pick<Lifecycle, "status" | "error" | "completedAt">>,
  revision: bigint,
): Lifecycle {
  return create(LifecycleSchema, {
    ...row,
    ...changes,
    updatedAt: after.updatedAt,
    revision,
  });
}

function response(
  messages: number,
  applied: number,
  outcomes: OutcomeInit[] = [],
): HeartbeatResponse {
  return create(HeartbeatResponseSchema, { messages, applied, outcomes });
}

interface HostRecord {
  agentVersion: string;
  firstSeenAt: Date;
  lastHeartbeatAt: Date;
}

/** The worker_host row of `hostUuid`, read directly: no RPC reads hosts. */
async function hostRecord(hostUuid: string): Promise<HostRecord | undefined> {
  const rows = await server.server.orm.em
    .fork()
    .getConnection()
    .execute<{ agent_version: string; first_ms: number; last_ms: number }[]>(
      `select agent_version,
              round(extract(epoch from first_seen_at) * 1000)::float8 as first_ms,
              round(extract(epoch from last_heartbeat_at) * 1000)::float8 as last_ms
       from worker_host where host_uuid = ?`,
      [hostUuid],
    );
  const [row] = rows;
  return (
    row && {
      agentVersion: row.agent_version,
      firstSeenAt: new Date(row.first_ms),
      lastHeartbeatAt: new Date(row.last_ms),
    }
  );
}

/** Returns once the clock has moved past `time`, so a later write is later. */
async function clockPast(time: Date): Promise<void> {
  while (Date.now() <= time.getTime()) {
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

test("Heartbeat applies each message when it arrives, in order", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);
  const changes = await watchChanges([row.id]);
  const call = openHeartbeat();
  const completedAt = timestampFromDate(new Date(Date.now() + 1000));

  call.send(host, [
    { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
  ]);
  const running = await changes.next();

  expect(await listRow(row.id)).toEqual(
    moved(row, running, { status: Status.RUNNING }, row.revision + 1n),
  );

  call.send(host, [
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.SUCCEEDED,
      completedAt,
    },
  ]);
  const succeeded = await changes.next();

  expect(await listRow(row.id)).toEqual(
    moved(
      row,
      succeeded,
      { status: Status.SUCCEEDED, completedAt },
      row.revision + 2n,
    ),
  );
  expect(await call.close()).toEqual(response(2, 2));
});

test("Heartbeat applies the deltas of one message in order", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);

  const result = await heartbeat(host, [
    { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.FAILED,
      error: "image pull failed",
    },
  ]);

  expect(result).toEqual(response(1, 2));
  const after = await listRow(row.id);
  expect(after).toEqual(
    moved(
      row,
      after,
      {
        status: Status.FAILED,
        error: "image pull failed",
        completedAt: after.completedAt,
      },
      row.revision + 2n,
    ),
  );
  expect(after.completedAt).toBeDefined();
});

test("Heartbeat records the host's agent version and last heartbeat with every message", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);
  const changes = await watchChanges([row.id]);
  const call = openHeartbeat();

  call.send(
    host,
    [{ deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING }],
    "agent/1.0",
  );
  await changes.next();
  const first = await hostRecord(host);

  expect(first?.agentVersion).toBe("agent/1.0");
  expect(first!.lastHeartbeatAt.getTime()).toBeGreaterThanOrEqual(
    first!.firstSeenAt.getTime(),
  );

  await clockPast(first!.lastHeartbeatAt);
  call.send(
    host,
    [
      {
        deckyName: name,
        operation: Operation.DEPLOY,
        status: Status.SUCCEEDED,
      },
    ],
    "agent/1.1",
  );
  await changes.next();
  const second = await hostRecord(host);

  expect(second).toEqual({
    agentVersion: "agent/1.1",
    firstSeenAt: first!.firstSeenAt,
    lastHeartbeatAt: second?.lastHeartbeatAt,
  });
  expect(second!.lastHeartbeatAt.getTime()).toBeGreaterThan(
    first!.lastHeartbeatAt.getTime(),
  );
  expect(await call.close()).toEqual(response(2, 2));
});

test("Heartbeat records a host that sends a message without deltas", async () => {
  const host = randomUUID();

  const result = await heartbeat(host, []);

  expect(result).toEqual(response(1, 0));
  expect((await hostRecord(host))?.agentVersion).toBe("test-agent/1.0");
});

test("Heartbeat answers a stream closed without messages with zero counts", async () => {
  const call = openHeartbeat();

  expect(await call.close()).toEqual(response(0, 0));
});

test("Heartbeat answers with the counts and an outcome for every delta not applied", async () => {
  const host = randomUUID();
  const name = deckyName();
  const missing = deckyName();
  const row = await accept(name, host);

  const result = await heartbeat(
    host,
    [],
    [
      { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
      {
        deckyName: missing,
        operation: Operation.DEPLOY,
        status: Status.RUNNING,
      },
    ],
    [
      { deckyName: "Not_A_Name", operation: Operation.DEPLOY, status: 3 },
      {
        deckyName: name,
        operation: Operation.DEPLOY,
        status: Status.SUCCEEDED,
      },
      {
        deckyName: name,
        operation: Operation.DEPLOY,
        status: Status.SUCCEEDED,
      },
    ],
  );

  expect(result).toEqual(
    response(3, 2, [
      {
        messageIndex: 1,
        deltaIndex: 1,
        lifecycleId: "",
        result: DeltaOutcome_Result.NO_OPEN_ROW,
        detail: `host ${host} has no open deploy row for decky ${missing}`,
      },
      {
        messageIndex: 2,
        deltaIndex: 0,
        lifecycleId: "",
        result: DeltaOutcome_Result.REJECTED,
        detail: 'decky_name "Not_A_Name" must match ^[a-z0-9-]{1,64}$',
      },
      {
        messageIndex: 2,
        deltaIndex: 2,
        lifecycleId: row.id,
        result: DeltaOutcome_Result.DUPLICATE,
        detail: `lifecycle row ${row.id} is already succeeded`,
      },
    ]),
  );
});

test("Heartbeat calls the same terminal status sent again a duplicate and changes nothing", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);
  const succeeded: DeltaInit = {
    deckyName: name,
    operation: Operation.DEPLOY,
    status: Status.SUCCEEDED,
  };
  await heartbeat(host, [succeeded]);
  const before = await listRow(row.id);

  const result = await heartbeat(host, [succeeded]);

  expect(result).toEqual(
    response(1, 0, [
      {
        messageIndex: 0,
        deltaIndex: 0,
        lifecycleId: row.id,
        result: DeltaOutcome_Result.DUPLICATE,
        detail: `lifecycle row ${row.id} is already succeeded`,
      },
    ]),
  );
  expect(await listRow(row.id)).toEqual(before);
});

test("Heartbeat calls a replayed FAILED with its lifecycle_id a duplicate and keeps the first error", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);
  await heartbeat(host, [
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.FAILED,
      error: "first",
    },
  ]);
  const before = await listRow(row.id);

  const result = await heartbeat(host, [
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.FAILED,
      error: "second",
      lifecycleId: row.id,
    },
  ]);

  expect(result).toEqual(
    response(1, 0, [
      {
        messageIndex: 0,
        deltaIndex: 0,
        lifecycleId: row.id,
        result: DeltaOutcome_Result.DUPLICATE,
        detail: `lifecycle row ${row.id} is already failed`,
      },
    ]),
  );
  expect(await listRow(row.id)).toEqual(before);
  expect(before.error).toBe("first");
});

test("Heartbeat calls RUNNING sent again on a RUNNING row a duplicate", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);
  const runningDelta: DeltaInit = {
    deckyName: name,
    operation: Operation.DEPLOY,
    status: Status.RUNNING,
  };
  await heartbeat(host, [runningDelta]);
  const before = await listRow(row.id);

  const result = await heartbeat(host, [runningDelta]);

  expect(result).toEqual(
    response(1, 0, [
      {
        messageIndex: 0,
        deltaIndex: 0,
        lifecycleId: row.id,
        result: DeltaOutcome_Result.DUPLICATE,
        detail: `lifecycle row ${row.id} is already running`,
      },
    ]),
  );
  expect(await listRow(row.id)).toEqual(before);
});

test("Heartbeat refuses a different status on a terminal row as already terminal", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);
  await heartbeat(host, [
    { deckyName: name, operation: Operation.DEPLOY, status: Status.SUCCEEDED },
  ]);
  const before = await listRow(row.id);

  const result = await heartbeat(host, [
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.FAILED,
      error: "late failure",
    },
  ]);

  expect(result).toEqual(
    response(1, 0, [
      {
        messageIndex: 0,
        deltaIndex: 0,
        lifecycleId: row.id,
        result: DeltaOutcome_Result.ALREADY_TERMINAL,
        detail: `lifecycle row ${row.id} is succeeded and cannot become failed`,
      },
    ]),
  );
  expect(await listRow(row.id)).toEqual(before);
});

test("Heartbeat finds no open row for a decky the host has no row for", async () => {
  const host = randomUUID();
  const name = deckyName();

  const result = await heartbeat(host, [
    { deckyName: name, operation: Operation.MUTATE, status: Status.RUNNING },
  ]);

  expect(result).toEqual(
    response(1, 0, [
      {
        messageIndex: 0,
        deltaIndex: 0,
        lifecycleId: "",
        result: DeltaOutcome_Result.NO_OPEN_ROW,
        detail: `host ${host} has no open mutate row for decky ${name}`,
      },
    ]),
  );
});

test("Heartbeat finds no open row for a lifecycle_id that does not exist", async () => {
  const host = randomUUID();
  const id = randomUUID();

  const result = await heartbeat(host, [
    {
      deckyName: deckyName(),
      operation: Operation.DEPLOY,
      status: Status.RUNNING,
      lifecycleId: id,
    },
  ]);

  expect(result).toEqual(
    response(1, 0, [
      {
        messageIndex: 0,
        deltaIndex: 0,
        lifecycleId: id,
        result: DeltaOutcome_Result.NO_OPEN_ROW,
        detail: `lifecycle row ${id} does not exist`,
      },
    ]),
  );
});

test("Heartbeat does not move another host's open row of the decky without lifecycle_id", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, randomUUID());

  const result = await heartbeat(host, [
    { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
  ]);

  expect(result).toEqual(
    response(1, 0, [
      {
        messageIndex: 0,
        deltaIndex: 0,
        lifecycleId: "",
        result: DeltaOutcome_Result.NO_OPEN_ROW,
        detail: `host ${host} has no open deploy row for decky ${name}`,
      },
    ]),
  );
  expect(await listRow(row.id)).toEqual(row);
});

test("Heartbeat calls a completed_at before the open row started stale and leaves the retry row alone", async () => {
  const host = randomUUID();
  const name = deckyName();
  const first = await accept(name, host);
  await heartbeat(host, [
    { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
  ]);
  await server.grpc.report({
    lifecycleId: first.id,
    status: Status.FAILED,
    error: "timed out",
  });
  const retry = await accept(name, host);
  expect(timestampDate(retry.startedAt!).getTime()).toBeGreaterThan(
    timestampDate(first.startedAt!).getTime(),
  );

  const result = await heartbeat(host, [
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.SUCCEEDED,
      completedAt: first.startedAt,
    },
  ]);

  const completed = timestampDate(first.startedAt!).toISOString();
  const retryStarted = timestampDate(retry.startedAt!).toISOString();
  expect(result).toEqual(
    response(1, 0, [
      {
        messageIndex: 0,
        deltaIndex: 0,
        lifecycleId: retry.id,
        result: DeltaOutcome_Result.STALE,
        detail: `completed_at ${completed} is before lifecycle row ${retry.id} started at ${retryStarted}`,
      },
    ]),
  );
  expect(await listRow(retry.id)).toEqual(retry);
});

test("Heartbeat rejects a lifecycle_id of another host's row and changes nothing", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, randomUUID());

  const result = await heartbeat(host, [
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.SUCCEEDED,
      lifecycleId: row.id,
    },
  ]);

  expect(result).toEqual(
    response(1, 0, [
      {
        messageIndex: 0,
        deltaIndex: 0,
        lifecycleId: row.id,
        result: DeltaOutcome_Result.REJECTED,
        detail: `lifecycle row ${row.id} does not belong to host ${host}`,
      },
    ]),
  );
  expect(await listRow(row.id)).toEqual(row);
});

test("Heartbeat rejects a lifecycle_id of a master-resident row and changes nothing", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, undefined);

  const result = await heartbeat(host, [
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.RUNNING,
      lifecycleId: row.id,
    },
  ]);

  expect(result).toEqual(
    response(1, 0, [
      {
        messageIndex: 0,
        deltaIndex: 0,
        lifecycleId: row.id,
        result: DeltaOutcome_Result.REJECTED,
        detail: `lifecycle row ${row.id} does not belong to host ${host}`,
      },
    ]),
  );
  expect(await listRow(row.id)).toEqual(row);
});

test("Heartbeat rejects a lifecycle_id whose row is of another decky or operation", async () => {
  const host = randomUUID();
  const name = deckyName();
  const other = deckyName();
  const row = await accept(name, host);

  const result = await heartbeat(host, [
    {
      deckyName: other,
      operation: Operation.DEPLOY,
      status: Status.RUNNING,
      lifecycleId: row.id,
    },
    {
      deckyName: name,
      operation: Operation.MUTATE,
      status: Status.RUNNING,
      lifecycleId: row.id,
    },
  ]);

  expect(result).toEqual(
    response(1, 0, [
      {
        messageIndex: 0,
        deltaIndex: 0,
        lifecycleId: row.id,
        result: DeltaOutcome_Result.REJECTED,
        detail: `lifecycle row ${row.id} is deploy of decky ${name}, not deploy of ${other}`,
      },
      {
        messageIndex: 0,
        deltaIndex: 1,
        lifecycleId: row.id,
        result: DeltaOutcome_Result.REJECTED,
        detail: `lifecycle row ${row.id} is deploy of decky ${name}, not mutate of ${name}`,
      },
    ]),
  );
  expect(await listRow(row.id)).toEqual(row);
});

test("Heartbeat rejects malformed deltas with a reason and still applies the rest of the message", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);

  const result = await heartbeat(host, [
    {
      deckyName: "Bad_Name",
      operation: Operation.DEPLOY,
      status: Status.RUNNING,
    },
    { deckyName: name, operation: Operation.DEPLOY, status: Status.PENDING },
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.UNSPECIFIED,
    },
    {
      deckyName: name,
      operation: Operation.UNSPECIFIED,
      status: Status.RUNNING,
    },
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.RUNNING,
      lifecycleId: "row-1",
    },
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.SUCCEEDED,
      error: "not a failure",
    },
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.FAILED,
      error: "nul\0byte",
    },
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.SUCCEEDED,
      completedAt: { seconds: 253_402_300_800n, nanos: 0 },
    },
    { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
  ]);

  const rejected = (deltaIndex: number, detail: string, lifecycleId = "") => ({
    messageIndex: 0,
    deltaIndex,
    lifecycleId,
    result: DeltaOutcome_Result.REJECTED,
    detail,
  });
  expect(result).toEqual(
    response(1, 1, [
      rejected(0, 'decky_name "Bad_Name" must match ^[a-z0-9-]{1,64}$'),
      rejected(
        1,
        "status must be STATUS_RUNNING, STATUS_SUCCEEDED or STATUS_FAILED",
      ),
      rejected(
        2,
        "status must be STATUS_RUNNING, STATUS_SUCCEEDED or STATUS_FAILED",
      ),
      rejected(3, "operation must be OPERATION_DEPLOY or OPERATION_MUTATE"),
      rejected(4, 'lifecycle_id "row-1" is not a UUID', "row-1"),
      rejected(5, "error may be set only with STATUS_FAILED"),
      rejected(6, "error must not contain NUL characters"),
      rejected(
        7,
        "completed_at must be a time from 0001-01-01 to 9999-12-31 UTC",
      ),
    ]),
  );
  const after = await listRow(row.id);
  expect(after).toEqual(
    moved(row, after, { status: Status.RUNNING }, row.revision + 1n),
  );
});

test("Heartbeat without lifecycle_id moves the open row of the host, decky and operation", async () => {
  const host = randomUUID();
  const name = deckyName();
  const first = await accept(name, host);
  await server.grpc.report({ lifecycleId: first.id, status: Status.FAILED });
  const closed = await listRow(first.id);
  const retry = await accept(name, host);
  const mutate = await accept(name, host, Operation.MUTATE);

  const result = await heartbeat(host, [
    { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
  ]);

  expect(result).toEqual(response(1, 1));
  const after = await listRow(retry.id);
  expect(after).toEqual(
    moved(retry, after, { status: Status.RUNNING }, mutate.revision + 1n),
  );
  expect(await listRow(first.id)).toEqual(closed);
  expect(await listRow(mutate.id)).toEqual(mutate);
});

test("Heartbeat with lifecycle_id moves exactly that row, not the open retry", async () => {
  const host = randomUUID();
  const name = deckyName();
  const first = await accept(name, host);
  await server.grpc.report({ lifecycleId: first.id, status: Status.FAILED });
  const closed = await listRow(first.id);
  const retry = await accept(name, host);

  const result = await heartbeat(host, [
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.SUCCEEDED,
      lifecycleId: first.id,
    },
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.RUNNING,
      lifecycleId: retry.id.toUpperCase(),
    },
  ]);

  expect(result).toEqual(
    response(1, 1, [
      {
        messageIndex: 0,
        deltaIndex: 0,
        lifecycleId: first.id,
        result: DeltaOutcome_Result.ALREADY_TERMINAL,
        detail: `lifecycle row ${first.id} is failed and cannot become succeeded`,
      },
    ]),
  );
  expect(await listRow(first.id)).toEqual(closed);
  const after = await listRow(retry.id);
  expect(after).toEqual(
    moved(retry, after, { status: Status.RUNNING }, retry.revision + 1n),
  );
});

test("Heartbeat fails the call when the host changes mid-stream and keeps the earlier messages' effects", async () => {
  const host = randomUUID();
  const other = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);
  const changes = await watchChanges([row.id]);
  const call = openHeartbeat();
  call.send(host, [
    { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
  ]);
  const running = await changes.next();

  call.send(other, [
    { deckyName: name, operation: Operation.DEPLOY, status: Status.SUCCEEDED },
  ]);
  const error = await call.failure();

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    `host_uuid "${other}" of message 1 differs from ${host}, the host this stream started with`,
  ]);
  expect(await listRow(row.id)).toEqual(running);
});

test("Heartbeat takes the same host_uuid in another letter case as the same host", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);

  const call = openHeartbeat();
  call.send(host, [
    { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
  ]);
  call.send(host.toUpperCase(), [
    { deckyName: name, operation: Operation.DEPLOY, status: Status.SUCCEEDED },
  ]);

  expect(await call.close()).toEqual(response(2, 2));
  expect((await listRow(row.id)).status).toBe(Status.SUCCEEDED);
});

test("Heartbeat refuses a host_uuid that is not a UUID in the first message", async () => {
  const name = deckyName();
  const row = await accept(name, randomUUID());
  const call = openHeartbeat();

  call.send("worker-7", [
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.RUNNING,
      lifecycleId: row.id,
    },
  ]);
  const error = await call.failure();

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    'host_uuid "worker-7" is not a UUID',
  ]);
  expect(await listRow(row.id)).toEqual(row);
});

test("Heartbeat refuses an agent_version longer than 200 characters", async () => {
  const host = randomUUID();
  const call = openHeartbeat();

  call.send(host, [], "v".repeat(201));
  const error = await call.failure();

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    "agent_version is 201 characters long; at most 200 are allowed",
  ]);
  expect(await hostRecord(host)).toBeUndefined();
});

test("Heartbeat cuts error text longer than 2000 characters to 2000", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);

  const result = await heartbeat(host, [
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.FAILED,
      error: `${"e".repeat(1999)}xyz`,
    },
  ]);

  expect(result).toEqual(response(1, 1));
  expect((await listRow(row.id)).error).toBe(`${"e".repeat(1999)}x`);
});

test("Heartbeat stores a completed_at at the end of the Timestamp range", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);
  const completedAt = { seconds: 253_402_300_799n, nanos: 999_000_000 };

  const result = await heartbeat(host, [
    {
      deckyName: name,
      operation: Operation.DEPLOY,
      status: Status.SUCCEEDED,
      completedAt,
    },
  ]);

  expect(result).toEqual(response(1, 1));
  expect(
    timestampDate((await listRow(row.id)).completedAt!).toISOString(),
  ).toBe("9999-12-31T23:59:59.999Z");
});

test("Heartbeat refuses a message of more than 500 deltas and applies none of it", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);
  const before = await listRow(row.id);
  const deltas: DeltaInit[] = Array.from({ length: 501 }, () => ({
    deckyName: name,
    operation: Operation.DEPLOY,
    status: Status.RUNNING,
  }));

  const failure = await heartbeat(host, deltas).then(
    () => undefined,
    (error: unknown) => ConnectError.from(error),
  );

  expect(failure?.code).toBe(Code.InvalidArgument);
  expect(failure?.rawMessage).toBe(
    "deltas of message 0 has 501 entries; at most 500 are allowed",
  );
  expect(await listRow(row.id)).toEqual(before);
});

test("Heartbeat ends a stream whose refused-delta outcomes would pass 10,000 before applying the message that could pass it", async () => {
  const host = randomUUID();
  const name = deckyName();
  const row = await accept(name, host);
  const absent: DeltaInit[] = Array.from({ length: 500 }, () => ({
    deckyName: deckyName("absent"),
    operation: Operation.DEPLOY,
    status: Status.RUNNING,
  }));
  const call = openHeartbeat();
  for (let message = 0; message < 20; message += 1) call.send(host, absent);

  call.send(host, [
    { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
  ]);
  const failure = await call.failure();

  expect([Code[failure.code], failure.rawMessage]).toEqual([
    "ResourceExhausted",
    "this stream already holds 10000 outcomes of refused deltas, and message 20 could pass the limit of 10000; close the stream to read them and send message 20 again on a new stream",
  ]);
  expect((await listRow(row.id)).status).toBe(Status.PENDING);
  const retried = await heartbeat(host, [
    { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
  ]);
  expect(retried).toEqual(response(1, 1));
  expect((await listRow(row.id)).status).toBe(Status.RUNNING);
});
