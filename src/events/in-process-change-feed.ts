import type { Logger } from "pino";
import type { LifecycleChange } from "../domain/lifecycle.js";
import { describeCause } from "../logging/describe-cause.js";
import type {
  ChangeFeed,
  ChangeListener,
  ChangeSubscription,
  InterruptionListener,
} from "./change-feed.js";

/** Reads logged changes after a revision, oldest first. */
export type ChangeLogReader = (
  after: bigint,
  limit: number,
) => Promise<LifecycleChange[]>;

const LOG_READ_LIMIT = 1000;
const GAP_RETRY_MS = 500;
/**
 * How long the feed may deliver nothing, while someone listens, before it
 * reads the change log to make sure it has missed nothing and the database
 * still answers.
 */
export const LIVENESS_PROBE_MS = 1000;

/**
 * The change feed of a single process. Writers publish their changes after
 * commit, and two writers' publications can arrive in either order, so the
 * feed delivers strictly by revision: a change that arrives ahead of a
 * missing one waits, and if the missing one has not arrived once the event
 * loop has run its timers (its writer lost the answer to its commit, say) the
 * feed reads it from the change log.
 *
 * A watcher waiting on a quiet feed would never notice that the database has
 * gone, and a change whose writer lost the answer to its commit would stay
 * unpublished until a later change showed the gap. So while anyone listens,
 * a feed that has delivered nothing for LIVENESS_PROBE_MS reads the log
 * itself: one indexed read a second on an idle server, none on a busy one.
 * When a read of the log fails, the feed cannot promise its listeners every
 * change any more: it tells each one and drops it, and their Watch streams
 * end with the revision to resume from, once the database answers again.
 */
export class InProcessChangeFeed implements ChangeFeed {
  readonly #listeners = new Map<ChangeListener, InterruptionListener>();
  readonly #waiting = new Map<bigint, LifecycleChange>();
  #delivered: bigint;
  #logRead: Promise<boolean> | undefined;
  #gapTimer: NodeJS.Timeout | undefined;
  #probeTimer: NodeJS.Timeout | undefined;
  #failing = false;
  #closed = false;

  constructor(
    startRevision: bigint,
    private readonly readLog: ChangeLogReader,
    private readonly logger: Logger,
  ) {
    this.#delivered = startRevision;
  }

  /** The newest revision delivered to listeners. */
  get revision(): bigint {
    return this.#delivered;
  }

  get subscribers(): number {
    return this.#listeners.size;
  }

  publish(changes: readonly LifecycleChange[]): void {
    if (this.#closed) return;
    for (const change of changes) {
      if (change.revision > this.#delivered) {
        this.#waiting.set(change.revision, change);
      }
    }
    this.#deliverInOrder();
    if (this.#waiting.size > 0) this.#scheduleGapRead();
  }

  subscribe(
    listener: ChangeListener,
    interrupted: InterruptionListener,
  ): ChangeSubscription {
    if (!this.#closed) {
      this.#listeners.set(listener, interrupted);
      this.#probeTimer ??= setTimeout(this.#probe, LIVENESS_PROBE_MS);
    }
    return {
      revision: this.#delivered,
      close: () => {
        this.#listeners.delete(listener);
        if (this.#listeners.size === 0) this.#stopProbing();
      },
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#gapTimer) clearTimeout(this.#gapTimer);
    this.#stopProbing();
    this.#listeners.clear();
    this.#waiting.clear();
    await this.#logRead;
  }

  #deliverInOrder(): void {
    for (;;) {
      const next = this.#waiting.get(this.#delivered + 1n);
      if (!next) return;
      this.#waiting.delete(next.revision);
      this.#delivered = next.revision;
      this.#probeTimer?.refresh();
      for (const listener of this.#listeners.keys()) listener(next);
    }
  }

  #stopProbing(): void {
    clearTimeout(this.#probeTimer);
    this.#probeTimer = undefined;
  }

  readonly #probe = (): void => {
    this.#probeTimer = undefined;
    if (this.#closed || this.#listeners.size === 0) return;
    void this.#readOnce().then(() => {
      if (!this.#closed && this.#listeners.size > 0) {
        this.#probeTimer ??= setTimeout(this.#probe, LIVENESS_PROBE_MS);
      }
    });
  };

  #scheduleGapRead(delayMs = 0): void {
    if (this.#gapTimer || this.#logRead || this.#closed) return;
    this.#gapTimer = setTimeout(() => {
      this.#gapTimer = undefined;
      if (this.#waiting.size === 0 || this.#closed) return;
      void this.#readOnce().then((read) => {
        if (this.#waiting.size > 0) {
          this.#scheduleGapRead(read ? 0 : GAP_RETRY_MS);
        }
      });
    }, delayMs);
  }

  /** One read of the log at a time; resolves to false if it failed. */
  #readOnce(): Promise<boolean> {
    this.#logRead ??= this.#readLog().finally(() => {
      this.#logRead = undefined;
    });
    return this.#logRead;
  }

  /** Reads the log after the newest delivered revision and delivers it. */
  async #readLog(): Promise<boolean> {
    try {
      for (;;) {
        const changes = await this.readLog(this.#delivered, LOG_READ_LIMIT);
        if (this.#closed) return true;
        for (const change of changes) {
          if (change.revision > this.#delivered) {
            this.#waiting.set(change.revision, change);
          }
        }
        this.#deliverInOrder();
        if (changes.length < LOG_READ_LIMIT) break;
      }
      if (this.#failing) {
        this.#failing = false;
        this.logger.info(
          { revision: this.#delivered.toString() },
          "the change log can be read again",
        );
      }
      return true;
    } catch (error) {
      if (this.#closed) return false;
      const dropped = [...this.#listeners.values()];
      this.#listeners.clear();
      this.#stopProbing();
      // Logged once per outage, not on every retry.
      this.logger[this.#failing ? "debug" : "warn"](
        {
          cause: describeCause(error),
          after: this.#delivered.toString(),
          watchers: dropped.length,
        },
        "could not read the change log; ending the watchers, will retry",
      );
      this.#failing = true;
      for (const interrupted of dropped) interrupted(error);
      return false;
    }
  }
}
