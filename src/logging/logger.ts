import { type Logger, pino } from "pino";

export type { Logger } from "pino";

/** Creates the process logger: JSON lines on stdout, one per event. */
export function createLogger(level: string): Logger {
  return pino({ name: "decky-lifecycle", level });
}
