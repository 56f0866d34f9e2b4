import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { expect, test } from "vitest";
import {
  type Lifecycle,
  LifecycleSchema,
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

const server = serveThisFile();

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The error a call failed with; fails the test if the call succeeded. */
async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call succeeded but was expected to fail");
}

/** Rows in id order, to compare sets of rows whatever their start times. */
function byId(rows: readonly (Lifecycle | undefined)[]): Lifecycle[] {
  return rows
    .map((row) => row!)
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** Every row of one decky, in id order. */
async function rowsOf(name: string): Promise<Lifecycle[]> {
  const { rows } = await server.connect.list({ deckyName: name });
  return byId(rows);
}

test("Accept creates one PENDING row per target, in target order", async () => {
  const names = [deckyName(), deckyName(), deckyName()];
  const host = randomUUID();

  const response = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [
      { deckyName: names[0]!, hostUuid: host },
      { deckyName: names[1]! },
      { deckyName: names[2]!, hostUuid: host },
    ],
  });

  expect(response.lifecycleIds).toHaveLength(3);
  expect(response.rows.map((row) => row.id)).toEqual(response.lifecycleIds);
  for (const id of response.lifecycleIds) expect(id).toMatch(UUID);
  expect(new Set(response.lifecycleIds).size).toBe(3);
  const [first, second, third] = response.rows;
  expect(first).toEqual(
    create(LifecycleSchema, {
      id: response.lifecycleIds[0]!,
      deckyName: names[0]!,
      hostUuid: host,
      operation: Operation.DEPLOY,
      status: Status.PENDING,
      startedAt: first!.startedAt!,
      updatedAt: first!.startedAt!,
      revision: first!.revision,
    }),
  );
  expect(second).toEqual(
    create(LifecycleSchema, {
      id: response.lifecycleIds[1]!,
      deckyName: names[1]!,
      operation: Operation.DEPLOY,
      status: Status.PENDING,
      startedAt: second!.startedAt!,
      updatedAt: second!.startedAt!,
      revision: second!.revision,
    }),
  );
  expect(third).toEqual(
    create(LifecycleSchema, {
      id: response.lifecycleIds[2]!,
      deckyName: names[2]!,
      hostUuid: host,
      operation: Operation.DEPLOY,
      status: Status.PENDING,
      startedAt: third!.startedAt!,
      updatedAt: third!.startedAt!,
      revision: third!.revision,
    }),
  );
  expect(second!.hostUuid).toBeUndefined();
  expect(first!.revision).toBeGreaterThan(0n);
  expect(second!.revision).toBeGreaterThan(first!.revision);
  expect(third!.revision).toBeGreaterThan(second!.revision);
});

test("Accept stores the rows it answers with", async () => {
  const names = [deckyName(), deckyName()];

  const response = await server.connect.accept({
    operation: Operation.MUTATE,
    targets: [
      { deckyName: names[0]!, hostUuid: randomUUID() },
      { deckyName: names[1]! },
    ],
  });

  const listed = await server.grpcWeb.list({ ids: response.lifecycleIds });
  expect(byId(listed.rows)).toEqual(byId(response.rows));
});

test("Accept gives later calls higher revisions", async () => {
  const first = await server.grpcWeb.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: deckyName() }],
  });

  const second = await server.grpcWeb.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: deckyName() }],
  });

  expect(second.rows[0]!.revision).toBeGreaterThan(first.rows[0]!.revision);
});

test("Accept takes 500 targets in one call", async () => {
  const names = Array.from({ length: 500 }, () => deckyName("bulk"));

  const response = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: names.map((name) => ({ deckyName: name })),
  });

  expect(response.rows.map((row) => row.deckyName)).toEqual(names);
  expect(response.rows.map((row) => row.status)).toEqual(
    names.map(() => Status.PENDING),
  );
  expect(new Set(response.lifecycleIds).size).toBe(500);
});

