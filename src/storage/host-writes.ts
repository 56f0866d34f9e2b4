import type { EntityManager } from "@mikro-orm/postgresql";
import type { WorkerHost } from "../domain/host.js";
import { toWorkerHost } from "./host-reads.js";
import { query } from "./sql.js";

/**
 * Marks every alive host whose last heartbeat is older than `lostAfterMs`
 * as lost, in one conditional update, and returns the hosts it marked. A
 * heartbeat that commits first keeps its host alive.
 */
export async function markLostHosts(
  em: EntityManager,
  lostAfterMs: number,
): Promise<WorkerHost[]> {
  const rows = await query(
    em,
    `update worker_host
     set state = 'lost', lost_at = clock.at
     from (select clock_timestamp() as at) clock
     where state = 'alive'
       and last_heartbeat_at < clock.at - ? * interval '1 millisecond'
     returning worker_host.*`,
    [lostAfterMs],
  );
  return rows.map(toWorkerHost);
}
