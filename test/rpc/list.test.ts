import { randomUUID } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, expect, test } from "vitest";
import {
  type Lifecycle,
  type LifecycleService,
  type ListRequestSchema,
  Operation,
  Status,
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

type LifecycleClient = Client<typeof LifecycleService>;
type ListInit = MessageInitShape<typeof ListRequestSchema>;

/** The error a call failed with; fails the test if the call succeeded. */
async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call succeeded but was expected to fail");
}

/** Accepts `count` new deckies on `host`, 500 per call; returns their rows. */
async function acceptOnHost(
  host: string,
  count: number,
  operation = Operation.DEPLOY,
): Promise<Lifecycle[]> {
  const rows: Lifecycle[] = [];
  for (let done = 0; done < count; done += 500) {
    const response = await server.grpc.accept({
      operation,
      targets: Array.from({ length: Math.min(500, count - done) }, () => ({
        deckyName: deckyName("list"),
        hostUuid: host,
      })),
    });
    rows.push(...response.rows);
  }
  return rows;
}

/** Accepts one row for `name`, optionally on `host`, and moves it to `status`. */
async function rowOf(
  name: string,
  operation: Operation,
  status: Status,
  host?: string,
): Promise<Lifecycle> {
  const { rows } = await server.connect.accept({
    operation,
    targets: [
      { deckyName: name, ...(host === undefined ? {} : { hostUuid: host }) },
    ],
  });
  if (status === Status.PENDING) return rows[0]!;
  const { row } = await server.connect.report({
    lifecycleId: rows[0]!.id,
    status,
  });
  return row!;
}

/** The order List promises: started_at, then id. */
function inListOrder(rows: readonly Lifecycle[]): Lifecycle[] {
  const key = (row: Lifecycle) => timestampDate(row.startedAt!).getTime();
  return [...rows].sort(
    (a, b) => key(a) - key(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
  );
}

const ids = (rows: readonly Lifecycle[]) => rows.map((row) => row.id);

/** Reads every page of a List, following next_page_token to the end. */
async function listAll(
  request: ListInit,
  client: LifecycleClient = server.grpc,
): Promise<Lifecycle[]> {
  const rows: Lifecycle[] = [];
  let pageToken = "";
  do {
    const page = await client.list({ ...request, pageToken });
    rows.push(...page.rows);
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  return rows;
}

test("List by ids returns those rows in started_at, id order", async () => {
  const first = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: deckyName() }, { deckyName: deckyName() }],
  });
  const second = await server.grpc.accept({
    operation: Operation.MUTATE,
    targets: [{ deckyName: deckyName() }],
  });
  const rows = [...first.rows, ...second.rows];

  const response = await server.grpc.list({
    ids: [rows[2]!.id, rows[0]!.id, rows[1]!.id],
  });

  expect(response.rows).toEqual(inListOrder(rows));
  expect(response.nextPageToken).toBe("");
});

test("List by ids leaves out ids that name no row", async () => {
  const { rows } = await server.connect.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: deckyName() }],
  });

  const response = await server.connect.list({
    ids: [randomUUID(), rows[0]!.id, randomUUID()],
  });

  expect(response.rows).toEqual(rows);
});

test("List by ids that name no row returns no rows", async () => {
  const response = await server.grpcWeb.list({
    ids: [randomUUID(), randomUUID()],
  });

  expect(response.rows).toEqual([]);
  expect(response.nextPageToken).toBe("");
});

test("List takes 200 ids", async () => {
  const rows = await acceptOnHost(randomUUID(), 200);

  const response = await server.grpcWeb.list({
    ids: ids(rows),
    pageSize: 200,
  });

  expect(response.rows).toEqual(inListOrder(rows));
  expect(response.nextPageToken).toBe("");
});

