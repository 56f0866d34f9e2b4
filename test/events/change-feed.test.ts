import { expect, test } from "vitest";
import {
  Operation,
  Status,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { moveRow } from "../../src/storage/lifecycle-writes.js";
import { inWriteTransaction } from "../../src/storage/write-transaction.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

const server = serveThisFile();

test("a change whose writer never published it still reaches watchers, in revision order", async () => {
  const { lifecycleIds } = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: deckyName() }, { deckyName: deckyName() }],
  });
  const [silent, loud] = lifecycleIds as [string, string];
  const seen: [bigint, string, Status][] = [];
  const abort = new AbortController();
  const watching = (async () => {
    for await (const message of server.connect.watch(
      { ids: lifecycleIds },
      { signal: abort.signal },
    )) {
      if (message.kind === WatchResponse_Kind.CHANGE) {
        seen.push([message.revision, message.row!.id, message.row!.status]);
      }
      if (message.kind === WatchResponse_Kind.SNAPSHOT_END) {
        // A writer whose commit went through but whose process lost the
        // answer: the change is in the log, and nobody publishes it.
        const { changes } = await inWriteTransaction(
          server.server.orm.em.fork(),
          (tx) =>
            moveRow(tx, silent, {
              status: "running",
              error: null,
              completedAt: null,
            }),
        );
        expect(changes).toHaveLength(1);
        await server.grpc.report({ lifecycleId: loud, status: Status.RUNNING });
      }
      if (seen.length === 2) break;
    }
  })();

  await watching;
  abort.abort();

  const first = seen[0]![0];
  expect(seen).toEqual([
    [first, silent, Status.RUNNING],
    [first + 1n, loud, Status.RUNNING],
  ]);
});
