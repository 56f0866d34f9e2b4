import type { EntityManager, Knex } from "@mikro-orm/postgresql";

const callSignals = new WeakMap<EntityManager, AbortSignal>();

/**
 * Ties `em`, the entity manager of one call, to that call's signal, and
 * returns it. From then on a statement that `query` runs on `em` does not
 * start once the signal has aborted (the client went away, its deadline
 * passed), and one that is running is cancelled.
 */
export function bindCallSignal(
  em: EntityManager,
  signal: AbortSignal,
): EntityManager {
  callSignals.set(em, signal);
  return em;
}

/** The signal of the call that `em` serves, if it serves one. */
export function callSignalOf(em: EntityManager): AbortSignal | undefined {
  return callSignals.get(em);
}

/**
 * Gives `fork`, the entity manager of a transaction opened on `em`, the
 * signal of `em`'s call, and returns it.
 */
export function sameCall(
  fork: EntityManager,
  em: EntityManager,
): EntityManager {
  const signal = callSignals.get(em);
  if (signal) callSignals.set(fork, signal);
  return fork;
}

/** A pooled node-postgres connection, as knex hands it out. */
interface PgConnection {
  readonly processID: number | null;
}

/** A cancel that has not stopped the statement is sent again after this. */
const CANCEL_RETRY_MS = 250;

/**
 * Runs one statement through `run` on a connection of `client`: the
 * transaction's own connection when `client` is a transaction's, else one
 * from the pool, held until the statement has ended.
 *
 * Once `signal` aborts, no statement starts, and waiting for a pooled
 * connection stops. On PostgreSQL, a statement that is already running is
 * cancelled with `pg_cancel_backend` from a new connection of its own (on
 * the embedded database it runs to its end). The call then fails with the
 * signal's reason, whatever the statement's own outcome.
 * The connection goes back to the pool (or to the transaction's next
 * statement) only once the statement has ended and every cancel sent for it
 * has been delivered: a cancel that landed after that would hit a statement
 * of some other caller.
 */
export async function runCancellable<T>(
  client: Knex.Client,
  signal: AbortSignal,
  run: (connection: PgConnection) => Promise<T>,
): Promise<T> {
  signal.throwIfAborted();
  const connection = await acquireUnlessAborted(client, signal);
  try {
    signal.throwIfAborted();
    return await untilEnded(client, connection, signal, run(connection));
  } finally {
    await client.releaseConnection(connection);
  }
}

async function acquireUnlessAborted(
  client: Knex.Client,
  signal: AbortSignal,
): Promise<PgConnection> {
  const acquiring = client.acquireConnection() as Promise<PgConnection>;
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([acquiring, aborted]);
  } catch (error) {
    // The pool hands the connection over later all the same; it goes
    // straight back, unused.
    if (signal.aborted) {
      acquiring.then(
        (connection) => client.releaseConnection(connection),
        () => undefined,
      );
    }
    throw error;
  } finally {
    signal.removeEventListener("abort", onAbort!);
  }
}

async function untilEnded<T>(
  client: Knex.Client,
  connection: PgConnection,
  signal: AbortSignal,
  statement: Promise<T>,
): Promise<T> {
  let ended = false;
  const settled = statement.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  );
  void settled.then(() => {
    ended = true;
  });

  let cancelling: Promise<void> | undefined;
  const onAbort = () => {
    cancelling = cancelUntilEnded(client, connection, settled, () => ended);
  };
  // The embedded database runs each statement to its end on this process's
  // event loop, where nothing can interrupt it; it also refuses a second
  // connection and ignores cancel requests. By the time an abort can be
  // seen here, a statement already sent to it has run or will run all the
  // same, so there only the call's next statement is kept from starting.
  if (!servesOneConnection(client)) {
    signal.addEventListener("abort", onAbort, { once: true });
  }
  const outcome = await settled;
  signal.removeEventListener("abort", onAbort);
  await cancelling;

  if (signal.aborted) throw signal.reason;
  if (!outcome.ok) throw outcome.error;
  return outcome.value;
}

/**
 * Cancels the statement running on `connection` until it has ended. A
 * cancel that reaches the server before the statement does is dropped
 * there, and one that cannot be sent (no connection to spare) is tried
 * again; the statement ends by itself in the worst case.
 */
async function cancelUntilEnded(
  client: Knex.Client,
  connection: PgConnection,
  settled: Promise<unknown>,
  ended: () => boolean,
): Promise<void> {
  while (!ended()) {
    await cancelStatement(client, connection).catch(() => undefined);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      settled,
      new Promise((resolve) => {
        timer = setTimeout(resolve, CANCEL_RETRY_MS);
      }),
    ]);
    clearTimeout(timer);
  }
}

async function cancelStatement(
  client: Knex.Client,
  connection: PgConnection,
): Promise<void> {
  const canceller = (await client.acquireRawConnection()) as {
    query(text: string, values: unknown[]): Promise<unknown>;
  };
  try {
    await canceller.query("select pg_cancel_backend($1)", [
      connection.processID,
    ]);
  } finally {
    await client.destroyRawConnection(canceller).catch(() => undefined);
  }
}

/** The embedded database: its pool holds its one connection. */
function servesOneConnection(client: Knex.Client): boolean {
  return client.config.pool?.max === 1;
}
