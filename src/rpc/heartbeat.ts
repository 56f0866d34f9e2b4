import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { EntityManager } from "@mikro-orm/postgresql";
import {
  type DeltaOutcome,
  DeltaOutcome_Result,
  DeltaOutcomeSchema,
  type HeartbeatRequest,
  type HeartbeatResponse,
  HeartbeatResponseSchema,
  type LifecycleDelta,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { refuseRevokedCaller } from "../auth/authenticate.js";
import { withoutTokenSecrets } from "../auth/token.js";
import { checkHeartbeatHost } from "../auth/worker-scope.js";
import { type DeltaInput, validateDelta } from "../domain/delta.js";
import type { ChangeFeed } from "../events/change-feed.js";
import { applyDelta, recordHeartbeat } from "../storage/heartbeat-writes.js";
import { inWriteTransaction } from "../storage/write-transaction.js";
import { operationOf, resultEnum, statusOf } from "./convert.js";
import { checkText, invalidArgument, quote } from "./invalid.js";
import type { Caller } from "./services.js";
import type { OpenStreams } from "./stream-limits.js";
import { checkUuid } from "./validate.js";

const MAX_AGENT_VERSION_LENGTH = 200;
/**
 * Deltas one message may carry. A message is one transaction under the
 * revision lock, so its size bounds how long it keeps other writers waiting.
 */
export const MAX_DELTAS_PER_MESSAGE = 500;
/**
 * Refused deltas one stream may hold outcomes for. The contract answers with
 * every refused delta when the stream closes, so they are kept until then; a
 * stream that would pass this many is ended before its next message is
 * applied, and the worker sends that message again on a new stream.
 */
export const MAX_OUTCOMES_PER_STREAM = 10_000;

function deltaInput(delta: LifecycleDelta): DeltaInput {
  return {
    deckyName: delta.deckyName,
    operation: operationOf(delta.operation),
    status: statusOf(delta.status),
    error: delta.error,
    completedAt: delta.completedAt
      ? timestampDate(delta.completedAt)
      : undefined,
    lifecycleId: delta.lifecycleId,
  };
}

/**
 * Who sends a Heartbeat stream, where open streams are counted, and how long
 * the stream may go without a message.
 */
export interface HeartbeatAccess {
  readonly caller: Caller;
  readonly streams: OpenStreams;
  readonly idleMs: number;
}

/**
 * Applies a worker's Heartbeat stream: each message in its own transaction
 * as it arrives, recording the host as alive and moving the rows its deltas
 * name. Answers, when the worker closes the stream, with the counts and an
 * outcome for every delta that was not applied.
 *
 * A worker's stream must speak for the worker's own host. The stream counts
 * against its host's cap from its first message on, and ends early when the
 * host is decommissioned or the stream's token revoked. A stream that was
 * silent until then is not registered yet, so each message's transaction
 * checks the token again: a revocation commits either before that check,
 * and the message is refused, or after the message.
 */
export async function applyHeartbeats(
  messages: AsyncIterable<HeartbeatRequest>,
  em: EntityManager,
  feed: ChangeFeed,
  shutdownSignal: AbortSignal,
  access: HeartbeatAccess,
): Promise<HeartbeatResponse> {
  let streamHost: string | undefined;
  let count = 0;
  let applied = 0;
  const outcomes: DeltaOutcome[] = [];
  const ended = new AbortController();
  let release: (() => void) | undefined;

  for await (const request of untilShutdown(
    messages,
    { shutdownSignal, endSignal: ended.signal, idleMs: access.idleMs },
    () => release?.(),
  )) {
    const messageIndex = count;
    const hostUuid = checkUuid("host_uuid", request.hostUuid);
    if (streamHost !== undefined && hostUuid !== streamHost) {
      throw invalidArgument(
        `host_uuid ${quote(request.hostUuid)} of message ${messageIndex} differs from ${streamHost}, the host this stream started with`,
      );
    }
    if (streamHost === undefined) {
      checkHeartbeatHost(access.caller, hostUuid);
      release = access.streams.openHeartbeat(access.caller, hostUuid, ended);
    }
    streamHost = hostUuid;
    checkText("agent_version", request.agentVersion, MAX_AGENT_VERSION_LENGTH);
    if (request.deltas.length > MAX_DELTAS_PER_MESSAGE) {
      throw invalidArgument(
        `deltas of message ${messageIndex} has ${request.deltas.length} entries; at most ${MAX_DELTAS_PER_MESSAGE} are allowed`,
      );
    }
    if (outcomes.length + request.deltas.length > MAX_OUTCOMES_PER_STREAM) {
      throw new ConnectError(
        `this stream already holds ${outcomes.length} outcomes of refused deltas, and message ${messageIndex} could pass the limit of ${MAX_OUTCOMES_PER_STREAM}; close the stream to read them and send message ${messageIndex} again on a new stream`,
        Code.ResourceExhausted,
      );
    }

    const { result, changes } = await inWriteTransaction(em, async (tx) => {
      await recordHeartbeat(tx, hostUuid, request.agentVersion);
      await refuseRevokedCaller(tx.em, access.caller);
      const results: DeltaOutcome[] = [];
      for (const [deltaIndex, input] of request.deltas.entries()) {
        const delta = validateDelta(deltaInput(input));
        const outcome =
          typeof delta === "string"
            ? {
                result: "rejected" as const,
                lifecycleId: input.lifecycleId ?? "",
                detail: delta,
              }
            : await applyDelta(tx, hostUuid, delta);
        results.push(
          create(DeltaOutcomeSchema, {
            messageIndex,
            deltaIndex,
            lifecycleId: outcome.lifecycleId,
            result: resultEnum(outcome.result),
            detail: withoutTokenSecrets(outcome.detail),
          }),
        );
      }
      return results;
    });
    feed.publish(changes);

    count += 1;
    applied += changes.length;
    outcomes.push(
      ...result.filter(
        (outcome) => outcome.result !== DeltaOutcome_Result.APPLIED,
      ),
    );
  }
  return create(HeartbeatResponseSchema, {
    messages: count,
    applied,
    outcomes,
  });
}

/** What ends a Heartbeat stream before its worker closes it. */
interface StreamEnds {
  /** Aborts when the server shuts down. */
  readonly shutdownSignal: AbortSignal;
  /** Aborts, with the error as its reason, when the stream must end. */
  readonly endSignal: AbortSignal;
  /** How long the stream may wait for its next message. */
  readonly idleMs: number;
}

/**
 * The stream's messages until the server shuts down; then the call ends with
 * UNAVAILABLE, so the worker opens a new stream elsewhere or later and sends
 * again whatever it has not seen acknowledged. A message already received is
 * applied first. When `endSignal` aborts (the host was decommissioned, the
 * token revoked), the call ends with its reason the same way. A stream with
 * no message for `idleMs` ends with UNAVAILABLE too: its connection is most
 * likely dead, and it would otherwise hold its place under the host's cap.
 * `onEnd` runs once the stream is over.
 */
async function* untilShutdown(
  messages: AsyncIterable<HeartbeatRequest>,
  ends: StreamEnds,
  onEnd: () => void,
): AsyncGenerator<HeartbeatRequest> {
  const iterator = messages[Symbol.asyncIterator]();
  try {
    for (;;) {
      const next = await nextMessage(iterator, ends);
      if (next.done) return;
      yield next.value;
    }
  } finally {
    onEnd();
    void iterator.return?.();
  }
}

/**
 * The stream's next message, or the error that ends the stream first. Every
 * listener and timer it sets is gone when it settles, however long the
 * stream lives.
 */
function nextMessage(
  iterator: AsyncIterator<HeartbeatRequest>,
  { shutdownSignal, endSignal, idleMs }: StreamEnds,
): Promise<IteratorResult<HeartbeatRequest>> {
  return new Promise((resolve, reject) => {
    const onShutdown = () =>
      settle(
        reject,
        new ConnectError(
          "the server is shutting down; open a new stream and send unacknowledged deltas again",
          Code.Unavailable,
        ),
      );
    const onEnd = () => settle(reject, endSignal.reason);
    const idle = setTimeout(
      () =>
        settle(
          reject,
          new ConnectError(
            `the stream sent no message for ${idleMs} ms, so its host would count as lost; open a new stream and send unacknowledged deltas again`,
            Code.Unavailable,
          ),
        ),
      idleMs,
    );
    function settle<T>(how: (value: T) => void, value: T) {
      clearTimeout(idle);
      shutdownSignal.removeEventListener("abort", onShutdown);
      endSignal.removeEventListener("abort", onEnd);
      how(value);
    }
    if (shutdownSignal.aborted) return onShutdown();
    if (endSignal.aborted) return onEnd();
    shutdownSignal.addEventListener("abort", onShutdown);
    endSignal.addEventListener("abort", onEnd);
    iterator.next().then(
      (next) => settle(resolve, next),
      (error: unknown) => settle(reject, error),
    );
  });
}
