import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, expect, test } from "vitest";
import {
  Operation,
  Status,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { Role } from "../../gen/decky/lifecycle/v1/token_pb.js";
import { issueToken } from "../../src/auth/token.js";
import { describeCause } from "../../src/logging/describe-cause.js";
import type { RunningServer } from "../../src/server/start-server.js";
import { query } from "../../src/storage/sql.js";
import {
  type CallerClients,
  clientsWith,
  openHeartbeat,
  openWatch,
  storeToken,
} from "../support/callers.js";
import {
  createTestDatabase,
  deckyName,
  startLoggedServer,
  type TestDatabase,
} from "../support/test-server.js";

/**
 * One run that makes the service answer with every error code it uses;
 * neither what callers are told nor what the server logs may carry a
 * token, a SQL statement, a stack trace or a file path. The service never
 * answers UNKNOWN, ABORTED or DATA_LOSS.
 */

let database: TestDatabase;
let server: RunningServer;
let logLines: string[];
let dataDir: string;

beforeAll(async () => {
  database = await createTestDatabase();
  const logged = await startLoggedServer(database, {
    AUTH: "tokens",
    WATCH_STREAMS_PER_CALLER: "1",
    LOG_LEVEL: "trace",
  });
  ({ server, lines: logLines } = logged);
  dataDir = logged.settings.dataDir;
});

afterAll(async () => {
  await server?.close();
  await database?.drop();
});

/** What a caller was told: the code and the message. */
interface Answer {
  readonly code: string;
  readonly message: string;
}

const answers: Answer[] = [];
const secrets: string[] = [];

async function expectFailure(
  code: Code,
  call: () => Promise<unknown>,
): Promise<void> {
  try {
    await call();
  } catch (error) {
    const converted = ConnectError.from(error);
    answers.push({ code: Code[converted.code], message: converted.message });
    expect(Code[converted.code], converted.message).toBe(Code[code]);
    return;
  }
  throw new Error(`the call succeeded; expected ${Code[code]}`);
}

/**
 * A call made without a client, as a browser or a script might. A path the
 * server does not serve is answered 404 with no body, which Connect clients
 * read as UNIMPLEMENTED.
 */
async function rawCall(
  path: string,
  body: string,
  authorization: string,
): Promise<Answer> {
  const response = await fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization },
    body,
  });
  const text = await response.text();
  const answer: Answer =
    response.status === 404 && text === ""
      ? { code: "unimplemented", message: "" }
      : (JSON.parse(text) as Answer);
  answers.push(answer);
  return answer;
}

function secretOf(token: string): string {
  return token.slice(36);
}

