import { resolve } from "node:path";
import { ExposureError } from "../auth/exposure.js";
import {
  loadSettings,
  type Settings,
  SettingsError,
} from "../config/settings.js";
import { describeCause } from "../logging/describe-cause.js";
import { createLogger } from "../logging/logger.js";
import { type RunningServer, startServer } from "../server/start-server.js";
import { DataDirError } from "../storage/embedded-database.js";

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
 * Stops the server and exits 0, or 1 if the stop fails. The signal's
 * deadline exits 1 if start-up and the stop outlast SHUTDOWN_DEADLINE_MS: a
 * supervisor then knows that calls or the database may have been cut rather
 * than finished and closed.
 */
function stopAndExit(server: RunningServer): void {
  server.close().then(
    () => process.exit(0),
    (error: unknown) => {
      logger.error({ cause: describeCause(error) }, "could not stop cleanly");
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
  // From the signal on, start-up and the stop together have the deadline.
  setTimeout(() => {
    logger.error(
      { shutdownDeadlineMs: settings.shutdownDeadlineMs },
      "could not stop within SHUTDOWN_DEADLINE_MS; exiting anyway",
    );
    process.exit(1);
  }, settings.shutdownDeadlineMs);
  if (running) stopAndExit(running);
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);

try {
  running = await startServer(settings, logger);
} catch (error) {
  // Refused settings, like invalid ones, exit 2 with one plain line.
  if (error instanceof ExposureError) {
    logger.fatal(error.message);
    process.exit(2);
  }
  // DATA_DIR is the operator's own choice; a message may name it, and a
  // DATA_DIR that cannot be used names the part of it at fault.
  const cause = describeCause(error, [
    resolve(settings.dataDir),
    ...(error instanceof DataDirError ? [error.path] : []),
  ]);
  logger.fatal(
    { cause },
    `could not start: ${cause?.message ?? String(error)}`,
  );
  process.exit(1);
}
if (stopRequested) stopAndExit(running);
