import { createContextKey } from "@connectrpc/connect";
import type { EntityManager } from "@mikro-orm/postgresql";
import type { Logger } from "pino";
import type { ChangeFeed } from "../events/change-feed.js";
import type { PageTokens } from "./page-token.js";

/** What the RPC handlers need from the running server. */
export interface Services {
  readonly feed: ChangeFeed;
  readonly pageTokens: PageTokens;
  readonly logger: Logger;
  readonly keepaliveIntervalMs: number;
  /** Aborts when the server shuts down; open Watch streams then end. */
  readonly shutdownSignal: AbortSignal;
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
 * SHA-256 of the client certificate the call came with, as lower-case hex;
 * unset on a connection without one.
 */
export const peerCertificateKey = createContextKey<string | undefined>(
  undefined,
  { description: "the client certificate's fingerprint" },
);
