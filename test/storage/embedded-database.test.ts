import { spawn } from "node:child_process";
import {
  mkdir,
  mkdtemp,
  readFile,
  rm,
  utimes,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  type EmbeddedDatabase,
  openEmbeddedDatabase,
} from "../../src/storage/embedded-database.js";

const MODULE_URL = new URL(
  "../../src/storage/embedded-database.ts",
  import.meta.url,
).href;
const IN_USE = (dir: string) =>
  new RegExp(
    `^data directory ${escapeRegExp(dir)} is in use by another ` +
      `decky-lifecycle process \\(pid ${process.pid}\\); ` +
      "stop it or set DATA_DIR to another directory$",
  );
function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

// A fresh data directory runs initdb, which takes several seconds.
const SLOW = 60_000;

const logger = pino({ level: "silent" });
let dataDir: string;
const opened: EmbeddedDatabase[] = [];

async function open(dir = dataDir): Promise<EmbeddedDatabase> {
  const db = await openEmbeddedDatabase(dir, logger);
  opened.push(db);
  return db;
}

async function withClient<T>(
  db: EmbeddedDatabase,
  use: (client: pg.Client) => Promise<T>,
): Promise<T> {
  const client = new pg.Client({
    ...db.connection,
    database: db.connection.dbName,
  });
  await client.connect();
  try {
    return await use(client);
  } finally {
    await client.end();
  }
}

async function selectOne(client: pg.Client): Promise<unknown[]> {
  return (await client.query("select 1 as one")).rows;
}

beforeEach(async () => {
  dataDir = join(await mkdtemp(join(tmpdir(), "decky-")), ".data");
});

afterEach(async () => {
  for (const db of opened.splice(0)) await db.close();
  await rm(join(dataDir, ".."), { recursive: true, force: true });
});

describe("openEmbeddedDatabase", { timeout: SLOW }, () => {
  it("serves a database that keeps its data across a close and a reopen", async () => {
    const first = await open();
    expect(first.connection).toEqual({
      host: dataDir,
      port: 5432,
      user: "postgres",
      password: "postgres",
      dbName: "postgres",
    });
    await withClient(first, async (client) => {
      expect(await selectOne(client)).toEqual([{ one: 1 }]);
      await client.query("create table decky (name text primary key)");
      await client.query("insert into decky values ('alpha')");
    });
    await first.close();

    const second = await open();
    const rows = await withClient(second, async (client) => {
      return (await client.query("select name from decky")).rows;
    });

    expect(rows).toEqual([{ name: "alpha" }]);
  });

  it("refuses a second open of the same directory in the same process", async () => {
    await open();

    await expect(open()).rejects.toThrow(IN_USE(dataDir));
  });

  it("refuses a second open of the same directory from another process", async () => {
    await open();

    const child = await runChild(dataDir);

    expect(child.code).not.toBe(0);
    expect(child.stderr.trim()).toMatch(IN_USE(dataDir));
  });

  it("closes idempotently and releases the directory", async () => {
    const first = await open();

    await Promise.all([first.close(), first.close()]);
    await first.close();

    const second = await open();
    expect(await withClient(second, selectOne)).toEqual([{ one: 1 }]);
  });

  it("takes over the lock and socket a crashed process left behind", async () => {
    await mkdir(join(dataDir, "decky-lifecycle.lock"), { recursive: true });
    const longAgo = new Date(Date.now() - 60_000);
    await utimes(join(dataDir, "decky-lifecycle.lock"), longAgo, longAgo);
    await writeFile(join(dataDir, "decky-lifecycle.pid"), "999999\n");
    await writeFile(join(dataDir, ".s.PGSQL.5432"), "");

    const db = await open();

    expect(await withClient(db, selectOne)).toEqual([{ one: 1 }]);
    const pid = await readFile(join(dataDir, "decky-lifecycle.pid"), "utf8");
    expect(pid).toBe(`${process.pid}\n`);
  });

  it("takes over at once from a holder that is gone, before its lock is stale", async () => {
    const gone = spawn(process.execPath, ["-e", ""]);
    await new Promise((resolve) => gone.once("exit", resolve));
    await mkdir(join(dataDir, "decky-lifecycle.lock"), { recursive: true });
    await writeFile(join(dataDir, "decky-lifecycle.pid"), `${gone.pid}\n`);

    const db = await open();

    expect(await withClient(db, selectOne)).toEqual([{ one: 1 }]);
    const pid = await readFile(join(dataDir, "decky-lifecycle.pid"), "utf8");
    expect(pid).toBe(`${process.pid}\n`);
  });

  it("falls back to TCP on localhost when the socket path would be too long", async () => {
    const longDir = join(dataDir, "d".repeat(100));

    const db = await open(longDir);

    expect(db.connection.host).toBe("127.0.0.1");
    expect(db.connection.port).toBeGreaterThan(0);
    expect(await withClient(db, selectOne)).toEqual([{ one: 1 }]);
  });
});

/** Runs a separate Node process that tries to open `dir`. */
function runChild(
  dir: string,
): Promise<{ code: number | null; stderr: string }> {
  const script = `
    import pg from "pg";
import { pino } from "pino";
    const { openEmbeddedDatabase } = await import(process.argv[1]);
    try {
      const logger = pino({ level: "silent" });
      const db = await openEmbeddedDatabase(process.argv[2], logger);
      await db.close();
    } catch (err) {
      process.stderr.write(err.message + "\\n");
      process.exitCode = 1;
    }
  `;
  const child = spawn(
    process.execPath,
    [
      ...["--import", "tsx", "--input-type=module", "--eval", script],
      ...[MODULE_URL, dir],
    ],
    { cwd: new URL("../..", import.meta.url).pathname },
  );
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stderr }));
  });
}
