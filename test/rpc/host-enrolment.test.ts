import { createHash, randomUUID } from "node:crypto";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { beforeAll, expect, test } from "vitest";
import { HostState } from "../../gen/decky/lifecycle/v1/host_pb.js";
import {
  DeltaOutcome_Result,
  type Lifecycle,
  Operation,
  Status,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { Role } from "../../gen/decky/lifecycle/v1/token_pb.js";
import { query } from "../../src/storage/sql.js";
import {
  type CallerClients,
  clientsWith,
  databaseState,
  openHeartbeat,
  openWatch,
  storeToken,
} from "../support/callers.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

const server = serveThisFile({ AUTH: "tokens" });

let admin: CallerClients;

beforeAll(async () => {
  admin = clientsWith(
    server.url,
    `Bearer ${await storeToken(server.server, "admin")}`,
  );
});

/** Enrols a host; returns its id and clients that carry its worker token. */
async function enrolWorker(name = "worker") {
  const { host, token } = await admin.hosts.enrollHost({ name });
  return {
    hostUuid: host!.hostUuid,
    token,
    worker: clientsWith(server.url, `Bearer ${token}`),
  };
}

async function acceptOn(hostUuid: string | undefined): Promise<Lifecycle> {
  const { rows } = await admin.lifecycle.accept({
    operation: Operation.DEPLOY,
    targets: [
      hostUuid === undefined
        ? { deckyName: deckyName("enrol") }
        : { deckyName: deckyName("enrol"), hostUuid },
    ],
  });
  return rows[0]!;
}

async function failureOf(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call succeeded");
}

function codeAndMessage(error: ConnectError): [string, string] {
  return [Code[error.code], error.rawMessage];
}

async function listRows(ids: string[]): Promise<Lifecycle[]> {
  return (await admin.lifecycle.list({ ids })).rows;
}

test("EnrollHost returns the host and a worker token that is stored only as a hash", async () => {
  const before = Date.now();
  const { host, token } = await admin.hosts.enrollHost({ name: "web-1" });

  expect(host).toMatchObject({
    state: HostState.ENROLLED,
    name: "web-1",
    agentVersion: "",
    certificateFingerprint: "",
  });
  expect(host!.hostUuid).toMatch(/^[0-9a-f-]{36}$/);
  expect(timestampDate(host!.enrolledAt!).getTime()).toBeGreaterThanOrEqual(
    before - 1000,
  );
  expect(host!.lastHeartbeatAt).toBeUndefined();
  expect(token).toMatch(/^dl_[0-9a-f]{32}_[A-Za-z0-9_-]{43}$/);

  // The secret follows "dl_", the 32 hex digits of the id and "_"; it may
  // hold "_" itself.
  const secret = token.slice(36);
  const stored = await query(
    server.server.orm.em.fork(),
    "select * from api_token where host_uuid = ?",
    [host!.hostUuid],
  );
  expect(stored).toHaveLength(1);
  const { secret_hash: secretHash, ...row } = stored[0]!;
  expect(row).toMatchObject({
    name: "web-1",
    role: "worker",
    revoked_at: null,
  });
  expect(Buffer.from(secretHash as Uint8Array).toString("hex")).toBe(
    createHash("sha256").update(Buffer.from(secret, "base64url")).digest("hex"),
  );
  expect(JSON.stringify(stored)).not.toContain(secret);
});

test("a worker token heartbeats as its host, which becomes alive", async () => {
  const { hostUuid, worker } = await enrolWorker("web-2");
  const call = openHeartbeat(worker);
  call.send({ hostUuid, agentVersion: "agent/2.0", deltas: [] });
  expect(await call.close()).toMatchObject({ messages: 1, applied: 0 });

  const { hosts } = await admin.hosts.listHosts({
    states: [HostState.ALIVE],
    pageSize: 500,
  });
  expect(hosts.find((host) => host.hostUuid === hostUuid)).toMatchObject({
    state: HostState.ALIVE,
    name: "web-2",
    agentVersion: "agent/2.0",
  });
});

test("EnrollHost keeps a given host_uuid and pins a fingerprint written with colons as lower-case hex", async () => {
  const hostUuid = randomUUID();
  const hex = createHash("sha256").update(hostUuid).digest("hex");
  const withColons = hex.toUpperCase().match(/../g)!.join(":");

  const { host } = await admin.hosts.enrollHost({
    name: "pinned",
    hostUuid,
    certificateFingerprint: withColons,
  });

  expect(host).toMatchObject({ hostUuid, certificateFingerprint: hex });
});

test("EnrollHost enrols a host first known from its heartbeats and keeps its state", async () => {
  const hostUuid = randomUUID();
  const call = openHeartbeat(admin);
  call.send({ hostUuid, agentVersion: "agent/1.0", deltas: [] });
  await call.close();

  const { host } = await admin.hosts.enrollHost({ name: "seen", hostUuid });

  expect(host).toMatchObject({
    hostUuid,
    state: HostState.ALIVE,
    name: "seen",
    agentVersion: "agent/1.0",
  });
  expect(host!.enrolledAt).toBeDefined();
});

test("EnrollHost refuses a host that is enrolled already", async () => {
  const { hostUuid } = await enrolWorker();
  const before = await databaseState(server.server);

  const error = await failureOf(
    admin.hosts.enrollHost({ name: "again", hostUuid }),
  );

  expect(codeAndMessage(error)).toEqual([
    "AlreadyExists",
    `host ${hostUuid} is already enrolled; RotateHostToken gives it a new token`,
  ]);
  expect(await databaseState(server.server)).toEqual(before);
});

test("EnrollHost refuses a certificate pinned to another host", async () => {
  const fingerprint = createHash("sha256").update("shared").digest("hex");
  const { host } = await admin.hosts.enrollHost({
    name: "first",
    certificateFingerprint: fingerprint,
  });
  const before = await databaseState(server.server);

  const error = await failureOf(
    admin.hosts.enrollHost({
      name: "second",
      certificateFingerprint: fingerprint,
    }),
  );

  expect(codeAndMessage(error)).toEqual([
    "AlreadyExists",
    `certificate_fingerprint is already pinned to host ${host!.hostUuid}`,
  ]);
  expect(await databaseState(server.server)).toEqual(before);
});

test("EnrollHost refuses a decommissioned host", async () => {
  const { hostUuid } = await enrolWorker();
  await admin.hosts.decommissionHost({ hostUuid });

  const error = await failureOf(
    admin.hosts.enrollHost({ name: "back", hostUuid }),
  );

  expect(codeAndMessage(error)).toEqual([
    "FailedPrecondition",
    `host ${hostUuid} was decommissioned and cannot be enrolled again`,
  ]);
});

test("EnrollHost names the field at fault in what it refuses", async () => {
  const cases: [Parameters<typeof admin.hosts.enrollHost>[0], string][] = [
    [{ name: "" }, "name must not be empty"],
    [
      { name: "x".repeat(129) },
      "name is 129 characters long; at most 128 are allowed",
    ],
    [{ name: "ok", hostUuid: "host-1" }, 'host_uuid "host-1" is not a UUID'],
    [
      { name: "ok", certificateFingerprint: "abc" },
      "certificate_fingerprint must be a SHA-256 fingerprint: 64 hex digits, colons allowed",
    ],
  ];
  for (const [request, message] of cases) {
    const error = await failureOf(admin.hosts.enrollHost(request));
    expect(codeAndMessage(error)).toEqual(["InvalidArgument", message]);
  }
});

test("a worker token that heartbeats as another host is refused before anything is applied", async () => {
  const mine = await enrolWorker("mine");
  const other = await enrolWorker("other");
  const row = await acceptOn(other.hostUuid);
  const before = await databaseState(server.server);

  const call = openHeartbeat(mine.worker);
  call.send({
    hostUuid: other.hostUuid,
    agentVersion: "agent/1.0",
    deltas: [
      {
        deckyName: row.deckyName,
        operation: Operation.DEPLOY,
        status: Status.RUNNING,
        lifecycleId: row.id,
      },
    ],
  });
  const error = await call.failure();

  expect(codeAndMessage(error)).toEqual([
    "PermissionDenied",
    `host_uuid ${other.hostUuid} is not this worker's host ${mine.hostUuid}; a worker heartbeats only as its own host`,
  ]);
  expect(await databaseState(server.server)).toEqual(before);
  expect(await listRows([row.id])).toEqual([row]);
});

test("a worker's delta naming another host's row by lifecycle_id is REJECTED and changes nothing", async () => {
  const mine = await enrolWorker("mine");
  const other = await enrolWorker("other");
  const row = await acceptOn(other.hostUuid);
  const [{ changes: changesBefore }] = (await query(
    server.server.orm.em.fork(),
    "select count(*)::int as changes from lifecycle_change",
  )) as [{ changes: number }];

  const call = openHeartbeat(mine.worker);
  call.send({
    hostUuid: mine.hostUuid,
    agentVersion: "agent/1.0",
    deltas: [
      {
        deckyName: row.deckyName,
        operation: Operation.DEPLOY,
        status: Status.SUCCEEDED,
        lifecycleId: row.id,
      },
    ],
  });
  const response = await call.close();

  expect(response.applied).toBe(0);
  expect(
    response.outcomes.map((outcome) => [
      outcome.lifecycleId,
      DeltaOutcome_Result[outcome.result],
      outcome.detail,
    ]),
  ).toEqual([
    [
      row.id,
      "REJECTED",
      `lifecycle row ${row.id} does not belong to host ${mine.hostUuid}`,
    ],
  ]);
  expect(await listRows([row.id])).toEqual([row]);
  const [{ changes: changesAfter }] = (await query(
    server.server.orm.em.fork(),
    "select count(*)::int as changes from lifecycle_change",
  )) as [{ changes: number }];
  expect(changesAfter).toBe(changesBefore);
});

test("a worker lists only its own host's rows", async () => {
  const mine = await enrolWorker("mine");
  const other = await enrolWorker("other");
  const own = await acceptOn(mine.hostUuid);
  const foreign = await acceptOn(other.hostUuid);
  const master = await acceptOn(undefined);

  const all = await mine.worker.lifecycle.list({ pageSize: 500 });
  expect(all.rows).toEqual([own]);

  const refused: [Parameters<typeof admin.lifecycle.list>[0], string][] = [
    [
      { hostUuid: other.hostUuid },
      `host_uuid ${other.hostUuid} is not this worker's host ${mine.hostUuid}; a worker reads only its own host's rows`,
    ],
    [
      { ids: [own.id, foreign.id] },
      `lifecycle row ${foreign.id} does not belong to host ${mine.hostUuid}; a worker reads only its own host's rows`,
    ],
    [
      { ids: [master.id] },
      `lifecycle row ${master.id} does not belong to host ${mine.hostUuid}; a worker reads only its own host's rows`,
    ],
  ];
  for (const [request, message] of refused) {
    const error = await failureOf(mine.worker.lifecycle.list(request));
    expect(codeAndMessage(error)).toEqual(["PermissionDenied", message]);
  }
});

test("a worker watches only its own host's rows", async () => {
  const mine = await enrolWorker("mine");
  const other = await enrolWorker("other");
  const own = await acceptOn(mine.hostUuid);
  const foreign = await acceptOn(other.hostUuid);

  const watch = openWatch(mine.worker, {});
  await watch.until((received) =>
    received.some((m) => m.kind === WatchResponse_Kind.SNAPSHOT_END),
  );
  const later = await acceptOn(other.hostUuid);
  const ownLater = await acceptOn(mine.hostUuid);
  await watch.until((received) =>
    received.some((m) => m.row?.id === ownLater.id),
  );
  watch.cancel();

  expect(
    watch.received.map((m) => [WatchResponse_Kind[m.kind], m.row?.id]),
  ).toEqual([
    ["SNAPSHOT", own.id],
    ["SNAPSHOT_END", undefined],
    ["CHANGE", ownLater.id],
  ]);
  expect(later.id).not.toBe(ownLater.id);

  const refused: [Parameters<typeof admin.lifecycle.watch>[0], string][] = [
    [
      { hostUuid: other.hostUuid },
      `host_uuid ${other.hostUuid} is not this worker's host ${mine.hostUuid}; a worker reads only its own host's rows`,
    ],
    [
      { ids: [foreign.id] },
      `lifecycle row ${foreign.id} does not belong to host ${mine.hostUuid}; a worker reads only its own host's rows`,
    ],
  ];
  for (const [request, message] of refused) {
    const refused = openWatch(mine.worker, request);
    const error = await refused.ended;
    expect(error && codeAndMessage(error)).toEqual([
      "PermissionDenied",
      message,
    ]);
  }
});

test("RotateHostToken ends the old token's streams, refuses it from then on, and hands out a new one that works", async () => {
  const { hostUuid, token: oldToken, worker: oldWorker } = await enrolWorker();
  const stream = openHeartbeat(oldWorker);
  stream.send({ hostUuid, agentVersion: "agent/1.0", deltas: [] });
  const watch = openWatch(oldWorker, {});
  await watch.until((received) =>
    received.some((m) => m.kind === WatchResponse_Kind.SNAPSHOT_END),
  );

  const rotated = await admin.hosts.rotateHostToken({ hostUuid });

  expect(rotated.host?.hostUuid).toBe(hostUuid);
  expect(rotated.token).not.toBe(oldToken);
  const ended = `the token of this stream was revoked; reconnect with host ${hostUuid}'s new token`;
  expect(codeAndMessage(await stream.failure())).toEqual([
    "Unauthenticated",
    ended,
  ]);
  const watchError = await watch.ended;
  expect(watchError && codeAndMessage(watchError)).toEqual([
    "Unauthenticated",
    ended,
  ]);
  expect(codeAndMessage(await failureOf(oldWorker.lifecycle.list({})))).toEqual(
    ["Unauthenticated", "the bearer token was revoked"],
  );

  const fresh = openHeartbeat(
    clientsWith(server.url, `Bearer ${rotated.token}`),
  );
  fresh.send({ hostUuid, agentVersion: "agent/1.0", deltas: [] });
  expect(await fresh.close()).toMatchObject({ messages: 1 });
});

test("RotateHostToken refuses an unknown host, a host never enrolled and a decommissioned host", async () => {
  const unknown = randomUUID();
  const seen = randomUUID();
  const call = openHeartbeat(admin);
  call.send({ hostUuid: seen, agentVersion: "agent/1.0", deltas: [] });
  await call.close();
  const { hostUuid: retired } = await enrolWorker();
  await admin.hosts.decommissionHost({ hostUuid: retired });
  const before = await databaseState(server.server);

  expect(
    codeAndMessage(
      await failureOf(admin.hosts.rotateHostToken({ hostUuid: unknown })),
    ),
  ).toEqual(["NotFound", `host ${unknown} does not exist`]);
  expect(
    codeAndMessage(
      await failureOf(admin.hosts.rotateHostToken({ hostUuid: seen })),
    ),
  ).toEqual([
    "FailedPrecondition",
    `host ${seen} is not enrolled; enrol it with EnrollHost`,
  ]);
  expect(
    codeAndMessage(
      await failureOf(admin.hosts.rotateHostToken({ hostUuid: retired })),
    ),
  ).toEqual([
    "FailedPrecondition",
    `host ${retired} was decommissioned; it gets no new token`,
  ]);
  expect(await databaseState(server.server)).toEqual(before);
});

test("DecommissionHost during an open heartbeat stream ends the stream, refuses later calls and fails the host's open rows", async () => {
  const { hostUuid, worker } = await enrolWorker("retiring");
  const pending = await acceptOn(hostUuid);
  const running = await acceptOn(hostUuid);
  const done = await acceptOn(hostUuid);
  const elsewhere = await acceptOn((await enrolWorker("staying")).hostUuid);
  const ids = [pending.id, running.id, done.id];

  const watcher = openWatch(admin, { ids });
  await watcher.until((received) =>
    received.some((m) => m.kind === WatchResponse_Kind.SNAPSHOT_END),
  );
  const stream = openHeartbeat(worker);
  stream.send({
    hostUuid,
    agentVersion: "agent/1.0",
    deltas: [
      {
        deckyName: running.deckyName,
        operation: Operation.DEPLOY,
        status: Status.RUNNING,
        lifecycleId: running.id,
      },
      {
        deckyName: done.deckyName,
        operation: Operation.DEPLOY,
        status: Status.SUCCEEDED,
        lifecycleId: done.id,
      },
    ],
  });
  await watcher.until(
    (received) =>
      received.filter((m) => m.kind === WatchResponse_Kind.CHANGE).length === 2,
  );
  const workerWatch = openWatch(worker, {});
  await workerWatch.until((received) =>
    received.some((m) => m.kind === WatchResponse_Kind.SNAPSHOT_END),
  );

  const response = await admin.hosts.decommissionHost({ hostUuid });

  expect(response.failedRows).toBe(2);
  expect(response.host).toMatchObject({
    hostUuid,
    state: HostState.DECOMMISSIONED,
    name: "retiring",
  });
  expect(response.host!.decommissionedAt).toBeDefined();

  const refusal = [
    "PermissionDenied",
    `host ${hostUuid} was decommissioned; its calls are refused`,
  ];
  expect(codeAndMessage(await stream.failure())).toEqual(refusal);
  const workerWatchError = await workerWatch.ended;
  expect(workerWatchError && codeAndMessage(workerWatchError)).toEqual(refusal);

  // The watcher sees both rows fail, each as a change with its revision,
  // and its stream ends once every watched row is terminal.
  expect(await watcher.ended).toBeUndefined();
  const changes = watcher.received.filter(
    (m) => m.kind === WatchResponse_Kind.CHANGE,
  );
  const failed = changes.slice(2);
  expect(
    failed.map((m) => [m.row!.id, Status[m.row!.status], m.row!.error]),
  ).toEqual([
    [pending.id, "FAILED", `host ${hostUuid} was decommissioned`],
    [running.id, "FAILED", `host ${hostUuid} was decommissioned`],
  ]);
  expect(failed[1]!.revision).toBe(failed[0]!.revision + 1n);

  const rows = await listRows([...ids, elsewhere.id]);
  expect(rows.map((row) => [row.id, Status[row.status], row.error])).toEqual([
    [pending.id, "FAILED", `host ${hostUuid} was decommissioned`],
    [running.id, "FAILED", `host ${hostUuid} was decommissioned`],
    [done.id, "SUCCEEDED", undefined],
    [elsewhere.id, "PENDING", undefined],
  ]);
  expect(rows[0]!.completedAt).toBeDefined();

  const before = await databaseState(server.server);
  expect(codeAndMessage(await failureOf(worker.lifecycle.list({})))).toEqual(
    refusal,
  );
  const later = openHeartbeat(worker);
  later.send({ hostUuid, agentVersion: "agent/1.0", deltas: [] });
  expect(codeAndMessage(await later.failure())).toEqual(refusal);
  const asAdmin = openHeartbeat(admin);
  asAdmin.send({ hostUuid, agentVersion: "agent/1.0", deltas: [] });
  expect(codeAndMessage(await asAdmin.failure())).toEqual([
    "PermissionDenied",
    `host ${hostUuid} was decommissioned; its calls are refused`,
  ]);
  expect(await databaseState(server.server)).toEqual(before);

  const { apiTokens } = await admin.tokens.listTokens({ showRevoked: true });
  const hostTokens = apiTokens.filter((token) => token.hostUuid === hostUuid);
  expect(
    hostTokens.map((token) => [
      Role[token.role],
      token.revokedAt !== undefined,
    ]),
  ).toEqual([["WORKER", true]]);
});

test("DecommissionHost refuses an unknown host and changes nothing on a second call", async () => {
  const unknown = randomUUID();
  expect(
    codeAndMessage(
      await failureOf(admin.hosts.decommissionHost({ hostUuid: unknown })),
    ),
  ).toEqual(["NotFound", `host ${unknown} does not exist`]);

  const { hostUuid } = await enrolWorker();
  const first = await admin.hosts.decommissionHost({ hostUuid });
  const before = await databaseState(server.server);
  const second = await admin.hosts.decommissionHost({ hostUuid });

  expect(second).toEqual({ ...first, failedRows: 0 });
  expect(await databaseState(server.server)).toEqual(before);
});

test("Accept refuses work for a decommissioned host and writes nothing", async () => {
  const { hostUuid } = await enrolWorker("retired");
  const { hostUuid: alive } = await enrolWorker("alive");
  await admin.hosts.decommissionHost({ hostUuid });
  const before = await databaseState(server.server);

  const error = await failureOf(
    admin.lifecycle.accept({
      operation: Operation.DEPLOY,
      targets: [
        { deckyName: deckyName("enrol"), hostUuid: alive },
        { deckyName: deckyName("enrol") },
        { deckyName: deckyName("enrol"), hostUuid },
      ],
    }),
  );

  expect(codeAndMessage(error)).toEqual([
    "FailedPrecondition",
    `targets[2].host_uuid ${hostUuid} was decommissioned; it takes no more work`,
  ]);
  expect(await databaseState(server.server)).toEqual(before);
});
