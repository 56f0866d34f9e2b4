import type { Logger } from "pino";
import type { LifecycleChange } from "../domain/lifecycle.js";
import type {
  ChangeFeed,
  ChangeListener,
  ChangeSubscription,
} from "./change-feed.js";

/** Reads logged changes after a revision, oldest first. */
export type ChangeLogReader = (
  after: bigint,
  limit: number,
) => Promise<LifecycleChange[]>;

const GAP_READ_LIMIT = 1000;
const GAP_RETRY_MS = 500;

/**
 * The change feed of a single process. Writers publish their changes after
 * commit, and two writers' publications can arrive in either order, so the
 * feed delivers strictly by revision: a change that arrives ahead of a
 * missing one waits, and if the missing one has not arrived once the event loop
 * has run its timers (its writer lost the answer to its commit, say) the feed
 * reads it from the change log.
 */
export class InProcessChangeFeed implements ChangeFeed {
  readonly #listeners = new Set<ChangeListener>();
  readonly #waiting = new Map<bigint, LifecycleChange>();
  #delivered: bigint;
  #gapRead: Promise<void> | undefined;
  #gapTimer: NodeJS.Timeout | undefined;
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

  subscribe(listener: ChangeListener): ChangeSubscription {
    this.#listeners.add(listener);
    return {
      revision: this.#delivered,
      close: () => {
        this.#listeners.delete(listener);
      },
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#gapTimer) clearTimeout(this.#gapTimer);
    this.#listeners.clear();
    this.#waiting.clear();
    await this.#gapRead;
  }

  #deliverInOrder(): void {
    for (;;) {
      const next = this.#waiting.get(this.#delivered + 1n);
      if (!next) return;
      this.#waiting.delete(next.revision);
      this.#delivered = next.revision;
      for (const listener of this.#listeners) listener(next);
    }
  }

  #scheduleGapRead(delayMs = 0): void {
    if (this.#gapTimer || this.#gapRead || this.#closed) return;
    this.#gapTimer = setTimeout(() => {
      this.#gapTimer = undefined;
      if (this.#waiting.size === 0 || this.#closed) return;
      this.#gapRead = this.#readGap().then((read) => {
        this.#gapRead = undefined;
        if (this.#waiting.size > 0) {
          this.#scheduleGapRead(read ? 0 : GAP_RETRY_MS);
        }
      });
    }, delayMs);
  }

  /** Reads the log after the newest delivered revision; false if it failed. */
  async #readGap(): Promise<boolean> {
    try {
      const changes = await this.readLog(this.#delivered, GAP_READ_LIMIT);
      if (this.#closed) return true;
      for (const change of changes) {
        if (change.revision > this.#delivered) {
          this.#waiting.set(change.revision, change);
        }
      }
      this.#deliverInOrder();
      return true;
    } catch (error) {
      this.logger.warn(
        { err: error, after: this.#delivered.toString() },
        "could not read the change log to fill a gap in revisions; will retry",
      );
      return false;
    }
  }
}