test("Accept refuses a second open row for the same decky and operation", async () => {
  const name = deckyName();
  const open = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
  });

  const error = await failure(
    server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
    }),
  );

  expect(error.code).toBe(Code.FailedPrecondition);
  expect(error.rawMessage).toBe(
    `decky ${name} already has an open deploy row ${open.lifecycleIds[0]}; wait for it to finish`,
  );
  expect(await rowsOf(name)).toEqual(open.rows);
});

test("Accept refuses a decky whose open row is RUNNING", async () => {
  const name = deckyName();
  const open = await server.connect.accept({
    operation: Operation.MUTATE,
    targets: [{ deckyName: name }],
  });
  await server.connect.report({
    lifecycleId: open.lifecycleIds[0]!,
    status: Status.RUNNING,
  });

  const error = await failure(
    server.connect.accept({
      operation: Operation.MUTATE,
      targets: [{ deckyName: name }],
    }),
  );

  expect(error.code).toBe(Code.FailedPrecondition);
  expect(error.rawMessage).toBe(
    `decky ${name} already has an open mutate row ${open.lifecycleIds[0]}; wait for it to finish`,
  );
});

test("Accept allows the other operation on a decky with an open row", async () => {
  const name = deckyName();
  const deploy = await server.grpcWeb.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
  });

  const mutate = await server.grpcWeb.accept({
    operation: Operation.MUTATE,
    targets: [{ deckyName: name }],
  });

  expect(mutate.rows[0]!.operation).toBe(Operation.MUTATE);
  expect(mutate.rows[0]!.status).toBe(Status.PENDING);
  expect(await rowsOf(name)).toEqual(byId([deploy.rows[0], mutate.rows[0]]));
});

test("Accept writes nothing when one target of the batch has an open row", async () => {
  const [before, blocked, after] = [deckyName(), deckyName(), deckyName()];
  const open = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: blocked }],
  });

  const error = await failure(
    server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: [
        { deckyName: before },
        { deckyName: blocked },
        { deckyName: after },
      ],
    }),
  );

  expect(error.code).toBe(Code.FailedPrecondition);
  expect(error.rawMessage).toBe(
    `decky ${blocked} already has an open deploy row ${open.lifecycleIds[0]}; wait for it to finish`,
  );
  expect(await rowsOf(before)).toEqual([]);
  expect(await rowsOf(after)).toEqual([]);
  expect(await rowsOf(blocked)).toEqual(open.rows);
});

test("Accept creates a new row for a retry once the last row is terminal", async () => {
  const name = deckyName();
  const first = await server.connect.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
  });
  const failed = await server.connect.report({
    lifecycleId: first.lifecycleIds[0]!,
    status: Status.FAILED,
    error: "image pull failed",
  });

  const retry = await server.connect.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
  });

  expect(retry.lifecycleIds[0]).not.toBe(first.lifecycleIds[0]);
  expect(retry.rows[0]!.status).toBe(Status.PENDING);
  expect(await rowsOf(name)).toEqual(byId([failed.row, retry.rows[0]]));
});

