import type { EntityManager } from "@mikro-orm/postgresql";
import { query } from "./sql.js";

/**
 * Drops logged changes older than `olderThanMs` and Accept keys older than
 * `keysOlderThanMs`, keeping the newest change so that the current revision
 * stays resumable. Returns the newest revision the log no longer holds.
 */
export async function pruneHistory(
  em: EntityManager,
  olderThanMs: number,
  keysOlderThanMs: number,
): Promise<bigint> {
  return em.transactional(async (txEm) => {
    await query(
      txEm,
      "delete from accept_request where created_at < clock_timestamp() - ? * interval '1 millisecond'",
      [keysOlderThanMs],
    );
    const [pruned] = await query(
      txEm,
      `with dropped as (
         delete from lifecycle_change
         where updated_at < clock_timestamp() - ? * interval '1 millisecond'
           and revision < (select max(revision) from lifecycle_change)
         returning revision)
       update lifecycle_revision
       set pruned_through = greatest(pruned_through,
         coalesce((select max(revision) from dropped), 0))
       where id = 1
       returning pruned_through`,
      [olderThanMs],
    );
    return BigInt(pruned!.pruned_through as string);
  });
}
