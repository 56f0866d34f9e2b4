import { z } from "zod";

// Decimal digits only: Number() would also read " " as 0, "0x50" as 80 and
// "8e3" as 8000, so a typo would quietly pick another port or interval.
const wholeNumber = (unit: string) =>
  z
    .string()
    .regex(/^[+-]?\d+$/, `must be a whole number${unit}`)
    .transform(Number);

const port = wholeNumber("").pipe(
  z
    .number()
    .min(0, "must be between 0 and 65535")
    .max(65535, "must be between 0 and 65535"),
);

// Timers cannot wait longer than this; Node fires a longer one at once.
const MAX_TIMER_MS = 2_147_483_647;

const durationMs = (min: number, max = Number.MAX_SAFE_INTEGER) =>
  wholeNumber(" of milliseconds").pipe(
    z
      .number()
      .min(min, `must be at least ${min} ms`)
      .max(max, `must be at most ${max} ms`),
  );

const LOG_LEVELS = [
  "fatal",
  "error",
  "warn",
  "info",
  "debug",
  "trace",
  "silent",
] as const;

const schema = z.object({
  PORT: port.default(8080),
  HOST: z.string().min(1, "must not be empty").default("127.0.0.1"),
  DATABASE_URL: z
    .string()
    .regex(/^postgres(ql)?:\/\//, "must be a postgres:// or postgresql:// URL")
    .optional(),
  DATA_DIR: z.string().min(1, "must not be empty").default("./.data"),
  KEEPALIVE_INTERVAL_MS: durationMs(10, MAX_TIMER_MS).default(15_000),
  CHANGE_RETENTION_MS: durationMs(60_000).default(7 * 24 * 3600 * 1000),
  STALE_AFTER_MS: durationMs(100).default(3600 * 1000),
  // Three of the worker client's default 5 s heartbeat intervals.
  HOST_LOST_AFTER_MS: durationMs(100).default(15_000),
  HOST_LOST_GRACE_MS: durationMs(0).default(60_000),
  SWEEP_INTERVAL_MS: durationMs(10, MAX_TIMER_MS).default(5_000),
  LOG_LEVEL: z
    .enum(LOG_LEVELS, { error: `must be one of ${LOG_LEVELS.join(", ")}` })
    .default("info"),
});

/** Settings of one server process, read once at start-up. */
export interface Settings {
  readonly port: number;
  readonly host: string;
  /** PostgreSQL to use; unset means the embedded database in `dataDir`. */
  readonly databaseUrl: string | undefined;
  readonly dataDir: string;
  /** How long a Watch stream may stay silent before it gets a KEEPALIVE. */
  readonly keepaliveIntervalMs: number;
  /** How long the change log keeps changes for resuming watchers. */
  readonly changeRetentionMs: number;
  /** How long an open row may go without a change before it is failed. */
  readonly staleAfterMs: number;
  /** How long a host may go without a heartbeat before it is lost. */
  readonly hostLostAfterMs: number;
  /** How long a host stays lost before its open rows are failed. */
  readonly hostLostGraceMs: number;
  /** How often stale rows and lost hosts are looked for. */
  readonly sweepIntervalMs: number;
  readonly logLevel: string;
}

/** Thrown when the environment holds a setting that cannot be used. */
export class SettingsError extends Error {
  override name = "SettingsError";
}

/**
 * Reads and validates the settings from environment variables. Empty
 * variables count as unset.
 */
export function loadSettings(
  env: Record<string, string | undefined> = process.env,
): Settings {
  const present = Object.fromEntries(
    Object.keys(schema.shape)
      .map((key) => [key, env[key]] as const)
      .filter(([, value]) => value !== undefined && value !== ""),
  );
  const parsed = schema.safeParse(present);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      const value = present[String(issue.path[0])] ?? "";
      return `${issue.path.join(".")}=${JSON.stringify(withoutPassword(value))} ${issue.message}`;
    });
    throw new SettingsError(`invalid settings: ${problems.join("; ")}`);
  }
  const value = parsed.data;
  return {
    port: value.PORT,
    host: value.HOST,
    databaseUrl: value.DATABASE_URL,
    dataDir: value.DATA_DIR,
    keepaliveIntervalMs: value.KEEPALIVE_INTERVAL_MS,
    changeRetentionMs: value.CHANGE_RETENTION_MS,
    staleAfterMs: value.STALE_AFTER_MS,
    hostLostAfterMs: value.HOST_LOST_AFTER_MS,
    hostLostGraceMs: value.HOST_LOST_GRACE_MS,
    sweepIntervalMs: value.SWEEP_INTERVAL_MS,
    logLevel: value.LOG_LEVEL,
  };
}

/** A URL's password would end up in logs; the rest is needed to spot a typo. */
function withoutPassword(value: string): string {
  return value.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*):[^@/]*@/i, "$1:***@");
}

/** The environment variables the server reads. */
export const SETTING_NAMES = Object.keys(schema.shape);
