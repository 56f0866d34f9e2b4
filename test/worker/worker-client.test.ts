import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, type ConnectError } from "@connectrpc/connect";
import { afterAll, afterEach, beforeAll, expect, test, vi } from "vitest";
import {
  type DeltaOutcome,
  DeltaOutcome_Result,
  DeltaOutcomeSchema,
  type Lifecycle,
  type LifecycleDelta,
  LifecycleDeltaSchema,
  Operation,
  Status,
  type WatchResponse,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { Outbox } from "../../src/worker/outbox.js";
import {
  WorkerClient,
  type WorkerClientOptions,
} from "../../src/worker/worker-client.js";
import { TcpProxy } from "../support/tcp-proxy.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

/** An interval no test outlives, so that only reports send messages. */
const NEVER_MS = 600_000;

let database: TestDatabase;
let server: TestServer;
let directory: string;
const cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  database = await createTestDatabase();
  server = await startTestServer(database);
  directory = await mkdtemp(join(tmpdir(), "dl-worker-"));
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
  vi.restoreAllMocks();
});

afterAll(async () => {
  await server?.close();
  await database?.drop();
  await rm(directory, { recursive: true, force: true });
});

/** A new outbox file path in the test directory. */
function outboxPath(): string {
  return join(directory, `${randomUUID()}.outbox`);
}

/** A worker on the test server's gRPC transport; stopped after the test. */
function worker(
  options: Partial<WorkerClientOptions> & { hostUuid: string },
): WorkerClient {
  const client = new WorkerClient({
    transport: server.transports.grpc,
    agentVersion: "worker-test/1.0",
    intervalMs: NEVER_MS,
    ...options,
  } as WorkerClientOptions);
  cleanups.push(() => client.stop({ timeoutMs: 1000 }).catch(() => undefined));
  return client;
}

/** A Watch by ids over Connect, past its snapshot. */
async function watchChanges(
  ids: string[],
): Promise<{ next(): Promise<Lifecycle>; ended(): Promise<boolean> }> {
  const abort = new AbortController();
  cleanups.push(() => abort.abort());
  const stream = server.connect
    .watch({ ids }, { signal: abort.signal })
    [Symbol.asyncIterator]();
  const read = async (): Promise<WatchResponse | undefined> => {
    for (;;) {
      const { value, done } = await stream.next();
      if (done) return undefined;
      if (value.kind !== WatchResponse_Kind.KEEPALIVE) return value;
    }
  };
  while ((await read())?.kind !== WatchResponse_Kind.SNAPSHOT_END);
  return {
    async next() {
      const message = await read();
      expect(message?.kind).toBe(WatchResponse_Kind.CHANGE);
      return message!.row!;
    },
    async ended() {
      return (await read()) === undefined;
    },
  };
}

async function accept(names: string[], hostUuid: string): Promise<string[]> {
  const response = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: names.map((name) => ({ deckyName: name, hostUuid })),
  });
  return response.lifecycleIds;
}

/** The statuses the change log holds for row `id`, oldest first. */
async function changeLog(id: string): Promise<string[]> {
  const rows = await server.server.orm.em
    .fork()
    .getConnection()
    .execute<{ status: string }[]>(
      "select status from lifecycle_change where lifecycle_id = ? order by revision",
      [id],
    );
  return rows.map((row) => row.status);
}

/** The last heartbeat time of `hostUuid` in milliseconds, if it has one. */
async function lastHeartbeatMs(hostUuid: string): Promise<number | undefined> {
  const rows = await server.server.orm.em
    .fork()
    .getConnection()
    .execute<{ last_ms: number }[]>(
      `select round(extract(epoch from last_heartbeat_at) * 1000)::float8
         as last_ms
       from worker_host where host_uuid = ?`,
      [hostUuid],
    );
  return rows[0]?.last_ms;
}

/** Every error `onError` receives, and a promise of the first. */
function errorCatcher(): {
  onError: (error: ConnectError) => void;
  received: Promise<ConnectError>;
  calls: ConnectError[];
} {
  const calls: ConnectError[] = [];
  let resolve: (error: ConnectError) => void = () => undefined;
  const received = new Promise<ConnectError>((r) => {
    resolve = r;
  });
  return {
    onError(error) {
      calls.push(error);
      resolve(error);
    },
    received,
    calls,
  };
}

