import { type Logger, pino } from "pino";

export type { Logger } from "pino";

/**
 * Creates the process logger: JSON lines on stdout, one per event, written
 * synchronously so that the last lines before an exit are never lost.
 */
export function createLogger(level: string): Logger {
  return pino(
    { name: "decky-lifecycle", level },
    pino.destination({ dest: 1, sync: true }),
  );
}
