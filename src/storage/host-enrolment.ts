import type { EntityManager } from "@mikro-orm/postgresql";
import type { IssuedToken } from "../auth/token.js";
import { LifecycleError } from "../domain/errors.js";
import type { WorkerHost } from "../domain/host.js";
import type { LifecycleChange } from "../domain/lifecycle.js";
import { type ApiToken, insertToken, revokeHostTokens } from "./api-tokens.js";
import { toWorkerHost } from "./host-reads.js";
import { query } from "./sql.js";
import type { WriteTransaction } from "./write-transaction.js";

/** A host to enrol. */
export interface Enrolment {
  readonly hostUuid: string;
  readonly name: string;
  readonly certificateFingerprint: string | null;
}

/** A host and the worker token it was just given. */
export interface HostWithToken {
  readonly host: WorkerHost;
  readonly token: ApiToken;
}

const FINGERPRINT_UNIQUE = "worker_host_certificate_fingerprint_unique";

async function refuseFingerprintPinnedElsewhere(
  em: EntityManager,
  hostUuid: string,
  fingerprint: string | null,
): Promise<void> {
  if (fingerprint === null) return;
  const [other] = await query(
    em,
    `select host_uuid from worker_host
     where certificate_fingerprint = ? and host_uuid <> ?`,
    [fingerprint, hostUuid],
  );
  if (other) {
    throw new LifecycleError(
      "already_exists",
      `certificate_fingerprint is already pinned to host ${other.host_uuid as string}`,
    );
  }
}

/**
 * Enrols a host and stores its first worker token, in one transaction. A
 * host known only from its heartbeats is enrolled as it stands; a host
 * enrolled before is ALREADY_EXISTS, a decommissioned one
 * FAILED_PRECONDITION.
 */
export async function enrolHost(
  em: EntityManager,
  enrolment: Enrolment,
  issued: IssuedToken,
): Promise<HostWithToken> {
  return em.transactional(async (tx) => {
    const { hostUuid, name, certificateFingerprint } = enrolment;
    await refuseFingerprintPinnedElsewhere(
      tx,
      hostUuid,
      certificateFingerprint,
    );
    let rows: Awaited<ReturnType<typeof query>>;
    try {
      rows = await query(
        tx,
        `insert into worker_host
           (host_uuid, state, name, enrolled_at, certificate_fingerprint)
         values (?, 'enrolled', ?, clock_timestamp(), ?)
         on conflict (host_uuid) do update
           set name = excluded.name,
               enrolled_at = excluded.enrolled_at,
               certificate_fingerprint = excluded.certificate_fingerprint
           where worker_host.enrolled_at is null
             and worker_host.state <> 'decommissioned'
         returning *`,
        [hostUuid, name, certificateFingerprint],
      );
    } catch (error) {
      // Another enrolment pinned the same certificate after the check.
      if (
        (error as { constraint?: unknown }).constraint === FINGERPRINT_UNIQUE
      ) {
        throw new LifecycleError(
          "already_exists",
          "certificate_fingerprint is already pinned to another host",
        );
      }
      throw error;
    }
    const [row] = rows;
    if (!row) {
      const [existing] = await query(
        tx,
        "select state from worker_host where host_uuid = ?",
        [hostUuid],
      );
      if (existing?.state === "decommissioned") {
        throw new LifecycleError(
          "failed_precondition",
          `host ${hostUuid} was decommissioned and cannot be enrolled again`,
        );
      }
      throw new LifecycleError(
        "already_exists",
        `host ${hostUuid} is already enrolled; RotateHostToken gives it a new token`,
      );
    }
    const token = await insertToken(tx, {
      id: issued.id,
      name,
      role: "worker",
      hostUuid,
      secretHash: issued.secretHash,
    });
    return { host: toWorkerHost(row), token };
  });
}

/** What rotating a host's token did. */
export interface Rotation extends HostWithToken {
  /** The host's tokens that were in force until now. */
  readonly revokedTokenIds: string[];
}

/**
 * Revokes every worker token of an enrolled host and stores a new one, in
 * one transaction.
 */
