import { Migrator } from "@mikro-orm/migrations";
import { MikroORM } from "@mikro-orm/postgresql";
import type { Logger } from "pino";
import type { EmbeddedDatabase } from "./embedded-database.js";
import { entities } from "./entities/index.js";
import { migrationsList } from "./migrations/index.js";

/** Where the ORM connects: a URL, or options for the embedded database. */
export type DatabaseTarget =
  | { readonly url: string }
  | { readonly connection: EmbeddedDatabase["connection"] };

/** How long a call waits for a database connection before UNAVAILABLE. */
const CONNECT_TIMEOUT_MS = 10_000;

/**
 * Options for connections to a PostgreSQL server over the network (the
 * embedded database is in this process, with nothing in between).
 *
 * A server that dies or is restarted closes its connections, and the calls
 * using them fail at once. A network that silently drops packets does not:
 * TCP keepalive lets the driver notice a dead connection in its pool (after
 * the operating system's probes, minutes rather than seconds), and the
 * server rolls back a transaction whose client has gone quiet in the middle
 * of it, so that it does not hold the revision lock that every writer needs.
 */
const NETWORK_CONNECTION = {
  keepAlive: true,
  keepAliveInitialDelayMillis: 10_000,
  idle_in_transaction_session_timeout: 60_000,
};

/**
 * Opens the ORM on `target` and applies every pending migration. The embedded
 * database serves one connection, so its pool holds exactly one.
 *
 * When the database cannot be reached, a call fails as soon as a new
 * connection is refused, or after CONNECT_TIMEOUT_MS at most, and the pool
 * tries a new connection for the next call, so the server serves again by
 * itself once the database is back.
 */
export async function openOrm(
  target: DatabaseTarget,
  logger: Logger,
  options: { readonly poolSize: number; readonly connectTimeoutMs?: number },
): Promise<MikroORM> {
  const where =
    "url" in target
      ? { clientUrl: target.url }
      : {
          host: target.connection.host,
          port: target.connection.port,
          user: target.connection.user,
          password: target.connection.password,
          dbName: target.connection.dbName,
        };
  const orm = await MikroORM.init({
    ...where,
    entities,
    extensions: [Migrator],
    discovery: { warnWhenNoEntities: false },
    allowGlobalContext: false,
    ensureDatabase: false,
    pool: {
      // Timestamps come back as text; their shape must not depend on the
      // database's DateStyle.
      afterCreate: (
        connection: { query(sql: string, done: (error?: Error) => void): void },
        done: (error: Error | undefined, connection: unknown) => void,
      ) =>
        connection.query("set datestyle to iso", (error) =>
          done(error, connection),
        ),
      min: 0,
      max: options.poolSize,
      acquireTimeoutMillis: options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS,
      // A refused connection fails the call waiting for it at once instead
      // of being retried until the acquire timeout.
      propagateCreateError: true,
    },
    driverOptions: {
      connection: {
        connectionTimeoutMillis: options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS,
        ...("url" in target ? NETWORK_CONNECTION : {}),
      },
      // The query builder would print these to stdout, between the JSON
      // lines of the log.
      log: {
        warn: (message: unknown) => logger.warn({ knex: message }, "database"),
        error: (message: unknown) =>
          logger.error({ knex: message }, "database"),
        deprecate: (message: unknown) =>
          logger.debug({ knex: message }, "database"),
        debug: (message: unknown) =>
          logger.debug({ knex: message }, "database"),
      },
    },
    migrations: {
      migrationsList,
      transactional: true,
      allOrNothing: true,
      snapshot: false,
      tableName: "mikro_orm_migrations",
    },
    logger: (message) => logger.trace({ orm: message }, "orm"),
    debug: false,
  });
  // The migrator creates a missing database; a server pointed at a misspelt
  // one must stop instead.
  const connection = await orm.checkConnection();
  if (!connection.ok) {
    await orm.close(true);
    throw new Error(`cannot use the database: ${connection.reason}`);
  }
  const applied = await orm.getMigrator().up();
  if (applied.length > 0) {
    logger.info(
      { migrations: applied.map((migration) => migration.name) },
      "applied database migrations",
    );
  }
  return orm;
}
