import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  type Client,
  Code,
  ConnectError,
  createClient,
} from "@connectrpc/connect";
import type { Http2SessionManager } from "@connectrpc/connect-node";
import pRetry from "p-retry";
import type { Logger } from "pino";
import {
  type DeltaOutcome,
  type HeartbeatResponse,
  type LifecycleDelta,
  LifecycleDeltaSchema,
  LifecycleService,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { HeartbeatStream } from "./heartbeat-stream.js";
import { Outbox } from "./outbox.js";
import { connectToServer } from "./server-connection.js";
import {
  DEFAULT_STOP_TIMEOUT_MS,
  type Limits,
  limitsOf,
  type StopOptions,
  type WorkerClientOptions,
} from "./worker-client-options.js";

export type { WorkerClientConnection } from "./server-connection.js";
export type {
  StopOptions,
  WorkerClientOptions,
} from "./worker-client-options.js";

/** What `report` takes: a LifecycleDelta in its init shape. */
export type LifecycleDeltaInit = MessageInitShape<typeof LifecycleDeltaSchema>;

/** The row a convenience helper moves: the delta without status or error. */
export type DeltaTarget = Omit<
  LifecycleDeltaInit,
  "$typeName" | "status" | "error"
>;

/** What the server acknowledged over the client's life, from `stop()`. */
export interface WorkerClientTotals {
  /** Streams that closed with OK. */
  readonly streams: number;
  /** Messages those streams carried. */
  readonly messages: number;
  /** Deltas the server applied. */
  readonly applied: number;
  /** Deltas the server read and did not apply; see `onOutcome`. */
  readonly notApplied: number;
  /** Deltas left in the outbox, not acknowledged. */
  readonly unacknowledged: number;
}

type State = "new" | "running" | "stopping" | "stopped";

/**
 * The client a worker agent embeds. Every delta it is given goes first into
 * the outbox, then onto a Heartbeat stream; it leaves the outbox only once a
 * stream that carried it has closed with OK. The stream sends a message every
 * interval so the server knows the host is alive, and is closed and reopened
 * on a bounded schedule so that acknowledgements come. After any failure the
 * client reconnects with exponential backoff and jitter and sends again what
 * is unacknowledged; a delta the server already applied then comes back
 * DUPLICATE (or ALREADY_TERMINAL, for a RUNNING that was overtaken) and
 * changes nothing.
 *
 * Start it once, report, stop it once.
 */
export class WorkerClient {
  readonly #client: Client<typeof LifecycleService>;
  readonly #ownSession: Http2SessionManager | undefined;
  readonly #hostUuid: string;
  readonly #agentVersion: string;
  readonly #outboxPath: string | undefined;
  readonly #limits: Limits;
  readonly #log: Logger | undefined;
  readonly #onError: ((error: ConnectError) => void) | undefined;
  readonly #onOutcome:
    | ((outcome: DeltaOutcome, delta: LifecycleDelta) => void)
    | undefined;

  /** Aborts the stream and the reconnection delay when `stop()` gives up. */
  readonly #abort = new AbortController();
  #outbox: Outbox | undefined;
  #stream: HeartbeatStream | undefined;
  #flushScheduled = false;
  #state: State = "new";
  #loop: Promise<void> | undefined;
  #stopped: Promise<WorkerClientTotals> | undefined;
  #totals = { streams: 0, messages: 0, applied: 0, notApplied: 0 };

  constructor(options: WorkerClientOptions) {
    // Limits first: a bad one throws before a session is made.
    this.#limits = limitsOf(options);
    const { transport, ownSession } = connectToServer(options);
    this.#client = createClient(LifecycleService, transport);
    this.#ownSession = ownSession;
    this.#hostUuid = options.hostUuid;
    this.#agentVersion = options.agentVersion;
    this.#outboxPath = options.outboxPath;
    this.#log = options.logger?.child({ hostUuid: options.hostUuid });
    this.#onError = options.onError;
    this.#onOutcome = options.onOutcome;
  }

  /** How many reported deltas the server has not acknowledged yet. */
  get unacknowledged(): number {
    return this.#outbox?.size ?? 0;
  }

  /**
   * Opens the outbox, sending at once whatever it still holds, and the
   * first Heartbeat stream. Throws if the client was already started or the
   * outbox file is damaged or not an outbox.
   */
  start(): void {
    if (this.#state !== "new") {
      throw new Error(
        `WorkerClient.start: the client is already ${this.#state}`,
      );
    }
    this.#outbox = Outbox.open(this.#outboxPath);
    this.#state = "running";
    this.#loop = this.#run();
    this.#log?.debug(
      { outbox: this.#outboxPath, unacknowledged: this.#outbox.size },
      "worker client started",
    );
  }

  /**
   * Records a delta in the outbox, durably, and sends it. Deltas reported
   * in the same tick of the event loop travel in one message, in order.
   *
   * Give each delta its `lifecycleId`: a delta without one moves the host's
   * newest open row for the decky and operation, so one sent again after
   * its row finished and a new row was accepted would move the new row.
   *
   * Throws if the client is not running (not started, stopping or stopped),
   * or if the outbox cannot be written, so no delta is lost silently.
   */
  report(delta: LifecycleDeltaInit): void {
    if (this.#state !== "running") {
      throw new Error(`WorkerClient.report: the client is ${this.#state}`);
    }
    this.#outbox!.add([create(LifecycleDeltaSchema, delta)]);
    if (this.#flushScheduled) return;

    this.#flushScheduled = true;
    queueMicrotask(() => {
      this.#flushScheduled = false;
      this.#flush(false);
    });
  }

  /** Reports that the worker took the row: status RUNNING. */
  running(target: DeltaTarget): void {
    this.report({ ...target, status: Status.RUNNING });
  }

  /** Reports that the row's work is done: status SUCCEEDED. */
  succeeded(target: DeltaTarget): void {
    this.report({ ...target, status: Status.SUCCEEDED });
  }

  /** Reports that the row's work failed: status FAILED with the error text. */
  failed(target: DeltaTarget, error: string): void {
    this.report({ ...target, status: Status.FAILED, error });
  }

  /**
   * Sends what the outbox holds, closes the stream and keeps reconnecting
   * until the server has acknowledged everything or `timeoutMs` has passed;
   * then closes the outbox and the connection. Resolves with the totals;
   * `unacknowledged` deltas stay in the outbox file for the next start.
   * Calling it again returns the same promise.
   */
  stop(options: StopOptions = {}): Promise<WorkerClientTotals> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS;
    if (!Number.isFinite(timeoutMs) || timeoutMs < 0) {
      return Promise.reject(
        new RangeError(
          `timeoutMs must be a number of milliseconds, got ${timeoutMs}`,
        ),
      );
    }
    this.#stopped ??= this.#stop(timeoutMs);
    return this.#stopped;
  }

  async #stop(timeoutMs: number): Promise<WorkerClientTotals> {
    if (this.#state === "new") {
      this.#state = "stopped";
      throw new Error("WorkerClient.stop: the client was never started");
    }
    this.#state = "stopping";
    const outbox = this.#outbox!;
    const deadline = setTimeout(
      () => this.#abort.abort(new Error("WorkerClient.stop timed out")),
      timeoutMs,
    );
    this.#flush(false);
    this.#stream?.close();
    // Between streams with nothing to send: skip the reconnection delay.
    if (this.#stream === undefined && outbox.size === 0) this.#abort.abort();

    try {
      await this.#loop;
    } finally {
      clearTimeout(deadline);
      this.#state = "stopped";
      outbox.close();
      this.#ownSession?.abort();
    }
    const totals = { ...this.#totals, unacknowledged: outbox.size };
    this.#log?.debug(totals, "worker client stopped");
    return totals;
  }

  /**
   * Opens stream after stream while the client runs, and while stopping
   * until the outbox is empty. Each failure waits longer before the next
   * attempt; a stream that closes with OK resets the delay.
   */
  async #run(): Promise<void> {
    const signal = this.#abort.signal;
    try {
      while (this.#state === "running" || this.#outbox!.size > 0) {
        await pRetry(() => this.#openStream(), {
          retries: Number.POSITIVE_INFINITY,
          factor: 2,
          minTimeout: this.#limits.reconnectMinMs,
          maxTimeout: this.#limits.reconnectMaxMs,
          randomize: true,
          signal,
          onFailedAttempt: ({ error }) => {
            if (!signal.aborted) this.#failed(ConnectError.from(error));
          },
        });
      }
    } catch (error) {
      if (!signal.aborted) throw error;
    }
  }

  /** One stream, from opening to the acknowledgement of what it carried. */
  async #openStream(): Promise<void> {
    if (this.#state !== "running" && this.#outbox!.size === 0) return;
    const { intervalMs, streamMs, responseTimeoutMs } = this.#limits;
    const stream = new HeartbeatStream(
      this.#client,
      { hostUuid: this.#hostUuid, agentVersion: this.#agentVersion },
      { signal: this.#abort.signal, timeoutMs: streamMs + responseTimeoutMs },
    );
    this.#stream = stream;
    const interval = setInterval(() => this.#flush(true), intervalMs);
    const rotation = setTimeout(() => stream.close(), streamMs);
    try {
      this.#flush(true);
      if (this.#state !== "running") stream.close();
      const response = await stream.response;
      this.#acknowledge(stream, response);
    } catch (error) {
      // The next attempt starts on a new connection, not a dead one.
      this.#ownSession?.abort();
      // Whatever failed, even writing the outbox, is retried like a call.
      throw ConnectError.from(error);
    } finally {
      clearInterval(interval);
      clearTimeout(rotation);
      stream.close();
      this.#stream = undefined;
    }
  }

  /**
   * Sends what the open stream has not carried yet, up to its share of
   * deltas; with `heartbeat`, a message even if there is nothing new.
   * Closes the stream once it has carried its share of messages or deltas.
   */
  #flush(heartbeat: boolean): void {
    const stream = this.#stream;
    if (stream === undefined || stream.closed) return;
    const { streamMessages, streamDeltas } = this.#limits;
    const room = streamDeltas - stream.deltaCount;
    stream.send(this.#outbox!.entries(), heartbeat, room);
    if (
      stream.messageCount >= streamMessages ||
      stream.deltaCount >= streamDeltas
    ) {
      stream.close();
    }
  }

  #acknowledge(stream: HeartbeatStream, response: HeartbeatResponse): void {
    const { entries, refused } = stream.acknowledged(response);
    this.#outbox!.remove(entries.map((entry) => entry.seq));
    this.#totals.streams += 1;
    this.#totals.messages += response.messages;
    this.#totals.applied += response.applied;
    this.#totals.notApplied += response.outcomes.length;
    this.#log?.debug(
      {
        messages: response.messages,
        applied: response.applied,
        notApplied: response.outcomes.length,
        unacknowledged: this.#outbox!.size,
      },
      "heartbeat stream acknowledged",
    );
    for (const { outcome, delta } of refused) {
      this.#callback("onOutcome", () => this.#onOutcome?.(outcome, delta));
    }
  }

  #failed(error: ConnectError): void {
    this.#log?.debug(
      { code: Code[error.code], err: error },
      "heartbeat stream failed; reconnecting",
    );
    this.#callback("onError", () => this.#onError?.(error));
  }

  /** Runs a caller's callback; what it throws is logged, not ours to fail. */
  #callback(name: string, call: () => void): void {
    try {
      call();
    } catch (error) {
      this.#log?.warn({ err: error }, `WorkerClient ${name} threw`);
    }
  }
}
