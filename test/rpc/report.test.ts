import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import { expect, test } from "vitest";
import {
  type Lifecycle,
  LifecycleSchema,
  type LifecycleService,
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

const server = serveThisFile();

type LifecycleClient = Client<typeof LifecycleService>;

/** The error a call failed with; fails the test if the call succeeded. */
async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call succeeded but was expected to fail");
}

/** A new PENDING row of a new decky on a host. */
async function pendingRow(client: LifecycleClient): Promise<Lifecycle> {
  const { rows } = await client.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: deckyName(), hostUuid: randomUUID() }],
  });
  return rows[0]!;
}

/** A row brought to `status` through the allowed moves. */
async function rowIn(
  client: LifecycleClient,
  status: Status,
): Promise<Lifecycle> {
  const row = await pendingRow(client);
  if (status === Status.PENDING) return row;
  const moved = await client.report({
    lifecycleId: row.id,
    status,
    ...(status === Status.FAILED ? { error: "first failure" } : {}),
  });
  return moved.row!;
}

/** The row as stored, read back with List. */
async function stored(id: string): Promise<Lifecycle | undefined> {
  const { rows } = await server.grpcWeb.list({ ids: [id] });
  return rows[0];
}

/**
 * Waits until the clock has passed a row's updated_at, so that a change made
 * now gets a later millisecond and the test can see updated_at move.
 */
