import { Code, ConnectError, createClient } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-web";
import {
  LifecycleService,
  Status,
  WatchResponse_Kind,
} from "../../../gen/decky/lifecycle/v1/lifecycle_pb.js";

// The service this page calls: `?api=<origin>`, or the page's own origin.
const baseUrl =
  new URLSearchParams(window.location.search).get("api") ??
  window.location.origin;
const lifecycle = createClient(
  LifecycleService,
  createConnectTransport({ baseUrl }),
);
const lifecycleOverGrpcWeb = createClient(
  LifecycleService,
  createGrpcWebTransport({ baseUrl }),
);

/** A call's outcome as plain data the test can compare. */
type Outcome<T> =
  | { readonly ok: true; readonly value: T }
  | { readonly ok: false; readonly code: string; readonly message: string };

async function outcome<T>(call: () => Promise<T>): Promise<Outcome<T>> {
  try {
    return { ok: true, value: await call() };
  } catch (error) {
    const connectError = ConnectError.from(error);
    return {
      ok: false,
      code: Code[connectError.code],
      message: connectError.rawMessage,
    };
  }
}

/** List on Connect, or on gRPC-Web with `protocol` "grpc-web". */
function list(deckyName: string, pageToken = "", protocol = "connect") {
  const client = protocol === "grpc-web" ? lifecycleOverGrpcWeb : lifecycle;
  return outcome(async () => {
    const response = await client.list({ deckyName, pageToken });
    return response.rows.map((row) => ({
      id: row.id,
      deckyName: row.deckyName,
      status: Status[row.status],
    }));
  });
}

/**
 * Watches the open rows of `deckyName` until `count` messages came; calls
 * `window.onWatchMessage` with each so the test can act between them.
 */
function watch(deckyName: string, count: number) {
  return outcome(async () => {
    const seen: string[] = [];
    const stop = new AbortController();
    try {
      for await (const message of lifecycle.watch(
        { deckyName },
        { signal: stop.signal },
      )) {
        if (message.kind === WatchResponse_Kind.KEEPALIVE) continue;
        const status = message.row ? Status[message.row.status] : "-";
        const entry = `${WatchResponse_Kind[message.kind]} ${status}`;
        seen.push(entry);
        await (
          window as unknown as {
            onWatchMessage: (entry: string) => Promise<void>;
          }
        ).onWatchMessage(entry);
        if (seen.length === count) break;
      }
    } finally {
      stop.abort();
    }
    return seen;
  });
}

Object.assign(window, { lifecycle: { list, watch } });
