import { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { createSecureContext } from "node:tls";
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

const count = (max: number) =>
  wholeNumber("").pipe(
    z
      .number()
      .min(1, `must be between 1 and ${max}`)
      .max(max, `must be between 1 and ${max}`),
  );

const AUTH_MODES = ["tokens", "none"] as const;

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
  SHUTDOWN_DEADLINE_MS: durationMs(100, MAX_TIMER_MS).default(10_000),
  DATABASE_TIMEOUT_MS: durationMs(100, MAX_TIMER_MS).default(10_000),
  // Connect allows up to 4 GiB; a larger limit only invites bigger bombs.
  RECEIVE_MAX_BYTES: wholeNumber(" of bytes")
    .pipe(
      z
        .number()
        .min(1024, "must be at least 1024 bytes")
        .max(256 * 1024 * 1024, `must be at most ${256 * 1024 * 1024} bytes`),
    )
    .default(4 * 1024 * 1024),
  LOG_LEVEL: z
    .enum(LOG_LEVELS, { error: `must be one of ${LOG_LEVELS.join(", ")}` })
    .default("info"),
  AUTH: z
    .enum(AUTH_MODES, { error: `must be one of ${AUTH_MODES.join(", ")}` })
    .default("none"),
  WATCH_STREAMS_PER_CALLER: count(1_000_000).default(1000),
  HEARTBEAT_STREAMS_PER_HOST: count(1000).default(4),
  TLS_CERT_FILE: z.string().optional(),
  TLS_KEY_FILE: z.string().optional(),
  TLS_CLIENT_CA_FILE: z.string().optional(),
  CORS_ALLOWED_ORIGINS: z
    .string()
    .transform((list, context) => {
      const origins = list.split(",").map((origin) => origin.trim());
      for (const origin of origins) {
        if (!isOrigin(origin)) {
          context.addIssue({
            code: "custom",
            message: `must be a comma-separated list of origins such as https://console.example.com (scheme, host and port only); ${JSON.stringify(origin)} is not one`,
          });
          return z.NEVER;
        }
      }
      return origins;
    })
    .optional(),
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
  /** How long a stop may take before the process gives up and exits 1. */
  readonly shutdownDeadlineMs: number;
  /**
   * How long a call waits for a PostgreSQL connection, and for the answer
   * to one statement, before it fails with UNAVAILABLE.
   */
  readonly databaseTimeoutMs: number;
  /** The largest request message the server reads. */
  readonly receiveMaxBytes: number;
  readonly logLevel: string;
  /**
   * How callers prove who they are: `tokens` needs a bearer token on every
   * call; `none` lets every caller act as an admin, so the server allows it
   * on a loopback host only, whatever the TLS.
   */
  readonly auth: (typeof AUTH_MODES)[number];
  /** How many Watch streams one caller may hold open at once. */
  readonly watchStreamsPerCaller: number;
  /** How many Heartbeat streams one host may hold open at once. */
  readonly heartbeatStreamsPerHost: number;
  /** Certificate and key to serve TLS with; unset serves cleartext. */
  readonly tls: TlsSettings | undefined;
  /**
   * Origins whose pages a browser may let call the service; empty answers
   * no CORS requests.
   */
  readonly corsAllowedOrigins: readonly string[];
}

/** The contents of the TLS files, read at start-up. */
export interface TlsSettings {
  /** The server's certificate chain, PEM. */
  readonly cert: Buffer;
  /** The server's private key, PEM. */
  readonly key: Buffer;
  /**
   * The CA that client certificates must be signed by; set, it turns on
   * mutual TLS and every client must present such a certificate.
   */
  readonly clientCa: Buffer | undefined;
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
    shutdownDeadlineMs: value.SHUTDOWN_DEADLINE_MS,
    databaseTimeoutMs: value.DATABASE_TIMEOUT_MS,
    receiveMaxBytes: value.RECEIVE_MAX_BYTES,
    logLevel: value.LOG_LEVEL,
    auth: value.AUTH,
    watchStreamsPerCaller: value.WATCH_STREAMS_PER_CALLER,
    heartbeatStreamsPerHost: value.HEARTBEAT_STREAMS_PER_HOST,
    tls: readTlsFiles(value),
    corsAllowedOrigins: value.CORS_ALLOWED_ORIGINS ?? [],
  };
}

/** Exactly what a browser sends as Origin: scheme, host and port, no path. */
function isOrigin(text: string): boolean {
  if (!URL.canParse(text)) return false;
  const url = new URL(text);
  return /^https?:$/.test(url.protocol) && url.origin === text;
}

/**
 * Reads the TLS files once, so that a missing file or a key that does not
 * fit the certificate stops the server before it opens anything.
 */
function readTlsFiles(value: {
  TLS_CERT_FILE?: string | undefined;
  TLS_KEY_FILE?: string | undefined;
  TLS_CLIENT_CA_FILE?: string | undefined;
}): TlsSettings | undefined {
  const { TLS_CERT_FILE, TLS_KEY_FILE, TLS_CLIENT_CA_FILE } = value;
  if (TLS_CERT_FILE === undefined && TLS_KEY_FILE === undefined) {
    if (TLS_CLIENT_CA_FILE !== undefined) {
      throw new SettingsError(
        "invalid settings: TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE: mutual TLS is served over TLS",
      );
    }
    return undefined;
  }
  if (TLS_CERT_FILE === undefined || TLS_KEY_FILE === undefined) {
    const [set, unset] =
      TLS_CERT_FILE === undefined
        ? ["TLS_KEY_FILE", "TLS_CERT_FILE"]
        : ["TLS_CERT_FILE", "TLS_KEY_FILE"];
    throw new SettingsError(
      `invalid settings: ${set} is set without ${unset}: set both TLS_CERT_FILE and TLS_KEY_FILE to serve TLS, or neither`,
    );
  }
  const files = {
    cert: readSettingFile("TLS_CERT_FILE", TLS_CERT_FILE),
    key: readSettingFile("TLS_KEY_FILE", TLS_KEY_FILE),
    clientCa:
      TLS_CLIENT_CA_FILE === undefined
        ? undefined
        : readSettingFile("TLS_CLIENT_CA_FILE", TLS_CLIENT_CA_FILE),
  };
  try {
    createSecureContext({ cert: files.cert, key: files.key });
  } catch (error) {
    throw new SettingsError(
      `invalid settings: TLS_CERT_FILE and TLS_KEY_FILE do not hold a PEM certificate and its private key (${openSslReason(error)})`,
    );
  }
  if (files.clientCa !== undefined) {
    try {
      new X509Certificate(files.clientCa);
    } catch (error) {
      throw new SettingsError(
        `invalid settings: TLS_CLIENT_CA_FILE does not hold a PEM certificate (${openSslReason(error)})`,
      );
    }
  }
  return files;
}

function readSettingFile(name: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "";
    const reason = FILE_ERRORS[code] ?? code;
    throw new SettingsError(
      `invalid settings: ${name}=${JSON.stringify(path)} cannot be read: ${reason}`,
    );
  }
}

const FILE_ERRORS: Record<string, string> = {
  ENOENT: "no such file",
  EACCES: "permission denied",
  EISDIR: "it is a directory",
};

/** "error:0480006C:PEM routines::no start line" reads as "no start line". */
function openSslReason(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split("::").at(-1) ?? message;
}

/** A URL's password would end up in logs; the rest is needed to spot a typo. */
function withoutPassword(value: string): string {
  return value.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*):[^@/]*@/i, "$1:***@");
}

/** The environment variables the server reads. */
export const SETTING_NAMES = Object.keys(schema.shape);
