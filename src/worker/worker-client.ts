import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  type Client,
  Code,
  ConnectError,
  createClient,
  type Transport,
} from "@connectrpc/connect";
import {
  createGrpcTransport,
  Http2SessionManager,
} from "@connectrpc/connect-node";
import type { Logger } from "pino";
import {
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
  type LifecycleDelta,
  LifecycleDeltaSchema,
  LifecycleService,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { AsyncQueue } from "./async-queue.js";

/** What `report` takes: a LifecycleDelta in its init shape. */
export type LifecycleDeltaInit = MessageInitShape<typeof LifecycleDeltaSchema>;

/** The row a convenience helper moves: the delta without status or error. */
export type DeltaTarget = Omit<
  LifecycleDeltaInit,
  "$typeName" | "status" | "error"
>;

/** How to reach the server: a transport of your own, or a base URL. */
export type WorkerClientConnection =
  | { transport: Transport }
  | { baseUrl: string };

/** Options of `new WorkerClient(...)`. */
export type WorkerClientOptions = WorkerClientConnection & {
  /** The worker host; every message of the stream carries it. */
  hostUuid: string;
  /** The worker agent's version; every message of the stream carries it. */
  agentVersion: string;
  /** Milliseconds between heartbeat messages; 5000 when unset. */
  intervalMs?: number;
  /** Receives debug lines about the stream. */
  logger?: Logger;
  /**
   * Called once when the stream ends with an error before `stop()` was
   * called. The client is then finished: it does not reconnect.
   */
  onError?: (error: ConnectError) => void;
};

type State = "new" | "running" | "stopping" | "stopped" | "failed";

type Outcome =
  | { response: HeartbeatResponse; error?: never }
  | { error: ConnectError; response?: never };

const defaultIntervalMs = 5000;

/**
 * The client a worker agent embeds: it keeps one Heartbeat stream open, sends
 * a message every interval so the server knows the host is alive, and sends
 * lifecycle deltas as soon as they are reported.
 *
 * One instance serves one stream: start, report, stop. After the stream ends,
 * by `stop()` or by an error, make a new instance to open another.
 */
export class WorkerClient {
  readonly #client: Client<typeof LifecycleService>;
  readonly #ownSession: Http2SessionManager | undefined;
  readonly #hostUuid: string;
  readonly #agentVersion: string;
  readonly #intervalMs: number;
  readonly #log: Logger | undefined;
  readonly #onError: ((error: ConnectError) => void) | undefined;

  readonly #queue = new AsyncQueue<HeartbeatRequest>();
  #pending: LifecycleDelta[] = [];
  #flushScheduled = false;
  #timer: NodeJS.Timeout | undefined;
  #state: State = "new";
  #outcome: Promise<Outcome> | undefined;
  #stopped: Promise<HeartbeatResponse> | undefined;
  #error: ConnectError | undefined;

  constructor(options: WorkerClientOptions) {
    const intervalMs = options.intervalMs ?? defaultIntervalMs;
    if (!Number.isFinite(intervalMs) || intervalMs <= 0) {
      throw new RangeError(
        `intervalMs must be a positive number of milliseconds, got ${intervalMs}`,
      );
    }

    let transport: Transport;
    if ("transport" in options) {
      transport = options.transport;
    } else {
      // A session of our own, so that stop() can close the connection; a
      // transport passed in belongs to the caller and stays open.
      this.#ownSession = new Http2SessionManager(options.baseUrl);
      transport = createGrpcTransport({
        baseUrl: options.baseUrl,
        sessionManager: this.#ownSession,
      });
    }

    this.#client = createClient(LifecycleService, transport);
    this.#hostUuid = options.hostUuid;
    this.#agentVersion = options.agentVersion;
    this.#intervalMs = intervalMs;
    this.#log = options.logger?.child({ hostUuid: options.hostUuid });
    this.#onError = options.onError;
  }

  /**
   * Opens the Heartbeat stream, sends the first message at once and then one
   * every interval. Throws if the client was already started.
   */
  start(): void {
    if (this.#state !== "new") {
      throw new Error(
        `WorkerClient.start: the client is already ${this.#state}`,
      );
    }
    this.#state = "running";

    this.#outcome = this.#client.heartbeat(this.#queue).then(
      (response): Outcome => ({ response }),
      (reason: unknown): Outcome => ({ error: ConnectError.from(reason) }),
    );
    void this.#outcome.then((outcome) => this.#settled(outcome));

    this.#send();
    this.#timer = setInterval(() => this.#send(), this.#intervalMs);
    this.#log?.debug({ intervalMs: this.#intervalMs }, "heartbeat started");
  }

  /**
   * Sends a delta at once. Deltas reported in the same tick of the event loop
   * travel in one message, in the order they were reported.
   *
   * Returns nothing: what the server did with each delta comes back in the
   * response that `stop()` resolves with. Throws if the stream is not open
   * (not started, stopping, stopped or failed), so no delta is lost silently.
   */
  report(delta: LifecycleDeltaInit): void {
    if (this.#state !== "running") {
      throw new Error(
        `WorkerClient.report: the Heartbeat stream is ${this.#state}`,
        { cause: this.#error },
      );
    }
    this.#pending.push(create(LifecycleDeltaSchema, delta));
    if (this.#flushScheduled) return;

    this.#flushScheduled = true;
    queueMicrotask(() => {
      this.#flushScheduled = false;
      // The interval or stop() may have sent these deltas already.
      if (this.#pending.length > 0 && this.#state === "running") this.#send();
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
   * Sends the deltas still waiting, closes the stream and resolves with the
   * server's response. Rejects with the ConnectError if the stream failed,
   * before or during the close. Calling it again returns the same promise.
   */
  stop(): Promise<HeartbeatResponse> {
    this.#stopped ??= this.#stop();
    return this.#stopped;
  }

  async #stop(): Promise<HeartbeatResponse> {
    if (this.#outcome === undefined) {
      this.#state = "stopped";
      throw new Error("WorkerClient.stop: the client was never started");
    }
    if (this.#state === "running") {
      this.#state = "stopping";
      if (this.#pending.length > 0) this.#send();
      this.#release();
    }

    const outcome = await this.#outcome;
    if (outcome.error !== undefined) throw outcome.error;
    return outcome.response;
  }

  #send(): void {
    const deltas = this.#pending.splice(0);
    const message = create(HeartbeatRequestSchema, {
      hostUuid: this.#hostUuid,
      agentVersion: this.#agentVersion,
      deltas,
    });
    if (!this.#queue.push(message)) {
      this.#log?.debug({ deltas: deltas.length }, "heartbeat message dropped");
      return;
    }
    this.#log?.debug({ deltas: deltas.length }, "heartbeat message queued");
  }

  #settled(outcome: Outcome): void {
    const whileRunning = this.#state === "running";
    let error = outcome.error;
    if (whileRunning && error === undefined) {
      // A server that answers before the worker closes the stream no longer
      // reads it: whatever the worker reports next would go nowhere.
      error = new ConnectError(
        "the server ended the Heartbeat stream before the worker closed it",
        Code.Internal,
      );
      this.#outcome = Promise.resolve({ error });
    }
    this.#state = error === undefined ? "stopped" : "failed";
    this.#error = error;
    this.#release();
    this.#ownSession?.abort();

    if (error !== undefined) {
      const code = Code[error.code];
      this.#log?.debug({ code, err: error }, "heartbeat failed");
      if (whileRunning) this.#onError?.(error);
      return;
    }
    const { messages, applied, outcomes } = outcome.response ?? {};
    this.#log?.debug(
      { messages, applied, outcomes: outcomes?.length },
      "heartbeat stopped",
    );
  }

  /** Stops the interval and ends the request stream; safe to call twice. */
  #release(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#pending = [];
    this.#queue.close();
  }
}
