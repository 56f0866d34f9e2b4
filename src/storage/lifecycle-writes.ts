import { randomUUID } from "node:crypto";
import { LifecycleError } from "../domain/errors.js";
import {
  isTerminal,
  type LifecycleRow,
  type Operation,
  type Status,
  sourcesOf,
} from "../domain/lifecycle.js";
import { query, toLifecycleRow } from "./sql.js";
import type { WriteTransaction } from "./write-transaction.js";

/** One decky to create a PENDING row for. */
export interface NewRow {
  readonly deckyName: string;
  readonly hostUuid: string | null;
}

/**
 * Creates one PENDING row per target, in target order. The partial unique
 * index refuses a second open row for a decky and operation; a target that
 * has one fails the whole call, naming the open row.
 */
export async function createRows(
  tx: WriteTransaction,
  operation: Operation,
  targets: readonly NewRow[],
): Promise<LifecycleRow[]> {
  const ids = targets.map(() => randomUUID());
  // One clock reading per row for started_at and updated_at: two readings
  // now and then round to different milliseconds, and they must be equal.
  const first = await tx.nextRevision();
  const changes = await tx.change(
    `insert into decky_lifecycle
       (id, decky_name, host_uuid, operation, status, started_at, updated_at, revision)
     select t.id, t.decky_name, t.host_uuid, ?, 'pending', t.at, t.at,
            ?::bigint + t.position - 1
     from (
       select u.*, clock_timestamp() as at
       from unnest(?::uuid[], ?::text[], ?::uuid[]) with ordinality
         as u(id, decky_name, host_uuid, position)
     ) t
     order by t.position
     on conflict (decky_name, operation) where status in ('pending', 'running')
       do nothing
     returning *`,
    [
      operation,
      first.toString(),
      ids,
      targets.map((target) => target.deckyName),
      targets.map((target) => target.hostUuid) as string[],
    ],
  );
  if (changes.length < targets.length) {
    const created = new Set(changes.map((change) => change.row.deckyName));
    const blocked = targets.find((target) => !created.has(target.deckyName))!;
    const open = await openRowOf(tx, blocked.deckyName, operation);
    throw new LifecycleError(
      "failed_precondition",
      `decky ${blocked.deckyName} already has an open ${operation} row ${open?.id ?? "(just closed)"}; wait for it to finish`,
    );
  }
  const byId = new Map(changes.map((change) => [change.row.id, change.row]));
  return ids.map((id) => byId.get(id)!);
}

async function openRowOf(
  tx: WriteTransaction,
  deckyName: string,
  operation: Operation,
): Promise<LifecycleRow | undefined> {
  const [row] = await query(
    tx.em,
    `select * from decky_lifecycle
     where decky_name = ? and operation = ? and status in ('pending', 'running')`,
    [deckyName, operation],
  );
  return row && toLifecycleRow(row);
}

/** A move of one row to a new status. */
export interface Move {
  readonly status: Status;
  /** Error text of a FAILED row, already cut to length. */
  readonly error: string | null;
  /**
   * When the work completed, for terminal moves; if unset, the moment of the
   * move, the same instant as the row's new updated_at.
   */
  readonly completedAt: Date | null;
}

/**
 * Moves row `id` if the state machine allows it from the row's current
 * status, in one conditional update; returns the moved row, or undefined if
 * the row was not in a status it may move from.
 */
export async function moveRow(
  tx: WriteTransaction,
  id: string,
  move: Move,
): Promise<LifecycleRow | undefined> {
  const revision = await tx.nextRevision();
  const [change] = await tx.change(
    `update decky_lifecycle
     set status = ?, error = ?, updated_at = clock.at,
         completed_at = case when ? then coalesce(?::timestamptz, clock.at) end,
         revision = ?
     from (select clock_timestamp() as at) clock
     where id = ? and status = any(?::text[])
     returning decky_lifecycle.*`,
    [
      move.status,
      move.error,
      isTerminal(move.status),
      move.completedAt,
      revision.toString(),
      id,
      [...sourcesOf(move.status)],
    ],
  );
  return change?.row;
}

/** Reads one row, locking nothing. */
export async function findRow(
  tx: WriteTransaction,
  id: string,
): Promise<LifecycleRow | undefined> {
  const [row] = await query(
    tx.em,
    "select * from decky_lifecycle where id = ?",
    [id],
  );
  return row && toLifecycleRow(row);
}
