import type { ConnectError } from "@connectrpc/connect";
import type { Logger } from "pino";
import type {
  DeltaOutcome,
  LifecycleDelta,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import type { WorkerClientConnection } from "./server-connection.js";

/** Options of `new WorkerClient(...)`. */
export type WorkerClientOptions = WorkerClientConnection & {
  /** The worker host; every message carries it. */
  hostUuid: string;
  /** The worker agent's version; every message carries it. */
  agentVersion: string;
  /**
   * The outbox file: every reported delta is written there before `report`
   * returns and stays until the server has acknowledged it, so a worker
   * restarted on the same file sends again what was not acknowledged.
   * Unset: the outbox is kept in memory and dies with the process.
   */
  outboxPath?: string;
  /** Milliseconds between heartbeat messages; 5000 when unset. */
  intervalMs?: number;
  /**
   * A stream is closed, and its deltas acknowledged, once it has sent this
   * many messages, or `streamDeltas` deltas, or been open `streamMs`,
   * whichever comes first; then a new one opens. 100 when unset.
   */
  streamMessages?: number;
  /**
   * Deltas one stream carries at most; the rest wait for the next one, so
   * that what a failed stream leaves to send again stays bounded. 500 when
   * unset.
   */
  streamDeltas?: number;
  /** Milliseconds a stream stays open at most; 30000 when unset. */
  streamMs?: number;
  /**
   * Milliseconds to wait for the server's answer once a stream is closed,
   * before it counts as failed; 30000 when unset.
   */
  responseTimeoutMs?: number;
  /** Delay before the first reconnection attempt; 250 ms when unset. */
  reconnectMinMs?: number;
  /** Longest delay between reconnection attempts; 30000 ms when unset. */
  reconnectMaxMs?: number;
  /** Receives debug lines about the streams. */
  logger?: Logger;
  /**
   * Called for every stream that fails; the client reconnects after a
   * delay and sends again every delta not yet acknowledged.
   */
  onError?: (error: ConnectError) => void;
  /**
   * Called for every delta the server read but did not apply (a replay, a
   * row already terminal, a row of another host...), once its stream has
   * closed; the delta then leaves the outbox like an applied one.
   */
  onOutcome?: (outcome: DeltaOutcome, delta: LifecycleDelta) => void;
};

/** Options of `stop()`. */
export interface StopOptions {
  /**
   * Milliseconds to keep trying to get the outbox acknowledged; what is
   * left then stays in the outbox file for the next start. 10000 when unset.
   */
  timeoutMs?: number;
}

/** `stop()`'s `timeoutMs` when unset. */
export const DEFAULT_STOP_TIMEOUT_MS = 10_000;

/** Options that must be positive numbers: milliseconds, messages, deltas. */
const POSITIVE_OPTIONS = [
  "intervalMs",
  "streamMessages",
  "streamDeltas",
  "streamMs",
  "responseTimeoutMs",
  "reconnectMinMs",
  "reconnectMaxMs",
] as const;

/** The timing and size limits a WorkerClient runs its streams by. */
export type Limits = { [K in (typeof POSITIVE_OPTIONS)[number]]: number };

const DEFAULT_LIMITS: Limits = {
  intervalMs: 5000,
  streamMessages: 100,
  streamDeltas: 500,
  streamMs: 30_000,
  responseTimeoutMs: 30_000,
  reconnectMinMs: 250,
  reconnectMaxMs: 30_000,
};

/**
 * The limits `options` sets, the default for each one unset. Throws a
 * RangeError naming the first that is not a positive number.
 */
export function limitsOf(options: Partial<Limits>): Limits {
  const limits = { ...DEFAULT_LIMITS };
  for (const name of POSITIVE_OPTIONS) {
    const value = options[name] ?? DEFAULT_LIMITS[name];
    if (!Number.isFinite(value) || value <= 0) {
      throw new RangeError(
        `${name} must be a positive number, got ${options[name]}`,
      );
    }
    limits[name] = value;
  }
  return limits;
}
