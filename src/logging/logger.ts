import { type DestinationStream, type Logger, pino } from "pino";

export type { Logger } from "pino";

/**
 * Fields that could hold a bearer token. Nothing logs them; should a
 * request's headers or a token ever reach a log line, they are censored.
 */
export const REDACTED_PATHS = [
  "authorization",
  "token",
  "headers.authorization",
  "header.authorization",
  "*.authorization",
  "*.token",
  "*.headers.authorization",
  "*.header.authorization",
];

/**
 * Creates the process logger: JSON lines on stdout (or `destination`), one
 * per event, written synchronously so that the last lines before an exit
 * are never lost.
 */
export function createLogger(
  level: string,
  destination: DestinationStream = pino.destination({ dest: 1, sync: true }),
): Logger {
  return pino(
    { name: "decky-lifecycle", level, redact: REDACTED_PATHS },
    destination,
  );
}