test("Accept refuses an unset operation", async () => {
  const name = deckyName();

  const error = await failure(
    server.grpc.accept({ targets: [{ deckyName: name }] }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "operation must be OPERATION_DEPLOY or OPERATION_MUTATE, not 0",
  );
  expect(await rowsOf(name)).toEqual([]);
});

test("Accept refuses an operation value the contract does not define", async () => {
  const name = deckyName();

  const error = await failure(
    server.grpc.accept({
      operation: 7 as Operation,
      targets: [{ deckyName: name }],
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "operation must be OPERATION_DEPLOY or OPERATION_MUTATE, not 7",
  );
  expect(await rowsOf(name)).toEqual([]);
});

test("Accept refuses a call without targets", async () => {
  const error = await failure(
    server.connect.accept({ operation: Operation.DEPLOY, targets: [] }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "targets has 0 entries; between 1 and 500 are allowed",
  );
});

test("Accept refuses 501 targets and writes none of them", async () => {
  const names = Array.from({ length: 501 }, () => deckyName("over"));

  const error = await failure(
    server.grpcWeb.accept({
      operation: Operation.DEPLOY,
      targets: names.map((name) => ({ deckyName: name })),
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "targets has 501 entries; between 1 and 500 are allowed",
  );
  expect(await rowsOf(names[0]!)).toEqual([]);
});

test("Accept refuses a decky named twice in one call", async () => {
  const [name, other] = [deckyName(), deckyName()];

  const error = await failure(
    server.grpc.accept({
      operation: Operation.MUTATE,
      targets: [{ deckyName: name }, { deckyName: other }, { deckyName: name }],
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    `targets[2].decky_name "${name}" repeats targets[0]; a decky may appear once per request`,
  );
  expect(await rowsOf(name)).toEqual([]);
  expect(await rowsOf(other)).toEqual([]);
});

test("Accept refuses a decky name with upper-case letters and writes nothing", async () => {
  const valid = deckyName();

  const error = await failure(
    server.connect.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: valid }, { deckyName: "Bad" }],
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    'targets[1].decky_name "Bad" must match ^[a-z0-9-]{1,64}$',
  );
  expect(await rowsOf(valid)).toEqual([]);
});

test("Accept refuses a decky name of 65 characters", async () => {
  const name = "a".repeat(65);

  const error = await failure(
    server.grpcWeb.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    `targets[0].decky_name "${name}" must match ^[a-z0-9-]{1,64}$`,
  );
});

test("Accept quotes at most 80 characters of a bad decky name", async () => {
  const name = "b".repeat(100);

  const error = await failure(
    server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    `targets[0].decky_name "${"b".repeat(80)}…" must match ^[a-z0-9-]{1,64}$`,
  );
});

test("Accept quotes a bad decky name without cutting an emoji in half", async () => {
  const name = "🦆".repeat(81);

  const error = await failure(
    server.connect.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    `targets[0].decky_name "${"🦆".repeat(80)}…" must match ^[a-z0-9-]{1,64}$`,
  );
});

test("Accept takes a decky name of 64 characters", async () => {
  const name = deckyName().padEnd(64, "x");

  const response = await server.grpcWeb.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
  });

  expect(response.rows[0]!.deckyName).toBe(name);
});

test("Accept refuses an empty decky name", async () => {
  const error = await failure(
    server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: "" }],
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    'targets[0].decky_name "" must match ^[a-z0-9-]{1,64}$',
  );
});

test("Accept refuses a host_uuid that is not a UUID", async () => {
  const name = deckyName();

  const error = await failure(
    server.connect.accept({
      operation: Operation.DEPLOY,
      targets: [
        { deckyName: deckyName(), hostUuid: randomUUID() },
        { deckyName: name, hostUuid: "host-7" },
      ],
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe('targets[1].host_uuid "host-7" is not a UUID');
  expect(await rowsOf(name)).toEqual([]);
});

test("Accept refuses a request_id with a NUL character", async () => {
  const name = deckyName();

  const error = await failure(
    server.grpcWeb.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
      requestId: "key\0one",
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe("request_id must not contain NUL characters");
  expect(await rowsOf(name)).toEqual([]);
});

test("Accept refuses a request_id longer than 200 characters", async () => {
  const error = await failure(
    server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: deckyName() }],
      requestId: "k".repeat(201),
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "request_id is 201 characters long; at most 200 are allowed",
  );
});

test("Accept with a used request_id and the same body returns the first response and creates nothing", async () => {
  const names = [deckyName(), deckyName()];
  const request = {
    operation: Operation.DEPLOY,
    targets: [{ deckyName: names[0]! }, { deckyName: names[1]! }],
    requestId: randomUUID(),
  };
  const first = await server.grpc.accept(request);
  const running = await server.grpc.report({
    lifecycleId: first.lifecycleIds[0]!,
    status: Status.RUNNING,
  });

  const again = await server.connect.accept(request);

  expect(again).toEqual(first);
  expect(await rowsOf(names[0]!)).toEqual([running.row]);
  expect(await rowsOf(names[1]!)).toEqual([first.rows[1]]);
});

test("Accept with a used request_id returns the first response after its rows finished", async () => {
  const name = deckyName();
  const request = {
    operation: Operation.MUTATE,
    targets: [{ deckyName: name }],
    requestId: randomUUID(),
  };
  const first = await server.grpcWeb.accept(request);
  const done = await server.grpcWeb.report({
    lifecycleId: first.lifecycleIds[0]!,
    status: Status.SUCCEEDED,
  });

  const again = await server.grpcWeb.accept(request);

  expect(again).toEqual(first);
  expect(await rowsOf(name)).toEqual([done.row]);
});

test("Accept refuses a used request_id with other targets", async () => {
  const [name, other] = [deckyName(), deckyName()];
  const requestId = randomUUID();
  const first = await server.connect.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
    requestId,
  });

  const error = await failure(
    server.connect.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: other }],
      requestId,
    }),
  );

  expect(error.code).toBe(Code.AlreadyExists);
  expect(error.rawMessage).toBe(
    `request_id "${requestId}" was already used with a different body`,
  );
  expect(await rowsOf(name)).toEqual(first.rows);
  expect(await rowsOf(other)).toEqual([]);
});

