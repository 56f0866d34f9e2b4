import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import {
  type Lifecycle,
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";

/** Names hosts for people: "host-1" for a UUID, "master" for no host. */
export type HostLabel = (hostUuid: string | undefined) => string;

/** Local wall-clock time with milliseconds, as in logs: 16:51:47.981. */
function clock(timestamp: Timestamp | undefined): string {
  if (timestamp === undefined) return "--:--:--.---";
  const date = timestampDate(timestamp);
  const ms = String(date.getMilliseconds()).padStart(3, "0");
  return `${date.toTimeString().slice(0, 8)}.${ms}`;
}

const operationName = (operation: Operation) =>
  Operation[operation].toLowerCase();

/** One line for a row as a watcher saw it change. */
export function changeLine(row: Lifecycle, hostLabel: HostLabel): string {
  const parts = [
    clock(row.updatedAt),
    row.deckyName.padEnd(8),
    operationName(row.operation).padEnd(6),
    Status[row.status].padEnd(9),
    `rev ${row.revision}`.padEnd(7),
    `on ${hostLabel(row.hostUuid)}`,
  ];
  if (row.error !== undefined) parts.push(`error: ${row.error}`);
  return parts.join("  ");
}

/** How long a terminal row took from start to completion. */
function took(row: Lifecycle): string {
  if (row.startedAt === undefined || row.completedAt === undefined) return "";
  const ms =
    timestampDate(row.completedAt).getTime() -
    timestampDate(row.startedAt).getTime();
  return `${(ms / 1000).toFixed(1)} s`;
}

/** A table of rows with one column per field, widths fitted to the content. */
export function summaryTable(
  rows: readonly Lifecycle[],
  hostLabel: HostLabel,
): string {
  const table = [
    ["DECKY", "HOST", "OPERATION", "STATUS", "REVISION", "TOOK", "ERROR"],
    ...rows.map((row) => [
      row.deckyName,
      hostLabel(row.hostUuid),
      operationName(row.operation),
      Status[row.status],
      String(row.revision),
      took(row),
      row.error ?? "",
    ]),
  ];
  const widths = table[0]!.map((_, column) =>
    Math.max(...table.map((cells) => cells[column]!.length)),
  );
  return table
    .map((cells) =>
      cells
        .map((cell, column) => cell.padEnd(widths[column]!))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}
