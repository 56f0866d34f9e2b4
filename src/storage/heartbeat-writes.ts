import type { Delta, DeltaResult } from "../domain/delta.js";
import { decideDelta } from "../domain/delta.js";
import { LifecycleError } from "../domain/errors.js";
import type { LifecycleRow } from "../domain/lifecycle.js";
import { moveRow } from "./lifecycle-writes.js";
import { query, toLifecycleRow } from "./sql.js";
import type { WriteTransaction } from "./write-transaction.js";

/** What applying one delta did. */
export interface DeltaOutcome {
  readonly result: DeltaResult;
  readonly lifecycleId: string;
  readonly detail: string;
}

/**
 * Records that `hostUuid` is alive, running `agentVersion`: a new, enrolled
 * or lost host becomes alive and is no longer lost. A decommissioned host
 * stays retired: its heartbeat is refused before anything is applied.
 */
export async function recordHeartbeat(
  tx: WriteTransaction,
  hostUuid: string,
  agentVersion: string,
): Promise<void> {
  const recorded = await query(
    tx.em,
    `insert into worker_host
       (host_uuid, state, agent_version, first_seen_at, last_heartbeat_at)
     select ?::uuid, 'alive', ?, clock.at, clock.at
     from (select clock_timestamp() as at) clock
     on conflict (host_uuid) do update
       set state = 'alive',
           agent_version = excluded.agent_version,
           first_seen_at = coalesce(worker_host.first_seen_at,
                                    excluded.first_seen_at),
           last_heartbeat_at = excluded.last_heartbeat_at,
           lost_at = null
       where worker_host.state <> 'decommissioned'
     returning host_uuid`,
    [hostUuid, agentVersion],
  );
  if (recorded.length === 0) {
    throw new LifecycleError(
      "permission_denied",
      `host ${hostUuid} was decommissioned; its calls are refused`,
    );
  }
}

/**
 * Pivots `delta` onto its row and moves it if the rules allow. Takes the
 * revision lock first, so the row read here is the row the update sees.
 */
export async function applyDelta(
  tx: WriteTransaction,
  hostUuid: string,
  delta: Delta,
): Promise<DeltaOutcome> {
  await tx.nextRevision();
  const row = await pivot(tx, hostUuid, delta);
  const decision = decideDelta(delta, row, hostUuid);
  const lifecycleId = row?.id ?? delta.lifecycleId ?? "";
  if (decision.result !== "apply") {
    return { result: decision.result, lifecycleId, detail: decision.detail };
  }
  const moved = await moveRow(tx, row!.id, {
    status: delta.status,
    error: delta.error,
    completedAt: delta.completedAt,
  });
  if (!moved) {
    throw new Error(
      `lifecycle row ${row!.id} changed while its revision lock was held`,
    );
  }
  return { result: "applied", lifecycleId, detail: "" };
}

/**
 * The row a delta names: by `lifecycle_id`, else the most recently started
 * open row of the host for the decky and operation, else the most recent
 * closed one (so a replayed terminal delta is a DUPLICATE, not a miss).
 */
async function pivot(
  tx: WriteTransaction,
  hostUuid: string,
  delta: Delta,
): Promise<LifecycleRow | undefined> {
  const [row] = delta.lifecycleId
    ? await query(tx.em, "select * from decky_lifecycle where id = ?", [
        delta.lifecycleId,
      ])
    : await query(
        tx.em,
        `select * from decky_lifecycle
         where host_uuid = ? and decky_name = ? and operation = ?
         order by status in ('pending', 'running') desc, started_at desc, id desc
         limit 1`,
        [hostUuid, delta.deckyName, delta.operation],
      );
  return row && toLifecycleRow(row);
}
