import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { TlsSettings } from "../config/settings.js";
import { createTlsServer, type HandshakeFailure } from "./tls.js";

/** The bytes every HTTP/2 connection with prior knowledge opens with. */
const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** How long a new connection may take to send its first bytes. */
const FIRST_BYTES_TIMEOUT_MS = 10_000;

/** A Node request handler, for HTTP/1.1 and HTTP/2 (compatibility API). */
export type RequestHandler = (
  request: http.IncomingMessage | http2.Http2ServerRequest,
  response: http.ServerResponse | http2.Http2ServerResponse,
) => void;

/** One TCP listener that serves HTTP/2 and HTTP/1.1, in cleartext or TLS. */
export interface DualProtocolListener {
  readonly tcp: net.Server;
  /**
   * Stops taking connections and closes the open ones: HTTP/2 sessions get a
   * GOAWAY and end when their streams do, HTTP/1.1 connections end once the
   * call in flight on them is answered. Whatever is still open after
   * `graceMs` is cut. Resolves when every connection is gone.
   */
  close(graceMs: number): Promise<void>;
}

/**
 * Serves gRPC over cleartext HTTP/2 (what grpc-js and connect-node send,
 * with prior knowledge) and the Connect and gRPC-Web protocols over
 * HTTP/1.1 (what browsers send) on one port. Node's HTTP/2 server only falls
 * back to HTTP/1.1 under TLS, so each new connection is routed by its first
 * bytes: the HTTP/2 preface, or anything else.
 *
 * The listener keeps track of the connections itself: the HTTP servers
 * never listen, so Node's own tracking (closeIdleConnections) sees none of
 * them, and a destroyed HTTP/2 session that was closed gracefully first
 * still waits for its peer to hang up.
 *
 * With `tlsSettings`, the listener speaks TLS instead and each connection is
 * routed by the protocol ALPN settled on.
 */
/** How long an HTTP/2 client gets to answer the PING sent at shutdown. */
const PING_WAIT_MS = 500;

export function createDualProtocolListener(
  handler: RequestHandler,
  tlsSettings?: TlsSettings,
  onHandshakeFailure: (failure: HandshakeFailure) => void = () => {},
): DualProtocolListener {
  const http1 = http.createServer(handler);
  const h2 = http2.createServer({}, handler);
  // The open streams of each HTTP/2 session.
  const sessions = new Map<http2.Http2Session, Set<http2.Http2Stream>>();
  // Sessions told to open no more streams, to close once they have none.
  const draining = new Set<http2.Http2Session>();
  const connections = new Set<net.Socket>();
  const http2Connections = new Set<net.Socket>();
  // HTTP/1.1 calls in flight on each connection; an HTTP/1.1 connection
  // absent here is idle between calls.
  const callsInFlight = new Map<net.Socket, Set<http.ServerResponse>>();
  let closing = false;
  // An HTTP/1.1 client may send its next call on a kept-alive connection the
  // moment the previous answer arrives; one that is told the connection
  // closes opens a new one, and is refused, instead of losing that call.
  const answerWithClose = (response: http.ServerResponse) => {
    if (!response.headersSent) response.setHeader("connection", "close");
  };

  h2.on("session", (session) => {
    const streams = new Set<http2.Http2Stream>();
    sessions.set(session, streams);
    session.once("close", () => {
      sessions.delete(session);
      draining.delete(session);
    });
    session.on("stream", (stream: http2.Http2Stream) => {
      streams.add(stream);
      stream.once("close", () => {
        streams.delete(stream);
        if (streams.size === 0 && draining.has(session)) session.close();
      });
    });
    if (closing) session.close();
  });
  http1.on("request", (request: http.IncomingMessage, response) => {
    const { socket } = request;
    const calls = callsInFlight.get(socket) ?? new Set();
    callsInFlight.set(socket, calls.add(response));
    if (closing) answerWithClose(response);
    response.once("close", () => {
      calls.delete(response);
      if (calls.size > 0) return;
      callsInFlight.delete(socket);
      if (closing) socket.end();
    });
  });

  const track = (socket: net.Socket) => {
    connections.add(socket);
    socket.once("close", () => {
      connections.delete(socket);
      http2Connections.delete(socket);
      callsInFlight.delete(socket);
    });
  };

  const routeByPreface = (socket: net.Socket) => {
    track(socket);
    let head = Buffer.alloc(0);
    const route = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const compared = Math.min(head.length, HTTP2_PREFACE.length);
      const isHttp2 = head
        .subarray(0, compared)
        .equals(HTTP2_PREFACE.subarray(0, compared));
      if (isHttp2 && head.length < HTTP2_PREFACE.length) return;
      socket.off("data", route);
      socket.setTimeout(0);
      socket.pause();
      socket.unshift(head);
      if (isHttp2) {
        http2Connections.add(socket);
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
    // A connection that never says which protocol it speaks holds a socket
    // and nothing else; drop it.
    socket.setTimeout(FIRST_BYTES_TIMEOUT_MS, () => socket.destroy());
  };
  const routeByAlpn = (socket: net.Socket, isHttp2: boolean) => {
    track(socket);
    socket.on("error", () => socket.destroy());
    if (isHttp2) http2Connections.add(socket);
    (isHttp2 ? h2 : http1).emit("connection", socket);
  };
  const secure =
    tlsSettings &&
    createTlsServer(
      tlsSettings,
      FIRST_BYTES_TIMEOUT_MS,
      routeByAlpn,
      onHandshakeFailure,
    );
  const tcp = secure?.server ?? net.createServer(routeByPreface);

  /**
   * Closes an HTTP/2 session without refusing a call that its client sent
   * before it knew: a refused stream reaches connect-node and others as
   * INTERNAL rather than UNAVAILABLE, so they would not try it again.
   *
   * A first GOAWAY that refuses nothing tells the client to open no more
   * streams. Those it opened before are sent ahead of its answer to a PING,
   * or in the same write (the answer jumps the queue), which the session
   * reads to the end before `setImmediate` runs. Once the PING has made the
   * round trip and the session's streams have all ended, the final GOAWAY
   * refuses nothing a client could still send.
   */
  const closeGracefully = (session: http2.Http2Session) => {
    if (session.closed || session.destroyed) return;
    session.goaway(http2.constants.NGHTTP2_NO_ERROR, 2 ** 31 - 1);
    let drained = false;
    const drain = () => {
      if (drained) return;
      drained = true;
      clearTimeout(unanswered);
      draining.add(session);
      if (sessions.get(session)?.size === 0) session.close();
    };
    // Some clients never answer the PING of an idle session (connect-node
    // among them); waiting for them would hold every stop to its deadline.
    const unanswered = setTimeout(drain, PING_WAIT_MS);
    if (!session.ping(() => setImmediate(drain))) drain();
  };

  const close = async (graceMs: number) => {
    closing = true;
    const stopped = new Promise<void>((resolve) => tcp.close(() => resolve()));
    secure?.dropHandshakes();
    for (const session of sessions.keys()) closeGracefully(session);
    for (const socket of connections) {
      const calls = callsInFlight.get(socket);
      if (calls) calls.forEach(answerWithClose);
      else if (!http2Connections.has(socket)) socket.end();
    }
    const cut = setTimeout(() => {
      for (const socket of connections) socket.destroy();
    }, graceMs);
    await stopped;
    clearTimeout(cut);
  };
  return { tcp, close };
}
