import { randomUUID } from "node:crypto";
import { Code, type ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, expect, test, vi } from "vitest";
import {
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import {
  type CallerClients,
  clientsWith,
  openHeartbeat,
} from "../support/callers.js";
import { TcpProxy } from "../support/tcp-proxy.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

// Hosts are judged only by the sweep at start-up, before any test's host
// exists, so nothing but the idle limit ends a stream here.
const server = serveThisFile({
  HOST_LOST_AFTER_MS: "1000",
  SWEEP_INTERVAL_MS: "3600000",
  HEARTBEAT_STREAMS_PER_HOST: "1",
});

let direct: CallerClients;
let proxy: TcpProxy;

beforeAll(async () => {
  direct = clientsWith(server.url, undefined);
  proxy = await TcpProxy.start(server.url);
});

afterAll(async () => {
  await proxy?.close();
});

const IDLE =
  "the stream sent no message for 1000 ms, so its host would count as lost; open a new stream and send unacknowledged deltas again";

function codeAndMessage(error: ConnectError) {
  return [Code[error.code], error.rawMessage];
}

test("a Heartbeat stream that sends no message for HOST_LOST_AFTER_MS ends UNAVAILABLE and keeps what it applied", async () => {
  const hostUuid = randomUUID();
  const name = deckyName();
  const {
    rows: [row],
  } = await direct.lifecycle.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name, hostUuid }],
  });
  const stream = openHeartbeat(direct);

  stream.send({
    hostUuid,
    agentVersion: "agent/1.0",
    deltas: [
      { deckyName: name, operation: Operation.DEPLOY, status: Status.RUNNING },
    ],
  });

  expect(codeAndMessage(await stream.failure())).toEqual(["Unavailable", IDLE]);
  const { rows } = await direct.lifecycle.list({ ids: [row!.id] });
  expect(rows.map((r) => Status[r.status])).toEqual(["RUNNING"]);
});

test("a Heartbeat stream whose connection went silent gives its host's place back after HOST_LOST_AFTER_MS", async () => {
  const hostUuid = randomUUID();
  const message = { hostUuid, agentVersion: "agent/1.0", deltas: [] };
  const throughProxy = openHeartbeat(clientsWith(proxy.url, undefined));
  throughProxy.send(message);
  await vi.waitFor(async () => {
    const { hosts } = await direct.hosts.listHosts({ pageSize: 500 });
    expect(hosts.map((host) => host.hostUuid)).toContain(hostUuid);
  });

  proxy.freeze();
  const refused = openHeartbeat(direct);
  refused.send(message);
  expect(codeAndMessage(await refused.failure())).toEqual([
    "ResourceExhausted",
    `host ${hostUuid} already has 1 open Heartbeat streams, the most HEARTBEAT_STREAMS_PER_HOST allows; close one first`,
  ]);

  await vi.waitFor(
    async () => {
      const again = openHeartbeat(direct);
      again.send(message);
      expect(await again.close()).toMatchObject({ messages: 1, applied: 0 });
    },
    { timeout: 5_000, interval: 200 },
  );
  proxy.thaw();
  await throughProxy.failure();
});
