import type { MikroORM } from "@mikro-orm/postgresql";
import type { Logger } from "pino";
import { describeCause } from "../logging/describe-cause.js";
import { pruneHistory } from "../storage/maintenance.js";

/** How long an Accept `request_id` is remembered: the contract asks for 24 h. */
export const ACCEPT_KEY_RETENTION_MS = 48 * 3600 * 1000;

/** How often the change log and Accept keys are pruned. */
const PRUNE_INTERVAL_MS = 10 * 60 * 1000;

/** A running pruner; `stop` clears its timer and waits for a prune in flight. */
export interface HistoryPruner {
  stop(): Promise<void>;
}

/**
 * Prunes the change log (changes older than `retentionMs`) and old Accept
 * keys once, then every ten minutes. A failed prune is logged and tried
 * again on the next turn.
 */
export async function startHistoryPruner(
  orm: MikroORM,
  retentionMs: number,
  logger: Logger,
): Promise<HistoryPruner> {
  let running: Promise<void> | undefined;
  const prune = () => {
    running ??= pruneHistory(
      orm.em.fork(),
      retentionMs,
      ACCEPT_KEY_RETENTION_MS,
    ).then(
      (prunedThrough) => {
        running = undefined;
        logger.debug(
          { prunedThrough: prunedThrough.toString() },
          "pruned the change log",
        );
      },
      (error: unknown) => {
        running = undefined;
        logger.warn(
          { cause: describeCause(error) },
          "could not prune the change log",
        );
      },
    );
  };
  prune();
  await running;
  const timer = setInterval(prune, PRUNE_INTERVAL_MS);
  timer.unref();
  return {
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}
