/**
 * A worker agent for the worker chaos test, run as its own process so that
 * the test can kill it. Reads the plan file named by its argument, starts a
 * WorkerClient on the plan's outbox file and reports the plan's deltas from
 * `from` on, a batch at a time, as far as the test allows: each line
 * "allow <n>" on stdin lets it report up to index n - 1. Prints one line
 * per event on stdout:
 * "started <deltas found in the outbox>", "reported <index>" once a delta
 * is in the outbox, "error <code>" for each failed stream, "reported all",
 * and "stopped <totals as JSON>". Exits by itself once stopped, so a timer
 * or connection left open would show as a process that does not end.
 */
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { Code } from "@connectrpc/connect";
import {
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { WorkerClient } from "../../src/worker/worker-client.js";

/** What the test asks the worker to do. */
export interface ChaosPlan {
  readonly url: string;
  readonly hostUuid: string;
  readonly outboxPath: string;
  readonly from: number;
  readonly batch: number;
  readonly pauseMs: number;
  readonly deltas: readonly {
    readonly deckyName: string;
    readonly lifecycleId: string;
    readonly status: "running" | "succeeded" | "failed";
    readonly error?: string;
  }[];
}

const STATUSES = {
  running: Status.RUNNING,
  succeeded: Status.SUCCEEDED,
  failed: Status.FAILED,
};

const say = (line: string) => process.stdout.write(`${line}\n`);

const plan = JSON.parse(readFileSync(process.argv[2]!, "utf8")) as ChaosPlan;
const client = new WorkerClient({
  baseUrl: plan.url,
  hostUuid: plan.hostUuid,
  agentVersion: "chaos-worker/1.0",
  outboxPath: plan.outboxPath,
  intervalMs: 50,
  streamMessages: 20,
  streamDeltas: 100,
  streamMs: 200,
  responseTimeoutMs: 10_000,
  reconnectMinMs: 20,
  reconnectMaxMs: 400,
  onError: (error) => say(`error ${Code[error.code]}`),
});
client.start();
say(`started ${client.unacknowledged}`);

let allowed = 0;
let wake: () => void = () => undefined;
const commands = createInterface({ input: process.stdin });
commands.on("line", (line) => {
  allowed = Number(line.split(" ")[1]);
  wake();
});

for (let index = plan.from; index < plan.deltas.length; index++) {
  while (index >= allowed) {
    await new Promise<void>((resolve) => {
      wake = resolve;
    });
  }
  const { status, ...delta } = plan.deltas[index]!;
  client.report({
    ...delta,
    operation: Operation.DEPLOY,
    status: STATUSES[status],
  });
  say(`reported ${index}`);
  if ((index + 1) % plan.batch === 0) await sleep(plan.pauseMs);
}
say("reported all");
commands.close();
process.stdin.destroy();

const totals = await client.stop({ timeoutMs: 60_000 });
say(`stopped ${JSON.stringify(totals)}`);
