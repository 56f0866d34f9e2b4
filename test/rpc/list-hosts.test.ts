import { create } from "@bufbuild/protobuf";
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
import { beforeAll, expect, test } from "vitest";
import {
  type Host,
  HostSchema,
  HostService,
  HostState,
} from "../../gen/decky/lifecycle/v1/host_pb.js";
import {
  HeartbeatRequestSchema,
  Operation,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { query } from "../../src/storage/sql.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

// No host is judged lost while this file runs.
const server = serveThisFile({ HOST_LOST_AFTER_MS: "3600000" });
let grpc: Client<typeof HostService>;
let connect: Client<typeof HostService>;

beforeAll(() => {
  grpc = createClient(HostService, server.transports.grpc);
  connect = createClient(HostService, server.transports.connect);
});

const at = (text: string) => timestampFromDate(new Date(text));

/** Hosts written straight into the table, one of each state. */
const seeded: Host[] = [
  create(HostSchema, {
    hostUuid: "10000000-0000-4000-8000-000000000001",
    state: HostState.ENROLLED,
    name: "rack-1",
    enrolledAt: at("2026-12-01T08:00:00.000Z"),
    certificateFingerprint: "ab".repeat(32),
  }),
  create(HostSchema, {
    hostUuid: "30000000-0000-4000-8000-000000000003",
    state: HostState.LOST,
    agentVersion: "agent/0.9",
    firstHeartbeatAt: at("2026-12-01T09:00:00.000Z"),
    lastHeartbeatAt: at("2026-12-02T10:11:12.345Z"),
    lostAt: at("2026-12-02T10:11:27.500Z"),
  }),
  create(HostSchema, {
    hostUuid: "50000000-0000-4000-8000-000000000005",
    state: HostState.DECOMMISSIONED,
    name: "rack-5",
    agentVersion: "agent/0.8",
    firstHeartbeatAt: at("2026-11-01T09:00:00.000Z"),
    lastHeartbeatAt: at("2026-11-30T23:59:59.999Z"),
    enrolledAt: at("2026-11-01T08:00:00.000Z"),
    decommissionedAt: at("2026-12-01T00:00:00.000Z"),
  }),
];

/** Hosts that sent a heartbeat through the service. */
const alive = [
  "20000000-0000-4000-8000-000000000002",
  "40000000-0000-4000-8000-000000000004",
];

const iso = (value: Timestamp | undefined) =>
  value === undefined ? null : timestampDate(value).toISOString();

/** Every host as ListHosts shows it, reading all pages of `pageSize`. */
async function listAll(pageSize = 0): Promise<Host[]> {
  const all: Host[] = [];
  let pageToken = "";
  do {
    const page = await grpc.listHosts({ pageSize, pageToken });
    all.push(...page.hosts);
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  return all;
}

async function failure(call: Promise<unknown>): Promise<[Code, string]> {
  try {
    await call;
  } catch (error) {
    const failed = ConnectError.from(error);
    return [failed.code, failed.rawMessage];
  }
  throw new Error("the call succeeded but was expected to fail");
}

let heartbeatWindow: { from: number; to: number };

beforeAll(async () => {
  const em = server.server.orm.em.fork();
  for (const host of seeded) {
    await query(
      em,
      `insert into worker_host (host_uuid, state, name, agent_version,
         first_seen_at, last_heartbeat_at, lost_at, enrolled_at,
         decommissioned_at, certificate_fingerprint)
       values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [
        host.hostUuid,
        HostState[host.state].toLowerCase(),
        host.name || null,
        host.agentVersion || null,
        iso(host.firstHeartbeatAt),
        iso(host.lastHeartbeatAt),
        iso(host.lostAt),
        iso(host.enrolledAt),
        iso(host.decommissionedAt),
        host.certificateFingerprint || null,
      ],
    );
  }
  const from = Date.now();
  for (const hostUuid of alive) {
    await server.grpc.heartbeat(
      (async function* () {
        yield create(HeartbeatRequestSchema, {
          hostUuid,
          agentVersion: "agent/1.2",
        });
      })(),
    );
  }
  // The database rounds to the millisecond, possibly up.
  heartbeatWindow = { from: from - 1, to: Date.now() + 1 };
});

test("ListHosts returns every host ordered by host_uuid with its state, heartbeats and agent version", async () => {
  const { hosts, nextPageToken } = await grpc.listHosts({});

  const heartbeats = hosts
    .filter((host) => alive.includes(host.hostUuid))
    .map((host) => host.lastHeartbeatAt!);
  expect(hosts).toEqual([
    seeded[0],
    create(HostSchema, {
      hostUuid: alive[0]!,
      state: HostState.ALIVE,
      agentVersion: "agent/1.2",
      firstHeartbeatAt: heartbeats[0]!,
      lastHeartbeatAt: heartbeats[0]!,
    }),
    seeded[1],
    create(HostSchema, {
      hostUuid: alive[1]!,
      state: HostState.ALIVE,
      agentVersion: "agent/1.2",
      firstHeartbeatAt: heartbeats[1]!,
      lastHeartbeatAt: heartbeats[1]!,
    }),
    seeded[2],
  ]);
  expect(nextPageToken).toBe("");
  for (const heartbeat of heartbeats) {
    const ms = timestampDate(heartbeat).getTime();
    expect(ms).toBeGreaterThanOrEqual(heartbeatWindow.from);
    expect(ms).toBeLessThanOrEqual(heartbeatWindow.to);
  }
});

test("ListHosts answers the Connect protocol over HTTP/1.1 the same way", async () => {
  expect(await connect.listHosts({})).toEqual(await grpc.listHosts({}));
});

test("ListHosts keeps only hosts in the given states", async () => {
  const { hosts } = await grpc.listHosts({
    states: [HostState.DECOMMISSIONED, HostState.ENROLLED, HostState.ENROLLED],
  });

  expect(hosts).toEqual([seeded[0], seeded[2]]);
});

test("ListHosts pages by page_size, and the last page has no next_page_token", async () => {
  const all = await listAll();

  const first = await grpc.listHosts({ pageSize: 2 });
  const second = await grpc.listHosts({
    pageSize: 2,
    pageToken: first.nextPageToken,
  });
  const third = await grpc.listHosts({
    pageSize: 2,
    pageToken: second.nextPageToken,
  });

  expect([first.hosts, second.hosts, third.hosts]).toEqual([
    all.slice(0, 2),
    all.slice(2, 4),
    all.slice(4),
  ]);
  expect(first.nextPageToken).not.toBe("");
  expect(second.nextPageToken).not.toBe("");
  expect(third.nextPageToken).toBe("");
});

test("ListHosts paging is stable while hosts are added: a later page holds only hosts after the previous one", async () => {
  const first = await grpc.listHosts({ pageSize: 2 });
  const before = "00000000-0000-4000-8000-0000000000aa";
  const after = "ffffffff-0000-4000-8000-0000000000aa";
  for (const hostUuid of [before, after]) {
    await server.grpc.heartbeat(
      (async function* () {
        yield create(HeartbeatRequestSchema, { hostUuid, agentVersion: "x" });
      })(),
    );
  }

  const rest = await listAll(2);
  let pageToken = first.nextPageToken;
  const following: string[] = [];
  while (pageToken !== "") {
    const page = await grpc.listHosts({ pageSize: 2, pageToken });
    following.push(...page.hosts.map((host) => host.hostUuid));
    pageToken = page.nextPageToken;
  }

  expect(first.hosts.map((host) => host.hostUuid)).toEqual([
    seeded[0]!.hostUuid,
    alive[0],
  ]);
  expect(following).toEqual([
    seeded[1]!.hostUuid,
    alive[1],
    seeded[2]!.hostUuid,
    after,
  ]);
  expect(rest.map((host) => host.hostUuid)).toEqual([
    before,
    ...first.hosts.map((host) => host.hostUuid),
    ...following,
  ]);
  await query(
    server.server.orm.em.fork(),
    "delete from worker_host where host_uuid = any(?::uuid[])",
    [[before, after]],
  );
});

test.each([
  [
    "an unspecified state",
    { states: [HostState.ALIVE, HostState.UNSPECIFIED] },
    "states[1] must be a known host state other than HOST_STATE_UNSPECIFIED, not 0",
  ],
  [
    "an unknown state",
    { states: [99 as HostState] },
    "states[0] must be a known host state other than HOST_STATE_UNSPECIFIED, not 99",
  ],
  [
    "a negative page_size",
    { pageSize: -1 },
    "page_size -1 must not be negative",
  ],
  [
    "a page_token the service did not issue",
    { pageToken: "bm90IGEgdG9rZW4.c2lnbmF0dXJl" },
    "page_token is not a token this service issued",
  ],
])(
  "ListHosts refuses %s with INVALID_ARGUMENT naming the field",
  async (_, request, message) => {
    expect(await failure(grpc.listHosts(request))).toEqual([
      Code.InvalidArgument,
      message,
    ]);
  },
);

test("ListHosts refuses a page_token issued for other states", async () => {
  const { nextPageToken } = await grpc.listHosts({ pageSize: 1 });

  expect(
    await failure(
      grpc.listHosts({ pageToken: nextPageToken, states: [HostState.ALIVE] }),
    ),
  ).toEqual([
    Code.InvalidArgument,
    "page_token was issued for a different filter; send the same states as the first page",
  ]);
});

test("ListHosts refuses a List page token", async () => {
  for (let i = 0; i < 2; i += 1) {
    await server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: [{ deckyName: deckyName() }],
    });
  }
  const { nextPageToken } = await server.grpc.list({ pageSize: 1 });

  expect(await failure(grpc.listHosts({ pageToken: nextPageToken }))).toEqual([
    Code.InvalidArgument,
    "page_token is not a token this service issued",
  ]);
});

test("ListHosts gives 50 hosts when page_size is 0 and at most 500 a page", async () => {
  await query(
    server.server.orm.em.fork(),
    `insert into worker_host (host_uuid, state, name, enrolled_at)
     select gen_random_uuid(), 'enrolled', 'bulk', clock_timestamp()
     from generate_series(1, 600)`,
  );

  const defaultPage = await grpc.listHosts({});
  const largestPage = await grpc.listHosts({ pageSize: 100_000 });

  expect(defaultPage.hosts).toHaveLength(50);
  expect(defaultPage.nextPageToken).not.toBe("");
  expect(largestPage.hosts).toHaveLength(500);
  expect(largestPage.nextPageToken).not.toBe("");
});
