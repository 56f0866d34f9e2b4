import { randomUUID } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  type ClientWritableStream,
  credentials,
  Client as GrpcClient,
} from "@grpc/grpc-js";
import { expect, test } from "vitest";
import {
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
  HeartbeatResponseSchema,
  type Lifecycle,
  type LifecycleDelta,
  LifecycleDeltaSchema,
  LifecycleSchema,
  LifecycleService,
  Operation,
  Status,
  WatchRequestSchema,
  type WatchResponse,
  WatchResponse_Kind,
  WatchResponseSchema,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import {
  createTestDatabase,
  deckyName,
  serveThisFile,
  startTestServer,
} from "../support/test-server.js";

const server = serveThisFile();

const HEARTBEAT_PATH = `/${LifecycleService.typeName}/${LifecycleService.method.heartbeat.name}`;

/**
 * A worker's Heartbeat stream on raw @grpc/grpc-js, the way a worker agent
 * that nobody on this team writes would open it: the generated schemas only
 * serialise the messages.
 */
function openHeartbeat(client: GrpcClient) {
  let call!: ClientWritableStream<HeartbeatRequest>;
  const response = new Promise<HeartbeatResponse>((resolve, reject) => {
    call = client.makeClientStreamRequest<HeartbeatRequest, HeartbeatResponse>(
      HEARTBEAT_PATH,
      (message) => Buffer.from(toBinary(HeartbeatRequestSchema, message)),
      (bytes) => fromBinary(HeartbeatResponseSchema, bytes),
      (error, value) => (error ? reject(error) : resolve(value!)),
    );
  });
  return { call, response };
}

function delta(row: Lifecycle, status: Status, error?: string): LifecycleDelta {
  return create(LifecycleDeltaSchema, {
    deckyName: row.deckyName,
    operation: row.operation,
    status,
    ...(error === undefined ? {} : { error }),
  });
}

function change(row: Lifecycle): WatchResponse {
  return create(WatchResponseSchema, {
    kind: WatchResponse_Kind.CHANGE,
    revision: row.revision,
    row,
  });
}

test("a raw grpc-js worker's Heartbeat messages reach a Connect watcher one by one, before the worker closes its stream", async () => {
  const host = randomUUID();
  const accepted = await server.connect.accept({
    operation: Operation.DEPLOY,
    targets: [
      { deckyName: deckyName(), hostUuid: host },
      { deckyName: deckyName(), hostUuid: host },
    ],
  });
  const [deployed, broken] = accepted.rows as [Lifecycle, Lifecycle];

  const abort = new AbortController();
  const watch = server.connect
    .watch({ ids: accepted.lifecycleIds }, { signal: abort.signal })
    [Symbol.asyncIterator]();
  const nextMessage = async (): Promise<WatchResponse> => {
    const next = await watch.next();
    if (next.done) throw new Error("the watch ended early");
    return next.value;
  };
  const worker = new GrpcClient(
    `127.0.0.1:${server.server.port}`,
    credentials.createInsecure(),
  );
  let responded = false;

  try {
    for (;;) {
      const message = await nextMessage();
      if (message.kind === WatchResponse_Kind.SNAPSHOT_END) break;
    }
    const heartbeat = openHeartbeat(worker);
    heartbeat.response.then(
      () => {
        responded = true;
      },
      () => {
        responded = true;
      },
    );
    const send = (deltas: LifecycleDelta[]) =>
      heartbeat.call.write(
        create(HeartbeatRequestSchema, {
          hostUuid: host,
          agentVersion: "grpc-js-agent/1.0",
          deltas,
        }),
      );

    send([delta(deployed, Status.RUNNING), delta(broken, Status.RUNNING)]);
    const running = [await nextMessage(), await nextMessage()];
    expect(responded).toBe(false);
    expect(running.map((m) => [m.kind, m.row!.id, m.row!.status])).toEqual([
      [WatchResponse_Kind.CHANGE, deployed.id, Status.RUNNING],
      [WatchResponse_Kind.CHANGE, broken.id, Status.RUNNING],
    ]);
    for (const [index, message] of running.entries()) {
      const before = [deployed, broken][index]!;
      expect(message).toEqual(
        change(
          create(LifecycleSchema, {
            ...before,
            status: Status.RUNNING,
            updatedAt: message.row!.updatedAt!,
            revision: message.revision,
          }),
        ),
      );
    }

    send([delta(deployed, Status.SUCCEEDED)]);
    const succeeded = await nextMessage();
    expect(responded).toBe(false);
    expect([succeeded.row!.id, succeeded.row!.status]).toEqual([
      deployed.id,
      Status.SUCCEEDED,
    ]);

    send([delta(broken, Status.FAILED, "image pull failed: manifest unknown")]);
    const failed = await nextMessage();
    expect(responded).toBe(false);
    expect(await watch.next()).toEqual({ done: true, value: undefined });

    const { rows } = await server.connect.list({ ids: accepted.lifecycleIds });
    expect([succeeded, failed]).toEqual(
      [deployed, broken].map((row) =>
        change(rows.find((listed) => listed.id === row.id)!),
      ),
    );
    expect(failed.row!.error).toBe("image pull failed: manifest unknown");

    heartbeat.call.end();
    expect(await heartbeat.response).toEqual(
      create(HeartbeatResponseSchema, {
        messages: 3,
        applied: 4,
        outcomes: [],
      }),
    );
  } finally {
    abort.abort();
    worker.close();
  }
});

test("a grpc-js worker reads error messages as the server wrote them, punctuation and non-ASCII included", async () => {
  const odd = "host: ünï ✓, a;b/c?d@e&f=g+h$i#j%k";
  const worker = new GrpcClient(
    `127.0.0.1:${server.server.port}`,
    credentials.createInsecure(),
  );
  try {
    const heartbeat = openHeartbeat(worker);
    heartbeat.call.write(
      create(HeartbeatRequestSchema, { hostUuid: odd, agentVersion: "a/1" }),
    );
    heartbeat.call.end();
    const failure = await heartbeat.response.then(
      () => undefined,
      (error: { code: number; details: string }) => error,
    );

    expect([failure?.code, failure?.details]).toEqual([
      3,
      `host_uuid ${JSON.stringify(odd)} is not a UUID`,
    ]);
  } finally {
    worker.close();
  }
});

test("a grpc-js watcher reads the message of a stream ended after its first messages as the server wrote it", async () => {
  const database = await createTestDatabase();
  const stopping = await startTestServer(database);
  const watcher = new GrpcClient(
    `127.0.0.1:${stopping.server.port}`,
    credentials.createInsecure(),
  );
  try {
    const call = watcher.makeServerStreamRequest(
      `/${LifecycleService.typeName}/${LifecycleService.method.watch.name}`,
      (message: ReturnType<typeof create<typeof WatchRequestSchema>>) =>
        Buffer.from(toBinary(WatchRequestSchema, message)),
      (bytes: Buffer) => fromBinary(WatchResponseSchema, bytes),
      create(WatchRequestSchema, {}),
    );
    const ended = new Promise<{ code: number; details: string }>((resolve) =>
      call.on("error", resolve),
    );
    call.on("data", () => {});
    const snapshotEnd = await new Promise<WatchResponse>((resolve) =>
      call.on("data", (message: WatchResponse) => {
        if (message.kind === WatchResponse_Kind.SNAPSHOT_END) resolve(message);
      }),
    );

    await stopping.close();
    const failure = await ended;

    expect([failure.code, failure.details]).toEqual([
      14,
      `the server is shutting down; resume from revision ${snapshotEnd.revision}`,
    ]);
  } finally {
    watcher.close();
    await stopping.close();
    await database.drop();
  }
});
