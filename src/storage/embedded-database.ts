import { mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";
import type { Logger } from "pino";
import lockfile from "proper-lockfile";
import { describeCause } from "../logging/describe-cause.js";

/** DATA_DIR names a path where no directory can be created or used. */
export class DataDirError extends Error {
  /** The errno code of the failure, such as EEXIST or ENOTDIR. */
  readonly code: string | undefined;
  /** The path at fault: DATA_DIR itself, or a part of it that is a file. */
  readonly path: string;

  constructor(dataDir: string, problem: Problem, options: ErrorOptions) {
    super(
      `DATA_DIR ${dataDir} cannot be used: ${problem.reason}; set DATA_DIR to another directory`,
      options,
    );
    this.name = "DataDirError";
    this.code = problem.code;
    this.path = problem.path;
  }
}

/** Why DATA_DIR cannot be used, and the path that is the reason. */
interface Problem {
  readonly reason: string;
  readonly code: string | undefined;
  readonly path: string;
}

/** The embedded PostgreSQL, served on a socket that only this process uses. */
export interface EmbeddedDatabase {
  /** Options for the `pg` driver, as @mikro-orm/postgresql takes them. */
  readonly connection: {
    host: string;
    port: number;
    user: string;
    password: string;
    dbName: string;
  };
  /** Stops the socket server, closes the database and releases the lock. */
  close(): Promise<void>;
}

const SOCKET_PORT = 5432;

// sun_path holds 108 bytes on Linux and 104 on macOS, each with a NUL; using
// the smaller limit everywhere keeps the choice of socket the same on both.
const MAX_SOCKET_PATH_BYTES = 103;

// A crashed process stops refreshing its lock; after this long another
// process takes the lock over. A live process refreshes it every half of this.
const LOCK_STALE_MS = 10_000;

/**
 * Opens the PGlite database kept in `dataDir`, creating it on first use, and
 * serves it to one `pg` connection. Fails at once when another process (or
 * another call in this one) holds `dataDir`.
 */
export async function openEmbeddedDatabase(
  dataDir: string,
  logger: Logger,
): Promise<EmbeddedDatabase> {
  const startedAt = Date.now();
  const dir = resolve(dataDir);
  await createDataDir(dir);
  const releaseLock = await lockDataDir(dir, logger);

  let db: PGlite | undefined;
  try {
    db = await PGlite.create({ dataDir: join(dir, "pgdata") });
    const served = await serve(db, dir);
    const { server } = served;
    server.addEventListener("error", (event) => {
      const err = (event as CustomEvent<unknown>).detail;
      logger.warn(
        { cause: describeCause(err, [dir]), dataDir: dir },
        "embedded database socket error",
      );
    });
    const listen = server.getServerConn();
    const ms = Date.now() - startedAt;
    logger.info({ dataDir: dir, listen, ms }, "embedded database ready");

    const opened = db;
    let closing: Promise<void> | undefined;
    return {
      connection: {
        host: served.host,
        port: served.port,
        user: "postgres",
        password: "postgres",
        dbName: "postgres",
      },
      close() {
        closing ??= (async () => {
          try {
            await server.stop();
            await opened.close();
          } finally {
            await releaseLock();
          }
          logger.info({ dataDir: dir }, "embedded database closed");
        })();
        return closing;
      },
    };
  } catch (err) {
    // The first failure is the one worth reporting.
    await db?.close().catch(() => undefined);
    await releaseLock();
    throw err;
  }
}

/** Creates `dir` if it is missing; a DataDirError if it cannot be. */
async function createDataDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new DataDirError(dir, await problemOf(dir, err), { cause: err });
  }
}

