import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, test, vi } from "vitest";
import {
  type Lifecycle,
  Operation,
  Status,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { Role } from "../../gen/decky/lifecycle/v1/token_pb.js";
import { parseToken } from "../../src/auth/token.js";
import { revokeToken } from "../../src/storage/api-tokens.js";
import {
  type CallerClients,
  clientsWith,
  databaseState,
  type HeartbeatCall,
  openHeartbeat,
  openWatch,
  storeToken,
  type WatchCall,
} from "../support/callers.js";
import { LockingSessions } from "../support/pg-sessions.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

// Without sweeps, the server touches the database only for the calls of the
// tests, which wait for its connections to be idle.
const server = serveThisFile({ AUTH: "tokens", SWEEP_INTERVAL_MS: "3600000" });
const onPostgres = Boolean(process.env.TEST_DATABASE_URL);

let admin: CallerClients;
/** On PostgreSQL: sessions that hold locks and look on at the server's. */
let sessions: LockingSessions;

beforeAll(async () => {
  admin = clientsWith(
    server.url,
    `Bearer ${await storeToken(server.server, "admin")}`,
  );
  if (onPostgres) {
    sessions = await LockingSessions.open(server.settings.databaseUrl!);
  }
});

afterAll(async () => {
  await sessions?.close();
});

const REVOKED = "the bearer token of this stream was revoked";

function codeAndMessage(error: ConnectError | undefined) {
  return error && [Code[error.code], error.rawMessage];
}

/** Closes `stream` and returns the error it ended with. */
async function closedWith(stream: HeartbeatCall) {
  try {
    const response = await stream.close();
    throw new Error(
      `the Heartbeat call succeeded: ${JSON.stringify(response)}`,
    );
  } catch (error) {
    return codeAndMessage(ConnectError.from(error));
  }
}

/** How `watch` ended; a message it sends first fails the test at once. */
async function endOf(watch: WatchCall) {
  const sentFirst = watch
    .until((received) => received.length > 0)
    .then(
      () => {
        const kind = WatchResponse_Kind[watch.received[0]!.kind];
        throw new Error(`the Watch sent ${kind} instead of ending`);
      },
      () => watch.ended,
    );
  return codeAndMessage(await Promise.race([watch.ended, sentFirst]));
}

/** The server's pool: connections lent out, and calls waiting for one. */
function poolUse() {
  const pool = server.server.orm.em.getKnex().client.pool as {
    numUsed(): number;
    numPendingAcquires(): number;
  };
  return { used: pool.numUsed(), waiting: pool.numPendingAcquires() };
}

async function untilServerIdle() {
  if (onPostgres) {
    await sessions.untilServerIdle();
    return;
  }
  await vi.waitFor(() => expect(poolUse()).toEqual({ used: 0, waiting: 0 }), {
    timeout: 5_000,
    interval: 20,
  });
}

/**
 * Holds the embedded database's one connection, in a transaction of the
 * test, until `release`: every statement of the server waits for it.
 */
async function holdTheConnection() {
  let release!: () => void;
  const gate = new Promise<void>((resolve) => {
    release = resolve;
  });
  const held = server.server.orm.em.fork().transactional(() => gate);
  await vi.waitFor(() => expect(poolUse()).toEqual({ used: 1, waiting: 0 }));
  return {
    async release() {
      release();
      await held;
    },
  };
}

/**
 * Opens a call with `open` and returns it once the server has read the
 * call's token, so that whatever happens to the token after is for the
 * handler to see. The read waits for a lock on the tokens on PostgreSQL,
 * and for the one connection on the embedded database, until the test has
 * seen it wait.
 */
async function openAuthenticated<T>(open: () => T): Promise<T> {
  if (onPostgres) {
    await sessions.locker.query("begin");
    await sessions.locker.query(
      "lock table api_token in access exclusive mode",
    );
    const call = open();
    await sessions.untilServerWaitsForLock();
    await sessions.locker.query("commit");
    await untilServerIdle();
    return call;
  }
  const connection = await holdTheConnection();
  const call = open();
  await vi.waitFor(() => expect(poolUse()).toEqual({ used: 1, waiting: 1 }));
  await connection.release();
  await untilServerIdle();
  return call;
}

/** Enrols a host with a pending row; its worker's clients and token id. */
async function enrolWorker() {
  const { host, token } = await admin.hosts.enrollHost({ name: "worker" });
  const hostUuid = host!.hostUuid;
  const { rows } = await admin.lifecycle.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: deckyName("revoked"), hostUuid }],
  });
  return {
    hostUuid,
    tokenId: parseToken(token)!.id,
    worker: clientsWith(server.url, `Bearer ${token}`),
    row: rows[0]!,
  };
}

/** A Heartbeat stream whose first message, without deltas, is applied. */
async function registeredHeartbeat(
  worker: CallerClients,
  hostUuid: string,
): Promise<HeartbeatCall> {
  const stream = openHeartbeat(worker);
  stream.send({ hostUuid, agentVersion: "agent/registered", deltas: [] });
  await vi.waitFor(async () => {
    const { hosts } = await admin.hosts.listHosts({ pageSize: 500 });
    expect(hosts.find((h) => h.hostUuid === hostUuid)?.agentVersion).toBe(
      "agent/registered",
    );
  });
  return stream;
}

