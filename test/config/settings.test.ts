import { expect, test } from "vitest";
import {
  loadSettings,
  type Settings,
  SettingsError,
} from "../../src/config/settings.js";

const DEFAULTS: Settings = {
  port: 8080,
  host: "127.0.0.1",
  databaseUrl: undefined,
  dataDir: "./.data",
  keepaliveIntervalMs: 15_000,
  changeRetentionMs: 7 * 24 * 3600 * 1000,
  staleAfterMs: 3600 * 1000,
  hostLostAfterMs: 15_000,
  hostLostGraceMs: 60_000,
  sweepIntervalMs: 5_000,
  shutdownDeadlineMs: 10_000,
  databaseTimeoutMs: 10_000,
  receiveMaxBytes: 4 * 1024 * 1024,
  logLevel: "info",
  auth: "none",
  watchStreamsPerCaller: 1000,
  heartbeatStreamsPerHost: 4,
  tls: undefined,
  corsAllowedOrigins: [],
};

/** The error `loadSettings(env)` throws; fails the test if it throws none. */
function settingsErrorOf(env: Record<string, string>): SettingsError {
  try {
    loadSettings(env);
  } catch (error) {
    if (error instanceof SettingsError) return error;
    throw error;
  }
  throw new Error(`loadSettings accepted ${JSON.stringify(env)}`);
}

test("loadSettings with no variables set gives the defaults", () => {
  expect(loadSettings({})).toEqual(DEFAULTS);
});

test("loadSettings counts empty variables as unset", () => {
  const settings = loadSettings({
    PORT: "",
    HOST: "",
    DATABASE_URL: "",
    DATA_DIR: "",
    KEEPALIVE_INTERVAL_MS: "",
    CHANGE_RETENTION_MS: "",
    LOG_LEVEL: "",
  });

  expect(settings).toEqual(DEFAULTS);
});

test("loadSettings reads every variable that is set", () => {
  const settings = loadSettings({
    PORT: "0",
    HOST: "::1",
    DATABASE_URL: "postgresql://lifecycle@db.internal:5432/lifecycle",
    DATA_DIR: "/var/lib/decky-lifecycle",
    KEEPALIVE_INTERVAL_MS: "10",
    CHANGE_RETENTION_MS: "60000",
    STALE_AFTER_MS: "100",
    HOST_LOST_AFTER_MS: "100",
    HOST_LOST_GRACE_MS: "0",
    SWEEP_INTERVAL_MS: "10",
    SHUTDOWN_DEADLINE_MS: "100",
    DATABASE_TIMEOUT_MS: "100",
    RECEIVE_MAX_BYTES: "1024",
    LOG_LEVEL: "debug",
    AUTH: "tokens",
    WATCH_STREAMS_PER_CALLER: "7",
    HEARTBEAT_STREAMS_PER_HOST: "1",
    CORS_ALLOWED_ORIGINS: "https://console.example.com",
  });

  expect(settings).toEqual({
    port: 0,
    host: "::1",
    databaseUrl: "postgresql://lifecycle@db.internal:5432/lifecycle",
    dataDir: "/var/lib/decky-lifecycle",
    keepaliveIntervalMs: 10,
    changeRetentionMs: 60_000,
    staleAfterMs: 100,
    hostLostAfterMs: 100,
    hostLostGraceMs: 0,
    sweepIntervalMs: 10,
    shutdownDeadlineMs: 100,
    databaseTimeoutMs: 100,
    receiveMaxBytes: 1024,
    logLevel: "debug",
    auth: "tokens",
    watchStreamsPerCaller: 7,
    heartbeatStreamsPerHost: 1,
    tls: undefined,
    corsAllowedOrigins: ["https://console.example.com"],
  });
});

test("loadSettings ignores variables that are not settings", () => {
  expect(loadSettings({ HOME: "/root", PGPASSWORD: "x" })).toEqual(DEFAULTS);
});

