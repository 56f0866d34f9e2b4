import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { afterAll, beforeAll, expect, test, vi } from "vitest";
import {
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { Outbox } from "../../src/worker/outbox.js";
import type { WorkerClientTotals } from "../../src/worker/worker-client.js";
import { TcpProxy } from "../support/tcp-proxy.js";
import {
  createTestDatabase,
  deckyName,
  startTestServer,
  type TestDatabase,
  type TestServer,
} from "../support/test-server.js";
import type { ChaosPlan } from "./chaos-worker.js";

const ROWS = 1000;
/** Rows a worker has in hand at once: RUNNING for each, then their ends. */
const ROWS_IN_FLIGHT = 10;
/** The server restarts once the worker has reported this many deltas. */
const RESTART_SERVER_AT = 600;
/**
 * The worker is killed once it has reported this many, while it is still
 * reporting, so that its outbox holds deltas no stream has acknowledged.
 */
const KILL_WORKER_AT = 1400;

/**
 * The server waits out most of its shutdown deadline for connections that
 * stay open (this file's own clients keep one); a short deadline keeps the
 * restart quick.
 */
const SERVER_ENV = { SHUTDOWN_DEADLINE_MS: "1000" };

let database: TestDatabase;
let server: TestServer;
let directory: string;

beforeAll(async () => {
  database = await createTestDatabase();
  server = await startTestServer(database, SERVER_ENV);
  directory = await mkdtemp(join(tmpdir(), "dl-chaos-"));
});

afterAll(async () => {
  await server?.close();
  await database?.drop();
  await rm(directory, { recursive: true, force: true });
});

/** A worker process and what it has said so far. */
interface ChaosWorker {
  readonly child: ChildProcess;
  readonly exited: Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
  }>;
  /** How many deltas the outbox held when it started. */
  startedWith: number | undefined;
  /** The index of the last delta it has put in its outbox. */
  reported: number;
  reportedAll: boolean;
  failedStreams: number;
  totals: WorkerClientTotals | undefined;
  /** Lets it report the deltas before index `end`. */
  allow(end: number): void;
}

/** Starts a worker process on `plan`. */
function startWorker(plan: ChaosPlan): ChaosWorker {
  const planPath = join(directory, `plan-${plan.from}.json`);
  writeFileSync(planPath, JSON.stringify(plan));
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "test/worker/chaos-worker.ts", planPath],
    { stdio: ["pipe", "pipe", "inherit"] },
  );
  const worker: ChaosWorker = {
    child,
    exited: new Promise((resolve) =>
      child.once("close", (code, signal) => resolve({ code, signal })),
    ),
    startedWith: undefined,
    reported: plan.from - 1,
    reportedAll: false,
    failedStreams: 0,
    totals: undefined,
    allow: (end) => child.stdin!.write(`allow ${end}\n`),
  };
  createInterface({ input: child.stdout! }).on("line", (line) => {
    const [event, value] = line.split(/ (.*)/);
    if (event === "started") worker.startedWith = Number(value);
    else if (event === "reported" && value === "all") worker.reportedAll = true;
    else if (event === "reported") worker.reported = Number(value);
    else if (event === "error") worker.failedStreams += 1;
    else if (event === "stopped") worker.totals = JSON.parse(value!);
  });
  return worker;
}

const until = (check: () => void) =>
  vi.waitFor(check, { timeout: 50_000, interval: 10 });

