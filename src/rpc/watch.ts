import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { EntityManager } from "@mikro-orm/postgresql";
import {
  WatchResponse_Kind as Kind,
  type WatchResponse,
  WatchResponseSchema,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { LifecycleError } from "../domain/errors.js";
import {
  isTerminal,
  type LifecycleRow,
  OPEN_STATUSES,
} from "../domain/lifecycle.js";
import { matchesFilter } from "../domain/row-filter.js";
import type { ChangeFeed } from "../events/change-feed.js";
import {
  MAX_QUEUED_CHANGES,
  Watcher,
  type WatcherEvent,
} from "../events/watcher.js";
import {
  readChangesAfter,
  readRevisionBounds,
  readSnapshot,
} from "../storage/lifecycle-reads.js";
import { toLifecycleMessage } from "./convert.js";
import type { WatchQuery } from "./validate.js";

const REPLAY_PAGE = 500;

function message(
  kind: Kind,
  revision: bigint,
  row?: LifecycleRow,
): WatchResponse {
  return create(WatchResponseSchema, {
    kind,
    revision,
    ...(row ? { row: toLifecycleMessage(row) } : {}),
  });
}

/**
 * One Watch stream: a snapshot at one revision (or a replay of the log after
 * the caller's revision), then every matching change live, with a KEEPALIVE
 * whenever the stream has been silent for `keepaliveMs`. A watch by ids ends
 * once every watched row is terminal.
 */
export async function* watchRows(
  query: WatchQuery,
  em: EntityManager,
  feed: ChangeFeed,
  keepaliveMs: number,
  signal: AbortSignal,
  shutdownSignal: AbortSignal,
): AsyncGenerator<WatchResponse> {
  const watcher = new Watcher(feed, [signal, shutdownSignal]);
  try {
    const byIds = query.ids.length > 0;
    const open = new Set<string>();
    let cursor: bigint;

    if (query.afterRevision > 0n) {
      const bounds = await readRevisionBounds(em);
      if (
        query.afterRevision < bounds.prunedThrough ||
        query.afterRevision > bounds.current
      ) {
        throw outOfRange(query.afterRevision, bounds);
      }
      if (byIds) {
        const current = await readSnapshot(em, query.filter);
        checkAllFound(query.ids, current.rows);
        for (const row of current.rows) {
          if (!isTerminal(row.status)) open.add(row.id);
        }
      }
      cursor = query.afterRevision;
      for (;;) {
        const changes = await readChangesAfter(em, cursor, REPLAY_PAGE);
        for (const change of changes) {
          // Revisions are dense, so a hole means pruning removed changes
          // after the bounds were checked.
          if (change.revision !== cursor + 1n)
            throw pruned(query.afterRevision);
          cursor = change.revision;
          if (!matchesFilter(query.filter, change.row)) continue;
          if (isTerminal(change.row.status)) open.delete(change.row.id);
          yield message(Kind.CHANGE, change.revision, change.row);
        }
        if (changes.length < REPLAY_PAGE) break;
        signal.throwIfAborted();
      }
    } else {
      const snapshot = await readSnapshot(
        em,
        byIds ? query.filter : { ...query.filter, statuses: OPEN_STATUSES },
      );
      if (byIds) checkAllFound(query.ids, snapshot.rows);
      cursor = snapshot.revision;
      for (const row of snapshot.rows) {
        if (!isTerminal(row.status)) open.add(row.id);
        yield message(Kind.SNAPSHOT, cursor, row);
      }
      yield message(Kind.SNAPSHOT_END, cursor);
    }

    // The keepalive interval counts from the last message sent, not the last
    // change seen: changes to rows this stream does not match keep arriving
    // on a busy server, and the stream must not stay silent through them.
    let lastSentAt = performance.now();
    while (!(byIds && open.size === 0)) {
      const quietMs = keepaliveMs - (performance.now() - lastSentAt);
      const event: WatcherEvent =
        quietMs > 0 ? await watcher.next(quietMs) : { kind: "idle" };
      if (event.kind === "overflowed") {
        throw new ConnectError(
          `this watch fell more than ${MAX_QUEUED_CHANGES} changes behind; resume from revision ${cursor}`,
          Code.Unavailable,
        );
      }
      if (event.kind === "interrupted") {
        throw new ConnectError(
          `the database is unavailable; resume from revision ${cursor}`,
          Code.Unavailable,
          undefined,
          undefined,
          event.cause,
        );
      }
      if (event.kind === "closed") {
        if (shutdownSignal.aborted) {
          throw new ConnectError(
            `the server is shutting down; resume from revision ${cursor}`,
            Code.Unavailable,
          );
        }
        // The caller's deadline passed or the caller went away; a deadline
        // must not look like a stream that ended by itself.
        if (signal.aborted) throw ConnectError.from(signal.reason);
        return;
      }
      if (event.kind === "idle") {
        yield message(Kind.KEEPALIVE, cursor);
        lastSentAt = performance.now();
        continue;
      }
      const { change } = event;
      if (change.revision <= cursor) continue;
      cursor = change.revision;
      if (!matchesFilter(query.filter, change.row)) continue;
      if (isTerminal(change.row.status)) open.delete(change.row.id);
      yield message(Kind.CHANGE, change.revision, change.row);
      lastSentAt = performance.now();
    }
  } finally {
    watcher.close();
  }
}

function outOfRange(
  afterRevision: bigint,
  bounds: { prunedThrough: bigint; current: bigint },
): LifecycleError {
  return new LifecycleError(
    "out_of_range",
    `after_revision ${afterRevision} is outside the kept history (${bounds.prunedThrough} to ${bounds.current}); watch again without after_revision`,
  );
}

function pruned(afterRevision: bigint): LifecycleError {
  return new LifecycleError(
    "out_of_range",
    `after_revision ${afterRevision} is no longer in the kept history; watch again without after_revision`,
  );
}

function checkAllFound(ids: readonly string[], rows: readonly LifecycleRow[]) {
  const found = new Set(rows.map((row) => row.id));
  const missing = ids.filter((id) => !found.has(id));
  if (missing.length > 0) {
    throw new LifecycleError(
      "not_found",
      `lifecycle row${missing.length > 1 ? "s" : ""} ${missing.join(", ")} ${missing.length > 1 ? "do" : "does"} not exist`,
    );
  }
}