test("every error code the service answers with is free of tokens, SQL, stack traces and paths", async () => {
  const adminToken = await storeToken(server, "admin", "errors-admin");
  const admin = clientsWith(server.url, `Bearer ${adminToken}`);
  const viewer = await admin.tokens.createToken({
    name: "errors-viewer",
    role: Role.VIEWER,
  });
  const revoked = await admin.tokens.createToken({
    name: "errors-revoked",
    role: Role.VIEWER,
  });
  await admin.tokens.revokeToken({ tokenId: revoked.apiToken!.tokenId });
  const enrolled = await admin.hosts.enrollHost({ name: "errors-worker" });
  const retired = await admin.hosts.enrollHost({ name: "errors-retired" });
  await admin.hosts.decommissionHost({ hostUuid: retired.host!.hostUuid });
  const unknown = issueToken().text;
  for (const token of [
    adminToken,
    viewer.token,
    revoked.token,
    enrolled.token,
    retired.token,
    unknown,
  ]) {
    secrets.push(token, secretOf(token), secretOf(token).slice(0, 12));
  }
  const as = (token: string): CallerClients =>
    clientsWith(server.url, `Bearer ${token}`);

  // UNAUTHENTICATED
  for (const caller of [
    clientsWith(server.url, undefined),
    clientsWith(server.url, `Bearer ${adminToken.slice(0, -2)}`),
    as(unknown),
    as(revoked.token),
  ]) {
    await expectFailure(Code.Unauthenticated, () => caller.lifecycle.list({}));
  }

  // PERMISSION_DENIED
  await expectFailure(Code.PermissionDenied, () =>
    as(viewer.token).lifecycle.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: deckyName("errors") }],
    }),
  );
  await expectFailure(Code.PermissionDenied, () =>
    as(retired.token).lifecycle.list({}),
  );
  const elsewhere = openHeartbeat(as(enrolled.token));
  elsewhere.send({ hostUuid: randomUUID(), agentVersion: "a/1", deltas: [] });
  await expectFailure(Code.PermissionDenied, async () => {
    throw await elsewhere.failure();
  });

  // INVALID_ARGUMENT
  await expectFailure(Code.InvalidArgument, () =>
    admin.lifecycle.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: "Not A Name" }],
    }),
  );
  await expectFailure(Code.InvalidArgument, () =>
    admin.lifecycle.list({ pageToken: "forged" }),
  );
  // A token pasted where an id belongs is named by its id, never its secret.
  const pasted = viewer.token;
  const pastedShown = `"dl_${viewer.apiToken!.tokenId.replaceAll("-", "")}_<secret withheld>"`;
  const pastedAnswers = answers.length;
  await expectFailure(Code.InvalidArgument, () =>
    admin.tokens.revokeToken({ tokenId: pasted }),
  );
  await expectFailure(Code.InvalidArgument, () =>
    admin.lifecycle.report({ lifecycleId: pasted, status: Status.RUNNING }),
  );
  await expectFailure(Code.InvalidArgument, () =>
    admin.lifecycle.list({ ids: [pasted] }),
  );
  await expectFailure(Code.InvalidArgument, () =>
    admin.hosts.rotateHostToken({ hostUuid: `${pasted}-and-more` }),
  );
  const pastedHeartbeat = openHeartbeat(admin);
  pastedHeartbeat.send({ hostUuid: pasted, agentVersion: "a/1", deltas: [] });
  await expectFailure(Code.InvalidArgument, async () => {
    throw await pastedHeartbeat.failure();
  });
  await expectFailure(Code.InvalidArgument, () =>
    admin.tokens.revokeToken({ tokenId: secretOf(pasted) }),
  );
  const unknownKey = await rawCall(
    "/decky.lifecycle.v1.LifecycleService/List",
    JSON.stringify({ [pasted]: 1 }),
    `Bearer ${adminToken}`,
  );
  expect(answers.slice(pastedAnswers).map((a) => a.message)).toEqual([
    `[invalid_argument] token_id ${pastedShown} is not a UUID`,
    `[invalid_argument] lifecycle_id ${pastedShown} is not a UUID`,
    `[invalid_argument] ids[0] ${pastedShown} is not a UUID`,
    `[invalid_argument] host_uuid ${pastedShown.slice(0, -1)}…" is not a UUID`,
    `[invalid_argument] host_uuid ${pastedShown} is not a UUID`,
    '[invalid_argument] token_id "<secret withheld>" is not a UUID',
    `cannot decode message decky.lifecycle.v1.ListRequest from JSON: key ${pastedShown} is unknown`,
  ]);
  expect(unknownKey.code).toBe("invalid_argument");
  // A delta's outcome names what was wrong the same way.
  const reporter = openHeartbeat(admin);
  reporter.send({
    hostUuid: randomUUID(),
    agentVersion: "a/1",
    deltas: [
      {
        deckyName: deckyName("errors"),
        operation: Operation.DEPLOY,
        status: Status.RUNNING,
        lifecycleId: pasted,
      },
    ],
  });
  const { outcomes } = await reporter.close();
  expect(outcomes.map((outcome) => outcome.detail)).toEqual([
    `lifecycle_id ${pastedShown} is not a UUID`,
  ]);
  const malformed = await rawCall(
    "/decky.lifecycle.v1.LifecycleService/List",
    "{",
    `Bearer ${adminToken}`,
  );
  expect(malformed.code).toBe("invalid_argument");

  // NOT_FOUND
  await expectFailure(Code.NotFound, () =>
    admin.lifecycle.report({
      lifecycleId: randomUUID(),
      status: Status.RUNNING,
    }),
  );
  await expectFailure(Code.NotFound, () =>
    admin.hosts.rotateHostToken({ hostUuid: randomUUID() }),
  );

  // ALREADY_EXISTS and FAILED_PRECONDITION
  const name = deckyName("errors");
  await admin.lifecycle.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
    requestId: "errors-1",
  });
  await expectFailure(Code.AlreadyExists, () =>
    admin.lifecycle.accept({
      operation: Operation.MUTATE,
      targets: [{ deckyName: name }],
      requestId: "errors-1",
    }),
  );
  await expectFailure(Code.FailedPrecondition, () =>
    admin.lifecycle.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: name }],
    }),
  );

  // OUT_OF_RANGE
  await expectFailure(Code.OutOfRange, async () => {
    for await (const _ of admin.lifecycle.watch({ afterRevision: 1n << 40n }));
  });

  // RESOURCE_EXHAUSTED: a second Watch of a caller allowed one, and a
  // message over the receive limit.
  const held = openWatch(admin, {});
  await held.until((received) =>
    received.some((m) => m.kind === WatchResponse_Kind.SNAPSHOT_END),
  );
  await expectFailure(Code.ResourceExhausted, async () => {
    for await (const _ of admin.lifecycle.watch({}));
  });
  held.cancel();
  const oversized = await rawCall(
    "/decky.lifecycle.v1.LifecycleService/List",
    JSON.stringify({ decky_name: "x".repeat(5 * 1024 * 1024) }),
    `Bearer ${adminToken}`,
  );
  expect(oversized.code).toBe("resource_exhausted");

  // UNIMPLEMENTED
  const missing = await rawCall(
    "/decky.lifecycle.v1.LifecycleService/Forget",
    "{}",
    `Bearer ${adminToken}`,
  );
  expect(missing.code).toBe("unimplemented");

  // DEADLINE_EXCEEDED and CANCELED
  const reader = clientsWith(server.url, `Bearer ${viewer.token}`);
  await expectFailure(Code.DeadlineExceeded, async () => {
    for await (const _ of reader.lifecycle.watch({}, { timeoutMs: 300 }));
  });
  const abort = new AbortController();
  await expectFailure(Code.Canceled, async () => {
    for await (const message of reader.lifecycle.watch(
      {},
      { signal: abort.signal },
    )) {
      if (message.kind === WatchResponse_Kind.SNAPSHOT_END) abort.abort();
    }
  });

  // INTERNAL: a table the service needs is gone.
  const em = server.orm.em.fork();
  await query(em, "alter table accept_request rename to accept_request_gone");
  await expectFailure(Code.Internal, () =>
    admin.lifecycle.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: deckyName("errors") }],
      requestId: "errors-2",
    }),
  );
  await query(em, "alter table accept_request_gone rename to accept_request");

  // UNAVAILABLE: the server stops while a stream is open.
  const worker = openHeartbeat(as(enrolled.token));
  worker.send({
    hostUuid: enrolled.host!.hostUuid,
    agentVersion: "a/1",
    deltas: [],
  });
  await waitUntilAlive(admin, enrolled.host!.hostUuid);
  await server.close();
  await expectFailure(Code.Unavailable, async () => {
    throw await worker.failure();
  });

  expect(new Set(answers.map((answer) => normalise(answer.code)))).toEqual(
    new Set([
      "unauthenticated",
      "permission_denied",
      "invalid_argument",
      "not_found",
      "already_exists",
      "failed_precondition",
      "out_of_range",
      "resource_exhausted",
      "unimplemented",
      "deadline_exceeded",
      "canceled",
      "internal",
      "unavailable",
    ]),
  );
  expect(answers.filter((answer) => leaks(answer.message))).toEqual([]);

  // Start-up and shutdown name DATA_DIR, the directory the operator chose;
  // no other path may appear.
  const logged = logLines.map((line) => line.replaceAll(dataDir, "DATA_DIR"));
  expect(logged.filter(leaks)).toEqual([]);
  // The log still says what went wrong, in the database's own words.
  const internal = logged
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .find((line) => line.code === "Internal");
  expect(internal).toMatchObject({
    method: "Accept",
    msg: "internal error",
    cause: {
      type: "DatabaseError",
      code: "42P01",
      message: 'relation "accept_request" does not exist',
    },
  });
});

