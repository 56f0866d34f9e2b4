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

/**
 * How much longer than DATABASE_TIMEOUT_MS the driver waits for an answer
 * before it gives up on the connection: PostgreSQL's own statement timeout,
 * which leaves the connection usable, should end a slow statement first.
 */
const ANSWER_MARGIN_MS = 1000;

/**
 * Options for connections to a PostgreSQL server over the network (the
 * embedded database is in this process, with nothing in between).
 *
 * A server that dies or is restarted closes its connections, and the calls
 * using them fail at once. A network that silently drops packets does not:
 * a statement waits for an answer that never comes. So PostgreSQL ends any
 * statement that runs longer than `timeoutMs` itself, and the driver stops
 * waiting for an answer a little later; the connection that did not answer
 * is then dropped by the pool instead of being handed to the next call.
 * TCP keepalive lets the driver notice a dead idle connection, and the
 * server rolls back a transaction whose client has gone quiet in the middle
 * of it, so that it does not hold the revision lock that every writer needs.
 */
function networkConnection(timeoutMs: number) {
  return {
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
    idle_in_transaction_session_timeout: 60_000,
    statement_timeout: timeoutMs,
    query_timeout: timeoutMs + ANSWER_MARGIN_MS,
  };
}

/** A node-postgres connection as the pool holds it. */
interface PooledConnection {
  /** False while a statement sent on it has not been answered. */
  readonly readyForQuery?: boolean;
}

/**
 * Opens the ORM on `target` and applies every pending migration. The embedded
 * database serves one connection, so its pool holds exactly one.
 *
 * When the database cannot be reached, a call fails as soon as a new
 * connection is refused, or after `timeoutMs` at most, and the pool tries a
 * new connection for the next call, so the server serves again by itself
 * once the database is back.
 */
export async function openOrm(
  target: DatabaseTarget,
  logger: Logger,
  options: { readonly poolSize: number; readonly timeoutMs: number },
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
  // Knex hands `validate` to its pool, though MikroORM's type leaves it out.
  const pool = {
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
    acquireTimeoutMillis: options.timeoutMs,
    // A connection whose last statement was never answered is dropped.
    validate: (connection: PooledConnection) =>
      connection.readyForQuery !== false,
    // A refused connection fails the call waiting for it at once instead
    // of being retried until the acquire timeout.
    propagateCreateError: true,
  };
  const orm = await MikroORM.init({
    ...where,
    entities,
    extensions: [Migrator],
    discovery: { warnWhenNoEntities: false },
    allowGlobalContext: false,
    ensureDatabase: false,
    pool,
    driverOptions: {
      connection: {
        connectionTimeoutMillis: options.timeoutMs,
        ...("url" in target ? networkConnection(options.timeoutMs) : {}),
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
