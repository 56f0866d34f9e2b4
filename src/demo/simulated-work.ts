import { setTimeout as sleep } from "node:timers/promises";
import type { Client } from "@connectrpc/connect";
import {
  type LifecycleService,
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import type { WorkerClient } from "../worker/worker-client.js";

/** One deploy a simulated runner carries out; `failWith` makes it fail. */
export interface DemoJob {
  readonly lifecycleId: string;
  readonly deckyName: string;
  readonly failWith?: string | undefined;
}

/** Waits between `min` and `max` milliseconds; rejects when `signal` aborts. */
function pause(min: number, max: number, signal: AbortSignal): Promise<void> {
  return sleep(min + Math.random() * (max - min), undefined, { signal });
}

/**
 * Runs `jobs` side by side the way a worker agent would: after a short
 * delay it reports each one RUNNING, then SUCCEEDED or FAILED, on the
 * worker's Heartbeat stream.
 */
export async function runOnWorker(
  worker: WorkerClient,
  jobs: readonly DemoJob[],
  signal: AbortSignal,
): Promise<void> {
  await Promise.all(
    jobs.map(async (job) => {
      const target = {
        deckyName: job.deckyName,
        operation: Operation.DEPLOY,
        lifecycleId: job.lifecycleId,
      };
      await pause(300, 1500, signal);
      worker.running(target);
      await pause(800, 2500, signal);
      if (job.failWith === undefined) worker.succeeded(target);
      else worker.failed(target, job.failWith);
    }),
  );
}

/**
 * Runs a master-resident job the way the control plane does: it reports
 * each move of the row itself with Report.
 */
export async function runOnControlPlane(
  client: Client<typeof LifecycleService>,
  job: DemoJob,
  signal: AbortSignal,
): Promise<void> {
  await pause(300, 1500, signal);
  await client.report(
    { lifecycleId: job.lifecycleId, status: Status.RUNNING },
    { signal },
  );
  await pause(800, 2500, signal);
  await client.report(
    { lifecycleId: job.lifecycleId, status: Status.SUCCEEDED },
    { signal },
  );
}
