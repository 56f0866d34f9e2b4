import { randomBytes } from "node:crypto";
import pg from "pg";
import { pino } from "pino";
import { expect, test } from "vitest";
import { loadSettings } from "../../src/config/settings.js";
import { startServer } from "../../src/server/start-server.js";

const base = process.env.TEST_DATABASE_URL;

test.runIf(base)(
  "the server refuses a DATABASE_URL naming a database that does not exist, and creates none",
  async () => {
    const name = `dl_test_missing_${randomBytes(4).toString("hex")}`;
    const url = new URL(base!);
    url.pathname = `/${name}`;

    const started = startServer(
      loadSettings({ DATABASE_URL: url.toString(), PORT: "0" }),
      pino({ level: "silent" }),
    );

    await expect(started).rejects.toThrow(
      `cannot use the database: database "${name}" does not exist`,
    );
    const admin = new pg.Client({ connectionString: base });
    await admin.connect();
    const found = await admin.query(
      "select 1 from pg_database where datname = $1",
      [name],
    );
    await admin.end();
    expect(found.rows).toEqual([]);
  },
);
