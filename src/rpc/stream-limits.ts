import { Code, ConnectError } from "@connectrpc/connect";
import type { Caller } from "./services.js";

/** How many streams one caller or host may hold open at once. */
export interface StreamLimits {
  readonly watchStreamsPerCaller: number;
  readonly heartbeatStreamsPerHost: number;
}

interface Entry {
  readonly tokenId: string | undefined;
  readonly hostUuid: string | undefined;
  readonly controller: AbortController;
}

/**
 * The open Watch and Heartbeat streams of the process: caps how many each
 * caller (Watch) and each host (Heartbeat) may hold, and ends the streams of
 * a revoked token or a decommissioned host by aborting the controller each
 * stream registered with, the error to end the call with as the reason.
 * Opening a stream returns the function that releases its place.
 */
export class OpenStreams {
  readonly #entries = new Set<Entry>();
  readonly #counts = new Map<string, number>();

  constructor(private readonly limits: StreamLimits) {}

  /**
   * Registers a Watch stream of `caller`; RESOURCE_EXHAUSTED if the caller
   * already holds as many as WATCH_STREAMS_PER_CALLER allows. With
   * AUTH=none every caller without a pinned certificate counts as one.
   */
  openWatch(caller: Caller, controller: AbortController): () => void {
    const key = `watch:${caller.tokenId ?? caller.hostUuid ?? "anonymous"}`;
    const limit = this.limits.watchStreamsPerCaller;
    if ((this.#counts.get(key) ?? 0) >= limit) {
      throw new ConnectError(
        `caller "${caller.name}" already has ${limit} open Watch streams, the most WATCH_STREAMS_PER_CALLER allows; close one first`,
        Code.ResourceExhausted,
      );
    }
    return this.#open(key, caller.tokenId, caller.hostUuid, controller);
  }

  /**
   * Registers a Heartbeat stream for `hostUuid`; RESOURCE_EXHAUSTED if the
   * host already holds as many as HEARTBEAT_STREAMS_PER_HOST allows.
   */
  openHeartbeat(
    caller: Caller,
    hostUuid: string,
    controller: AbortController,
  ): () => void {
    const key = `heartbeat:${hostUuid}`;
    const limit = this.limits.heartbeatStreamsPerHost;
    if ((this.#counts.get(key) ?? 0) >= limit) {
      throw new ConnectError(
        `host ${hostUuid} already has ${limit} open Heartbeat streams, the most HEARTBEAT_STREAMS_PER_HOST allows; close one first`,
        Code.ResourceExhausted,
      );
    }
    return this.#open(key, caller.tokenId, hostUuid, controller);
  }

  /** Ends every stream opened with one of `tokenIds`. */
  endTokens(tokenIds: readonly string[], reason: ConnectError): void {
    const ids = new Set(tokenIds);
    for (const entry of this.#entries) {
      if (entry.tokenId !== undefined && ids.has(entry.tokenId)) {
        entry.controller.abort(reason);
      }
    }
  }

  /** Ends every stream of `hostUuid`: its heartbeats and its worker's watches. */
  endHost(hostUuid: string, reason: ConnectError): void {
    for (const entry of this.#entries) {
      if (entry.hostUuid === hostUuid) entry.controller.abort(reason);
    }
  }

  #open(
    key: string,
    tokenId: string | undefined,
    hostUuid: string | undefined,
    controller: AbortController,
  ): () => void {
    const entry: Entry = { tokenId, hostUuid, controller };
    this.#entries.add(entry);
    this.#counts.set(key, (this.#counts.get(key) ?? 0) + 1);
    let closed = false;
    return () => {
      if (closed) return;
      closed = true;
      this.#entries.delete(entry);
      const left = (this.#counts.get(key) ?? 1) - 1;
      if (left === 0) this.#counts.delete(key);
      else this.#counts.set(key, left);
    };
  }
}
