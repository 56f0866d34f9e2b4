import { isIP } from "node:net";
import { connect, type SecureContextOptions } from "node:tls";
import type { ConnectError } from "@connectrpc/connect";

/** How long the probe waits for the server's verdict on the handshake. */
const PROBE_TIMEOUT_MS = 3000;

/** What a call's socket meets when the server closes it under the call. */
const CLOSED_UNDER_THE_CALL = new Set(["ECONNRESET", "EPIPE"]);

/**
 * Why a server closed the connection under a call: the error a second
 * handshake met, such as a TLS alert in OpenSSL's words; or a close without
 * a word once a handshake with a client certificate was done, as a Node
 * server closes for a certificate its client CA did not sign.
 */
export type Refusal =
  | { readonly kind: "error"; readonly text: string }
  | { readonly kind: "closed-after-handshake" };

/**
 * Why the server at `url` closed the connection under a call that failed
 * with `failure`, when it refused the TLS client (`options`).
 *
 * Under TLS 1.3 a server checks the client's certificate after the client
 * has finished its side of the handshake and sent its request; the server's
 * alert ("certificate required") then arrives on a connection the client is
 * writing to, and is most often lost to the reset that follows. A second
 * handshake that writes nothing reads the alert, or a session ticket when
 * the server accepts the client.
 */
export function handshakeRefusal(
  url: string,
  options: SecureContextOptions,
  failure: ConnectError,
): Promise<Refusal | undefined> {
  const server = new URL(url);
  const code = (failure.cause as NodeJS.ErrnoException | undefined)?.code;
  if (
    server.protocol !== "https:" ||
    code === undefined ||
    !CLOSED_UNDER_THE_CALL.has(code)
  ) {
    return Promise.resolve(undefined);
  }
  const host = server.hostname.replace(/^\[(.*)\]$/, "$1");
  return new Promise((resolve) => {
    const socket = connect({
      ...options,
      host,
      port: Number(server.port || 443),
      ...(isIP(host) === 0 ? { servername: host } : {}),
      ALPNProtocols: ["http/1.1"],
    });
    let handshakeDone = false;
    const settle = (refusal?: Refusal) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(refusal);
    };
    const timer = setTimeout(settle, PROBE_TIMEOUT_MS);
    socket.once("secureConnect", () => {
      handshakeDone = true;
    });
    socket.once("session", () => settle());
    socket.once("error", (error) =>
      settle({ kind: "error", text: error.message }),
    );
    socket.once("close", () =>
      settle(
        handshakeDone && options.cert !== undefined
          ? { kind: "closed-after-handshake" }
          : undefined,
      ),
    );
    socket.resume();
  });
}
