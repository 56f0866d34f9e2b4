import { afterAll, beforeAll, expect, test } from "vitest";
import { WatchResponse_Kind } from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import type { RunningServer } from "../../src/server/start-server.js";
import { query } from "../../src/storage/sql.js";
import { clientsWith, openWatch } from "../support/callers.js";
import {
  createTestDatabase,
  startLoggedServer,
  type TestDatabase,
} from "../support/test-server.js";

/**
 * The sweeper and the change feed run outside any call; when their
 * statements fail, the log must say what the database said, as a failed
 * call's line does, and carry neither the statement, nor a stack trace with
 * node_modules paths, nor any other path.
 */

let database: TestDatabase;
let server: RunningServer;
let logLines: string[];

beforeAll(async () => {
  database = await createTestDatabase();
  ({ server, lines: logLines } = await startLoggedServer(database, {
    SWEEP_INTERVAL_MS: "50",
    LOG_LEVEL: "info",
  }));
});

afterAll(async () => {
  await server?.close();
  await database?.drop();
});

/** Renames `table` away for the length of `run`, then back. */
async function withoutTable<T>(table: string, run: () => Promise<T>) {
  const em = server.orm.em.fork();
  await query(em, `alter table ${table} rename to ${table}_gone`);
  try {
    return await run();
  } finally {
    await query(em, `alter table ${table}_gone rename to ${table}`);
  }
}

/** The first line logged with `msg` from `from` on, as it was written. */
async function loggedLine(msg: string, from: number): Promise<string> {
  for (;;) {
    const line = logLines
      .slice(from)
      .find((text) => (JSON.parse(text) as { msg: string }).msg === msg);
    if (line) return line;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** A logged line without the fields pino adds to every line. */
function fieldsOf(line: string): Record<string, unknown> {
  const { time, pid, hostname, ...fields } = JSON.parse(line) as Record<
    string,
    unknown
  >;
  return fields;
}

const SQL =
  /\b(select|insert|update|delete|alter)\b[\s\S]*\b(from|into|set|where|table)\b/i;
const STACK = /\\n\s+at |\bat .*\(.*:\d+:\d+\)|\.[cm]?[jt]s:\d+|"stack"/;
const PATH = /(^|[\s"'(=])\/(?:[^\s/"']+\/)+[^\s/"']*/;

test("a sweep that fails logs the database's words, with no statement, stack or path", async () => {
  const from = logLines.length;

  const line = await withoutTable("decky_lifecycle", () =>
    loggedLine("could not sweep stale rows and lost hosts", from),
  );

  expect(fieldsOf(line)).toEqual({
    level: 40,
    name: "decky-lifecycle",
    msg: "could not sweep stale rows and lost hosts",
    cause: {
      type: "DatabaseError",
      code: "42P01",
      message: 'relation "decky_lifecycle" does not exist',
    },
  });
  expect([SQL.test(line), STACK.test(line), PATH.test(line)]).toEqual([
    false,
    false,
    false,
  ]);
  expect(line).not.toContain(process.cwd());
});

test("a read of the change log that fails logs the database's words, with no statement, stack or path, and counts the watchers it ends", async () => {
  const watch = openWatch(clientsWith(server.url, undefined), {});
  await watch.until((received) =>
    received.some((m) => m.kind === WatchResponse_Kind.SNAPSHOT_END),
  );
  const from = logLines.length;
  const revision = server.feed.revision.toString();

  // Nothing changes, so the feed reads the log itself within a second.
  const line = await withoutTable("lifecycle_change", () =>
    loggedLine(
      "could not read the change log; ending the watchers, will retry",
      from,
    ),
  );
  watch.cancel();
  await watch.ended;

  expect(fieldsOf(line)).toEqual({
    level: 40,
    name: "decky-lifecycle",
    msg: "could not read the change log; ending the watchers, will retry",
    cause: {
      type: "DatabaseError",
      code: "42P01",
      message: 'relation "lifecycle_change" does not exist',
    },
    after: revision,
    watchers: 1,
  });
  expect([SQL.test(line), STACK.test(line), PATH.test(line)]).toEqual([
    false,
    false,
    false,
  ]);
  expect(line).not.toContain(process.cwd());
});
