/** Kinds of work a lifecycle row tracks. */
export const OPERATIONS = ["deploy", "mutate"] as const;
export type Operation = (typeof OPERATIONS)[number];

/** Where a lifecycle row is in its state machine. */
export const STATUSES = ["pending", "running", "succeeded", "failed"] as const;
export type Status = (typeof STATUSES)[number];

/** Statuses of an open row: one that may still change. */
export const OPEN_STATUSES: readonly Status[] = ["pending", "running"];

/** One attempt of one operation on one decky. */
export interface LifecycleRow {
  readonly id: string;
  readonly deckyName: string;
  readonly hostUuid: string | null;
  readonly operation: Operation;
  readonly status: Status;
  readonly error: string | null;
  readonly startedAt: Date;
  readonly updatedAt: Date;
  readonly completedAt: Date | null;
  /** Revision of the row's latest change. */
  readonly revision: bigint;
}

/** One committed change: the row as it was right after the change. */
export interface LifecycleChange {
  readonly revision: bigint;
  readonly row: LifecycleRow;
}

/** Longest error text a row keeps; longer texts are cut. */
export const MAX_ERROR_LENGTH = 2000;

export const DECKY_NAME_PATTERN = /^[a-z0-9-]{1,64}$/;

const UUID_PATTERN =
  /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether `value` is a UUID in its canonical text form. */
export function isUuid(value: string): boolean {
  return UUID_PATTERN.test(value);
}

export function isTerminal(status: Status): boolean {
  return status === "succeeded" || status === "failed";
}

/** The statuses a row may move to `target` from. */
export function sourcesOf(target: Status): readonly Status[] {
  switch (target) {
    case "pending":
      return [];
    case "running":
      return ["pending"];
    case "succeeded":
    case "failed":
      return OPEN_STATUSES;
  }
}

/** Whether the state machine allows moving a row from `from` to `to`. */
export function canMove(from: Status, to: Status): boolean {
  return sourcesOf(to).includes(from);
}

/** Cuts error text to the length a row keeps, counting code points. */
export function cutError(text: string): string {
  const points = Array.from(text);
  return points.length <= MAX_ERROR_LENGTH
    ? text
    : points.slice(0, MAX_ERROR_LENGTH).join("");
}
