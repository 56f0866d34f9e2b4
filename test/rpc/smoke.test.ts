import { expect, test } from "vitest";
import {
  Operation,
  Status,
  WatchResponse_Kind,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { deckyName, serveThisFile } from "../support/test-server.js";

const server = serveThisFile();

test("a row accepted over gRPC is watched over Connect until it succeeds", async () => {
  const name = deckyName();
  const accepted = await server.grpc.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName: name }],
  });
  const id = accepted.lifecycleIds[0]!;
  const seen: [WatchResponse_Kind, Status | undefined][] = [];
  const watching = (async () => {
    for await (const message of server.connect.watch({ ids: [id] })) {
      seen.push([message.kind, message.row?.status]);
      if (message.kind === WatchResponse_Kind.SNAPSHOT_END) {
        await server.grpcWeb.report({
          lifecycleId: id,
          status: Status.RUNNING,
        });
        await server.connect.report({
          lifecycleId: id,
          status: Status.SUCCEEDED,
        });
      }
    }
  })();
  await watching;
  expect(seen).toEqual([
    [WatchResponse_Kind.SNAPSHOT, Status.PENDING],
    [WatchResponse_Kind.SNAPSHOT_END, undefined],
    [WatchResponse_Kind.CHANGE, Status.RUNNING],
    [WatchResponse_Kind.CHANGE, Status.SUCCEEDED],
  ]);
});
