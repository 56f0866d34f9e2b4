import { Code, ConnectError } from "@connectrpc/connect";
import type { EntityManager } from "@mikro-orm/postgresql";
import type { RowFilter } from "../domain/row-filter.js";
import type { Caller } from "../rpc/services.js";
import { listRows } from "../storage/lifecycle-reads.js";

/**
 * A worker reads only its own host's rows. Its List and Watch filters get
 * `host_uuid` set to its host: a request that names another host, or ids of
 * rows of another host (or of master-resident rows), is PERMISSION_DENIED.
 * Other callers' filters pass unchanged.
 */
export async function confineToCallerHost(
  em: EntityManager,
  caller: Caller,
  filter: RowFilter,
): Promise<RowFilter> {
  const own = caller.role === "worker" ? caller.hostUuid : undefined;
  if (own === undefined) return filter;
  if (filter.hostUuid !== undefined && filter.hostUuid !== own) {
    throw new ConnectError(
      `host_uuid ${filter.hostUuid} is not this worker's host ${own}; a worker reads only its own host's rows`,
      Code.PermissionDenied,
    );
  }
  const ids = filter.ids ?? [];
  if (ids.length > 0) {
    const rows = await listRows(em, { ids }, undefined, ids.length);
    const foreign = rows.find((row) => row.hostUuid !== own);
    if (foreign) {
      throw new ConnectError(
        `lifecycle row ${foreign.id} does not belong to host ${own}; a worker reads only its own host's rows`,
        Code.PermissionDenied,
      );
    }
  }
  return { ...filter, hostUuid: own };
}

/**
 * A worker heartbeats only as its own host: any other host_uuid is
 * PERMISSION_DENIED, before anything of the stream is applied.
 */
export function checkHeartbeatHost(caller: Caller, hostUuid: string): void {
  if (caller.role === "worker" && caller.hostUuid !== hostUuid) {
    throw new ConnectError(
      `host_uuid ${hostUuid} is not this worker's host ${caller.hostUuid}; a worker heartbeats only as its own host`,
      Code.PermissionDenied,
    );
  }
}
