import { type Client, ConnectError } from "@connectrpc/connect";
import {
  WatchResponse_Kind as Kind,
  type Lifecycle,
  type LifecycleService,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";

const isTerminal = (row: Lifecycle | undefined) =>
  row?.status === Status.SUCCEEDED || row?.status === Status.FAILED;

/**
 * A Watch by filter on every row: hands each row it sees to `onRow` and
 * keeps the latest state of each, so the caller can wait for rows to finish.
 */
export class LiveWatch {
  /** Resolves once the snapshot is complete and changes are live. */
  readonly ready: Promise<void>;
  readonly #rows = new Map<string, Lifecycle>();
  readonly #listeners = new Set<() => void>();
  readonly #abort = new AbortController();
  #failure: Error | undefined;
  readonly #stream: Promise<void>;

  constructor(
    client: Client<typeof LifecycleService>,
    onRow: (row: Lifecycle) => void,
    signal: AbortSignal,
  ) {
    signal.addEventListener("abort", () => this.#abort.abort(), {
      once: true,
    });
    let markReady = () => {};
    let readyFailed = (_: Error) => {};
    this.ready = new Promise((resolve, reject) => {
      markReady = resolve;
      readyFailed = reject;
    });
    // Only awaited while starting; a later failure reaches untilTerminal.
    this.ready.catch(() => {});
    this.#stream = (async () => {
      try {
        const stream = client.watch({}, { signal: this.#abort.signal });
        for await (const message of stream) {
          if (message.kind === Kind.SNAPSHOT_END) markReady();
          if (message.row === undefined) continue;
          this.#rows.set(message.row.id, message.row);
          onRow(message.row);
          for (const listener of this.#listeners) listener();
        }
        throw new Error("the Watch stream ended unexpectedly");
      } catch (error) {
        const failure = this.#abort.signal.aborted
          ? new Error("the watch was closed")
          : ConnectError.from(error);
        readyFailed(failure);
        this.#fail(failure);
      }
    })();
  }

  /** Resolves once every row in `ids` is SUCCEEDED or FAILED. */
  untilTerminal(ids: readonly string[]): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.#failure) reject(this.#failure);
        else if (!ids.every((id) => isTerminal(this.#rows.get(id)))) return;
        else resolve();
        this.#listeners.delete(check);
      };
      this.#listeners.add(check);
      check();
    });
  }

  /** Ends the stream; a wait still running rejects. */
  async close(): Promise<void> {
    this.#abort.abort();
    await this.#stream;
  }

  #fail(error: Error): void {
    this.#failure = error;
    for (const listener of this.#listeners) listener();
  }
}
