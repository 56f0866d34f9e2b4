import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import type { EntityManager } from "@mikro-orm/postgresql";
import type { Logger } from "pino";
import type { Role } from "../auth/roles.js";
import type { ChangeFeed } from "../events/change-feed.js";
import { bindCallSignal } from "../storage/query-cancellation.js";
import type { PageTokens } from "./page-token.js";
import type { OpenStreams } from "./stream-limits.js";

/** What the RPC handlers need from the running server. */
export interface Services {
  readonly feed: ChangeFeed;
  readonly pageTokens: PageTokens;
  readonly logger: Logger;
  readonly keepaliveIntervalMs: number;
  /**
   * How long a Heartbeat stream may go without a message: as long as its
   * host may before it is marked lost.
   */
  readonly heartbeatIdleMs: number;
  /** Aborts when the server shuts down; open Watch streams then end. */
  readonly shutdownSignal: AbortSignal;
  /** The open Watch and Heartbeat streams: their caps, and ending them. */
  readonly streams: OpenStreams;
}

/**
 * The entity manager of one call: a fork made for that call alone, so no
 * call sees another's identity map.
 */
export const entityManagerKey = createContextKey<EntityManager | undefined>(
  undefined,
  { description: "the call's entity manager" },
);

/**
 * The call's entity manager, bound to the call's signal, or to `signal` when
 * the call can end earlier (a stream whose token is revoked): a statement
 * still running when the caller goes away is cancelled.
 */
export function callEntityManager(
  context: HandlerContext,
  signal: AbortSignal = context.signal,
): EntityManager {
  const em = context.values.get(entityManagerKey);
  if (!em) throw new Error("the call has no entity manager");
  return bindCallSignal(em, signal);
}

/** Who is calling, as the auth interceptor established it. */
export interface Caller {
  readonly role: Role;
  /**
   * The token's name; with AUTH=none, "anonymous", or the host whose pinned
   * certificate the caller presented.
   */
  readonly name: string;
  /** The token the call came with; unset with AUTH=none. */
  readonly tokenId?: string;
  /** The one host a worker speaks for; unset for every other role. */
  readonly hostUuid?: string;
}

/** The caller of the call; set by the auth interceptor before any handler. */
export const callerKey = createContextKey<Caller | undefined>(undefined, {
  description: "the caller",
});

/**
 * SHA-256 of the client certificate the call came with, as lower-case hex;
 * unset on a connection without one.
 */
export const peerCertificateKey = createContextKey<string | undefined>(
  undefined,
  { description: "the client certificate's fingerprint" },
);
