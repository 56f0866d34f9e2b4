import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
} from "@connectrpc/connect-node";
import {
  type Lifecycle,
  LifecycleService,
  Operation,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { loadSettings } from "../config/settings.js";
import { changeLine, summaryTable } from "../demo/format.js";
import { LiveWatch } from "../demo/live-watch.js";
import {
  type DemoJob,
  runOnControlPlane,
  runOnWorker,
} from "../demo/simulated-work.js";
import { createLogger } from "../logging/logger.js";
import { type RunningServer, startServer } from "../server/start-server.js";
import { WorkerClient } from "../worker/worker-client.js";

/** Deckies run by worker hosts, dealt out over the hosts in turn. */
const WORKER_DECKIES = [
  "web-01",
  "web-02",
  "ssh-01",
  "ssh-02",
  "smb-01",
  "ftp-01",
  "db-01",
  "mail-01",
];
/** A decky with no host: the control plane runs it itself. */
const MASTER_DECKY = "dns-01";
const FAILING_DECKY = "smb-01";
const FAILURE_TEXT = "smb service did not come up within 30 s";
const HOST_COUNT = 3;

const say = (line = "") => process.stdout.write(`${line}\n`);

interface DemoHost {
  readonly label: string;
  readonly uuid: string;
  readonly worker: WorkerClient;
}

/** A worker host with its Heartbeat stream open. */
function startHost(label: string, baseUrl: string): DemoHost {
  const uuid = randomUUID();
  const worker = new WorkerClient({
    baseUrl,
    hostUuid: uuid,
    agentVersion: "demo-1.0.0",
    intervalMs: 1000,
    onError: (error) => say(`${label}: Heartbeat failed: ${error.message}`),
  });
  worker.start();
  return { label, uuid, worker };
}

/** Runs `step` and reports, rather than throws, what went wrong. */
async function attempt(step: () => Promise<unknown>): Promise<void> {
  await step().catch((error: unknown) =>
    say(`while stopping: ${error instanceof Error ? error.message : error}`),
  );
}

/**
 * Starts a server on a fresh embedded database, watches every row, lets
 * simulated workers and the control plane run a batch of deploys, prints
 * the result and stops everything again.
 */
async function runDemo(signal: AbortSignal): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), "decky-demo-"));
  let server: RunningServer | undefined;
  let watch: LiveWatch | undefined;
  const hosts: DemoHost[] = [];
  try {
    const settings = loadSettings({
      PORT: process.env.PORT || "0",
      DATA_DIR: dataDir,
      LOG_LEVEL: "warn",
    });
    say(`starting the server on an embedded database in ${dataDir}`);
    server = await startServer(settings, createLogger(settings.logLevel));
    signal.throwIfAborted();
    say(`serving at ${server.url}`);

    const hostLabels = new Map<string, string>();
    const hostLabel = (uuid: string | undefined) =>
      uuid === undefined ? "master" : (hostLabels.get(uuid) ?? uuid);

    // A browser-like watcher: the Connect protocol over HTTP/1.1.
    const browser = createClient(
      LifecycleService,
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
    );
    const onRow = (row: Lifecycle) => say(changeLine(row, hostLabel));
    watch = new LiveWatch(browser, onRow, signal);
    await watch.ready;
    say("watching every row over Connect (HTTP/1.1)\n");

    for (let i = 1; i <= HOST_COUNT; i++) {
      const host = startHost(`host-${i}`, server.url);
      hostLabels.set(host.uuid, host.label);
      hosts.push(host);
    }

    // The control plane speaks gRPC over HTTP/2, as internal services do.
    const controlPlane = createClient(
      LifecycleService,
      createGrpcTransport({ baseUrl: server.url }),
    );
    const targets = [
      ...WORKER_DECKIES.map((deckyName, i) => ({
        deckyName,
        hostUuid: hosts[i % hosts.length]!.uuid,
      })),
      { deckyName: MASTER_DECKY },
    ];
    const accepted = await controlPlane.accept(
      { operation: Operation.DEPLOY, targets, requestId: randomUUID() },
      { signal },
    );

    const jobsOf = (hostUuid: string | undefined): DemoJob[] =>
      accepted.rows
        .filter((row) => row.hostUuid === hostUuid)
        .map((row) => ({
          lifecycleId: row.id,
          deckyName: row.deckyName,
          failWith: row.deckyName === FAILING_DECKY ? FAILURE_TEXT : undefined,
        }));
    await Promise.all([
      ...hosts.map((host) =>
        runOnWorker(host.worker, jobsOf(host.uuid), signal),
      ),
      ...jobsOf(undefined).map((job) =>
        runOnControlPlane(controlPlane, job, signal),
      ),
      watch.untilTerminal(accepted.lifecycleIds),
    ]);

    const { lifecycleIds } = accepted;
    const listed = await controlPlane.list({ ids: lifecycleIds }, { signal });
    const rows = listed.rows.sort(
      (a, b) => lifecycleIds.indexOf(a.id) - lifecycleIds.indexOf(b.id),
    );
    say(`\nevery row is terminal:\n\n${summaryTable(rows, hostLabel)}\n`);
  } finally {
    // The watcher goes first, so that the server has seen it leave before
    // it shuts down and does not end the stream as UNAVAILABLE.
    await attempt(async () => watch?.close());
    for (const { label, worker } of hosts) {
      await attempt(async () => {
        const done = await worker.stop();
        say(
          `${label}: Heartbeat closed after ${done.messages} messages, ${done.applied} deltas applied`,
        );
      });
    }
    await attempt(async () => server?.close());
    await rm(dataDir, { recursive: true, force: true });
  }
}

const interrupt = new AbortController();
process.once("SIGINT", () => {
  say("\ninterrupted: stopping ...");
  interrupt.abort();
});
try {
  await runDemo(interrupt.signal);
  say("stopped the workers, the watcher and the server; removed the data");
} catch (error) {
  if (interrupt.signal.aborted) {
    say("stopped before every row finished");
    process.exitCode = 130;
  } else {
    say(`demo failed: ${error instanceof Error ? error.message : error}`);
    process.exitCode = 1;
  }
}
