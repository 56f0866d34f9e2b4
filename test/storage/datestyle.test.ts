import { timestampDate } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, expect, test } from "vitest";
import { Operation } from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
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
});

afterAll(async () => {
  await server?.close();
  await database?.drop();
});

test("the server reads and writes times on a database whose DateStyle is not ISO", async () => {
  server = await startTestServer(database);
  const em = server.server.orm.em.fork();
  const [current] = await query(em, "select current_database() as name");
  await query(
    em,
    `alter database "${current!.name as string}" set datestyle = 'SQL, DMY'`,
  );
  await server.close();
  server = await startTestServer(database);
  const before = Date.now();

  const accepted = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: deckyName() }],
  });
  const listed = await server.grpc.list({ ids: accepted.lifecycleIds });

  const row = listed.rows[0]!;
  expect(row).toEqual(accepted.rows[0]);
  const startedAt = timestampDate(row.startedAt!).getTime();
  expect(Math.abs(startedAt - before)).toBeLessThan(60_000);
});
