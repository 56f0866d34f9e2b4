import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, expect, test } from "vitest";
import {
  Operation,
  Status,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { query } from "../../src/storage/sql.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";

const HOUR_MS = "3600000";

let database: TestDatabase;
let server: TestServer;

beforeAll(async () => {
  database = await createTestDatabase();
});

afterAll(async () => {
  await server?.close();
  await database?.drop();
});

/** The first message of a watch resumed from `afterRevision`, or its error. */
async function watchFrom(afterRevision: bigint) {
  const seen: [WatchResponse_Kind, bigint][] = [];
  const abort = new AbortController();
  try {
    for await (const message of server.connect.watch(
      { afterRevision },
      { signal: abort.signal },
    )) {
      seen.push([message.kind, message.revision]);
      abort.abort();
      break;
    }
  } catch (error) {
    const failure = ConnectError.from(error);
    if (failure.code !== Code.Canceled) {
      return { code: failure.code, message: failure.rawMessage };
    }
  }
  return seen;
}

test("start-up prunes changes older than CHANGE_RETENTION_MS and Accept keys older than two days", async () => {
  server = await startTestServer(database, { CHANGE_RETENTION_MS: HOUR_MS });
  const body = {
    operation: Operation.DEPLOY,
    targets: [{ deckyName: deckyName() }],
    requestId: "aged-key",
  };
  const first = await server.grpc.accept(body);
  const id = first.lifecycleIds[0]!;
  await server.grpc.report({ lifecycleId: id, status: Status.RUNNING });
  await server.grpc.report({ lifecycleId: id, status: Status.SUCCEEDED });
  const em = server.server.orm.em.fork();
  await query(
    em,
    "update lifecycle_change set updated_at = updated_at - interval '2 hours'",
  );
  await query(
    em,
    "update accept_request set created_at = created_at - interval '3 days'",
  );
  await server.close();

  server = await startTestServer(database, { CHANGE_RETENTION_MS: HOUR_MS });

  expect(await watchFrom(1n)).toEqual({
    code: Code.OutOfRange,
    message:
      "after_revision 1 is outside the kept history (2 to 3); watch again without after_revision",
  });
  expect(await watchFrom(2n)).toEqual([[WatchResponse_Kind.CHANGE, 3n]]);
  const again = await server.grpc.accept(body);
  expect(again.lifecycleIds).toHaveLength(1);
  expect(again.lifecycleIds[0]).not.toBe(id);
});

test("changes within CHANGE_RETENTION_MS are kept", async () => {
  await server.close();
  server = await startTestServer(database, { CHANGE_RETENTION_MS: HOUR_MS });
  const { rows } = await server.grpc.accept({
    operation: Operation.MUTATE,
    targets: [{ deckyName: deckyName() }],
  });
  const accepted = rows[0]!;
  await server.grpc.report({
    lifecycleId: accepted.id,
    status: Status.FAILED,
    error: "mutation refused",
  });
  await server.close();

  server = await startTestServer(database, { CHANGE_RETENTION_MS: HOUR_MS });

  expect(await watchFrom(accepted.revision - 1n)).toEqual([
    [WatchResponse_Kind.CHANGE, accepted.revision],
  ]);
});
