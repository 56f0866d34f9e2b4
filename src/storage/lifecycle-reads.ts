import { IsolationLevel } from "@mikro-orm/core";
import type { EntityManager } from "@mikro-orm/postgresql";
import type { LifecycleChange, LifecycleRow } from "../domain/lifecycle.js";
import type { RowFilter } from "../domain/row-filter.js";
import { callSignalOf, sameCall } from "./query-cancellation.js";
import {
  query,
  type SqlValue,
  toLifecycleChange,
  toLifecycleRow,
} from "./sql.js";

/** Where a page starts: after the row with this `started_at` and `id`. */
export interface PageCursor {
  readonly startedAt: Date;
  readonly id: string;
}

function whereFilter(filter: RowFilter): { sql: string; bindings: SqlValue[] } {
  const parts: string[] = [];
  const bindings: SqlValue[] = [];
  const add = (sql: string, value: SqlValue) => {
    parts.push(sql);
    bindings.push(value);
  };
  if (filter.ids?.length) add("id = any(?::uuid[])", [...filter.ids]);
  if (filter.deckyName !== undefined) add("decky_name = ?", filter.deckyName);
  if (filter.hostUuid !== undefined) add("host_uuid = ?", filter.hostUuid);
  if (filter.operation !== undefined) add("operation = ?", filter.operation);
  if (filter.statuses?.length)
    add("status = any(?::text[])", [...filter.statuses]);
  return { sql: parts.length ? parts.join(" and ") : "true", bindings };
}

/** Reads up to `limit` rows matching `filter` after `cursor`, by started_at, id. */
export async function listRows(
  em: EntityManager,
  filter: RowFilter,
  cursor: PageCursor | undefined,
  limit: number,
): Promise<LifecycleRow[]> {
  const where = whereFilter(filter);
  const after = cursor ? " and (started_at, id) > (?, ?::uuid)" : "";
  const rows = await query(
    em,
    `select * from decky_lifecycle where ${where.sql}${after}
     order by started_at, id limit ?`,
    [
      ...where.bindings,
      ...(cursor ? [cursor.startedAt, cursor.id] : []),
      limit,
    ],
  );
  return rows.map(toLifecycleRow);
}

/** Rows as they were at one revision. */
export interface Snapshot {
  readonly revision: bigint;
  readonly rows: LifecycleRow[];
}

/**
 * Reads the rows matching `filter` and the revision they are at, in one
 * repeatable-read transaction, so the rows are exactly the state at that
 * revision. The transaction serves the same call as `em`.
 */
export async function readSnapshot(
  em: EntityManager,
  filter: RowFilter,
): Promise<Snapshot> {
  callSignalOf(em)?.throwIfAborted();
  return em.transactional(
    async (fork) => {
      const txEm = sameCall(fork, em);
      const [counter] = await query(
        txEm,
        "select value from lifecycle_revision where id = 1",
      );
      const where = whereFilter(filter);
      const rows = await query(
        txEm,
        `select * from decky_lifecycle where ${where.sql} order by started_at, id`,
        where.bindings,
      );
      return {
        revision: BigInt(counter!.value as string),
        rows: rows.map(toLifecycleRow),
      };
    },
    { isolationLevel: IsolationLevel.REPEATABLE_READ, readOnly: true },
  );
}

/** Reads up to `limit` logged changes after `revision`, oldest first. */
export async function readChangesAfter(
  em: EntityManager,
  revision: bigint,
  limit: number,
): Promise<LifecycleChange[]> {
  const rows = await query(
    em,
    "select * from lifecycle_change where revision > ? order by revision limit ?",
    [revision.toString(), limit],
  );
  return rows.map(toLifecycleChange);
}

/** The newest revision handed out, and the newest one the log dropped. */
export interface RevisionBounds {
  readonly current: bigint;
  readonly prunedThrough: bigint;
}

export async function readRevisionBounds(
  em: EntityManager,
): Promise<RevisionBounds> {
  const [counter] = await query(
    em,
    "select value, pruned_through from lifecycle_revision where id = 1",
  );
  return {
    current: BigInt(counter!.value as string),
    prunedThrough: BigInt(counter!.pruned_through as string),
  };
}