test.each([
  ["PORT", "abc", 'PORT="abc" must be a whole number'],
  ["PORT", "1.5", 'PORT="1.5" must be a whole number'],
  ["PORT", " ", 'PORT=" " must be a whole number'],
  ["PORT", "0x50", 'PORT="0x50" must be a whole number'],
  ["PORT", "8e3", 'PORT="8e3" must be a whole number'],
  ["PORT", "-1", 'PORT="-1" must be between 0 and 65535'],
  ["PORT", "65536", 'PORT="65536" must be between 0 and 65535'],
  [
    "KEEPALIVE_INTERVAL_MS",
    "5",
    'KEEPALIVE_INTERVAL_MS="5" must be at least 10 ms',
  ],
  [
    "KEEPALIVE_INTERVAL_MS",
    "fast",
    'KEEPALIVE_INTERVAL_MS="fast" must be a whole number of milliseconds',
  ],
  [
    "KEEPALIVE_INTERVAL_MS",
    "2147483648",
    'KEEPALIVE_INTERVAL_MS="2147483648" must be at most 2147483647 ms',
  ],
  [
    "CHANGE_RETENTION_MS",
    "59999",
    'CHANGE_RETENTION_MS="59999" must be at least 60000 ms',
  ],
  ["STALE_AFTER_MS", "99", 'STALE_AFTER_MS="99" must be at least 100 ms'],
  [
    "HOST_LOST_AFTER_MS",
    "99",
    'HOST_LOST_AFTER_MS="99" must be at least 100 ms',
  ],
  ["HOST_LOST_GRACE_MS", "-1", 'HOST_LOST_GRACE_MS="-1" must be at least 0 ms'],
  ["SWEEP_INTERVAL_MS", "9", 'SWEEP_INTERVAL_MS="9" must be at least 10 ms'],
  [
    "SWEEP_INTERVAL_MS",
    "2147483648",
    'SWEEP_INTERVAL_MS="2147483648" must be at most 2147483647 ms',
  ],
  [
    "DATABASE_TIMEOUT_MS",
    "99",
    'DATABASE_TIMEOUT_MS="99" must be at least 100 ms',
  ],
  [
    "RECEIVE_MAX_BYTES",
    "1023",
    'RECEIVE_MAX_BYTES="1023" must be at least 1024 bytes',
  ],
  [
    "RECEIVE_MAX_BYTES",
    "268435457",
    'RECEIVE_MAX_BYTES="268435457" must be at most 268435456 bytes',
  ],
  [
    "RECEIVE_MAX_BYTES",
    "4MiB",
    'RECEIVE_MAX_BYTES="4MiB" must be a whole number of bytes',
  ],
  [
    "DATABASE_URL",
    "mysql://x",
    'DATABASE_URL="mysql://x" must be a postgres:// or postgresql:// URL',
  ],
  [
    "LOG_LEVEL",
    "loud",
    'LOG_LEVEL="loud" must be one of fatal, error, warn, info, debug, trace, silent',
  ],
  ["AUTH", "token", 'AUTH="token" must be one of tokens, none'],
  [
    "WATCH_STREAMS_PER_CALLER",
    "0",
    'WATCH_STREAMS_PER_CALLER="0" must be between 1 and 1000000',
  ],
  [
    "HEARTBEAT_STREAMS_PER_HOST",
    "many",
    'HEARTBEAT_STREAMS_PER_HOST="many" must be a whole number',
  ],
])(
  "loadSettings refuses %s=%j, naming the variable and the value",
  (name, value, problem) => {
    const error = settingsErrorOf({ [name]: value });

    expect(error.message).toBe(`invalid settings: ${problem}`);
  },
);

test("loadSettings names every invalid variable in one error", () => {
  const error = settingsErrorOf({ PORT: "abc", KEEPALIVE_INTERVAL_MS: "5" });

  expect(error.message).toBe(
    'invalid settings: PORT="abc" must be a whole number; KEEPALIVE_INTERVAL_MS="5" must be at least 10 ms',
  );
});

test("loadSettings leaves a password out of an invalid DATABASE_URL it names", () => {
  const error = settingsErrorOf({
    DATABASE_URL: "mysql://root:hunter2@db:3306/lifecycle",
  });

  expect(error.message).toBe(
    'invalid settings: DATABASE_URL="mysql://root:***@db:3306/lifecycle" must be a postgres:// or postgresql:// URL',
  );
});