/** Collects what `onOutcome` receives. */
function outcomeCatcher(): {
  onOutcome: (outcome: DeltaOutcome, delta: LifecycleDelta) => void;
  calls: [DeltaOutcome, LifecycleDelta][];
} {
  const calls: [DeltaOutcome, LifecycleDelta][] = [];
  return { onOutcome: (outcome, delta) => calls.push([outcome, delta]), calls };
}

/** A 127.0.0.1 URL where nothing listens. */
async function closedPortUrl(): Promise<string> {
  const probe = createServer();
  probe.listen(0, "127.0.0.1");
  await once(probe, "listening");
  const { port } = probe.address() as { port: number };
  probe.close();
  await once(probe, "close");
  return `http://127.0.0.1:${port}`;
}

test("WorkerClient moves each row as soon as running, succeeded or failed is called", async () => {
  const host = randomUUID();
  const [web, db] = [deckyName("web"), deckyName("db")];
  const [webId, dbId] = await accept([web, db], host);
  const changes = await watchChanges([webId!, dbId!]);
  const client = worker({ hostUuid: host });
  client.start();

  client.running({ deckyName: web, operation: Operation.DEPLOY });
  const running = await changes.next();
  client.succeeded({ deckyName: web, operation: Operation.DEPLOY });
  const succeeded = await changes.next();
  client.failed(
    { deckyName: db, operation: Operation.DEPLOY, lifecycleId: dbId! },
    "image pull failed",
  );
  const failed = await changes.next();

  expect([running.id, running.status]).toEqual([webId, Status.RUNNING]);
  expect([succeeded.id, succeeded.status]).toEqual([webId, Status.SUCCEEDED]);
  expect([failed.id, failed.status, failed.error]).toEqual([
    dbId,
    Status.FAILED,
    "image pull failed",
  ]);
  expect(await changes.ended()).toBe(true);
  expect(await client.stop()).toEqual({
    streams: 1,
    messages: 4,
    applied: 3,
    notApplied: 0,
    unacknowledged: 0,
  });
});

test("WorkerClient sends deltas reported in the same tick in one message, in order", async () => {
  const host = randomUUID();
  const name = deckyName();
  const [id] = await accept([name], host);
  const changes = await watchChanges([id!]);
  const client = worker({ hostUuid: host });
  client.start();

  client.running({ deckyName: name, operation: Operation.DEPLOY });
  client.succeeded({ deckyName: name, operation: Operation.DEPLOY });

  const running = await changes.next();
  const succeeded = await changes.next();
  expect([running.status, succeeded.status]).toEqual([
    Status.RUNNING,
    Status.SUCCEEDED,
  ]);
  expect(succeeded.revision).toBe(running.revision + 1n);
  expect(await client.stop()).toMatchObject({ messages: 2, applied: 2 });
});

test("WorkerClient sends a heartbeat message every interval while it has no deltas", async () => {
  const host = randomUUID();
  const client = worker({ hostUuid: host, intervalMs: 100 });
  const seen = new Set<number>();

  client.start();
  await vi.waitFor(
    async () => {
      const last = await lastHeartbeatMs(host);
      if (last !== undefined) seen.add(last);
      expect(seen.size).toBeGreaterThanOrEqual(3);
    },
    { timeout: 30_000, interval: 20 },
  );
  const totals = await client.stop();

  expect(totals.applied).toBe(0);
  expect(totals.notApplied).toBe(0);
  expect(totals.messages).toBeGreaterThanOrEqual(3);
});

test("WorkerClient stop() sends the deltas still waiting and passes each delta the server did not apply to onOutcome", async () => {
  const host = randomUUID();
  const name = deckyName();
  const missing = deckyName();
  const [id] = await accept([name], host);
  const outcomes = outcomeCatcher();
  const client = worker({ hostUuid: host, onOutcome: outcomes.onOutcome });
  client.start();

  client.running({ deckyName: name, operation: Operation.DEPLOY });
  client.succeeded({ deckyName: missing, operation: Operation.DEPLOY });
  const totals = await client.stop();

  expect(totals).toEqual({
    streams: 1,
    messages: 2,
    applied: 1,
    notApplied: 1,
    unacknowledged: 0,
  });
  expect(outcomes.calls).toEqual([
    [
      create(DeltaOutcomeSchema, {
        messageIndex: 1,
        deltaIndex: 1,
        lifecycleId: "",
        result: DeltaOutcome_Result.NO_OPEN_ROW,
        detail: `host ${host} has no open deploy row for decky ${missing}`,
      }),
      create(LifecycleDeltaSchema, {
        deckyName: missing,
        operation: Operation.DEPLOY,
        status: Status.SUCCEEDED,
      }),
    ],
  ]);
  const { rows } = await server.grpc.list({ ids: [id!] });
  expect(rows.map((row) => row.status)).toEqual([Status.RUNNING]);
});

