import { randomUUID } from "node:crypto";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  type Timestamp,
  timestampDate,
  timestampFromDate,
} from "@bufbuild/protobuf/wkt";
import {
  type Client,
  Code,
  ConnectError,
  createClient,
} from "@connectrpc/connect";
import { afterAll, beforeAll, expect, test, vi } from "vitest";
import {
  type Host,
  HostSchema,
  HostService,
  HostState,
} from "../../gen/decky/lifecycle/v1/host_pb.js";
import {
  DeltaOutcome_Result,
  DeltaOutcomeSchema,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
  HeartbeatResponseSchema,
  type Lifecycle,
  type LifecycleDeltaSchema,
  LifecycleSchema,
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

const LOST_AFTER_MS = 1000;
const GRACE_MS = 500;
/**
 * How late past its deadline a sweep may act: SWEEP_INTERVAL_MS is 50, and
 * the rest allows for a busy machine.
 */
const ON_TIME_SLACK_MS = 3000;
// Starting another embedded database takes seconds on a loaded machine.
const RESTART_TIMEOUT_MS = 180_000;
/** How long a test waits for the sweeper before it gives up. */
const EVENTUALLY = { timeout: 20_000, interval: 50 };

let database: TestDatabase;
let server: TestServer;
let hosts: Client<typeof HostService>;

beforeAll(async () => {
  database = await createTestDatabase();
  server = await startTestServer(database, {
    HOST_LOST_AFTER_MS: String(LOST_AFTER_MS),
    HOST_LOST_GRACE_MS: String(GRACE_MS),
    SWEEP_INTERVAL_MS: "50",
  });
  hosts = createClient(HostService, server.transports.grpc);
});

afterAll(async () => {
  await server?.close();
  await database?.drop();
});

type DeltaInit = MessageInitShape<typeof LifecycleDeltaSchema>;

/**
 * One Heartbeat stream of `hostUuid` that sends one message per entry of
 * `messages` and closes.
 */
async function heartbeat(
  hostUuid: string,
  agentVersion: string,
  ...messages: DeltaInit[][]
): Promise<HeartbeatResponse> {
  return server.grpc.heartbeat(
    (async function* () {
      for (const deltas of messages) {
        yield create(HeartbeatRequestSchema, {
          hostUuid,
          agentVersion,
          deltas,
        });
      }
    })(),
  );
}

async function failure(call: Promise<unknown>): Promise<ConnectError> {
  try {
    await call;
  } catch (error) {
    return ConnectError.from(error);
  }
  throw new Error("the call succeeded but was expected to fail");
}

async function accept(hostUuid?: string): Promise<Lifecycle> {
  const { rows } = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [
      hostUuid === undefined
        ? { deckyName: deckyName() }
        : { deckyName: deckyName(), hostUuid },
    ],
  });
  return rows[0]!;
}

async function stored(id: string): Promise<Lifecycle> {
  const { rows } = await server.grpc.list({ ids: [id] });
  return rows[0]!;
}

