import { randomUUID } from "node:crypto";
import { once } from "node:events";
import { createServer } from "node:net";
import { create } from "@bufbuild/protobuf";
import { Code, type ConnectError } from "@connectrpc/connect";
import { afterAll, afterEach, beforeAll, expect, test, vi } from "vitest";
import {
  DeltaOutcome_Result,
  HeartbeatResponseSchema,
  type Lifecycle,
  Operation,
  Status,
  type WatchResponse,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import {
  WorkerClient,
  type WorkerClientOptions,
} from "../../src/worker/worker-client.js";
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
const cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  database = await createTestDatabase();
  server = await startTestServer(database);
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0)) await cleanup();
  vi.restoreAllMocks();
});

afterAll(async () => {
  await server?.close();
  await database?.drop();
});

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
  cleanups.push(() => client.stop().catch(() => undefined));
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

/** A promise of the first error `onError` receives. */
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
  expect(await client.stop()).toEqual(
    create(HeartbeatResponseSchema, { messages: 4, applied: 3 }),
  );
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
  expect(await client.stop()).toEqual(
    create(HeartbeatResponseSchema, { messages: 2, applied: 2 }),
  );
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
  const response = await client.stop();

  expect(response.applied).toBe(0);
  expect(response.outcomes).toEqual([]);
  expect(response.messages).toBeGreaterThanOrEqual(3);
});

test("WorkerClient stop() sends the deltas still waiting and resolves with the server's counts and outcomes", async () => {
  const host = randomUUID();
  const name = deckyName();
  const missing = deckyName();
  const [id] = await accept([name], host);
  const client = worker({ hostUuid: host });
  client.start();

  client.running({ deckyName: name, operation: Operation.DEPLOY });
  client.succeeded({ deckyName: missing, operation: Operation.DEPLOY });
  const response = await client.stop();

  expect(response).toEqual(
    create(HeartbeatResponseSchema, {
      messages: 2,
      applied: 1,
      outcomes: [
        {
          messageIndex: 1,
          deltaIndex: 1,
          lifecycleId: "",
          result: DeltaOutcome_Result.NO_OPEN_ROW,
          detail: `host ${host} has no open deploy row for decky ${missing}`,
        },
      ],
    }),
  );
  const { rows } = await server.grpc.list({ ids: [id!] });
  expect(rows.map((row) => row.status)).toEqual([Status.RUNNING]);
});

test("WorkerClient stop() returns the same promise when called again", async () => {
  const client = worker({ hostUuid: randomUUID() });
  client.start();

  const first = client.stop();
  const second = client.stop();

  expect(second).toBe(first);
  expect(await first).toEqual(
    create(HeartbeatResponseSchema, { messages: 1, applied: 0 }),
  );
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
  expect(await client.stop()).toEqual(
    create(HeartbeatResponseSchema, { messages: 2, applied: 1 }),
  );
});

test("WorkerClient passes a stream error to onError and stop() rejects with it", async () => {
  const errors = errorCatcher();
  const client = worker({ hostUuid: "worker-7", onError: errors.onError });

  client.start();
  const error = await errors.received;

  expect([error.code, error.rawMessage]).toEqual([
    Code.InvalidArgument,
    'host_uuid "worker-7" is not a UUID',
  ]);
  await expect(client.stop()).rejects.toBe(error);
  expect(errors.calls).toEqual([error]);
});

test("WorkerClient refuses reports once the stream has failed", async () => {
  const errors = errorCatcher();
  const client = worker({ hostUuid: "worker-7", onError: errors.onError });
  client.start();
  const error = await errors.received;

  const report = () =>
    client.running({ deckyName: deckyName(), operation: Operation.DEPLOY });

  expect(report).toThrow(
    new Error("WorkerClient.report: the Heartbeat stream is failed"),
  );
  await expect(client.stop()).rejects.toBe(error);
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

  expect([error.code, error.rawMessage]).toEqual([
    Code.Unavailable,
    `connect ECONNREFUSED ${url.replace("http://", "")}`,
  ]);
  await expect(client.stop()).rejects.toBe(error);
});

test("WorkerClient does not call onError when stop() ends the stream", async () => {
  const errors = errorCatcher();
  const client = worker({ hostUuid: randomUUID(), onError: errors.onError });
  client.start();

  await client.stop();

  expect(errors.calls).toEqual([]);
});

test("WorkerClient stop() clears the heartbeat interval", async () => {
  const setIntervalSpy = vi.spyOn(globalThis, "setInterval");
  const client = worker({ hostUuid: randomUUID(), intervalMs: 50 });
  client.start();
  expect(setIntervalSpy).toHaveBeenCalledTimes(1);
  const timer = setIntervalSpy.mock.results[0]!.value;
  const clearIntervalSpy = vi.spyOn(globalThis, "clearInterval");

  await client.stop();

  expect(clearIntervalSpy).toHaveBeenCalledWith(timer);
});

test("WorkerClient clears the heartbeat interval when the stream fails", async () => {
  const errors = errorCatcher();
  const setIntervalSpy = vi.spyOn(globalThis, "setInterval");
  const client = worker({ hostUuid: "worker-7", onError: errors.onError });
  client.start();
  expect(setIntervalSpy).toHaveBeenCalledTimes(1);
  const timer = setIntervalSpy.mock.results[0]!.value;
  const clearIntervalSpy = vi.spyOn(globalThis, "clearInterval");

  await errors.received;

  expect(clearIntervalSpy).toHaveBeenCalledWith(timer);
});

test("WorkerClient refuses to start twice", () => {
  const client = worker({ hostUuid: randomUUID() });
  client.start();

  expect(() => client.start()).toThrow(
    new Error("WorkerClient.start: the client is already running"),
  );
});

test("WorkerClient refuses a report before start()", () => {
  const client = new WorkerClient({
    transport: server.transports.grpc,
    hostUuid: randomUUID(),
    agentVersion: "worker-test/1.0",
  });

  expect(() =>
    client.running({ deckyName: deckyName(), operation: Operation.DEPLOY }),
  ).toThrow(new Error("WorkerClient.report: the Heartbeat stream is new"));
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

test("WorkerClient refuses an interval that is not a positive number", () => {
  for (const intervalMs of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
    expect(
      () =>
        new WorkerClient({
          transport: server.transports.grpc,
          hostUuid: randomUUID(),
          agentVersion: "worker-test/1.0",
          intervalMs,
        }),
    ).toThrow(
      new RangeError(
        `intervalMs must be a positive number of milliseconds, got ${intervalMs}`,
      ),
    );
  }
});