test("WorkerClient stop() returns the same promise when called again", async () => {
  const client = worker({ hostUuid: randomUUID() });
  client.start();

  const first = client.stop();
  const second = client.stop();

  expect(second).toBe(first);
  expect(await first).toEqual({
    streams: 1,
    messages: 1,
    applied: 0,
    notApplied: 0,
    unacknowledged: 0,
  });
});

test("WorkerClient with a base URL opens its own connection and stops cleanly", async () => {
  const host = randomUUID();
  const name = deckyName();
  const [id] = await accept([name], host);
  const changes = await watchChanges([id!]);
  const client = new WorkerClient({
    baseUrl: server.url,
    hostUuid: host,
    agentVersion: "worker-test/1.0",
    intervalMs: NEVER_MS,
  });
  cleanups.push(() => client.stop().catch(() => undefined));
  client.start();

  client.succeeded({ deckyName: name, operation: Operation.DEPLOY });

  expect((await changes.next()).status).toBe(Status.SUCCEEDED);
  expect(await client.stop()).toMatchObject({ messages: 2, applied: 1 });
});

test("WorkerClient keeps a delta in its outbox file until a stream that carried it closes with OK", async () => {
  const host = randomUUID();
  const name = deckyName();
  const [id] = await accept([name], host);
  const changes = await watchChanges([id!]);
  const path = outboxPath();
  const client = worker({ hostUuid: host, outboxPath: path });
  client.start();
  const target = { deckyName: name, operation: Operation.DEPLOY };

  client.running({ ...target, lifecycleId: id! });
  const applied = await changes.next();
  const beforeClose = Outbox.read(path);
  const totals = await client.stop();

  expect(applied.status).toBe(Status.RUNNING);
  expect(beforeClose).toEqual([
    {
      seq: 1,
      delta: create(LifecycleDeltaSchema, {
        ...target,
        lifecycleId: id!,
        status: Status.RUNNING,
      }),
    },
  ]);
  expect(totals).toMatchObject({ applied: 1, unacknowledged: 0 });
  expect(Outbox.read(path)).toEqual([]);
});

test("WorkerClient closes and reopens its stream after streamMessages messages, acknowledging what the first carried", async () => {
  const host = randomUUID();
  const name = deckyName();
  const [id] = await accept([name], host);
  const changes = await watchChanges([id!]);
  const client = worker({
    hostUuid: host,
    outboxPath: outboxPath(),
    streamMessages: 3,
  });
  client.start();
  const target = { deckyName: name, operation: Operation.DEPLOY };

  client.running({ ...target, lifecycleId: id! });
  await changes.next();
  client.succeeded({ ...target, lifecycleId: id! });
  await changes.next();
  await vi.waitFor(() => expect(client.unacknowledged).toBe(0), {
    timeout: 10_000,
  });
  const totals = await client.stop();

  // The first stream: a heartbeat and two deltas; the second: a heartbeat.
  expect(totals).toEqual({
    streams: 2,
    messages: 4,
    applied: 2,
    notApplied: 0,
    unacknowledged: 0,
  });
});

test("WorkerClient carries at most streamDeltas deltas on one stream and sends the rest on the next", async () => {
  const host = randomUUID();
  const names = Array.from({ length: 5 }, () => deckyName());
  const ids = await accept(names, host);
  const client = worker({
    hostUuid: host,
    outboxPath: outboxPath(),
    streamDeltas: 2,
  });
  client.start();

  names.forEach((name, i) => {
    client.running({
      deckyName: name,
      operation: Operation.DEPLOY,
      lifecycleId: ids[i]!,
    });
  });
  const totals = await client.stop();

  // A heartbeat, then deltas two by two, each pair on a stream of its own.
  expect(totals).toEqual({
    streams: 3,
    messages: 4,
    applied: 5,
    notApplied: 0,
    unacknowledged: 0,
  });
  const { rows } = await server.grpc.list({ ids });
  expect(rows.map((row) => row.status)).toEqual(
    names.map(() => Status.RUNNING),
  );
});

