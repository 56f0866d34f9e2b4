import {
  loadSettings,
  type Settings,
  SettingsError,
} from "../config/settings.js";
import { createLogger } from "../logging/logger.js";
import { startServer } from "../server/start-server.js";

const bootLogger = createLogger("info");
let settings: Settings;
try {
  settings = loadSettings();
} catch (error) {
  if (!(error instanceof SettingsError)) throw error;
  bootLogger.fatal(error.message);
  process.exit(2);
}
const logger = createLogger(settings.logLevel);
try {
  const server = await startServer(settings, logger);
  const stop = (signal: string) => {
    logger.info({ signal }, "stopping");
    server.close().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, "could not stop cleanly");
        process.exit(1);
      },
    );
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
} catch (error) {
  logger.fatal(
    { err: error },
    `could not start: ${error instanceof Error ? error.message : String(error)}`,
  );
  process.exit(1);
}
