import {
  loadSettings,
  type Settings,
  SettingsError,
} from "../config/settings.js";
import { createLogger } from "../logging/logger.js";
import { type RunningServer, startServer } from "../server/start-server.js";

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

/**
 * Stops the server and exits 0, or 1 if the stop fails or outlasts
 * SHUTDOWN_DEADLINE_MS: a supervisor then knows that calls or the database
 * may have been cut rather than finished and closed.
 */
function stopAndExit(server: RunningServer): void {
  const deadline = setTimeout(() => {
    logger.error(
      { shutdownDeadlineMs: settings.shutdownDeadlineMs },
      "could not stop within SHUTDOWN_DEADLINE_MS; exiting anyway",
    );
    process.exit(1);
  }, settings.shutdownDeadlineMs);
  server.close().then(
    () => {
      clearTimeout(deadline);
      process.exit(0);
    },
    (error: unknown) => {
      logger.error({ err: error }, "could not stop cleanly");
      process.exit(1);
    },
  );
}

// Listening from the start: a signal that arrives while the database opens
// stops the server once it is up, so that it still releases the data
// directory and the database cleanly.
let running: RunningServer | undefined;
let stopRequested = false;
const stop = (signal: NodeJS.Signals) => {
  logger.info({ signal }, "stopping");
  stopRequested = true;
  if (running) stopAndExit(running);
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);

try {
  running = await startServer(settings, logger);
} catch (error) {
  logger.fatal(
    { err: error },
    `could not start: ${error instanceof Error ? error.message : String(error)}`,
  );
  process.exit(1);
}
if (stopRequested) stopAndExit(running);
