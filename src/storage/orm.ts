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
 * Opens the ORM on `target` and applies every pending migration. The embedded
 * database serves one connection, so its pool holds exactly one.
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
      acquireTimeoutMillis: options.connectTimeoutMs ?? 10_000,
    },
    driverOptions: {
      connection: {
        connectionTimeoutMillis: options.connectTimeoutMs ?? 10_000,
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
