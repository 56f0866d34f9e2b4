import { ConnectError } from "@connectrpc/connect";
import type { EntityManager } from "@mikro-orm/postgresql";
import { pino } from "pino";
import { loadSettings } from "../config/settings.js";
import { type Database, openDatabase } from "../storage/database.js";
import { UsageError } from "./errors.js";

/**
 * Runs `work` on the database the server would use (DATABASE_URL, else the
 * embedded database in DATA_DIR), after applying any pending migration.
 */
export async function onDatabase<T>(
  work: (em: EntityManager) => Promise<T>,
): Promise<T> {
  const settings = loadSettings();
  const logger = pino(
    { level: "warn" },
    pino.destination({ dest: 2, sync: true }),
  );
  let database: Database | undefined;
  try {
    database = await openDatabase(settings, logger, 1);
    return await work(database.orm.em.fork());
  } catch (error) {
    if (error instanceof ConnectError) throw error;
    throw new UsageError(
      `cannot use the database: ${error instanceof Error ? error.message : String(error)}. To go through a running server instead, pass --url and an admin --token`,
    );
  } finally {
    await database?.close();
  }
}
