import { Code, ConnectError } from "@connectrpc/connect";
import type { EntityManager } from "@mikro-orm/postgresql";
import type { Caller } from "../rpc/services.js";
import {
  findHostOfCertificate,
  findTokenCredentials,
  lockTokenStanding,
} from "../storage/api-tokens.js";
import { findHostState } from "../storage/host-reads.js";
import { parseToken, secretMatches } from "./token.js";

/** How callers prove who they are. */
export type AuthMode = "tokens" | "none";

/** What a call brings to prove who is calling. */
export interface Credentials {
  /** The `authorization` header, if the call sent one. */
  readonly authorization: string | null;
  /** SHA-256 of the client certificate, lower-case hex, under mutual TLS. */
  readonly certificateFingerprint: string | undefined;
}

const BEARER = /^Bearer +([^ ]+) *$/i;

function unauthenticated(message: string): ConnectError {
  return new ConnectError(message, Code.Unauthenticated);
}

function permissionDenied(message: string): ConnectError {
  return new ConnectError(message, Code.PermissionDenied);
}

/** The error every call of a decommissioned host gets. */
export function decommissionedError(hostUuid: string): ConnectError {
  return permissionDenied(
    `host ${hostUuid} was decommissioned; its calls are refused`,
  );
}

/** The error a stream gets when its token is revoked with RevokeToken. */
export function revokedTokenError(): ConnectError {
  return unauthenticated("the bearer token of this stream was revoked");
}

/** The error a stream gets when its host's token is rotated. */
export function rotatedTokenError(hostUuid: string): ConnectError {
  return unauthenticated(
    `the token of this stream was revoked; reconnect with host ${hostUuid}'s new token`,
  );
}

/**
 * Refuses a caller that no longer stands where it stood when the call was
 * authenticated: its token revoked since, or its host decommissioned. The
 * error is the one a registered stream is ended with for the same reason.
 * The token's row stays share-locked until `em`'s transaction ends, so a
 * revocation cannot commit between this check and that commit. Inside a
 * transaction that locks the host, the host's row must be locked first, as
 * RotateHostToken and DecommissionHost lock it before the tokens.
 */
export async function refuseRevokedCaller(
  em: EntityManager,
  caller: Caller,
): Promise<void> {
  if (caller.tokenId === undefined) {
    const hostUuid = caller.hostUuid;
    if (
      hostUuid !== undefined &&
      (await findHostState(em, hostUuid)) === "decommissioned"
    ) {
      throw decommissionedError(hostUuid);
    }
    return;
  }
  const standing = await lockTokenStanding(em, caller.tokenId);
  const hostUuid = standing?.hostUuid ?? null;
  if (hostUuid !== null && standing?.hostState === "decommissioned") {
    throw decommissionedError(hostUuid);
  }
  if (standing && !standing.revoked) return;
  // Rotating revokes a host's tokens and gives it a new one; RevokeToken
  // leaves a worker's host with none.
  if (hostUuid !== null && standing?.hostHasOtherToken) {
    throw rotatedTokenError(hostUuid);
  }
  throw revokedTokenError();
}

/**
 * Works out who is calling. With AUTH=tokens a call needs a bearer token in
 * force: a missing, malformed, unknown or revoked one is UNAUTHENTICATED,
 * and a worker token of a decommissioned host is PERMISSION_DENIED. With
 * AUTH=none, which the server allows on loopback only (`checkExposure`),
 * every caller is an admin, except one whose client certificate is pinned
 * to a host: that caller is that host's worker.
 *
 * A worker's client certificate, when the call comes with one or its host
 * has one pinned, must be the one pinned to the worker's host.
 */
export async function identifyCaller(
  em: EntityManager,
  mode: AuthMode,
  credentials: Credentials,
): Promise<Caller> {
  const fingerprint = credentials.certificateFingerprint;
  if (mode === "none") {
    const host =
      fingerprint === undefined
        ? undefined
        : await findHostOfCertificate(em, fingerprint);
    if (!host) return { role: "admin", name: "anonymous" };
    if (host.state === "decommissioned") {
      throw decommissionedError(host.hostUuid);
    }
    return {
      role: "worker",
      name: `certificate of host ${host.hostUuid}`,
      hostUuid: host.hostUuid,
    };
  }

  if (credentials.authorization === null) {
    throw unauthenticated(
      'this call needs a bearer token: send the header "authorization: Bearer <token>"',
    );
  }
  const bearer = BEARER.exec(credentials.authorization);
  if (!bearer) {
    throw unauthenticated('the authorization header must be "Bearer <token>"');
  }
  const parsed = parseToken(bearer[1]!);
  if (!parsed) throw unauthenticated("the bearer token is malformed");
  const found = await findTokenCredentials(em, parsed.id);
  if (!found || !secretMatches(parsed.secret, found.secretHash)) {
    throw unauthenticated("the bearer token is not valid");
  }
  const { token } = found;
  if (token.hostUuid !== null && found.hostState === "decommissioned") {
    throw decommissionedError(token.hostUuid);
  }
  if (token.revokedAt !== null) {
    throw unauthenticated("the bearer token was revoked");
  }
  if (token.role !== "worker" || token.hostUuid === null) {
    return { role: token.role, name: token.name, tokenId: token.id };
  }

  const pinned = found.hostCertificateFingerprint;
  if (fingerprint !== undefined && fingerprint !== pinned) {
    throw permissionDenied(
      `the client certificate is not the one pinned to host ${token.hostUuid}`,
    );
  }
  if (fingerprint === undefined && pinned !== null) {
    throw permissionDenied(
      `host ${token.hostUuid} has a client certificate pinned; call with it`,
    );
  }
  return {
    role: "worker",
    name: token.name,
    tokenId: token.id,
    hostUuid: token.hostUuid,
  };
}
