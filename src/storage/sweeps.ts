import type { LifecycleChange } from "../domain/lifecycle.js";
import { staleRowError } from "../domain/sweep.js";
import type { SqlValue } from "./sql.js";
import type { WriteTransaction } from "./write-transaction.js";

/**
 * Fails up to `limit` rows picked by `picked`, a lateral subquery that may
 * use `clock.at` and must return `id`, `error` and `position` (1, 2, … in
 * the order the rows take revisions). The update checks again that each row
 * is open, so a row that another sweeper or a worker closed first is left
 * alone.
 */
async function failPicked(
  tx: WriteTransaction,
  picked: string,
  bindings: readonly SqlValue[],
): Promise<LifecycleChange[]> {
  const first = await tx.nextRevision();
  const changes = await tx.change(
    `update decky_lifecycle
     set status = 'failed', error = picked.error, updated_at = clock.at,
         completed_at = clock.at, revision = ?::bigint + picked.position - 1
     from (select clock_timestamp() as at) clock
     cross join lateral (${picked}) picked
     where decky_lifecycle.id = picked.id
       and decky_lifecycle.status in ('pending', 'running')
     returning decky_lifecycle.*`,
    [first.toString(), ...bindings],
  );
  // Writers hold the revision lock from before they read until they commit,
  // so nothing picked can close in between; if it did, revisions would have
  // a hole, and the transaction must not commit.
  const last = changes.at(-1);
  if (last && last.revision !== first + BigInt(changes.length) - 1n) {
    throw new Error("a swept lifecycle row changed under the revision lock");
  }
  return changes;
}

/**
 * Fails up to `limit` open rows that have not changed for `staleAfterMs`,
 * oldest first, with an error saying that the runner was lost.
 */
export async function failStaleRows(
  tx: WriteTransaction,
  staleAfterMs: number,
  limit: number,
): Promise<LifecycleChange[]> {
  return failPicked(
    tx,
    `select id, ?::text as error,
            row_number() over (order by updated_at, id) as position
     from decky_lifecycle
     where status in ('pending', 'running')
       and updated_at < clock.at - ? * interval '1 millisecond'
     order by updated_at, id
     limit ?`,
    [staleRowError(staleAfterMs), staleAfterMs, limit],
  );
}

/**
 * Fails up to `limit` open rows of hosts that have been lost for longer
 * than `graceMs`, with an error naming the host and its last heartbeat.
 */
export async function failRowsOfLostHosts(
  tx: WriteTransaction,
  graceMs: number,
  limit: number,
): Promise<LifecycleChange[]> {
  return failPicked(
    tx,
    `select lifecycle.id,
            'host ' || host.host_uuid || ' lost: no heartbeat since '
              || to_char(host.last_heartbeat_at at time zone 'UTC',
                         'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as error,
            row_number() over (order by lifecycle.started_at, lifecycle.id)
              as position
     from decky_lifecycle lifecycle
     join worker_host host on host.host_uuid = lifecycle.host_uuid
     where lifecycle.status in ('pending', 'running')
       and host.state = 'lost'
       and host.lost_at < clock.at - ? * interval '1 millisecond'
     order by lifecycle.started_at, lifecycle.id
     limit ?`,
    [graceMs, limit],
  );
}
