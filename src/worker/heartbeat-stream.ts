import { create } from "@bufbuild/protobuf";
import { type Client, ConnectError } from "@connectrpc/connect";
import {
  type DeltaOutcome,
  type HeartbeatRequest,
  HeartbeatRequestSchema,
  type HeartbeatResponse,
  type LifecycleDelta,
  type LifecycleService,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { AsyncQueue } from "./async-queue.js";
import type { OutboxEntry } from "./outbox.js";

/** Deltas the server takes in one Heartbeat message. */
export const MAX_DELTAS_PER_MESSAGE = 500;

/** A delta the server did not apply, with what it said about it. */
export interface RefusedDelta {
  readonly outcome: DeltaOutcome;
  readonly delta: LifecycleDelta;
}

/** What a stream that closed with OK settled. */
export interface StreamAcknowledgement {
  /** Entries of the messages the server read, applied or not. */
  readonly entries: OutboxEntry[];
  /** The deltas among them that the server did not apply. */
  readonly refused: RefusedDelta[];
}

/**
 * One Heartbeat call: the messages sent on it, which outbox entries each
 * carried, and the response. Entries count as acknowledged only through
 * `acknowledged`, once the call has closed with OK.
 */
export class HeartbeatStream {
  readonly #queue = new AsyncQueue<HeartbeatRequest>();
  readonly #messages: OutboxEntry[][] = [];
  readonly #carried = new Set<number>();
  readonly #hostUuid: string;
  readonly #agentVersion: string;

  /** The server's answer; rejects with a ConnectError if the call failed. */
  readonly response: Promise<HeartbeatResponse>;

  constructor(
    client: Client<typeof LifecycleService>,
    identity: { hostUuid: string; agentVersion: string },
    call: { signal: AbortSignal; timeoutMs: number },
  ) {
    this.#hostUuid = identity.hostUuid;
    this.#agentVersion = identity.agentVersion;
    this.response = client.heartbeat(this.#queue, call).catch((reason) => {
      throw ConnectError.from(reason);
    });
  }

  /** Whether the stream takes no more messages. */
  get closed(): boolean {
    return this.#queue.closed;
  }

  /** How many messages the stream has sent. */
  get messageCount(): number {
    return this.#messages.length;
  }

  /** How many deltas the stream has sent. */
  get deltaCount(): number {
    return this.#carried.size;
  }

  /**
   * Sends the first `limit` of those `entries` this stream has not carried
   * yet, in order, at most MAX_DELTAS_PER_MESSAGE a message. With
   * `heartbeat`, sends one message even if no entry is new, so the server
   * hears from the host.
   */
  send(
    entries: readonly OutboxEntry[],
    heartbeat: boolean,
    limit: number,
  ): void {
    const fresh = entries
      .filter((entry) => !this.#carried.has(entry.seq))
      .slice(0, Math.max(0, limit));
    if (fresh.length === 0 && !heartbeat) return;
    do {
      const batch = fresh.splice(0, MAX_DELTAS_PER_MESSAGE);
      const message = create(HeartbeatRequestSchema, {
        hostUuid: this.#hostUuid,
        agentVersion: this.#agentVersion,
        deltas: batch.map((entry) => entry.delta),
      });
      if (!this.#queue.push(message)) return;
      this.#messages.push(batch);
      for (const entry of batch) this.#carried.add(entry.seq);
    } while (fresh.length > 0);
  }

  /** Ends the request stream; the server then answers. */
  close(): void {
    this.#queue.close();
  }

  /**
   * The entries that `response` settles: those of the messages the server
   * counted. A server that answered early read only the first messages;
   * the rest stay unacknowledged.
   */
  acknowledged(response: HeartbeatResponse): StreamAcknowledgement {
    const read = this.#messages.slice(0, response.messages);
    const refused: RefusedDelta[] = [];
    for (const outcome of response.outcomes) {
      const entry = read[outcome.messageIndex]?.[outcome.deltaIndex];
      if (entry) refused.push({ outcome, delta: entry.delta });
    }
    return { entries: read.flat(), refused };
  }
}
