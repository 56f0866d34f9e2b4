import type { LifecycleRow, Operation, Status } from "./lifecycle.js";

/** Which rows a List or Watch selects; unset parts match every row. */
export interface RowFilter {
  readonly ids?: readonly string[];
  readonly deckyName?: string;
  readonly hostUuid?: string;
  readonly operation?: Operation;
  readonly statuses?: readonly Status[];
}

/** Whether `row` is selected by `filter`: every set part must match. */
export function matchesFilter(filter: RowFilter, row: LifecycleRow): boolean {
  return (
    (!filter.ids?.length || filter.ids.includes(row.id)) &&
    (filter.deckyName === undefined || filter.deckyName === row.deckyName) &&
    (filter.hostUuid === undefined || filter.hostUuid === row.hostUuid) &&
    (filter.operation === undefined || filter.operation === row.operation) &&
    (!filter.statuses?.length || filter.statuses.includes(row.status))
  );
}
