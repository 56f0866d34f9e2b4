import type { MikroORM } from "@mikro-orm/postgresql";
import type { Logger } from "pino";
import type { LifecycleChange } from "../domain/lifecycle.js";
import type { ChangeFeed } from "../events/change-feed.js";
import { describeCause } from "../logging/describe-cause.js";
import { markLostHosts } from "../storage/host-writes.js";
import { failRowsOfLostHosts, failStaleRows } from "../storage/sweeps.js";
import {
  inWriteTransaction,
  type WriteTransaction,
} from "../storage/write-transaction.js";

/**
 * Rows failed per transaction: one transaction holds the revision lock, so
 * its size bounds how long it keeps other writers waiting.
 */
const SWEEP_BATCH = 500;

/** What the sweeper looks for. */
export interface SweepRules {
  /** An open row with no change for this long is failed. */
  readonly staleAfterMs: number;
  /** A host with no heartbeat for this long is marked lost. */
  readonly hostLostAfterMs: number;
  /** A host lost for this long has its open rows failed. */
  readonly hostLostGraceMs: number;
}

/** What one sweep did. */
export interface SweepResult {
  readonly staleRows: number;
  readonly lostHosts: number;
  readonly rowsOfLostHosts: number;
}

/** A running sweeper; `stop` clears its timer and waits for a sweep in flight. */
export interface Sweeper {
  stop(): Promise<void>;
}

/**
 * Fails rows with `fail`, a batch per transaction, until a batch comes back
 * short; each batch's changes reach watchers as soon as it commits.
 */
async function failInBatches(
  orm: MikroORM,
  feed: ChangeFeed,
  fail: (tx: WriteTransaction) => Promise<LifecycleChange[]>,
): Promise<number> {
  let failed = 0;
  for (;;) {
    const { changes } = await inWriteTransaction(orm.em.fork(), fail);
    feed.publish(changes);
    failed += changes.length;
    if (changes.length < SWEEP_BATCH) return failed;
  }
}

/**
 * One sweep: fails stale rows and, when `judgeHosts` is set, marks silent
 * hosts lost and fails the open rows of hosts lost beyond the grace period.
 * Every step is a conditional update, so sweepers of several replicas may
 * run at once and still fail each row once.
 */
export async function sweep(
  orm: MikroORM,
  feed: ChangeFeed,
  rules: SweepRules,
  judgeHosts: boolean,
): Promise<SweepResult> {
  const staleRows = await failInBatches(orm, feed, (tx) =>
    failStaleRows(tx, rules.staleAfterMs, SWEEP_BATCH),
  );
  if (!judgeHosts) return { staleRows, lostHosts: 0, rowsOfLostHosts: 0 };
  const lost = await markLostHosts(orm.em.fork(), rules.hostLostAfterMs);
  const rowsOfLostHosts = await failInBatches(orm, feed, (tx) =>
    failRowsOfLostHosts(tx, rules.hostLostGraceMs, SWEEP_BATCH),
  );
  return { staleRows, lostHosts: lost.length, rowsOfLostHosts };
}

/**
 * Sweeps once, then every `intervalMs`. A failed sweep is logged and tried
 * again on the next turn.
 *
 * Hosts are judged only once the sweeper has run for `hostLostAfterMs`: a
 * host cannot heartbeat to a server that is down, so after a restart every
 * host looks silent until its worker has had time to reconnect.
 */
export async function startSweeper(
  orm: MikroORM,
  feed: ChangeFeed,
  rules: SweepRules,
  intervalMs: number,
  logger: Logger,
): Promise<Sweeper> {
  const startedAt = performance.now();
  let running: Promise<void> | undefined;
  const turn = () => {
    const judgeHosts = performance.now() - startedAt >= rules.hostLostAfterMs;
    running ??= sweep(orm, feed, rules, judgeHosts).then(
      (result) => {
        running = undefined;
        const level =
          result.staleRows + result.lostHosts + result.rowsOfLostHosts > 0
            ? "info"
            : "debug";
        logger[level]({ ...result }, "swept stale rows and lost hosts");
      },
      (error: unknown) => {
        running = undefined;
        logger.warn(
          { cause: describeCause(error) },
          "could not sweep stale rows and lost hosts",
        );
      },
    );
  };
  turn();
  await running;
  const timer = setInterval(turn, intervalMs);
  timer.unref();
  return {
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}