/** What made `mkdir` fail on `dir`, in words that name the path at fault. */
async function problemOf(dir: string, err: unknown): Promise<Problem> {
  const { code, message } = err as NodeJS.ErrnoException;
  if (code === "EEXIST") {
    return { reason: `it is ${await notADirectory(dir)}`, code, path: dir };
  }
  if (code === "ENOTDIR") {
    // A path above `dir` is not a directory: the nearest that exists.
    for (
      let path = dirname(dir);
      path !== dirname(path);
      path = dirname(path)
    ) {
      const found = await stat(path).catch(() => undefined);
      if (found?.isDirectory() === false) {
        return {
          reason: `${path} is ${await notADirectory(path)}`,
          code,
          path,
        };
      }
    }
  }
  // The system's words without the path they repeat: "EACCES: permission
  // denied", say.
  return { reason: message.replace(/, mkdir '.*'$/, ""), code, path: dir };
}

/** What `path`, which is not a directory, is instead, as far as it matters. */
async function notADirectory(path: string): Promise<string> {
  const found = await stat(path).catch(() => undefined);
  return found?.isFile() ? "a file, not a directory" : "not a directory";
}

async function serve(
  db: PGlite,
  dir: string,
): Promise<{ server: PGLiteSocketServer; host: string; port: number }> {
  const socketPath = join(dir, `.s.PGSQL.${SOCKET_PORT}`);
  const unixSocket =
    process.platform !== "win32" &&
    Buffer.byteLength(socketPath) <= MAX_SOCKET_PATH_BYTES;

  if (unixSocket) {
    // Left behind by a process that crashed; the lock says none is running.
    await rm(socketPath, { force: true });
    const server = new PGLiteSocketServer({
      db,
      path: socketPath,
      maxConnections: 1,
    });
    await server.start();
    return { server, host: dir, port: SOCKET_PORT };
  }

  const host = "127.0.0.1";
  const server = new PGLiteSocketServer({
    db,
    host,
    port: 0,
    maxConnections: 1,
  });
  let port = 0;
  server.addEventListener("listening", (event) => {
    port = (event as CustomEvent<{ port: number }>).detail.port;
  });
  await server.start();
  return { server, host, port };
}

/** Takes the data directory's lock; resolves to the function releasing it. */
async function lockDataDir(
  dir: string,
  logger: Logger,
): Promise<() => Promise<void>> {
  const pidFile = join(dir, "decky-lifecycle.pid");
  const lockPath = join(dir, "decky-lifecycle.lock");
  let compromised = false;
  const take = () =>
    lockfile.lock(dir, {
      lockfilePath: lockPath,
      stale: LOCK_STALE_MS,
      onCompromised: (err) => {
        compromised = true;
        logger.error(
          { cause: describeCause(err, [dir]), dataDir: dir },
          "lost the data directory lock; another process may open it too",
        );
      },
    });
  let release: () => Promise<void>;
  try {
    release = await take();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ELOCKED") throw err;
    const pid = Number.parseInt(
      await readFile(pidFile, "utf8").catch(() => ""),
      10,
    );
    if (!isGone(pid)) {
      throw new Error(
        `data directory ${dir} is in use by another decky-lifecycle process ` +
          `(pid ${Number.isNaN(pid) ? "unknown" : pid}); stop it or set DATA_DIR to another directory`,
        { cause: err },
      );
    }
    // The holder crashed on this machine: its lock would go stale within
    // LOCK_STALE_MS, but nobody needs to wait for that.
    logger.warn(
      { dataDir: dir, pid },
      "taking over the data directory from a process that is gone",
    );
    await rm(lockPath, { recursive: true, force: true });
    release = await take();
  }
  let released: Promise<void> | undefined;
  const releaseOnce = () => {
    released ??= (async () => {
      // Once compromised, the pid file and the lock may be another process's.
      if (compromised) return;
      await rm(pidFile, { force: true });
      await release();
    })();
    return released;
  };

  try {
    await writeFile(pidFile, `${process.pid}\n`);
  } catch (err) {
    await releaseOnce();
    throw err;
  }
  return releaseOnce;
}

/** Whether `pid` names no running process on this machine. */
function isGone(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "ESRCH";
  }
}