async function clockPast(timestamp: Timestamp | undefined): Promise<void> {
  const last = timestampDate(timestamp!).getTime();
  while (Date.now() <= last) {
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

function millis(timestamp: Timestamp | undefined): number {
  return timestampDate(timestamp!).getTime();
}

type StatusName = Exclude<keyof typeof Status, "UNSPECIFIED">;

test.each<[StatusName, StatusName]>([
  ["PENDING", "RUNNING"],
  ["PENDING", "SUCCEEDED"],
  ["PENDING", "FAILED"],
  ["RUNNING", "SUCCEEDED"],
  ["RUNNING", "FAILED"],
])("Report moves a row from %s to %s", async (fromName, toName) => {
  const [from, to] = [Status[fromName], Status[toName]];
  const before = await rowIn(server.grpc, from);
  await clockPast(before.updatedAt);
  const terminal = to === Status.SUCCEEDED || to === Status.FAILED;

  const { row } = await server.grpc.report({
    lifecycleId: before.id,
    status: to,
    ...(to === Status.FAILED ? { error: "container exited with 137" } : {}),
  });

  expect(row).toEqual(
    create(LifecycleSchema, {
      id: before.id,
      deckyName: before.deckyName,
      hostUuid: before.hostUuid!,
      operation: Operation.DEPLOY,
      status: to,
      ...(to === Status.FAILED ? { error: "container exited with 137" } : {}),
      startedAt: before.startedAt!,
      updatedAt: row!.updatedAt!,
      ...(terminal ? { completedAt: row!.updatedAt! } : {}),
      revision: row!.revision,
    }),
  );
  expect(millis(row!.updatedAt)).toBeGreaterThan(millis(before.updatedAt));
  expect(row!.revision).toBeGreaterThan(before.revision);
  expect(await stored(before.id)).toEqual(row);
});

test("Report moves a row to FAILED without error text", async () => {
  const before = await pendingRow(server.connect);

  const { row } = await server.connect.report({
    lifecycleId: before.id,
    status: Status.FAILED,
  });

  expect(row!.status).toBe(Status.FAILED);
  expect(row!.error).toBeUndefined();
  expect(row!.completedAt).toBeDefined();
});

test("Report gives each change a higher revision than the last", async () => {
  const pending = await pendingRow(server.grpcWeb);

  const running = await server.grpcWeb.report({
    lifecycleId: pending.id,
    status: Status.RUNNING,
  });
  const succeeded = await server.grpcWeb.report({
    lifecycleId: pending.id,
    status: Status.SUCCEEDED,
  });

  expect(running.row!.revision).toBeGreaterThan(pending.revision);
  expect(succeeded.row!.revision).toBeGreaterThan(running.row!.revision);
});

test.each<[StatusName, StatusName]>([
  ["RUNNING", "PENDING"],
  ["SUCCEEDED", "PENDING"],
  ["SUCCEEDED", "RUNNING"],
  ["SUCCEEDED", "FAILED"],
  ["FAILED", "PENDING"],
  ["FAILED", "RUNNING"],
  ["FAILED", "SUCCEEDED"],
])(
  "Report refuses to move a row from %s to %s and leaves it unchanged",
  async (fromName, toName) => {
    const [from, to] = [Status[fromName], Status[toName]];
    const before = await rowIn(server.connect, from);

    const error = await failure(
      server.connect.report({
        lifecycleId: before.id,
        status: to,
        ...(to === Status.FAILED ? { error: "late failure" } : {}),
      }),
    );

    expect(error.code).toBe(Code.FailedPrecondition);
    expect(error.rawMessage).toBe(
      `lifecycle row ${before.id} is STATUS_${fromName} and cannot move to STATUS_${toName}`,
    );
    expect(await stored(before.id)).toEqual(before);
  },
);

test.each<StatusName>(["PENDING", "RUNNING", "SUCCEEDED"])(
  "Report of the status a %s row already has returns it unchanged",
  async (name) => {
    const status = Status[name];
    const before = await rowIn(server.grpcWeb, status);

    const { row } = await server.grpcWeb.report({
      lifecycleId: before.id,
      status,
    });

    expect(row).toEqual(before);
    expect(await stored(before.id)).toEqual(before);
  },
);

test("Report of FAILED on a FAILED row keeps the first error text", async () => {
  const before = await rowIn(server.grpc, Status.FAILED);

  const { row } = await server.grpc.report({
    lifecycleId: before.id,
    status: Status.FAILED,
    error: "a different failure",
  });

  expect(before.error).toBe("first failure");
  expect(row).toEqual(before);
  expect(await stored(before.id)).toEqual(before);
});

test("Report cuts error text longer than 2000 characters to 2000", async () => {
  const before = await pendingRow(server.grpc);
  const text = "stack frame\n".repeat(200);

  const { row } = await server.grpc.report({
    lifecycleId: before.id,
    status: Status.FAILED,
    error: text,
  });

  expect(text.length).toBe(2400);
  expect(row!.error).toBe(text.slice(0, 2000));
  expect((await stored(before.id))!.error).toBe(text.slice(0, 2000));
});

test("Report keeps error text of exactly 2000 characters whole", async () => {
  const before = await pendingRow(server.connect);
  const text = "e".repeat(2000);

  const { row } = await server.connect.report({
    lifecycleId: before.id,
    status: Status.FAILED,
    error: text,
  });

  expect(row!.error).toBe(text);
  expect((await stored(before.id))!.error).toBe(text);
});

test("Report cuts error text by characters, never splitting an emoji", async () => {
  const before = await pendingRow(server.grpcWeb);
  const text = "💥".repeat(2001);

  const { row } = await server.grpcWeb.report({
    lifecycleId: before.id,
    status: Status.FAILED,
    error: text,
  });

  expect(row!.error).toBe("💥".repeat(2000));
  expect((await stored(before.id))!.error).toBe("💥".repeat(2000));
});

test("Report refuses an id that names no row", async () => {
  const id = randomUUID();

  const error = await failure(
    server.grpc.report({ lifecycleId: id, status: Status.RUNNING }),
  );

  expect(error.code).toBe(Code.NotFound);
  expect(error.rawMessage).toBe(`lifecycle row ${id} does not exist`);
});

test("Report refuses a lifecycle_id that is not a UUID", async () => {
  const error = await failure(
    server.connect.report({ lifecycleId: "row-1", status: Status.RUNNING }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe('lifecycle_id "row-1" is not a UUID');
});

test("Report refuses STATUS_UNSPECIFIED", async () => {
  const before = await pendingRow(server.grpcWeb);

  const error = await failure(
    server.grpcWeb.report({ lifecycleId: before.id }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "status must be a known status other than STATUS_UNSPECIFIED, not 0",
  );
  expect(await stored(before.id)).toEqual(before);
});

test("Report refuses a status value the contract does not define", async () => {
  const before = await pendingRow(server.grpc);

  const error = await failure(
    server.grpc.report({ lifecycleId: before.id, status: 9 as Status }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "status must be a known status other than STATUS_UNSPECIFIED, not 9",
  );
  expect(await stored(before.id)).toEqual(before);
});

test.each<StatusName>(["RUNNING", "SUCCEEDED"])(
  "Report refuses error text with %s",
  async (name) => {
    const status = Status[name];
    const before = await pendingRow(server.connect);

    const error = await failure(
      server.connect.report({ lifecycleId: before.id, status, error: "oops" }),
    );

    expect(error.code).toBe(Code.InvalidArgument);
    expect(error.rawMessage).toBe("error may be set only with STATUS_FAILED");
    expect(await stored(before.id)).toEqual(before);
  },
);

test("Report refuses error text with a NUL character", async () => {
  const before = await pendingRow(server.grpc);

  const error = await failure(
    server.grpc.report({
      lifecycleId: before.id,
      status: Status.FAILED,
      error: "bad\0byte",
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe("error must not contain NUL characters");
  expect(await stored(before.id)).toEqual(before);
});
