import type { EntityManager } from "@mikro-orm/postgresql";
import type { LifecycleChange } from "../domain/lifecycle.js";
import { callSignalOf, sameCall } from "./query-cancellation.js";
import { query, ROW_COLUMNS, type SqlValue, toLifecycleChange } from "./sql.js";

/**
 * One write transaction. Before it changes a row it locks the revision
 * counter, which serialises writers from the lock until commit, so that
 * revisions are handed out in commit order and a watcher that has seen
 * revision N has seen every change up to N.
 */
export class WriteTransaction {
  readonly changes: LifecycleChange[] = [];
  #revision: bigint | undefined;

  constructor(readonly em: EntityManager) {}

  /**
   * Locks the counter (once) and returns the first revision not yet handed
   * out: the one the next changed row takes.
   */
  async nextRevision(): Promise<bigint> {
    if (this.#revision === undefined) {
      const [counter] = await query(
        this.em,
        "select value from lifecycle_revision where id = 1 for update",
      );
      this.#revision = BigInt(counter!.value as string);
    }
    return this.#revision + 1n;
  }

  /**
   * Runs `statement`, a data-modifying statement returning the changed
   * `decky_lifecycle` rows, and logs each returned row as a change. Rows it
   * changes must take consecutive revisions from `nextRevision()` upwards; a
   * caller that gets fewer rows back than it numbered must roll back.
   */
  async change(
    statement: string,
    bindings: readonly SqlValue[],
  ): Promise<LifecycleChange[]> {
    await this.nextRevision();
    const rows = await query(
      this.em,
      `with changed as (${statement})
       insert into lifecycle_change (revision, lifecycle_id, ${ROW_COLUMNS})
       select revision, id, ${ROW_COLUMNS} from changed
       returning *`,
      bindings,
    );
    const changes = rows
      .map(toLifecycleChange)
      .sort((a, b) => (a.revision < b.revision ? -1 : 1));
    const last = changes.at(-1);
    if (last) this.#revision = last.revision;
    this.changes.push(...changes);
    return changes;
  }

  /** Stores the counter if any revision was taken; called before commit. */
  async finish(): Promise<void> {
    if (this.changes.length === 0 || this.#revision === undefined) return;
    await query(
      this.em,
      "update lifecycle_revision set value = ? where id = 1",
      [this.#revision.toString()],
    );
  }
}

/**
 * Runs `work` in one transaction on a fork of `em` and returns its result
 * with the changes it committed, in revision order. The fork serves the
 * same call as `em`: a call that ends before the transaction's last
 * statement has ended writes nothing.
 */
export async function inWriteTransaction<T>(
  em: EntityManager,
  work: (tx: WriteTransaction) => Promise<T>,
): Promise<{ result: T; changes: LifecycleChange[] }> {
  let changes: LifecycleChange[] = [];
  callSignalOf(em)?.throwIfAborted();
  const result = await em.transactional(async (fork) => {
    const tx = new WriteTransaction(sameCall(fork, em));
    const value = await work(tx);
    await tx.finish();
    changes = tx.changes;
    return value;
  });
  return { result, changes };
}
