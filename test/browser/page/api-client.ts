import {
  Code,
  ConnectError,
  createClient,
  type Interceptor,
} from "@connectrpc/connect";
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

/** The bearer token the page sends with every call; none until `useToken`. */
let bearerToken: string | undefined;

/** Adds `authorization: Bearer <token>` to each call once a token is set. */
const sendBearerToken: Interceptor = (next) => (request) => {
  if (bearerToken !== undefined) {
    request.header.set("authorization", `Bearer ${bearerToken}`);
  }
  return next(request);
};

const lifecycle = createClient(
  LifecycleService,
  createConnectTransport({ baseUrl, interceptors: [sendBearerToken] }),
);
const lifecycleOverGrpcWeb = createClient(
  LifecycleService,
  createGrpcWebTransport({ baseUrl, interceptors: [sendBearerToken] }),
);

/** Sends `token` as the bearer token of every call from now on. */
function useToken(token: string) {
  bearerToken = token;
}

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

/** The client of `protocol`: "connect", or "grpc-web". */
function clientOf(protocol: string) {
  return protocol === "grpc-web" ? lifecycleOverGrpcWeb : lifecycle;
}

/** List on Connect, or on gRPC-Web with `protocol` "grpc-web". */
function list(deckyName: string, pageToken = "", protocol = "connect") {
  const client = clientOf(protocol);
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
 * Watches the open rows of `deckyName` until `count` messages came, on
 * Connect or, with `protocol` "grpc-web", gRPC-Web; calls
 * `window.onWatchMessage` with each so the test can act between them.
 */
function watch(deckyName: string, count: number, protocol = "connect") {
  return outcome(async () => {
    const seen: string[] = [];
    const stop = new AbortController();
    try {
      for await (const message of clientOf(protocol).watch(
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

Object.assign(window, { lifecycle: { useToken, list, watch } });
