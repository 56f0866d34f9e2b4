import { once, setMaxListeners } from "node:events";
import type { AddressInfo } from "node:net";
import { createContextValues } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { MikroORM } from "@mikro-orm/postgresql";
import type { Logger } from "pino";
import { checkExposure } from "../auth/exposure.js";
import { authInterceptor } from "../auth/interceptor.js";
import type { Settings } from "../config/settings.js";
import type { ChangeFeed } from "../events/change-feed.js";
import { InProcessChangeFeed } from "../events/in-process-change-feed.js";
import { errorInterceptor } from "../rpc/errors.js";
import { hostRoutes } from "../rpc/host-service.js";
import { lifecycleRoutes } from "../rpc/lifecycle-service.js";
import { HostPageTokens, PageTokens } from "../rpc/page-token.js";
import { checkRequestDecoding } from "../rpc/request-decoding.js";
import { entityManagerKey, peerCertificateKey } from "../rpc/services.js";
import { OpenStreams } from "../rpc/stream-limits.js";
import { tokenRoutes } from "../rpc/token-service.js";
import { type Database, openDatabase } from "../storage/database.js";
import {
  readChangesAfter,
  readRevisionBounds,
} from "../storage/lifecycle-reads.js";
import { loadServiceSecret } from "../storage/service-secrets.js";
import { withCors } from "./cors.js";
import { withSpecGrpcMessage } from "./grpc-message.js";
import { startHistoryPruner } from "./history-pruner.js";
import { createDualProtocolListener } from "./listener.js";
import { startSweeper } from "./sweeper.js";
import { peerCertificateFingerprint } from "./tls.js";

const POSTGRES_POOL_SIZE = 10;
/**
 * The share of SHUTDOWN_DEADLINE_MS that calls in flight get to finish when
 * the server stops; the rest is for closing the database.
 */
const CALLS_SHARE_OF_SHUTDOWN = 0.75;

/** A server that is listening; `close` stops it and releases everything. */
export interface RunningServer {
  /** The port it listens on (the one the OS chose when PORT is 0). */
  readonly port: number;
  /** Base URL for clients, such as http://127.0.0.1:8080. */
  readonly url: string;
  readonly orm: MikroORM;
  /** The change feed that the Watch streams of this server follow. */
  readonly feed: ChangeFeed;
  /** Aborts when `close` begins: every open stream listens for it. */
  readonly stopping: AbortSignal;
  /**
   * Stops taking calls, ends Watch and Heartbeat streams with UNAVAILABLE
   * (a Heartbeat message being applied is committed first), lets unary
   * calls in flight finish for most of SHUTDOWN_DEADLINE_MS and cuts what is
   * still open after that, then closes the database.
   */
  close(): Promise<void>;
}

/**
 * Opens the database (the configured PostgreSQL, or the embedded one in
 * DATA_DIR), applies migrations, and serves LifecycleService on one port.
 */
export async function startServer(
  settings: Settings,
  logger: Logger,
): Promise<RunningServer> {
  checkExposure({ host: settings.host, auth: settings.auth });
  const database = await openDatabase(settings, logger, POSTGRES_POOL_SIZE);
  try {
    return await serve(settings, logger, database);
  } catch (error) {
    await database.close();
    throw error;
  }
}

async function serve(
  settings: Settings,
  logger: Logger,
  database: Database,
): Promise<RunningServer> {
  const { orm, embedded } = database;
  const em = orm.em.fork();
  const pageTokens = new PageTokens(await loadServiceSecret(em, "page-token"));
  const hostPageTokens = new HostPageTokens(
    await loadServiceSecret(em, "host-page-token"),
  );
  const { current } = await readRevisionBounds(em);
  const feed = new InProcessChangeFeed(
    current,
    (after, limit) => readChangesAfter(orm.em.fork(), after, limit),
    logger,
  );
  const shutdown = new AbortController();
  // Every open Watch and Heartbeat stream listens for the shutdown.
  setMaxListeners(0, shutdown.signal);
  const pruner = await startHistoryPruner(
    orm,
    settings.changeRetentionMs,
    logger,
  );
  const sweeper = await startSweeper(
    orm,
    feed,
    {
      staleAfterMs: settings.staleAfterMs,
      hostLostAfterMs: settings.hostLostAfterMs,
      hostLostGraceMs: settings.hostLostGraceMs,
    },
    settings.sweepIntervalMs,
    logger,
  );

  const services = {
    feed,
    pageTokens,
    hostPageTokens,
    logger,
    keepaliveIntervalMs: settings.keepaliveIntervalMs,
    heartbeatIdleMs: settings.hostLostAfterMs,
    shutdownSignal: shutdown.signal,
    streams: new OpenStreams({
      watchStreamsPerCaller: settings.watchStreamsPerCaller,
      heartbeatStreamsPerHost: settings.heartbeatStreamsPerHost,
    }),
  };
  const handler = connectNodeAdapter({
    // Request messages are decoded and checked before connect parses them,
    // so that bytes which are not a message are INVALID_ARGUMENT.
    routes: checkRequestDecoding((router) => {
      lifecycleRoutes(services)(router);
      hostRoutes(services)(router);
      tokenRoutes(services)(router);
    }, settings.receiveMaxBytes),
    // Errors of the auth interceptor pass through the error interceptor too.
    interceptors: [
      errorInterceptor(logger, shutdown.signal),
      authInterceptor(settings.auth),
    ],
    readMaxBytes: settings.receiveMaxBytes,
    // A misspelt field or enum name must fail the call, not be dropped and
    // quietly widen a filter or lose a host.
    jsonOptions: { ignoreUnknownFields: false },
    contextValues: (request) =>
      createContextValues()
        .set(entityManagerKey, orm.em.fork())
        .set(peerCertificateKey, peerCertificateFingerprint(request)),
  });
  const listener = createDualProtocolListener(
    withCors(withSpecGrpcMessage(handler), settings.corsAllowedOrigins),
    settings.tls,
    (failure) => logger.warn(failure, "TLS handshake failed"),
  );
  try {
    listener.tcp.listen(settings.port, settings.host);
    await once(listener.tcp, "listening");
  } catch (error) {
    // A port that is taken, say: nothing may keep running on the database
    // that the caller closes next.
    await sweeper.stop();
    await pruner.stop();
    await feed.close();
    throw error;
  }
  const { port } = listener.tcp.address() as AddressInfo;
  const host = settings.host.includes(":")
    ? `[${settings.host}]`
    : settings.host;
  const url = `${settings.tls ? "https" : "http"}://${host}:${port}`;
  logger.info(
    {
      url,
      tls: tlsMode(settings),
      database: embedded ? `embedded in ${settings.dataDir}` : "postgresql",
    },
    "decky-lifecycle is serving",
  );

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      shutdown.abort();
      await listener.close(
        Math.floor(settings.shutdownDeadlineMs * CALLS_SHARE_OF_SHUTDOWN),
      );
      await pruner.stop();
      await sweeper.stop();
      await feed.close();
      await database.close();
      logger.info("decky-lifecycle stopped");
    })();
    return closing;
  };
  return { port, url, orm, feed, stopping: shutdown.signal, close };
}

/** How the server speaks to its clients, for the start-up log line. */
function tlsMode(settings: Settings): "off" | "server" | "mutual" {
  if (!settings.tls) return "off";
  return settings.tls.clientCa ? "mutual" : "server";
}