function running(row: Lifecycle) {
  return {
    hostUuid: row.hostUuid!,
    agentVersion: "agent/silent",
    deltas: [
      {
        deckyName: row.deckyName,
        operation: Operation.DEPLOY,
        status: Status.RUNNING,
        lifecycleId: row.id,
      },
    ],
  };
}

async function rowsOf(ids: string[]): Promise<Lifecycle[]> {
  return (await admin.lifecycle.list({ ids })).rows;
}

test("a Heartbeat stream silent until its token was revoked is refused its first delta as a registered stream is ended, and nothing is applied", async () => {
  const { hostUuid, tokenId, worker, row } = await enrolWorker();
  const registered = await registeredHeartbeat(worker, hostUuid);
  const silent = await openAuthenticated(() => openHeartbeat(worker));

  await admin.tokens.revokeToken({ tokenId });
  expect(codeAndMessage(await registered.failure())).toEqual([
    "Unauthenticated",
    REVOKED,
  ]);
  const before = await databaseState(server.server);
  silent.send(running(row));

  expect(await closedWith(silent)).toEqual(["Unauthenticated", REVOKED]);
  expect(await databaseState(server.server)).toEqual(before);
  expect(await rowsOf([row.id])).toEqual([row]);
});

test("a Heartbeat stream silent until its host's token was rotated is refused its first delta as a registered stream is ended, and nothing is applied", async () => {
  const { hostUuid, worker, row } = await enrolWorker();
  const registered = await registeredHeartbeat(worker, hostUuid);
  const silent = await openAuthenticated(() => openHeartbeat(worker));

  await admin.hosts.rotateHostToken({ hostUuid });
  const rotated = [
    "Unauthenticated",
    `the token of this stream was revoked; reconnect with host ${hostUuid}'s new token`,
  ];
  expect(codeAndMessage(await registered.failure())).toEqual(rotated);
  const before = await databaseState(server.server);
  silent.send(running(row));

  expect(await closedWith(silent)).toEqual(rotated);
  expect(await databaseState(server.server)).toEqual(before);
  expect(await rowsOf([row.id])).toEqual([row]);
});

async function viewerToken() {
  const { apiToken, token } = await admin.tokens.createToken({
    name: "watcher",
    role: Role.VIEWER,
  });
  return {
    tokenId: apiToken!.tokenId,
    viewer: clientsWith(server.url, `Bearer ${token}`),
  };
}

describe.skipIf(!onPostgres)(
  "on PostgreSQL (the embedded database has one connection, so nothing there can hold a snapshot's statement while RevokeToken runs)",
  () => {
    test("a Watch whose token is revoked while its snapshot waits for a lock ends UNAUTHENTICATED before the lock is released, having sent nothing", async () => {
      const { tokenId, viewer } = await viewerToken();
      await sessions.locker.query("begin");
      await sessions.locker.query(
        "lock table decky_lifecycle in access exclusive mode",
      );
      try {
        const watch = openWatch(viewer, {});
        await sessions.untilServerWaitsForLock();

        await admin.tokens.revokeToken({ tokenId });

        expect(await endOf(watch)).toEqual(["Unauthenticated", REVOKED]);
        expect(watch.received).toEqual([]);
        await untilServerIdle();
      } finally {
        await sessions.locker.query("commit");
      }
    });
  },
);

// The window between authentication and the first read, held open on each
// database: on PostgreSQL the Watch's check waits for a lock on the tokens
// that lets plain reads through, on the embedded database for the one
// connection, behind a revocation already waiting for it. The revocation
// goes straight to the database, as the CLI's without a URL does, so only
// the Watch's own check can end the stream.
test("a Watch whose token is revoked after it was authenticated and before its first read ends UNAUTHENTICATED, having sent nothing", async () => {
  const { tokenId, viewer } = await viewerToken();

  let watch: WatchCall;
  if (onPostgres) {
    await sessions.locker.query("begin");
    await sessions.locker.query("lock table api_token in exclusive mode");
    watch = openWatch(viewer, {});
    await sessions.untilServerWaitsForLock();
    await sessions.locker.query(
      "update api_token set revoked_at = clock_timestamp() where id = $1",
      [tokenId],
    );
    await sessions.locker.query("commit");
  } else {
    const connection = await holdTheConnection();
    watch = openWatch(viewer, {});
    await vi.waitFor(() => expect(poolUse()).toEqual({ used: 1, waiting: 1 }));
    const revoked = revokeToken(server.server.orm.em.fork(), tokenId);
    await vi.waitFor(() => expect(poolUse()).toEqual({ used: 1, waiting: 2 }));
    await connection.release();
    await revoked;
  }

  expect(await endOf(watch)).toEqual(["Unauthenticated", REVOKED]);
  expect(watch.received).toEqual([]);
});