test("Accept refuses a used request_id with another operation", async () => {
  const name = deckyName();
  const requestId = randomUUID();
  const first = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
    requestId,
  });

  const error = await failure(
    server.grpc.accept({
      operation: Operation.MUTATE,
      targets: [{ deckyName: name }],
      requestId,
    }),
  );

  expect(error.code).toBe(Code.AlreadyExists);
  expect(error.rawMessage).toBe(
    `request_id "${requestId}" was already used with a different body`,
  );
  expect(await rowsOf(name)).toEqual(first.rows);
});

test("Accept does not keep the request_id of a call that failed", async () => {
  const name = deckyName();
  const blocking = await server.grpcWeb.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
  });
  const request = {
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
    requestId: randomUUID(),
  };
  const refused = await failure(server.grpcWeb.accept(request));
  expect(refused.code).toBe(Code.FailedPrecondition);
  await server.grpcWeb.report({
    lifecycleId: blocking.lifecycleIds[0]!,
    status: Status.SUCCEEDED,
  });

  const retried = await server.grpcWeb.accept(request);

  expect(retried.lifecycleIds[0]).not.toBe(blocking.lifecycleIds[0]);
  expect(retried.rows[0]!.status).toBe(Status.PENDING);
  expect((await rowsOf(name)).map((row) => row.id)).toEqual(
    [blocking.lifecycleIds[0]!, retried.lifecycleIds[0]!].sort(),
  );
});

test("Accept lets exactly one of several racing calls open a row for a decky", async () => {
  const name = deckyName();
  const call = () =>
    server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
    });

  const results = await Promise.allSettled([call(), call(), call(), call()]);

  const accepted = results.flatMap((result) =>
    result.status === "fulfilled" ? [result.value] : [],
  );
  const refused = results.flatMap((result) =>
    result.status === "rejected" ? [ConnectError.from(result.reason)] : [],
  );
  expect(accepted).toHaveLength(1);
  const winner = accepted[0]!.lifecycleIds[0]!;
  expect(refused.map((error) => [error.code, error.rawMessage])).toEqual(
    Array.from({ length: 3 }, () => [
      Code.FailedPrecondition,
      `decky ${name} already has an open deploy row ${winner}; wait for it to finish`,
    ]),
  );
  expect(await rowsOf(name)).toEqual(accepted[0]!.rows);
});

test("Accept answers racing calls with one request_id with one response", async () => {
  const name = deckyName();
  const request = {
    operation: Operation.MUTATE,
    targets: [{ deckyName: name }],
    requestId: randomUUID(),
  };

  const responses = await Promise.all([
    server.grpc.accept(request),
    server.grpc.accept(request),
    server.grpc.accept(request),
  ]);

  expect(responses[1]).toEqual(responses[0]);
  expect(responses[2]).toEqual(responses[0]);
  expect(await rowsOf(name)).toEqual(responses[0]!.rows);
});
