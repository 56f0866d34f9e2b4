import type { EntityManager } from "@mikro-orm/postgresql";
import type { HostState, WorkerHost } from "../domain/host.js";
import { query, type SqlRow, toOptionalDate } from "./sql.js";

/** Maps a `worker_host` row. */
export function toWorkerHost(row: SqlRow): WorkerHost {
  return {
    hostUuid: row.host_uuid as string,
    state: row.state as HostState,
    name: (row.name as string | null) ?? null,
    agentVersion: (row.agent_version as string | null) ?? null,
    firstHeartbeatAt: toOptionalDate(row.first_seen_at),
    lastHeartbeatAt: toOptionalDate(row.last_heartbeat_at),
    lostAt: toOptionalDate(row.lost_at),
    enrolledAt: toOptionalDate(row.enrolled_at),
    decommissionedAt: toOptionalDate(row.decommissioned_at),
    certificateFingerprint:
      (row.certificate_fingerprint as string | null) ?? null,
  };
}

/**
 * Reads up to `limit` hosts in `states` (every state when empty) whose
 * host_uuid comes after `afterHostUuid`, ordered by host_uuid.
 */
export async function listHosts(
  em: EntityManager,
  states: readonly HostState[],
  afterHostUuid: string | undefined,
  limit: number,
): Promise<WorkerHost[]> {
  const rows = await query(
    em,
    `select * from worker_host
     where (cardinality(?::text[]) = 0 or state = any(?::text[]))
       and (?::uuid is null or host_uuid > ?::uuid)
     order by host_uuid
     limit ?`,
    [
      [...states],
      [...states],
      afterHostUuid ?? null,
      afterHostUuid ?? null,
      limit,
    ],
  );
  return rows.map(toWorkerHost);
}

/** The state of the host `hostUuid`; undefined if there is no such host. */
export async function findHostState(
  em: EntityManager,
  hostUuid: string,
): Promise<HostState | undefined> {
  const [row] = await query(
    em,
    "select state from worker_host where host_uuid = ?",
    [hostUuid],
  );
  return row?.state as HostState | undefined;
}