test("WorkerClient closes and reopens its stream after streamMs, acknowledging what it carried", async () => {
  const host = randomUUID();
  const name = deckyName();
  const [id] = await accept([name], host);
  const client = worker({
    hostUuid: host,
    outboxPath: outboxPath(),
    streamMs: 200,
  });
  client.start();

  client.running({
    deckyName: name,
    operation: Operation.DEPLOY,
    lifecycleId: id!,
  });
  expect(client.unacknowledged).toBe(1);
  await vi.waitFor(() => expect(client.unacknowledged).toBe(0), {
    timeout: 10_000,
  });
  const totals = await client.stop();

  expect(totals.streams).toBeGreaterThanOrEqual(2);
  expect(totals).toMatchObject({ applied: 1, unacknowledged: 0 });
});

test("WorkerClient sends again what a cut connection left unacknowledged; the server answers DUPLICATE and changes nothing", async () => {
  const host = randomUUID();
  const name = deckyName();
  const [id] = await accept([name], host);
  const changes = await watchChanges([id!]);
  const proxy = await TcpProxy.start(server.url);
  cleanups.push(() => proxy.close());
  const errors = errorCatcher();
  const outcomes = outcomeCatcher();
  const client = new WorkerClient({
    baseUrl: proxy.url,
    hostUuid: host,
    agentVersion: "worker-test/1.0",
    intervalMs: NEVER_MS,
    outboxPath: outboxPath(),
    reconnectMinMs: 10,
    onError: errors.onError,
    onOutcome: outcomes.onOutcome,
  });
  cleanups.push(() => client.stop().catch(() => undefined));
  client.start();
  const running = {
    deckyName: name,
    operation: Operation.DEPLOY,
    lifecycleId: id!,
    status: Status.RUNNING,
  };

  client.report(running);
  expect((await changes.next()).status).toBe(Status.RUNNING);
  proxy.cut();
  const error = await errors.received;
  const totals = await client.stop();

  // Node's HTTP/2 ends the streams of a connection that was reset this way.
  expect([error.code, error.rawMessage]).toEqual([
    Code.Canceled,
    "http/2 stream closed with error code CANCEL (0x8)",
  ]);
  expect(totals).toEqual({
    streams: 1,
    messages: 1,
    applied: 0,
    notApplied: 1,
    unacknowledged: 0,
  });
  expect(outcomes.calls).toEqual([
    [
      create(DeltaOutcomeSchema, {
        messageIndex: 0,
        deltaIndex: 0,
        lifecycleId: id!,
        result: DeltaOutcome_Result.DUPLICATE,
        detail: `lifecycle row ${id} is already running`,
      }),
      create(LifecycleDeltaSchema, running),
    ],
  ]);
  expect(await changeLog(id!)).toEqual(["pending", "running"]);
});

test("WorkerClient keeps what the server did not acknowledge in its outbox file, and a client restarted on that file sends it", async () => {
  const host = randomUUID();
  const name = deckyName();
  const [id] = await accept([name], host);
  const changes = await watchChanges([id!]);
  const path = outboxPath();
  const unreachable = new WorkerClient({
    baseUrl: await closedPortUrl(),
    hostUuid: host,
    agentVersion: "worker-test/1.0",
    outboxPath: path,
    reconnectMinMs: 10,
    reconnectMaxMs: 50,
  });
  unreachable.start();
  const delta = {
    deckyName: name,
    operation: Operation.DEPLOY,
    lifecycleId: id!,
    status: Status.FAILED,
    error: "disk full",
  };
  unreachable.report(delta);
  const left = await unreachable.stop({ timeoutMs: 300 });
  const kept = Outbox.read(path);

  const restarted = worker({ hostUuid: host, outboxPath: path });
  restarted.start();
  const row = await changes.next();
  const totals = await restarted.stop();

  expect(left).toEqual({
    streams: 0,
    messages: 0,
    applied: 0,
    notApplied: 0,
    unacknowledged: 1,
  });
  expect(kept).toEqual([
    { seq: 1, delta: create(LifecycleDeltaSchema, delta) },
  ]);
  expect([row.id, row.status, row.error]).toEqual([
    id,
    Status.FAILED,
    "disk full",
  ]);
  expect(totals).toEqual({
    streams: 1,
    messages: 1,
    applied: 1,
    notApplied: 0,
    unacknowledged: 0,
  });
  expect(Outbox.read(path)).toEqual([]);
});

