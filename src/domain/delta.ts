import {
  cutError,
  DECKY_NAME_PATTERN,
  isTerminal,
  isUuid,
  type LifecycleRow,
  type Operation,
  type Status,
} from "./lifecycle.js";

/** What happened to one delta of a Heartbeat message. */
export type DeltaResult =
  | "applied"
  | "duplicate"
  | "no_open_row"
  | "stale"
  | "rejected"
  | "already_terminal";

/** The range of google.protobuf.Timestamp, 0001-01-01 to 9999-12-31 UTC. */
const MIN_TIMESTAMP_MS = -62_135_596_800_000;
const MAX_TIMESTAMP_MS = 253_402_300_799_999;

/**
 * Whether `time` is a valid Timestamp. A time past 9999 is a valid Date but
 * not one the database can store, and would fail the whole message.
 */
function isTimestampInRange(time: Date): boolean {
  const ms = time.getTime();
  return ms >= MIN_TIMESTAMP_MS && ms <= MAX_TIMESTAMP_MS;
}

/** A delta as the worker sent it, with enums already named. */
export interface DeltaInput {
  readonly deckyName: string;
  readonly operation: Operation | undefined;
  readonly status: Status | undefined;
  readonly error: string | undefined;
  readonly completedAt: Date | undefined;
  readonly lifecycleId: string | undefined;
}

/** A delta that passed validation. */
export interface Delta {
  readonly deckyName: string;
  readonly operation: Operation;
  readonly status: "running" | "succeeded" | "failed";
  readonly error: string | null;
  readonly completedAt: Date | null;
  readonly lifecycleId: string | null;
}

/**
 * Validates a delta; returns the delta, or the reason it is REJECTED.
 * Error text longer than a row keeps is cut, not refused.
 */
export function validateDelta(input: DeltaInput): Delta | string {
  if (!DECKY_NAME_PATTERN.test(input.deckyName)) {
    return `decky_name ${JSON.stringify(input.deckyName.slice(0, 80))} must match ${DECKY_NAME_PATTERN.source}`;
  }
  if (input.operation === undefined) {
    return "operation must be OPERATION_DEPLOY or OPERATION_MUTATE";
  }
  const status = input.status;
  if (status !== "running" && status !== "succeeded" && status !== "failed") {
    return "status must be STATUS_RUNNING, STATUS_SUCCEEDED or STATUS_FAILED";
  }
  if (input.error !== undefined && status !== "failed") {
    return "error may be set only with STATUS_FAILED";
  }
  if (input.error?.includes("\0")) {
    return "error must not contain NUL characters";
  }
  if (input.lifecycleId !== undefined && !isUuid(input.lifecycleId)) {
    return `lifecycle_id ${JSON.stringify(input.lifecycleId.slice(0, 80))} is not a UUID`;
  }
  if (input.completedAt && !isTimestampInRange(input.completedAt)) {
    return "completed_at must be a time from 0001-01-01 to 9999-12-31 UTC";
  }
  return {
    deckyName: input.deckyName,
    operation: input.operation,
    status,
    error: input.error === undefined ? null : cutError(input.error),
    completedAt: input.completedAt ?? null,
    lifecycleId: input.lifecycleId?.toLowerCase() ?? null,
  };
}

/** What a delta found and what it would do to that row. */
export type DeltaDecision =
  | { readonly result: "apply" }
  | {
      readonly result: Exclude<DeltaResult, "applied">;
      readonly detail: string;
    };

/**
 * Decides what `delta` does to `row`, the row it pivots onto, sent by
 * `hostUuid`. Pure: the caller applies an "apply" with a conditional update.
 */
export function decideDelta(
  delta: Delta,
  row: LifecycleRow | undefined,
  hostUuid: string,
): DeltaDecision {
  if (!row) {
    return {
      result: "no_open_row",
      detail: delta.lifecycleId
        ? `lifecycle row ${delta.lifecycleId} does not exist`
        : `host ${hostUuid} has no open ${delta.operation} row for decky ${delta.deckyName}`,
    };
  }
  if (row.hostUuid !== hostUuid) {
    return {
      result: "rejected",
      detail: `lifecycle row ${row.id} does not belong to host ${hostUuid}`,
    };
  }
  if (row.deckyName !== delta.deckyName || row.operation !== delta.operation) {
    return {
      result: "rejected",
      detail: `lifecycle row ${row.id} is ${row.operation} of decky ${row.deckyName}, not ${delta.operation} of ${delta.deckyName}`,
    };
  }
  if (isTerminal(row.status)) {
    return row.status === delta.status
      ? {
          result: "duplicate",
          detail: `lifecycle row ${row.id} is already ${row.status}`,
        }
      : {
          result: "already_terminal",
          detail: `lifecycle row ${row.id} is ${row.status} and cannot become ${delta.status}`,
        };
  }
  if (delta.completedAt && delta.completedAt < row.startedAt) {
    return {
      result: "stale",
      detail: `completed_at ${delta.completedAt.toISOString()} is before lifecycle row ${row.id} started at ${row.startedAt.toISOString()}`,
    };
  }
  if (row.status === delta.status) {
    return {
      result: "duplicate",
      detail: `lifecycle row ${row.id} is already ${row.status}`,
    };
  }
  return { result: "apply" };
}
