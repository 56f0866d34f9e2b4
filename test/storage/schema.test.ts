import { afterAll, beforeAll, expect, test } from "vitest";
import {
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { query } from "../../src/storage/sql.js";
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

function sql(text: string, bindings: string[] = []) {
  return query(server.server.orm.em.fork(), text, bindings);
}

async function failure(statement: Promise<unknown>) {
  const error = await statement.then(
    () => undefined,
    (caught: unknown) => caught as Error & { code?: string },
  );
  return error && { code: error.code, message: error.message };
}

test("the migrated schema is exactly what the entities describe", async () => {
  const generator = server.server.orm.getSchemaGenerator();

  const difference = await generator.getUpdateSchemaSQL({ wrap: false });

  expect(difference).toBe("");
});

test("the database refuses a second open row for a decky and operation", async () => {
  const name = deckyName();
  await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
  });

  const error = await failure(
    sql(
      `insert into decky_lifecycle
         (id, decky_name, operation, status, started_at, updated_at, revision)
       values (gen_random_uuid(), ?, 'deploy', 'running', now(), now(), 0)`,
      [name],
    ),
  );

  expect(error?.code).toBe("23505");
  expect(error?.message).toContain("decky_lifecycle_one_open_row");
});

test("the database refuses any change to a terminal row", async () => {
  const { lifecycleIds } = await server.grpc.accept({
    operation: Operation.MUTATE,
    targets: [{ deckyName: deckyName() }],
  });
  const id = lifecycleIds[0]!;
  await server.grpc.report({ lifecycleId: id, status: Status.SUCCEEDED });

  const error = await failure(
    sql("update decky_lifecycle set status = 'failed' where id = ?", [id]),
  );

  expect(error).toEqual({
    code: "23514",
    message: expect.stringContaining(
      `lifecycle row ${id} is succeeded and cannot change`,
    ),
  });
});

test("the database refuses a move the state machine does not allow", async () => {
  const { lifecycleIds } = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: deckyName() }],
  });
  const id = lifecycleIds[0]!;
  await server.grpc.report({ lifecycleId: id, status: Status.RUNNING });

  const error = await failure(
    sql("update decky_lifecycle set status = 'pending' where id = ?", [id]),
  );

  expect(error).toEqual({
    code: "23514",
    message: expect.stringContaining(
      `lifecycle row ${id} cannot move from running to pending`,
    ),
  });
});
