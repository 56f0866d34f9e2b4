import type { LifecycleChange } from "../domain/lifecycle.js";
import type { ChangeFeed, ChangeSubscription } from "./change-feed.js";

/** What a watcher's next wait ends with. */
export type WatcherEvent =
  | { readonly kind: "change"; readonly change: LifecycleChange }
  | { readonly kind: "idle" }
  | { readonly kind: "closed" }
  | { readonly kind: "overflowed" }
  | { readonly kind: "interrupted"; readonly cause: unknown };

/**
 * How many changes a watcher holds for a stream that does not keep up;
 * past it the stream ends and its client resumes from its last revision.
 */
export const MAX_QUEUED_CHANGES = 10_000;

/**
 * One Watch stream's place in the change feed. It subscribes at once and
 * queues every change from then on, so that a snapshot or a replay of the
 * log read after subscribing, followed by the queued changes, misses
 * nothing. It ends when any of its signals aborts: the caller going away,
 * or the server shutting down.
 */
export class Watcher {
  readonly #queue: LifecycleChange[] = [];
  readonly #subscription: ChangeSubscription;
  #wake: (() => void) | undefined;
  #closed = false;
  #overflowed = false;
  #interrupted: { readonly cause: unknown } | undefined;

  constructor(
    feed: ChangeFeed,
    private readonly signals: readonly AbortSignal[],
  ) {
    this.#subscription = feed.subscribe(
      (change) => {
        if (this.#queue.length >= MAX_QUEUED_CHANGES) {
          this.#overflowed = true;
          this.close();
          return;
        }
        this.#queue.push(change);
        this.#wake?.();
      },
      (cause) => {
        this.#interrupted = { cause };
        this.#wake?.();
      },
    );
    for (const signal of signals) {
      signal.addEventListener("abort", this.#onAbort);
    }
  }

  get #aborted(): boolean {
    return this.signals.some((signal) => signal.aborted);
  }

  /** The newest revision the feed had delivered when the watcher joined. */
  get joinedAt(): bigint {
    return this.#subscription.revision;
  }

  /**
   * The next queued change; "idle" if none comes within `idleMs`; "closed"
   * once the watcher is closed or its signal aborted; "overflowed" once more
   * than MAX_QUEUED_CHANGES waited for the stream; "interrupted", after the
   * changes queued before it, once the feed cannot deliver every change.
   */
  async next(idleMs: number): Promise<WatcherEvent> {
    const now = this.#take();
    if (now) return now;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, idleMs);
      const wake = () => done();
      this.#wake = wake;
      function done() {
        clearTimeout(timer);
        resolve();
      }
    });
    this.#wake = undefined;
    return this.#take() ?? { kind: "idle" };
  }

  #take(): WatcherEvent | undefined {
    if (this.#overflowed) return { kind: "overflowed" };
    const change = this.#queue.shift();
    if (change) return { kind: "change", change };
    if (this.#closed || this.#aborted) return { kind: "closed" };
    if (this.#interrupted) {
      return { kind: "interrupted", cause: this.#interrupted.cause };
    }
    return undefined;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#subscription.close();
    for (const signal of this.signals) {
      signal.removeEventListener("abort", this.#onAbort);
    }
    this.#queue.length = 0;
    this.#wake?.();
  }

  readonly #onAbort = (): void => {
    this.close();
  };
}
