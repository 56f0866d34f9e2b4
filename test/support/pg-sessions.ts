import pg from "pg";
import { expect, vi } from "vitest";

/** A PostgreSQL session of the server, as pg_stat_activity shows it. */
export interface ServerBackend {
  readonly state: string;
  readonly wait_event_type: string | null;
}

/**
 * Two sessions of a test on PostgreSQL beside a server: a locker that takes
 * locks the server's statements then wait for, and an observer that looks
 * on at the server's own sessions.
 */
export class LockingSessions {
  private constructor(
    readonly locker: pg.Client,
    readonly observer: pg.Client,
    private readonly ownPids: number[],
  ) {}

  static async open(databaseUrl: string): Promise<LockingSessions> {
    const locker = new pg.Client({ connectionString: databaseUrl });
    const observer = new pg.Client({ connectionString: databaseUrl });
    const pids: number[] = [];
    for (const client of [locker, observer]) {
      await client.connect();
      const { rows } = await client.query("select pg_backend_pid() as pid");
      pids.push(rows[0].pid as number);
    }
    return new LockingSessions(locker, observer, pids);
  }

  get lockerPid(): number {
    return this.ownPids[0]!;
  }

  /** The sessions of the database that are neither the locker nor the observer. */
  async serverBackends(): Promise<ServerBackend[]> {
    const { rows } = await this.observer.query(
      `select state, wait_event_type from pg_stat_activity
       where datname = current_database()
         and backend_type = 'client backend'
         and pid <> all($1::int[])`,
      [this.ownPids],
    );
    return rows as ServerBackend[];
  }

  /** Waits until exactly one session of the server waits for a lock. */
  async untilServerWaitsForLock(): Promise<void> {
    await vi.waitFor(
      async () => {
        const waiting = (await this.serverBackends()).filter(
          (backend) =>
            backend.state === "active" && backend.wait_event_type === "Lock",
        );
        expect(waiting).toHaveLength(1);
      },
      { timeout: 5_000, interval: 20 },
    );
  }

  /** Waits until every session of the server is idle, outside a transaction. */
  async untilServerIdle(): Promise<void> {
    await vi.waitFor(
      async () => {
        const busy = (await this.serverBackends()).filter(
          (backend) => backend.state !== "idle",
        );
        expect(busy).toEqual([]);
      },
      { timeout: 5_000, interval: 20 },
    );
  }

  async close(): Promise<void> {
    await this.locker.end();
    await this.observer.end();
  }
}
