import type http from "node:http";
import type http2 from "node:http2";
import type net from "node:net";
import tls from "node:tls";
import type { TlsSettings } from "../config/settings.js";

/**
 * Offered in this order: gRPC clients (grpc-js, connect-node) and browsers
 * take HTTP/2; clients that offer no ALPN at all (Node's https module) get
 * HTTP/1.1.
 */
const ALPN_PROTOCOLS = ["h2", "http/1.1"];

/** A connection whose TLS handshake failed, and OpenSSL's reason. */
export interface HandshakeFailure {
  /** The client's address and port, while the connection still has them. */
  readonly peer?: string;
  /**
   * "peer did not return a certificate", "UNABLE_TO_VERIFY_LEAF_SIGNATURE"
   * or ERR_TLS_HANDSHAKE_TIMEOUT, say.
   */
  readonly reason: string;
}

type TlsError = Error & { reason?: string; code?: string };

/** A TLS listener and the connections still in their handshake. */
export interface TlsServer {
  readonly server: tls.Server;
  /**
   * Closes every connection whose handshake has not finished; from then on,
   * failed handshakes are not reported.
   */
  dropHandshakes(): void;
}

/**
 * A TLS listener that hands each connection, once its handshake is done, to
 * `onConnection` with the protocol ALPN settled on. With a client CA, every
 * client must present a certificate signed by it: a handshake without one,
 * or with another, fails and never reaches `onConnection`.
 */
export function createTlsServer(
  settings: TlsSettings,
  handshakeTimeoutMs: number,
  onConnection: (socket: tls.TLSSocket, http2: boolean) => void,
  onHandshakeFailure: (failure: HandshakeFailure) => void,
): TlsServer {
  const mutual = settings.clientCa !== undefined;
  // The TCP connections whose TLS handshake is under way, by peer address.
  const handshakes = new Map<string, net.Socket>();
  const server = tls.createServer(
    {
      cert: settings.cert,
      key: settings.key,
      ALPNProtocols: ALPN_PROTOCOLS,
      handshakeTimeout: handshakeTimeoutMs,
      ...(mutual
        ? { ca: settings.clientCa, requestCert: true, rejectUnauthorized: true }
        : {}),
    },
    (socket) => onConnection(socket, socket.alpnProtocol === "h2"),
  );
  server.on("connection", (socket: net.Socket) => {
    const peer = peerOf(socket);
    handshakes.set(peer, socket);
    socket.once("close", () => {
      if (handshakes.get(peer) === socket) handshakes.delete(peer);
    });
  });
  server.on("secureConnection", (socket: tls.TLSSocket) => {
    handshakes.delete(peerOf(socket));
  });
  let dropping = false;
  server.on("tlsClientError", (error: TlsError, socket: tls.TLSSocket) => {
    if (dropping) return;
    // A certificate that fails verification is checked by Node once the
    // handshake is done, and the connection is destroyed at once: its
    // address is gone, and the verification error is the reason.
    onHandshakeFailure({
      ...(socket.remoteAddress === undefined ? {} : { peer: peerOf(socket) }),
      reason:
        socket.authorizationError?.toString() ??
        error.reason ??
        error.code ??
        error.message,
    });
  });
  return {
    server,
    dropHandshakes() {
      dropping = true;
      for (const socket of handshakes.values()) socket.destroy();
    },
  };
}

function peerOf(socket: net.Socket): string {
  return `${socket.remoteAddress} ${socket.remotePort}`;
}

/**
 * The SHA-256 fingerprint of the client certificate that the request's
 * connection was verified with, as lower-case hex without colons; undefined
 * without mutual TLS.
 */
export function peerCertificateFingerprint(
  request: http.IncomingMessage | http2.Http2ServerRequest,
): string | undefined {
  // An HTTP/2 request's socket stands for its session's TLS socket.
  const socket = request.socket;
  if (!(socket instanceof tls.TLSSocket) || !socket.authorized) {
    return undefined;
  }
  const fingerprint = socket.getPeerCertificate().fingerprint256;
  if (!fingerprint) return undefined;
  return fingerprint.replaceAll(":", "").toLowerCase();
}