export async function rotateHostToken(
  em: EntityManager,
  hostUuid: string,
  issued: IssuedToken,
): Promise<Rotation> {
  return em.transactional(async (tx) => {
    const [row] = await query(
      tx,
      "select * from worker_host where host_uuid = ? for update",
      [hostUuid],
    );
    if (!row) {
      throw new LifecycleError("not_found", `host ${hostUuid} does not exist`);
    }
    const host = toWorkerHost(row);
    if (host.state === "decommissioned") {
      throw new LifecycleError(
        "failed_precondition",
        `host ${hostUuid} was decommissioned; it gets no new token`,
      );
    }
    if (host.enrolledAt === null) {
      throw new LifecycleError(
        "failed_precondition",
        `host ${hostUuid} is not enrolled; enrol it with EnrollHost`,
      );
    }
    const revokedTokenIds = await revokeHostTokens(tx, hostUuid);
    const token = await insertToken(tx, {
      id: issued.id,
      name: host.name ?? hostUuid,
      role: "worker",
      hostUuid,
      secretHash: issued.secretHash,
    });
    return { host, token, revokedTokenIds };
  });
}

/** The error text of the open rows of a decommissioned host. */
export function decommissionedRowError(hostUuid: string): string {
  return `host ${hostUuid} was decommissioned`;
}

/** What decommissioning a host did. */
export interface Decommissioning {
  readonly host: WorkerHost;
  readonly revokedTokenIds: string[];
  /** The changes that failed the host's open rows. */
  readonly failedRows: LifecycleChange[];
}

/**
 * Retires a host for good: marks it decommissioned, revokes its tokens and
 * fails its open rows with an error that says so. Locks the host before
 * the revision counter, as a heartbeat does, so a heartbeat message either
 * commits first or finds the host decommissioned. Decommissioning a
 * decommissioned host fails any row accepted for it since.
 */
export async function decommissionHost(
  tx: WriteTransaction,
  hostUuid: string,
): Promise<Decommissioning> {
  const [row] = await query(
    tx.em,
    `update worker_host
     set state = 'decommissioned',
         decommissioned_at = coalesce(decommissioned_at, clock_timestamp())
     where host_uuid = ?
     returning *`,
    [hostUuid],
  );
  if (!row) {
    throw new LifecycleError("not_found", `host ${hostUuid} does not exist`);
  }
  const revokedTokenIds = await revokeHostTokens(tx.em, hostUuid);
  const first = await tx.nextRevision();
  const failedRows = await tx.change(
    `update decky_lifecycle
     set status = 'failed', error = ?, updated_at = clock.at,
         completed_at = clock.at, revision = ?::bigint + open.position - 1
     from (select clock_timestamp() as at) clock
     cross join lateral (
       select id, row_number() over (order by started_at, id) as position
       from decky_lifecycle
       where host_uuid = ? and status in ('pending', 'running')
     ) open
     where decky_lifecycle.id = open.id
       and decky_lifecycle.status in ('pending', 'running')
     returning decky_lifecycle.*`,
    [decommissionedRowError(hostUuid), first.toString(), hostUuid],
  );
  return { host: toWorkerHost(row), revokedTokenIds, failedRows };
}

/**
 * Refuses work for a decommissioned host: FAILED_PRECONDITION naming the
 * first target whose host is retired. Holds a share lock on each target's
 * host until the transaction ends, so no host is decommissioned between
 * this check and the rows being created; like a heartbeat and a
 * decommission, it locks hosts before the revision counter.
 */
export async function refuseDecommissionedHosts(
  em: EntityManager,
  targets: readonly { readonly hostUuid: string | null }[],
): Promise<void> {
  const hostUuids = [
    ...new Set(targets.flatMap((target) => target.hostUuid ?? [])),
  ];
  if (hostUuids.length === 0) return;
  const rows = await query(
    em,
    `select host_uuid, state from worker_host
     where host_uuid = any(?::uuid[])
     order by host_uuid
     for share`,
    [hostUuids],
  );
  const retired = new Set(
    rows
      .filter((row) => row.state === "decommissioned")
      .map((row) => row.host_uuid as string),
  );
  const index = targets.findIndex(
    (target) => target.hostUuid !== null && retired.has(target.hostUuid),
  );
  if (index >= 0) {
    throw new LifecycleError(
      "failed_precondition",
      `targets[${index}].host_uuid ${targets[index]!.hostUuid} was decommissioned; it takes no more work`,
    );
  }
}
