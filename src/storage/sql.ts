import type { EntityManager, Knex } from "@mikro-orm/postgresql";
import type {
  LifecycleChange,
  LifecycleRow,
  Operation,
  Status,
} from "../domain/lifecycle.js";
import { callSignalOf, runCancellable } from "./query-cancellation.js";

/** A value bound to a statement placeholder. */
export type SqlValue = Knex.Value;

/** A row as node-postgres returns it. */
export type SqlRow = Record<string, unknown>;

/**
 * Runs one parameterised statement (`?` placeholders) on the entity
 * manager's connection, inside its transaction when it has one. When the
 * entity manager serves a call, the statement does not start once the call
 * has ended, and is cancelled when the call ends while it runs: see
 * `runCancellable`.
 */
export async function query(
  em: EntityManager,
  text: string,
  bindings: readonly SqlValue[] = [],
): Promise<SqlRow[]> {
  const transaction = em.getTransactionContext<Knex.Transaction>();
  const knex = transaction ?? em.getKnex();
  const signal = callSignalOf(em);
  const result = (await (signal
    ? runCancellable(knex.client, signal, (connection) =>
        knex.raw(text, bindings).connection(connection),
      )
    : knex.raw(text, bindings))) as { rows: SqlRow[] };
  return result.rows;
}

/** The columns of `decky_lifecycle` in the order `lifecycle_change` repeats them. */
export const ROW_COLUMNS =
  "decky_name, host_uuid, operation, status, error, started_at, updated_at, completed_at";

const PG_TIMESTAMP =
  /^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2}(?:\.\d+)?)([+-]\d{2})(?::?(\d{2}))?$/;

/**
 * A `timestamptz` as a Date. The ORM leaves timestamps as PostgreSQL's text,
 * such as `2026-12-03 16:46:07.704+00`.
 */
export function toDate(value: unknown): Date {
  if (value instanceof Date) return value;
  const match = PG_TIMESTAMP.exec(String(value));
  if (!match) throw new Error(`unexpected timestamp ${String(value)}`);
  const [, day, time, hours, minutes] = match;
  return new Date(`${day}T${time}${hours}:${minutes ?? "00"}`);
}

/** Like toDate, for a column that may be null. */
export function toOptionalDate(value: unknown): Date | null {
  return value === null || value === undefined ? null : toDate(value);
}

/** Maps a `decky_lifecycle` row. */
export function toLifecycleRow(row: SqlRow): LifecycleRow {
  return {
    id: row.id as string,
    deckyName: row.decky_name as string,
    hostUuid: (row.host_uuid as string | null) ?? null,
    operation: row.operation as Operation,
    status: row.status as Status,
    error: (row.error as string | null) ?? null,
    startedAt: toDate(row.started_at),
    updatedAt: toDate(row.updated_at),
    completedAt: toOptionalDate(row.completed_at),
    revision: BigInt(row.revision as string),
  };
}

/** Maps a `lifecycle_change` row. */
export function toLifecycleChange(row: SqlRow): LifecycleChange {
  return {
    revision: BigInt(row.revision as string),
    row: toLifecycleRow({ ...row, id: row.lifecycle_id }),
  };
}
