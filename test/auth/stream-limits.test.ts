import { Code, type ConnectError } from "@connectrpc/connect";
import { beforeAll, expect, test, vi } from "vitest";
import {
  Operation,
  Status,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { Role } from "../../gen/decky/lifecycle/v1/token_pb.js";
import {
  type CallerClients,
  clientsWith,
  openHeartbeat,
  openWatch,
  storeToken,
  type WatchCall,
} from "../support/callers.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

const server = serveThisFile({
  AUTH: "tokens",
  WATCH_STREAMS_PER_CALLER: "2",
  HEARTBEAT_STREAMS_PER_HOST: "1",
});

let admin: CallerClients;

beforeAll(async () => {
  admin = clientsWith(
    server.url,
    `Bearer ${await storeToken(server.server, "admin")}`,
  );
});

async function viewer(name: string): Promise<CallerClients> {
  const { token } = await admin.tokens.createToken({
    name,
    role: Role.VIEWER,
  });
  return clientsWith(server.url, `Bearer ${token}`);
}

async function watchPastSnapshot(clients: CallerClients): Promise<WatchCall> {
  const watch = openWatch(clients, {});
  await watch.until((received) =>
    received.some((m) => m.kind === WatchResponse_Kind.SNAPSHOT_END),
  );
  return watch;
}

function codeAndMessage(error: ConnectError | undefined) {
  return error && [Code[error.code], error.rawMessage];
}

const WATCH_LIMIT =
  "already has 2 open Watch streams, the most WATCH_STREAMS_PER_CALLER allows; close one first";

test("a caller's Watch beyond WATCH_STREAMS_PER_CALLER is RESOURCE_EXHAUSTED, naming the limit", async () => {
  const dashboard = await viewer("dashboard");
  const first = await watchPastSnapshot(dashboard);
  const second = await watchPastSnapshot(dashboard);

  const third = openWatch(dashboard, {});

  expect(codeAndMessage(await third.ended)).toEqual([
    "ResourceExhausted",
    `caller "dashboard" ${WATCH_LIMIT}`,
  ]);
  expect(third.received).toEqual([]);
  // Another caller is counted apart.
  const other = await watchPastSnapshot(await viewer("other"));
  for (const watch of [first, second, other]) watch.cancel();
});

test("a Watch that ends frees its place", async () => {
  const { rows } = await admin.lifecycle.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: deckyName("limits") }],
  });
  await admin.lifecycle.report({
    lifecycleId: rows[0]!.id,
    status: Status.SUCCEEDED,
  });
  const auditor = await viewer("auditor");
  const open = await watchPastSnapshot(auditor);

  // A watch of terminal rows ends right after its snapshot.
  for (let round = 0; round < 3; round++) {
    const done = openWatch(auditor, { ids: [rows[0]!.id] });
    expect(await done.ended).toBeUndefined();
  }
  const second = await watchPastSnapshot(auditor);
  const refused = openWatch(auditor, {});
  expect(codeAndMessage(await refused.ended)?.[0]).toBe("ResourceExhausted");

  open.cancel();
  second.cancel();
});

test("a Watch the client cancels frees its place", async () => {
  const browser = await viewer("browser");
  const first = await watchPastSnapshot(browser);
  const second = await watchPastSnapshot(browser);

  first.cancel();

  // The server learns of the cancel when the stream's reset reaches it.
  const third = await vi.waitFor(() => watchPastSnapshot(browser), {
    timeout: 10_000,
    interval: 50,
  });
  second.cancel();
  third.cancel();
});

test("a host's Heartbeat stream beyond HEARTBEAT_STREAMS_PER_HOST is RESOURCE_EXHAUSTED, whatever the token", async () => {
  const { host, token } = await admin.hosts.enrollHost({ name: "busy" });
  const hostUuid = host!.hostUuid;
  const worker = clientsWith(server.url, `Bearer ${token}`);
  const first = openHeartbeat(worker);
  first.send({ hostUuid, agentVersion: "agent/1.0", deltas: [] });
  // The first stream holds its place once its first message is applied.
  await vi.waitFor(async () => {
    const { hosts } = await admin.hosts.listHosts({});
    expect(hosts.find((h) => h.hostUuid === hostUuid)?.agentVersion).toBe(
      "agent/1.0",
    );
  });

  for (const clients of [worker, admin]) {
    const second = openHeartbeat(clients);
    second.send({ hostUuid, agentVersion: "agent/1.0", deltas: [] });
    expect(codeAndMessage(await second.failure())).toEqual([
      "ResourceExhausted",
      `host ${hostUuid} already has 1 open Heartbeat streams, the most HEARTBEAT_STREAMS_PER_HOST allows; close one first`,
    ]);
  }

  expect(await first.close()).toMatchObject({ messages: 1 });
  const after = openHeartbeat(worker);
  after.send({ hostUuid, agentVersion: "agent/1.1", deltas: [] });
  expect(await after.close()).toMatchObject({ messages: 1 });
});
