import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import {
  LifecycleService,
  Operation,
  Status,
  WatchResponse_Kind,
} from "../../../gen/decky/lifecycle/v1/lifecycle_pb.js";

const lifecycle = createClient(
  LifecycleService,
  createConnectTransport({ baseUrl: window.location.origin }),
);

async function accept(deckyName: string): Promise<string> {
  const response = await lifecycle.accept({
    operation: Operation.DEPLOY,
    targets: [{ deckyName }],
  });
  return response.lifecycleIds[0]!;
}

async function list(deckyName: string) {
  const response = await lifecycle.list({ deckyName });
  return response.rows.map((row) => ({
    id: row.id,
    deckyName: row.deckyName,
    status: Status[row.status],
  }));
}

/**
 * Watches `id` until the stream ends; calls `window.onWatchMessage` for each
 * message so the test can act between them.
 */
async function watch(id: string) {
  const seen: string[] = [];
  for await (const message of lifecycle.watch({ ids: [id] })) {
    const status = message.row ? Status[message.row.status] : "-";
    const entry = `${WatchResponse_Kind[message.kind]} ${status}`;
    seen.push(entry);
    await (
      window as unknown as { onWatchMessage: (entry: string) => Promise<void> }
    ).onWatchMessage(entry);
  }
  return seen;
}

Object.assign(window, { lifecycle: { accept, list, watch } });
