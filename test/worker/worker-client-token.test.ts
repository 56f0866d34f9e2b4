import { Code, type ConnectError } from "@connectrpc/connect";
import { beforeAll, expect, test, vi } from "vitest";
import {
  type Lifecycle,
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { WorkerClient } from "../../src/worker/worker-client.js";
import {
  type CallerClients,
  clientsWith,
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

async function acceptOn(hostUuid: string): Promise<Lifecycle> {
  const { rows } = await admin.lifecycle.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: deckyName("token"), hostUuid }],
  });
  return rows[0]!;
}

test("WorkerClient with its host's token moves the host's row", async () => {
  const { host, token } = await admin.hosts.enrollHost({ name: "web-1" });
  const row = await acceptOn(host!.hostUuid);
  const worker = new WorkerClient({
    baseUrl: server.url,
    token,
    hostUuid: host!.hostUuid,
    agentVersion: "token-test/1",
  });
  worker.start();

  worker.succeeded({
    deckyName: row.deckyName,
    operation: Operation.DEPLOY,
    lifecycleId: row.id,
  });
  const totals = await worker.stop();

  expect(totals).toMatchObject({
    applied: 1,
    notApplied: 0,
    unacknowledged: 0,
  });
  const { rows } = await admin.lifecycle.list({ ids: [row.id] });
  expect(rows[0]!.status).toBe(Status.SUCCEEDED);
});

test("WorkerClient with a token the server does not know is refused with UNAUTHENTICATED and moves nothing", async () => {
  const { host } = await admin.hosts.enrollHost({ name: "web-2" });
  const row = await acceptOn(host!.hostUuid);
  const errors: ConnectError[] = [];
  const worker = new WorkerClient({
    baseUrl: server.url,
    token: "dl_00000000000000000000000000000000_notasecretatall",
    hostUuid: host!.hostUuid,
    agentVersion: "token-test/1",
    onError: (error) => errors.push(error),
  });
  worker.start();

  worker.running({
    deckyName: row.deckyName,
    operation: Operation.DEPLOY,
    lifecycleId: row.id,
  });
  const totals = await worker.stop({ timeoutMs: 1000 });

  expect(totals.unacknowledged).toBe(1);
  expect(errors.length).toBeGreaterThan(0);
  expect(errors[0]!.code).toBe(Code.Unauthenticated);
  const { rows } = await admin.lifecycle.list({ ids: [row.id] });
  expect(rows[0]!.status).toBe(Status.PENDING);
});

test("WorkerClient whose token is a function takes its host's rotated token on the next stream, and loses no delta", async () => {
  const enrolled = await admin.hosts.enrollHost({ name: "web-3" });
  const hostUuid = enrolled.host!.hostUuid;
  const row = await acceptOn(hostUuid);
  let current = enrolled.token;
  const errors: string[] = [];
  const worker = new WorkerClient({
    baseUrl: server.url,
    token: () => current,
    hostUuid,
    agentVersion: "token-test/1",
    intervalMs: 50,
    reconnectMinMs: 20,
    reconnectMaxMs: 100,
    onError: (error) => errors.push(`${Code[error.code]}: ${error.rawMessage}`),
  });
  worker.start();
  const target = {
    deckyName: row.deckyName,
    operation: Operation.DEPLOY,
    lifecycleId: row.id,
  };
  worker.running(target);
  await vi.waitFor(async () => {
    const { rows } = await admin.lifecycle.list({ ids: [row.id] });
    expect(rows[0]!.status).toBe(Status.RUNNING);
  });

  const rotated = await admin.hosts.rotateHostToken({ hostUuid });
  worker.succeeded(target);
  await vi.waitFor(() => expect(errors.length).toBeGreaterThan(0));
  current = rotated.token;
  const totals = await worker.stop({ timeoutMs: 5_000 });

  // Refused on the stream open at the rotation, or on the next one.
  expect([
    `Unauthenticated: the token of this stream was revoked; reconnect with host ${hostUuid}'s new token`,
    "Unauthenticated: the bearer token was revoked",
  ]).toContain(errors[0]);
  expect(totals.unacknowledged).toBe(0);
  const { rows } = await admin.lifecycle.list({ ids: [row.id] });
  expect(rows.map((r) => Status[r.status])).toEqual(["SUCCEEDED"]);
});

test("WorkerClient whose token function never answers still stops within its timeout, keeping the delta", async () => {
  const { host } = await admin.hosts.enrollHost({ name: "web-4" });
  const row = await acceptOn(host!.hostUuid);
  const worker = new WorkerClient({
    baseUrl: server.url,
    token: () => new Promise<string>(() => {}),
    hostUuid: host!.hostUuid,
    agentVersion: "token-test/1",
  });
  worker.start();
  worker.running({
    deckyName: row.deckyName,
    operation: Operation.DEPLOY,
    lifecycleId: row.id,
  });

  const totals = await worker.stop({ timeoutMs: 300 });

  expect(totals).toMatchObject({ applied: 0, unacknowledged: 1 });
  const { rows } = await admin.lifecycle.list({ ids: [row.id] });
  expect(rows[0]!.status).toBe(Status.PENDING);
});