test("Worker chaos: 2,000 deltas through cut connections, a server restart and a worker killed and restarted from its outbox are each applied exactly once", async () => {
  // 1,000 rows of one host, and the worker's plan: for ten rows at a time,
  // RUNNING for each, then SUCCEEDED, or FAILED for every seventh row.
  const hostUuid = randomUUID();
  const names = Array.from({ length: ROWS }, () => deckyName("chaos"));
  const ids: string[] = [];
  for (let start = 0; start < ROWS; start += 500) {
    const { lifecycleIds } = await server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: names
        .slice(start, start + 500)
        .map((name) => ({ deckyName: name, hostUuid })),
    });
    ids.push(...lifecycleIds);
  }
  const failsWith = (row: number) =>
    row % 7 === 0 ? `chaos failure of row ${row}` : undefined;
  const deltas: ChaosPlan["deltas"][number][] = [];
  for (let first = 0; first < ROWS; first += ROWS_IN_FLIGHT) {
    const rows = Array.from({ length: ROWS_IN_FLIGHT }, (_, i) => first + i);
    for (const row of rows) {
      deltas.push({
        deckyName: names[row]!,
        lifecycleId: ids[row]!,
        status: "running",
      });
    }
    for (const row of rows) {
      const error = failsWith(row);
      deltas.push({
        deckyName: names[row]!,
        lifecycleId: ids[row]!,
        ...(error === undefined
          ? { status: "succeeded" as const }
          : { status: "failed" as const, error }),
      });
    }
  }
  // Each connection through the proxy is cut once the worker has sent a
  // random 500 to 30,000 bytes through it, as likely as not mid-frame: a
  // stream of 100 deltas takes about 10,000.
  const proxy = await TcpProxy.start(server.url, {
    requestBytesBeforeCut: () => 500 + Math.floor(Math.random() * 29_500),
  });
  const outboxPath = join(directory, "worker.outbox");
  const plan = (from: number): ChaosPlan => ({
    url: proxy.url,
    hostUuid,
    outboxPath,
    from,
    batch: 20,
    pauseMs: 25,
    deltas,
  });

  // The server restarted once on the same database; the worker killed once
  // and restarted on its outbox, reporting again from the first delta it
  // had not confirmed; connections cut throughout.
  const first = startWorker(plan(0));
  first.allow(RESTART_SERVER_AT);
  await until(() => expect(first.reported).toBe(RESTART_SERVER_AT - 1));
  // It reports on while the server restarts, up to a point, so that it is
  // still reporting when it is killed however long the restart takes.
  first.allow(KILL_WORKER_AT - 200);
  await server.close();
  server = await startTestServer(database, SERVER_ENV);
  proxy.retarget(server.url);
  first.allow(deltas.length);
  await until(() =>
    expect(first.reported).toBeGreaterThanOrEqual(KILL_WORKER_AT - 1),
  );
  first.child.kill("SIGKILL");
  const killed = await first.exited;
  const second = startWorker(plan(first.reported + 1));
  second.allow(deltas.length);
  await until(() => expect(second.reportedAll).toBe(true));
  const finished = await second.exited;
  await proxy.close();

  expect(killed).toEqual({ code: null, signal: "SIGKILL" });
  expect(finished).toEqual({ code: 0, signal: null });
  expect(proxy.cuts).toBeGreaterThan(5);
  expect(first.failedStreams).toBeGreaterThan(0);
  expect(second.startedWith).toBeGreaterThan(0);
  expect(second.totals?.unacknowledged).toBe(0);
  expect(Outbox.read(outboxPath)).toEqual([]);

  // Every row ended as planned.
  const rows = [];
  for (let start = 0; start < ROWS; start += 200) {
    const page = await server.grpc.list({
      ids: ids.slice(start, start + 200),
      pageSize: 200,
    });
    rows.push(...page.rows);
  }
  const byId = new Map(rows.map((row) => [row.id, row]));
  const ends = ids.map((id) => {
    const row = byId.get(id);
    return [row?.status, row?.error, row?.completedAt !== undefined];
  });
  expect(ends).toEqual(
    ids.map((_, row) => {
      const error = failsWith(row);
      return error === undefined
        ? [Status.SUCCEEDED, undefined, true]
        : [Status.FAILED, error, true];
    }),
  );

  // Each transition is in the change log exactly once.
  const changes = await server.server.orm.em
    .fork()
    .getConnection()
    .execute<{ lifecycle_id: string; status: string }[]>(
      "select lifecycle_id, status from lifecycle_change order by revision",
    );
  const history = new Map<string, string[]>(ids.map((id) => [id, []]));
  for (const change of changes)
    history.get(change.lifecycle_id)?.push(change.status);
  expect(changes).toHaveLength(3 * ROWS);
  expect(ids.map((id) => history.get(id))).toEqual(
    ids.map((_, row) => [
      "pending",
      "running",
      failsWith(row) === undefined ? "succeeded" : "failed",
    ]),
  );
}, 120_000);