/** Waits until the host's first heartbeat was applied. */
async function waitUntilAlive(admin: CallerClients, hostUuid: string) {
  for (;;) {
    const { hosts } = await admin.hosts.listHosts({});
    if (hosts.find((host) => host.hostUuid === hostUuid)?.agentVersion) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Codes as the Connect protocol spells them. */
function normalise(code: string): string {
  return code.replace(/([a-z])([A-Z])/g, "$1_$2").toLowerCase();
}

const SQL =
  /\b(select|insert|update|delete|alter)\b[\s\S]*\b(from|into|set|where|table)\b/i;
const STACK = /\n\s+at |\bat .*\(.*:\d+:\d+\)|\.[cm]?[jt]s:\d+/;
const PATH = /(^|[\s"'(=])\/(?:[^\s/"']+\/)+[^\s/"']*/;

/** Whether `text` carries a token, SQL, a stack trace or a file path. */
function leaks(text: string): boolean {
  return (
    secrets.some((secret) => text.includes(secret)) ||
    SQL.test(text) ||
    STACK.test(text) ||
    PATH.test(text) ||
    text.includes(process.cwd())
  );
}

test("a logged cause keeps the database's words and drops the statement, paths and stack", () => {
  const fromDatabase = Object.assign(
    new Error(
      'select * from api_token where id = $1 - relation "api_token" does not exist',
    ),
    { code: "42P01" },
  );
  const fromSocket = Object.assign(
    new Error("connect ENOENT /tmp/dl-test-x/.s.PGSQL.5432"),
    { code: "ENOENT" },
  );

  expect(describeCause(fromDatabase)).toEqual({
    type: "Error",
    code: "42P01",
    message: 'relation "api_token" does not exist',
  });
  expect(describeCause(fromSocket)).toEqual({
    type: "Error",
    code: "ENOENT",
    message: "connect ENOENT <path>",
  });
  expect(describeCause(new TypeError("a - b"))).toEqual({
    type: "TypeError",
    message: "a - b",
  });
  expect(describeCause(undefined)).toBeUndefined();
});