test("WorkerClient restarted on an outbox whose deltas were applied before the crash changes nothing: RUNNING comes back ALREADY_TERMINAL, the terminal status DUPLICATE", async () => {
  const host = randomUUID();
  const name = deckyName();
  const [id] = await accept([name], host);
  const target = {
    deckyName: name,
    operation: Operation.DEPLOY,
    lifecycleId: id!,
  };
  const first = worker({ hostUuid: host });
  first.start();
  first.running(target);
  first.succeeded(target);
  await first.stop();
  // The outbox of a worker that crashed before its stream closed with OK.
  const path = outboxPath();
  const crashed = Outbox.open(path);
  crashed.add([
    create(LifecycleDeltaSchema, { ...target, status: Status.RUNNING }),
    create(LifecycleDeltaSchema, { ...target, status: Status.SUCCEEDED }),
  ]);
  crashed.close();
  const outcomes = outcomeCatcher();

  const restarted = worker({
    hostUuid: host,
    outboxPath: path,
    onOutcome: outcomes.onOutcome,
  });
  restarted.start();
  const totals = await restarted.stop();

  expect(totals).toMatchObject({ applied: 0, notApplied: 2 });
  expect(outcomes.calls.map(([outcome]) => outcome)).toEqual([
    create(DeltaOutcomeSchema, {
      messageIndex: 0,
      deltaIndex: 0,
      lifecycleId: id!,
      result: DeltaOutcome_Result.ALREADY_TERMINAL,
      detail: `lifecycle row ${id} is succeeded and cannot become running`,
    }),
    create(DeltaOutcomeSchema, {
      messageIndex: 0,
      deltaIndex: 1,
      lifecycleId: id!,
      result: DeltaOutcome_Result.DUPLICATE,
      detail: `lifecycle row ${id} is already succeeded`,
    }),
  ]);
  expect(await changeLog(id!)).toEqual(["pending", "running", "succeeded"]);
  expect(Outbox.read(path)).toEqual([]);
});

test("WorkerClient passes every stream error to onError and keeps reconnecting", async () => {
  const errors = errorCatcher();
  const client = worker({
    hostUuid: "worker-7",
    onError: errors.onError,
    reconnectMinMs: 10,
    reconnectMaxMs: 20,
  });

  client.start();
  await vi.waitFor(() => expect(errors.calls.length).toBeGreaterThan(2), {
    timeout: 10_000,
  });
  const totals = await client.stop({ timeoutMs: 1000 });

  for (const error of errors.calls) {
    expect([error.code, error.rawMessage]).toEqual([
      Code.InvalidArgument,
      'host_uuid "worker-7" is not a UUID',
    ]);
  }
  expect(totals).toEqual({
    streams: 0,
    messages: 0,
    applied: 0,
    notApplied: 0,
    unacknowledged: 0,
  });
});

test("WorkerClient waits twice as long, give or take its jitter, after each failed attempt, up to reconnectMaxMs", async () => {
  const url = await closedPortUrl();
  const failedAt: number[] = [];
  const client = new WorkerClient({
    baseUrl: url,
    hostUuid: randomUUID(),
    agentVersion: "worker-test/1.0",
    intervalMs: NEVER_MS,
    reconnectMinMs: 40,
    reconnectMaxMs: 640,
    onError: () => failedAt.push(performance.now()),
  });

  client.start();
  await vi.waitFor(() => expect(failedAt.length).toBeGreaterThanOrEqual(8), {
    timeout: 10_000,
  });
  await client.stop({ timeoutMs: 100 });

  // The n-th wait is 40 * 2^n ms times a random factor between 1 and 2,
  // and at most 640 ms; a refused connection adds a few milliseconds, and a
  // busy machine may fire a timer late, never early.
  const waits = failedAt.slice(1, 8).map((at, n) => at - failedAt[n]!);
  const outOfBounds = waits
    .map((wait, n) => ({
      n,
      wait: Math.round(wait),
      least: Math.min(40 * 2 ** n, 640) - 5,
      most: Math.min(80 * 2 ** n, 640) + 400,
    }))
    .filter(({ wait, least, most }) => wait < least || wait > most);
  expect(outOfBounds).toEqual([]);
});

