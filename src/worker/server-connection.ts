import type { Transport } from "@connectrpc/connect";
import {
  createGrpcTransport,
  Http2SessionManager,
} from "@connectrpc/connect-node";

/** How to reach the server: a transport of your own, or a base URL. */
export type WorkerClientConnection =
  | { transport: Transport }
  | {
      baseUrl: string;
      /**
       * The host's worker token, sent as `Authorization: Bearer`. A
       * function is asked again for every stream, so that a worker takes
       * a rotated token without a restart (read from a file that the
       * operator replaces, say).
       */
      token?: string | (() => string | Promise<string>) | undefined;
    };

/** The transport a WorkerClient calls through. */
export interface ServerConnection {
  readonly transport: Transport;
  /**
   * The HTTP/2 session the client made for a base URL, and so closes;
   * undefined for a transport passed in.
   */
  readonly ownSession: Http2SessionManager | undefined;
}

/**
 * The transport `connection` names. For a base URL, a session of the
 * client's own, so that a failed stream can drop a dead connection and
 * stop() can close it; a transport passed in belongs to the caller and
 * stays open.
 */
export function connectToServer(
  connection: WorkerClientConnection,
): ServerConnection {
  if ("transport" in connection) {
    return { transport: connection.transport, ownSession: undefined };
  }
  const ownSession = new Http2SessionManager(connection.baseUrl);
  const { token } = connection;
  const transport = createGrpcTransport({
    baseUrl: connection.baseUrl,
    sessionManager: ownSession,
    interceptors:
      token === undefined
        ? []
        : [
            (next) => async (request) => {
              const text = await tokenText(token, request.signal);
              request.header.set("authorization", `Bearer ${text}`);
              return next(request);
            },
          ],
  });
  return { transport, ownSession };
}

/**
 * The token's text; a function's answer, unless the call is aborted first
 * (the client stops), so that a token that is slow to come holds up nothing.
 */
function tokenText(
  token: string | (() => string | Promise<string>),
  signal: AbortSignal,
): Promise<string> {
  if (typeof token === "string") return Promise.resolve(token);
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    if (signal.aborted) return onAbort();
    signal.addEventListener("abort", onAbort, { once: true });
    Promise.resolve()
      .then(token)
      .then(resolve, reject)
      .finally(() => signal.removeEventListener("abort", onAbort));
  });
}
