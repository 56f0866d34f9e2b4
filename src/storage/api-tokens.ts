import type { EntityManager } from "@mikro-orm/postgresql";
import type { Role } from "../auth/roles.js";
import type { HostState } from "../domain/host.js";
import { query, type SqlRow, toDate } from "./sql.js";

/** A stored token, without its secret. */
export interface ApiToken {
  readonly id: string;
  readonly name: string;
  readonly role: Role;
  /** The host a worker token speaks for; null for every other role. */
  readonly hostUuid: string | null;
  readonly createdAt: Date;
  readonly revokedAt: Date | null;
}

/** What checking a presented token needs: the token and its host. */
export interface TokenCredentials {
  readonly token: ApiToken;
  readonly secretHash: Buffer;
  /** The state of a worker token's host; null for other roles. */
  readonly hostState: HostState | null;
  /** The certificate pinned to a worker token's host, if any. */
  readonly hostCertificateFingerprint: string | null;
}

/** A token to store: its secret only as a hash. */
export interface NewToken {
  readonly id: string;
  readonly name: string;
  readonly role: Role;
  readonly hostUuid: string | null;
  readonly secretHash: Buffer;
}

function toApiToken(row: SqlRow): ApiToken {
  return {
    id: row.id as string,
    name: row.name as string,
    role: row.role as Role,
    hostUuid: (row.host_uuid as string | null) ?? null,
    createdAt: toDate(row.created_at),
    revokedAt:
      row.revoked_at === null || row.revoked_at === undefined
        ? null
        : toDate(row.revoked_at),
  };
}

export async function insertToken(
  em: EntityManager,
  token: NewToken,
): Promise<ApiToken> {
  const [row] = await query(
    em,
    `insert into api_token (id, name, role, host_uuid, secret_hash, created_at)
     values (?, ?, ?, ?, ?, clock_timestamp())
     returning *`,
    [token.id, token.name, token.role, token.hostUuid, token.secretHash],
  );
  return toApiToken(row!);
}

/** The token with `id` and its host, revoked or not; undefined if none. */
export async function findTokenCredentials(
  em: EntityManager,
  id: string,
): Promise<TokenCredentials | undefined> {
  const [row] = await query(
    em,
    `select token.*, host.state as host_state,
            host.certificate_fingerprint as host_certificate_fingerprint
     from api_token token
     left join worker_host host on host.host_uuid = token.host_uuid
     where token.id = ?`,
    [id],
  );
  if (!row) return undefined;
  return {
    token: toApiToken(row),
    secretHash: row.secret_hash as Buffer,
    hostState: (row.host_state as HostState | null) ?? null,
    hostCertificateFingerprint:
      (row.host_certificate_fingerprint as string | null) ?? null,
  };
}

/** Where a token stands now, for a stream that was opened with it. */
export interface TokenStanding {
  readonly revoked: boolean;
  /** The host of a worker token; null for other roles. */
  readonly hostUuid: string | null;
  /** The state of a worker token's host; null for other roles. */
  readonly hostState: HostState | null;
  /** Whether the token's host has another token in force: it was rotated. */
  readonly hostHasOtherToken: boolean;
}

/**
 * Reads where the token with `id` stands and share-locks its row until the
 * transaction ends, so a revocation either commits before the read or waits
 * for the transaction. Undefined if there is no such token.
 */
export async function lockTokenStanding(
  em: EntityManager,
  id: string,
): Promise<TokenStanding | undefined> {
  const [row] = await query(
    em,
    `select token.revoked_at is not null as revoked, token.host_uuid,
            host.state as host_state,
            exists (select 1 from api_token other
                    where other.host_uuid = token.host_uuid
                      and other.id <> token.id
                      and other.revoked_at is null) as host_has_other_token
     from api_token token
     left join worker_host host on host.host_uuid = token.host_uuid
     where token.id = ?
     for share of token`,
    [id],
  );
  return (
    row && {
      revoked: row.revoked as boolean,
      hostUuid: (row.host_uuid as string | null) ?? null,
      hostState: (row.host_state as HostState | null) ?? null,
      hostHasOtherToken: row.host_has_other_token as boolean,
    }
  );
}

/** The host a client certificate is pinned to, and its state. */
export async function findHostOfCertificate(
  em: EntityManager,
  fingerprint: string,
): Promise<{ hostUuid: string; state: HostState } | undefined> {
  const [row] = await query(
    em,
    "select host_uuid, state from worker_host where certificate_fingerprint = ?",
    [fingerprint],
  );
  return (
    row && {
      hostUuid: row.host_uuid as string,
      state: row.state as HostState,
    }
  );
}

/**
 * Reads up to `limit` tokens whose id comes after `afterId`, ordered by id;
 * revoked ones only when `showRevoked`.
 */
export async function listTokens(
  em: EntityManager,
  showRevoked: boolean,
  afterId: string | undefined,
  limit: number,
): Promise<ApiToken[]> {
  const rows = await query(
    em,
    `select * from api_token
     where (? or revoked_at is null)
       and (?::uuid is null or id > ?::uuid)
     order by id
     limit ?`,
    [showRevoked, afterId ?? null, afterId ?? null, limit],
  );
  return rows.map(toApiToken);
}

/**
 * Revokes the token with `id`; a token already revoked keeps its first
 * revocation time. Undefined if there is no such token.
 */
export async function revokeToken(
  em: EntityManager,
  id: string,
): Promise<ApiToken | undefined> {
  const [row] = await query(
    em,
    `update api_token
     set revoked_at = coalesce(revoked_at, clock_timestamp())
     where id = ?
     returning *`,
    [id],
  );
  return row && toApiToken(row);
}

/** Revokes every token of `hostUuid` still in force; returns their ids. */
export async function revokeHostTokens(
  em: EntityManager,
  hostUuid: string,
): Promise<string[]> {
  const rows = await query(
    em,
    `update api_token set revoked_at = clock_timestamp()
     where host_uuid = ? and revoked_at is null
     returning id`,
    [hostUuid],
  );
  return rows.map((row) => row.id as string);
}
