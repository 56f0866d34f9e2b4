import http from "node:http";
import http2 from "node:http2";
import net from "node:net";

/** The bytes every HTTP/2 connection with prior knowledge opens with. */
const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

type RequestHandler = (
  request: http.IncomingMessage | http2.Http2ServerRequest,
  response: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/** One TCP listener that serves cleartext HTTP/2 and HTTP/1.1. */
export interface DualProtocolListener {
  readonly tcp: net.Server;
  readonly http1: http.Server;
  readonly http2: http2.Http2Server;
  /** Open HTTP/2 sessions, for shutdown. */
  readonly sessions: Set<http2.Http2Session>;
}

/**
 * Serves gRPC over cleartext HTTP/2 (what grpc-js and connect-node send,
 * with prior knowledge) and the Connect and gRPC-Web protocols over
 * HTTP/1.1 (what browsers send) on one port. Node's HTTP/2 server only falls
 * back to HTTP/1.1 under TLS, so each new connection is routed by its first
 * bytes: the HTTP/2 preface, or anything else.
 */
export function createDualProtocolListener(
  handler: RequestHandler,
): DualProtocolListener {
  const http1 = http.createServer(handler);
  const h2 = http2.createServer({}, handler);
  const sessions = new Set<http2.Http2Session>();
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });

  const tcp = net.createServer((socket) => {
    let head = Buffer.alloc(0);
    const route = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const compared = Math.min(head.length, HTTP2_PREFACE.length);
      const isHttp2 = head
        .subarray(0, compared)
        .equals(HTTP2_PREFACE.subarray(0, compared));
      if (isHttp2 && head.length < HTTP2_PREFACE.length) return;
      socket.off("data", route);
      socket.pause();
      socket.unshift(head);
      if (isHttp2) {
        // The HTTP/2 session reads the unshifted preface from the socket's
        // buffer itself and then takes the socket over.
        h2.emit("connection", socket);
      } else {
        http1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", route);
    socket.on("error", () => socket.destroy());
  });
  return { tcp, http1, http2: h2, sessions };
}