/** The host as ListHosts shows it, reading every page. */
async function hostOf(hostUuid: string): Promise<Host | undefined> {
  let pageToken = "";
  do {
    const page = await hosts.listHosts({ pageToken });
    const host = page.hosts.find((each) => each.hostUuid === hostUuid);
    if (host) return host;
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  return undefined;
}

async function changeCount(id: string): Promise<number> {
  const [row] = await query(
    server.server.orm.em.fork(),
    "select count(*) as count from lifecycle_change where lifecycle_id = ?",
    [id],
  );
  return Number(row!.count);
}

function millis(timestamp: Timestamp | undefined): number {
  return timestampDate(timestamp!).getTime();
}

/**
 * A host that ran one row and had another waiting, then stopped sending
 * heartbeats; returns once the sweeper has failed both rows.
 */
async function lostHost() {
  const hostUuid = randomUUID();
  const waiting = await accept(hostUuid);
  const taken = await accept(hostUuid);
  await heartbeat(hostUuid, "agent/1.0", [
    {
      deckyName: taken.deckyName,
      operation: Operation.DEPLOY,
      status: Status.RUNNING,
      lifecycleId: taken.id,
    },
  ]);
  const silent = (await hostOf(hostUuid))!;
  const running = await stored(taken.id);
  await vi.waitFor(async () => {
    expect((await stored(waiting.id)).status).toBe(Status.FAILED);
    expect((await stored(taken.id)).status).toBe(Status.FAILED);
  }, EVENTUALLY);
  return { hostUuid, waiting, running, silent };
}

test("a host without heartbeats for HOST_LOST_AFTER_MS is lost, and after the grace period its open rows fail naming it and its last heartbeat", async () => {
  const { hostUuid, waiting, running, silent } = await lostHost();

  const lastHeartbeat = timestampDate(silent.lastHeartbeatAt!);
  const error = `host ${hostUuid} lost: no heartbeat since ${lastHeartbeat.toISOString()}`;
  const afterWaiting = await stored(waiting.id);
  const afterRunning = await stored(running.id);
  for (const [before, after] of [
    [waiting, afterWaiting],
    [running, afterRunning],
  ] as const) {
    expect(after).toEqual(
      create(LifecycleSchema, {
        id: before.id,
        deckyName: before.deckyName,
        hostUuid,
        operation: Operation.DEPLOY,
        status: Status.FAILED,
        error,
        startedAt: before.startedAt!,
        updatedAt: after.updatedAt!,
        completedAt: after.updatedAt!,
        revision: after.revision,
      }),
    );
    expect(after.revision).toBeGreaterThan(before.revision);
  }
  const host = await hostOf(hostUuid);
  expect(host).toEqual({
    ...silent,
    state: HostState.LOST,
    lostAt: host!.lostAt!,
  });
  // On time: within a few sweeps of each deadline, not merely after it.
  const lostAfter = millis(host!.lostAt) - millis(silent.lastHeartbeatAt);
  expect(lostAfter).toBeGreaterThan(LOST_AFTER_MS);
  expect(lostAfter).toBeLessThan(LOST_AFTER_MS + ON_TIME_SLACK_MS);
  const failedAfter = millis(afterWaiting.updatedAt) - millis(host!.lostAt);
  expect(failedAfter).toBeGreaterThan(GRACE_MS);
  expect(failedAfter).toBeLessThan(GRACE_MS + ON_TIME_SLACK_MS);
  expect(await changeCount(waiting.id)).toBe(2);
  expect(await changeCount(running.id)).toBe(3);
});

test("a lost host's rows of other hosts and of the master stay open", async () => {
  const master = await accept();
  const unheard = await accept(randomUUID());

  await lostHost();

  expect(await stored(master.id)).toEqual(master);
  expect(await stored(unheard.id)).toEqual(unheard);
});

test("late deltas from a lost host that comes back change nothing, and its heartbeat makes it alive again", async () => {
  const { hostUuid, waiting, running, silent } = await lostHost();
  const failedWaiting = await stored(waiting.id);
  const failedRunning = await stored(running.id);
  const lost = (await hostOf(hostUuid))!;

  const response = await heartbeat(hostUuid, "agent/1.1", [
    {
      deckyName: running.deckyName,
      operation: Operation.DEPLOY,
      status: Status.SUCCEEDED,
      lifecycleId: running.id,
    },
    {
      deckyName: waiting.deckyName,
      operation: Operation.DEPLOY,
      status: Status.RUNNING,
    },
  ]);

  expect(response).toEqual(
    create(HeartbeatResponseSchema, {
      messages: 1,
      applied: 0,
      outcomes: [
        create(DeltaOutcomeSchema, {
          messageIndex: 0,
          deltaIndex: 0,
          lifecycleId: running.id,
          result: DeltaOutcome_Result.ALREADY_TERMINAL,
          detail: `lifecycle row ${running.id} is failed and cannot become succeeded`,
        }),
        create(DeltaOutcomeSchema, {
          messageIndex: 0,
          deltaIndex: 1,
          lifecycleId: waiting.id,
          result: DeltaOutcome_Result.ALREADY_TERMINAL,
          detail: `lifecycle row ${waiting.id} is failed and cannot become running`,
        }),
      ],
    }),
  );
  expect(await stored(running.id)).toEqual(failedRunning);
  expect(await stored(waiting.id)).toEqual(failedWaiting);
  expect(await changeCount(running.id)).toBe(3);
  expect(await changeCount(waiting.id)).toBe(2);
  const back = (await hostOf(hostUuid))!;
  expect(back).toEqual({
    ...silent,
    state: HostState.ALIVE,
    lostAt: undefined,
    agentVersion: "agent/1.1",
    lastHeartbeatAt: back.lastHeartbeatAt!,
  });
  expect(lost.state).toBe(HostState.LOST);
  expect(millis(back.lastHeartbeatAt)).toBeGreaterThan(
    millis(silent.lastHeartbeatAt),
  );
});

test("a heartbeat from a decommissioned host fails with PERMISSION_DENIED and applies nothing", async () => {
  const hostUuid = randomUUID();
  const row = await accept(hostUuid);
  await heartbeat(hostUuid, "agent/1.0", []);
  await query(
    server.server.orm.em.fork(),
    `update worker_host set state = 'decommissioned',
       decommissioned_at = clock_timestamp() where host_uuid = ?`,
    [hostUuid],
  );
  const retired = (await hostOf(hostUuid))!;

  const error = await failure(
    heartbeat(hostUuid, "agent/2.0", [
      {
        deckyName: row.deckyName,
        operation: Operation.DEPLOY,
        status: Status.RUNNING,
      },
    ]),
  );

  expect([error.code, error.rawMessage]).toEqual([
    Code.PermissionDenied,
    `host ${hostUuid} was decommissioned; its calls are refused`,
  ]);
  expect(await stored(row.id)).toEqual(row);
  expect(await hostOf(hostUuid)).toEqual(retired);
  expect(retired.state).toBe(HostState.DECOMMISSIONED);
});

test("the first heartbeat of an enrolled host makes it alive and records when it was first heard from", async () => {
  const hostUuid = randomUUID();
  await query(
    server.server.orm.em.fork(),
    `insert into worker_host (host_uuid, state, name, enrolled_at)
     values (?, 'enrolled', 'rack-7', '2026-12-01T08:00:00.000Z')`,
    [hostUuid],
  );

  await heartbeat(hostUuid, "agent/3.0", []);

  const host = (await hostOf(hostUuid))!;
  expect(host).toEqual(
    create(HostSchema, {
      hostUuid,
      state: HostState.ALIVE,
      name: "rack-7",
      agentVersion: "agent/3.0",
      firstHeartbeatAt: host.lastHeartbeatAt!,
      lastHeartbeatAt: host.lastHeartbeatAt!,
      enrolledAt: timestampFromDate(new Date("2026-12-01T08:00:00.000Z")),
    }),
  );
  expect(host.lastHeartbeatAt).toBeDefined();
});

/** A server on a database of its own, stopped when `use` is done. */
async function withServer(
  env: Record<string, string>,
  use: (other: TestServer, db: TestDatabase) => Promise<void>,
): Promise<void> {
  const db = await createTestDatabase();
  const other = await startTestServer(db, env);
  try {
    await use(other, db);
  } finally {
    await other.close();
    await db.drop();
  }
}

test(
  "a lost host that heartbeats again within the grace period keeps its open rows",
  async () => {
    await withServer(
      {
        HOST_LOST_AFTER_MS: String(LOST_AFTER_MS),
        HOST_LOST_GRACE_MS: String(3600 * 1000),
        SWEEP_INTERVAL_MS: "50",
      },
      async (other) => {
        const otherHosts = createClient(HostService, other.transports.grpc);
        const hostUuid = randomUUID();
        const { rows } = await other.grpc.accept({
          operation: Operation.DEPLOY,
          targets: [{ deckyName: deckyName(), hostUuid }],
        });
        const row = rows[0]!;
        const beat = () =>
          other.grpc.heartbeat(
            (async function* () {
              yield create(HeartbeatRequestSchema, {
                hostUuid,
                agentVersion: "agent/1.0",
              });
            })(),
          );
        await beat();
        await vi.waitFor(async () => {
          const { hosts: listed } = await otherHosts.listHosts({
            states: [HostState.LOST],
          });
          expect(listed.map((host) => host.hostUuid)).toEqual([hostUuid]);
        }, EVENTUALLY);

        await beat();

        const { hosts: listed } = await otherHosts.listHosts({});
        expect(listed.map((host) => [host.state, host.lostAt])).toEqual([
          [HostState.ALIVE, undefined],
        ]);
        const { rows: after } = await other.grpc.list({ ids: [row.id] });
        expect(after).toEqual([row]);
      },
    );
  },
  RESTART_TIMEOUT_MS,
);

test(
  "after a restart hosts are not judged lost until the server has been up for HOST_LOST_AFTER_MS",
  async () => {
    await withServer({}, async (first, db) => {
      const hostUuid = randomUUID();
      await first.grpc.heartbeat(
        (async function* () {
          yield create(HeartbeatRequestSchema, {
            hostUuid,
            agentVersion: "agent/1.0",
          });
        })(),
      );
      await query(
        first.server.orm.em.fork(),
        `update worker_host
       set last_heartbeat_at = last_heartbeat_at - interval '10 minutes'
       where host_uuid = ?`,
        [hostUuid],
      );
      await first.close();

      const restarted = await startTestServer(db, {
        HOST_LOST_AFTER_MS: "60000",
        SWEEP_INTERVAL_MS: "10",
      });
      try {
        const otherHosts = createClient(HostService, restarted.transports.grpc);
        // Several turns of the sweeper pass while this waits.
        await new Promise((resolve) => setTimeout(resolve, 200));

        const { hosts: listed } = await otherHosts.listHosts({});

        expect(listed.map((host) => [host.hostUuid, host.state])).toEqual([
          [hostUuid, HostState.ALIVE],
        ]);
      } finally {
        await restarted.close();
      }
    });
  },
  RESTART_TIMEOUT_MS,
);
