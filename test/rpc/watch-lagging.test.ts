import { Code, ConnectError } from "@connectrpc/connect";
import { expect, test } from "vitest";
import {
  Operation,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { MAX_QUEUED_CHANGES } from "../../src/events/watcher.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

const server = serveThisFile();

test("a watch that stops reading ends with UNAVAILABLE naming the revision to resume from", async () => {
  const stream = server.grpc.watch({})[Symbol.asyncIterator]();
  const end = await stream.next();
  expect(end.value?.kind).toBe(WatchResponse_Kind.SNAPSHOT_END);
  const snapshotRevision = end.value!.revision;

  // The client reads nothing while more changes commit than the server
  // holds for one stream, beyond what flow control lets through.
  const batches = Math.ceil((MAX_QUEUED_CHANGES * 3) / 500);
  for (let batch = 0; batch < batches; batch += 1) {
    await server.grpc.accept({
      operation: Operation.DEPLOY,
      targets: Array.from({ length: 500 }, () => ({ deckyName: deckyName() })),
    });
  }

  let last = snapshotRevision;
  let failure: ConnectError | undefined;
  try {
    for (;;) {
      const next = await stream.next();
      if (next.done) break;
      expect(next.value.revision).toBe(last + 1n);
      last = next.value.revision;
    }
  } catch (error) {
    failure = ConnectError.from(error);
  }

  expect(failure?.code).toBe(Code.Unavailable);
  expect(failure?.rawMessage).toBe(
    `this watch fell more than ${MAX_QUEUED_CHANGES} changes behind; resume from revision ${last}`,
  );
  expect(last).toBeGreaterThan(snapshotRevision);
  expect(last).toBeLessThan(snapshotRevision + BigInt(batches * 500));
});
