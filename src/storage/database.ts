import type { MikroORM } from "@mikro-orm/postgresql";
import type { Logger } from "pino";
import type { Settings } from "../config/settings.js";
import {
  type EmbeddedDatabase,
  openEmbeddedDatabase,
} from "./embedded-database.js";
import { openOrm } from "./orm.js";

/** The service's database, open and migrated. */
export interface Database {
  readonly orm: MikroORM;
  /** The embedded database, when DATABASE_URL is unset. */
  readonly embedded: EmbeddedDatabase | undefined;
  close(): Promise<void>;
}

/**
 * Opens the database the settings name: the configured PostgreSQL with up
 * to `postgresPoolSize` connections, else the embedded database in
 * DATA_DIR, which serves one. Applies pending migrations.
 */
export async function openDatabase(
  settings: Pick<Settings, "databaseUrl" | "dataDir" | "databaseTimeoutMs">,
  logger: Logger,
  postgresPoolSize: number,
): Promise<Database> {
  let embedded: EmbeddedDatabase | undefined;
  try {
    let orm: MikroORM;
    if (settings.databaseUrl === undefined) {
      embedded = await openEmbeddedDatabase(settings.dataDir, logger);
      orm = await openOrm({ connection: embedded.connection }, logger, {
        poolSize: 1,
        timeoutMs: settings.databaseTimeoutMs,
      });
    } else {
      orm = await openOrm({ url: settings.databaseUrl }, logger, {
        poolSize: postgresPoolSize,
        timeoutMs: settings.databaseTimeoutMs,
      });
    }
    return {
      orm,
      embedded,
      async close() {
        await orm.close(true);
        await embedded?.close();
      },
    };
  } catch (error) {
    await embedded?.close();
    throw error;
  }
}