test("List refuses 201 ids", async () => {
  const error = await failure(
    server.grpc.list({ ids: Array.from({ length: 201 }, () => randomUUID()) }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe("ids has 201 entries; at most 200 are allowed");
});

test("List refuses an id that is not a UUID", async () => {
  const error = await failure(
    server.connect.list({ ids: [randomUUID(), "row-2"] }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe('ids[1] "row-2" is not a UUID');
});

test("List by decky_name returns every row of that decky and no other", async () => {
  const name = deckyName();
  const deploy = await rowOf(name, Operation.DEPLOY, Status.FAILED);
  const retry = await rowOf(name, Operation.DEPLOY, Status.RUNNING);
  const mutate = await rowOf(name, Operation.MUTATE, Status.PENDING);
  await rowOf(deckyName(), Operation.DEPLOY, Status.PENDING);

  const response = await server.grpcWeb.list({ deckyName: name });

  expect(response.rows).toEqual(inListOrder([deploy, retry, mutate]));
});

test("List by host_uuid returns every row on that host and no other", async () => {
  const host = randomUUID();
  const a = await rowOf(deckyName(), Operation.DEPLOY, Status.SUCCEEDED, host);
  const b = await rowOf(deckyName(), Operation.MUTATE, Status.PENDING, host);
  await rowOf(deckyName(), Operation.DEPLOY, Status.PENDING, randomUUID());
  await rowOf(deckyName(), Operation.DEPLOY, Status.PENDING);

  const response = await server.grpc.list({ hostUuid: host });

  expect(response.rows).toEqual(inListOrder([a, b]));
});

test("List by operation returns exactly the rows of that operation", async () => {
  const name = deckyName();
  const mutate = await rowOf(name, Operation.MUTATE, Status.PENDING);
  const deploy = await rowOf(name, Operation.DEPLOY, Status.PENDING);
  const everything = await listAll({ pageSize: 500 });

  const mutates = await listAll(
    { operation: Operation.MUTATE, pageSize: 500 },
    server.connect,
  );

  expect(mutates).toEqual(
    everything.filter((row) => row.operation === Operation.MUTATE),
  );
  expect(ids(mutates)).toContain(mutate.id);
  expect(ids(mutates)).not.toContain(deploy.id);
});

test("List by statuses returns exactly the rows in any of those statuses", async () => {
  const name = deckyName();
  const pending = await rowOf(name, Operation.DEPLOY, Status.PENDING);
  const running = await rowOf(name, Operation.MUTATE, Status.RUNNING);
  const failed = await rowOf(deckyName(), Operation.DEPLOY, Status.FAILED);
  const everything = await listAll({ pageSize: 500 });

  const matching = await listAll(
    { statuses: [Status.RUNNING, Status.FAILED], pageSize: 500 },
    server.grpcWeb,
  );

  expect(matching).toEqual(
    everything.filter(
      (row) => row.status === Status.RUNNING || row.status === Status.FAILED,
    ),
  );
  expect(ids(matching)).toContain(running.id);
  expect(ids(matching)).toContain(failed.id);
  expect(ids(matching)).not.toContain(pending.id);
});

test("List combines filters with AND", async () => {
  const host = randomUUID();
  const [x, y] = [deckyName(), deckyName()];
  const xDeploy = await rowOf(x, Operation.DEPLOY, Status.RUNNING, host);
  await rowOf(x, Operation.MUTATE, Status.RUNNING, host);
  await rowOf(y, Operation.DEPLOY, Status.SUCCEEDED, host);
  const yRetry = await rowOf(y, Operation.DEPLOY, Status.PENDING, host);
  await rowOf(deckyName(), Operation.DEPLOY, Status.PENDING, randomUUID());
  await rowOf(deckyName(), Operation.DEPLOY, Status.RUNNING);

  const byHostOperationStatus = await server.grpc.list({
    hostUuid: host,
    operation: Operation.DEPLOY,
    statuses: [Status.PENDING, Status.RUNNING],
  });
  const withDecky = await server.grpc.list({
    hostUuid: host,
    operation: Operation.DEPLOY,
    statuses: [Status.PENDING, Status.RUNNING],
    deckyName: x,
  });

  expect(byHostOperationStatus.rows).toEqual(inListOrder([xDeploy, yRetry]));
  expect(withDecky.rows).toEqual([xDeploy]);
});

test("List combines ids with the other filters with AND", async () => {
  const name = deckyName();
  const deploy = await rowOf(name, Operation.DEPLOY, Status.SUCCEEDED);
  const mutate = await rowOf(name, Operation.MUTATE, Status.PENDING);

  const response = await server.connect.list({
    ids: [deploy.id, mutate.id],
    statuses: [Status.PENDING],
  });

  expect(response.rows).toEqual([mutate]);
});

test("List refuses STATUS_UNSPECIFIED among statuses", async () => {
  const error = await failure(
    server.grpcWeb.list({ statuses: [Status.PENDING, Status.UNSPECIFIED] }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "statuses[1] must be a known status other than STATUS_UNSPECIFIED, not 0",
  );
});

test("List refuses a decky_name filter that no decky can have", async () => {
  const error = await failure(server.grpc.list({ deckyName: "Bad" }));

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    'decky_name "Bad" must match ^[a-z0-9-]{1,64}$',
  );
});

test("List refuses a host_uuid filter that is not a UUID", async () => {
  const error = await failure(server.connect.list({ hostUuid: "host-1" }));

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe('host_uuid "host-1" is not a UUID');
});

test("List refuses an operation value the contract does not define", async () => {
  const error = await failure(server.grpc.list({ operation: 7 as Operation }));

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "operation must be OPERATION_DEPLOY or OPERATION_MUTATE, not 7",
  );
});

test("List returns rows in started_at, then id order", async () => {
  const host = randomUUID();
  const accepted: Lifecycle[] = [];
  for (let call = 0; call < 4; call++) {
    accepted.push(...(await acceptOnHost(host, 5)));
  }

  const response = await server.grpcWeb.list({ hostUuid: host });

  expect(response.rows).toEqual(inListOrder(accepted));
});

test("List answers 50 rows a page when page_size is 0", async () => {
  const host = randomUUID();
  const rows = inListOrder(await acceptOnHost(host, 60));

  const first = await server.grpc.list({ hostUuid: host });
  const second = await server.grpc.list({
    hostUuid: host,
    pageToken: first.nextPageToken,
  });

  expect(first.rows).toEqual(rows.slice(0, 50));
  expect(first.nextPageToken).not.toBe("");
  expect(second.rows).toEqual(rows.slice(50));
  expect(second.nextPageToken).toBe("");
});

test("List answers at most 500 rows a page whatever page_size asks for", async () => {
  const host = randomUUID();
  const rows = inListOrder(await acceptOnHost(host, 501));

  const first = await server.connect.list({ hostUuid: host, pageSize: 10_000 });
  const second = await server.connect.list({
    hostUuid: host,
    pageSize: 10_000,
    pageToken: first.nextPageToken,
  });

  expect(first.rows).toHaveLength(500);
  expect(first.rows).toEqual(rows.slice(0, 500));
  expect(first.nextPageToken).not.toBe("");
  expect(second.rows).toEqual(rows.slice(500));
  expect(second.nextPageToken).toBe("");
});

test("List refuses a negative page_size", async () => {
  const error = await failure(server.grpcWeb.list({ pageSize: -1 }));

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe("page_size -1 must not be negative");
});

test("List pages through every matching row once, in order", async () => {
  const host = randomUUID();
  const rows = inListOrder(await acceptOnHost(host, 23));

  const pages: Lifecycle[][] = [];
  let pageToken = "";
  do {
    const page = await server.grpc.list({
      hostUuid: host,
      pageSize: 5,
      pageToken,
    });
    pages.push(page.rows);
    pageToken = page.nextPageToken;
  } while (pageToken !== "");

  expect(pages.map((page) => page.length)).toEqual([5, 5, 5, 5, 3]);
  expect(pages.flat()).toEqual(rows);
});

test("List gives the last page an empty next_page_token when it is exactly full", async () => {
  const host = randomUUID();
  const rows = inListOrder(await acceptOnHost(host, 10));

  const response = await server.connect.list({ hostUuid: host, pageSize: 10 });

  expect(response.rows).toEqual(rows);
  expect(response.nextPageToken).toBe("");
});

test("List paging returns each earlier row once while rows are being added", async () => {
  const host = randomUUID();
  const before = await acceptOnHost(host, 12);

  const seen: Lifecycle[] = [];
  let pageToken = "";
  let pages = 0;
  do {
    const page = await server.grpcWeb.list({
      hostUuid: host,
      pageSize: 5,
      pageToken,
    });
    seen.push(...page.rows);
    pageToken = page.nextPageToken;
    pages += 1;
    if (pages <= 3) await acceptOnHost(host, 3);
  } while (pageToken !== "");

  const seenIds = ids(seen);
  expect(new Set(seenIds).size).toBe(seenIds.length);
  for (const row of before) {
    expect(seenIds.filter((id) => id === row.id)).toEqual([row.id]);
  }
  expect(seen).toEqual(inListOrder(seen));
});

test("List refuses a page token it did not issue", async () => {
  const error = await failure(
    server.grpc.list({ pageToken: "bm90LWEtdG9rZW4" }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "page_token is not a token this service issued",
  );
});

test("List refuses a page token with one character changed", async () => {
  const host = randomUUID();
  await acceptOnHost(host, 3);
  const { nextPageToken } = await server.connect.list({
    hostUuid: host,
    pageSize: 1,
  });
  const at = Math.floor(nextPageToken.length / 3);
  const changed = nextPageToken[at] === "A" ? "B" : "A";
  const forged =
    nextPageToken.slice(0, at) + changed + nextPageToken.slice(at + 1);

  const error = await failure(
    server.connect.list({ hostUuid: host, pageSize: 1, pageToken: forged }),
  );

  expect(forged).not.toBe(nextPageToken);
  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "page_token is not a token this service issued",
  );
});

test("List refuses a page token with its signature changed", async () => {
  const host = randomUUID();
  await acceptOnHost(host, 3);
  const { nextPageToken } = await server.grpcWeb.list({
    hostUuid: host,
    pageSize: 1,
  });
  const last = nextPageToken.at(-2) === "A" ? "B" : "A";
  const forged = `${nextPageToken.slice(0, -2)}${last}${nextPageToken.at(-1)}`;

  const error = await failure(
    server.grpcWeb.list({ hostUuid: host, pageSize: 1, pageToken: forged }),
  );

  expect(forged).not.toBe(nextPageToken);
  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "page_token is not a token this service issued",
  );
});

test("List refuses a page token issued for a different filter", async () => {
  const [host, other] = [randomUUID(), randomUUID()];
  await acceptOnHost(host, 3);
  await acceptOnHost(other, 3);
  const { nextPageToken } = await server.grpc.list({
    hostUuid: host,
    pageSize: 1,
  });

  const error = await failure(
    server.grpc.list({
      hostUuid: other,
      pageSize: 1,
      pageToken: nextPageToken,
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "page_token was issued for a different filter; send the same filters as the first page",
  );
});

test("List refuses a page token issued for the same filter plus statuses", async () => {
  const host = randomUUID();
  await acceptOnHost(host, 3);
  const { nextPageToken } = await server.connect.list({
    hostUuid: host,
    pageSize: 1,
  });

  const error = await failure(
    server.connect.list({
      hostUuid: host,
      statuses: [Status.PENDING],
      pageSize: 1,
      pageToken: nextPageToken,
    }),
  );

  expect(error.code).toBe(Code.InvalidArgument);
  expect(error.rawMessage).toBe(
    "page_token was issued for a different filter; send the same filters as the first page",
  );
});

test("List accepts its page tokens after a server restart", async () => {
  const host = randomUUID();
  const rows = inListOrder(await acceptOnHost(host, 4));
  const first = await server.grpc.list({ hostUuid: host, pageSize: 2 });
  await server.close();
  server = await startTestServer(database);

  const second = await server.grpc.list({
    hostUuid: host,
    pageSize: 2,
    pageToken: first.nextPageToken,
  });

  expect(second.rows).toEqual(rows.slice(2));
  expect(second.nextPageToken).toBe("");
});