test("WorkerClient reports a server it cannot reach as UNAVAILABLE", async () => {
  const url = await closedPortUrl();
  const errors = errorCatcher();
  const client = new WorkerClient({
    baseUrl: url,
    hostUuid: randomUUID(),
    agentVersion: "worker-test/1.0",
    intervalMs: NEVER_MS,
    onError: errors.onError,
  });

  client.start();
  const error = await errors.received;
  await client.stop({ timeoutMs: 100 });

  expect([error.code, error.rawMessage]).toEqual([
    Code.Unavailable,
    `connect ECONNREFUSED ${url.replace("http://", "")}`,
  ]);
});

test("WorkerClient does not call onError when stop() ends the stream", async () => {
  const errors = errorCatcher();
  const client = worker({ hostUuid: randomUUID(), onError: errors.onError });
  client.start();

  await client.stop();

  expect(errors.calls).toEqual([]);
});

test("WorkerClient clears every interval it started once stopped", async () => {
  const setIntervalSpy = vi.spyOn(globalThis, "setInterval");
  const clearIntervalSpy = vi.spyOn(globalThis, "clearInterval");
  const host = randomUUID();
  const client = worker({ hostUuid: host, intervalMs: 4321, streamMs: 50 });
  client.start();
  await vi.waitFor(
    () => {
      const started = setIntervalSpy.mock.calls.filter(([, ms]) => ms === 4321);
      expect(started.length).toBeGreaterThan(2);
    },
    { timeout: 10_000 },
  );

  await client.stop();

  const timers = setIntervalSpy.mock.results
    .filter((_, i) => setIntervalSpy.mock.calls[i]![1] === 4321)
    .map((result) => result.value);
  const cleared = clearIntervalSpy.mock.calls.map(([timer]) => timer);
  expect(cleared).toEqual(expect.arrayContaining(timers));
});

test("WorkerClient refuses to start twice", () => {
  const client = worker({ hostUuid: randomUUID() });
  client.start();

  expect(() => client.start()).toThrow(
    new Error("WorkerClient.start: the client is already running"),
  );
});

test("WorkerClient refuses to start on a file that is not an outbox", () => {
  const path = outboxPath();
  writeFileSync(path, "not an outbox\n");
  const client = worker({ hostUuid: randomUUID(), outboxPath: path });

  expect(() => client.start()).toThrow(
    new Error(`${path} is not a worker outbox`),
  );
});

test("WorkerClient refuses a report before start() and after stop()", async () => {
  const client = worker({ hostUuid: randomUUID() });
  const report = () =>
    client.running({ deckyName: deckyName(), operation: Operation.DEPLOY });

  expect(report).toThrow(new Error("WorkerClient.report: the client is new"));
  client.start();
  await client.stop();
  expect(report).toThrow(
    new Error("WorkerClient.report: the client is stopped"),
  );
});

test("WorkerClient stop() refuses a timeout that is not a number of milliseconds and keeps running", async () => {
  const client = worker({ hostUuid: randomUUID() });
  client.start();

  await expect(client.stop({ timeoutMs: -1 })).rejects.toThrow(
    new RangeError("timeoutMs must be a number of milliseconds, got -1"),
  );
  expect(await client.stop()).toMatchObject({ streams: 1, messages: 1 });
});

test("WorkerClient stop() before start() rejects", async () => {
  const client = new WorkerClient({
    transport: server.transports.grpc,
    hostUuid: randomUUID(),
    agentVersion: "worker-test/1.0",
  });

  await expect(client.stop()).rejects.toThrow(
    new Error("WorkerClient.stop: the client was never started"),
  );
});

test("WorkerClient refuses timing options that are not positive numbers", () => {
  for (const name of [
    "intervalMs",
    "streamMessages",
    "streamDeltas",
    "streamMs",
    "responseTimeoutMs",
    "reconnectMinMs",
    "reconnectMaxMs",
  ]) {
    for (const value of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(
        () =>
          new WorkerClient({
            transport: server.transports.grpc,
            hostUuid: randomUUID(),
            agentVersion: "worker-test/1.0",
            [name]: value,
          }),
      ).toThrow(
        new RangeError(`${name} must be a positive number, got ${value}`),
      );
    }
  }
});
