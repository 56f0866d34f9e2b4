import { Code, ConnectError } from "@connectrpc/connect";
import type { Refusal } from "./handshake-probe.js";

/** Thrown for a mistake in how the CLI was called; printed without a trace. */
export class UsageError extends Error {}

/**
 * A call to the server at `url` that failed with `failure`; `refusal` says
 * why the server closed the connection, when a second TLS handshake could
 * tell.
 */
export class ServerCallError extends Error {
  constructor(
    readonly url: string,
    readonly failure: ConnectError,
    readonly refusal: Refusal | undefined,
  ) {
    super(failure.message, { cause: failure });
  }
}

/** A code as gRPC spells it, such as PERMISSION_DENIED. */
function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/**
 * The line the CLI prints for a command that failed: the server's message
 * and code, what to do about a TLS handshake it refused or a server that is
 * not this service, a usage mistake as written, anything else as it
 * converts.
 */
export function describeFailure(error: unknown): string {
  return error instanceof ServerCallError
    ? describeCallFailure(error)
    : error instanceof ConnectError
      ? `${error.rawMessage} (${codeName(error.code)})`
      : error instanceof UsageError
        ? error.message
        : String(error);
}

/**
 * Certificate checks that fail when the system does not trust the CA that
 * signed the server's certificate, as Node's TLS names them.
 */
const UNTRUSTED_SERVER_CERTIFICATE = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "CERT_UNTRUSTED",
]);

/** TLS alerts a server sends for a client certificate it does not accept. */
const REFUSED_CLIENT_CERTIFICATE = new Set([42, 43, 44, 45, 46, 48]);

const CERTIFICATE_REQUIRED = 116;

function describeCallFailure({
  url,
  failure,
  refusal,
}: ServerCallError): string {
  if (refusal?.kind === "closed-after-handshake") {
    return `the server at ${url} closed the connection as soon as the TLS handshake was done, as a server under mutual TLS does with a client certificate its client CA did not sign: pass --cert-file and --key-file of one it signed`;
  }
  const handshake =
    describeOpenSslFailure(url, refusal?.text) ??
    describeOpenSslFailure(url, failure.rawMessage);
  if (handshake !== undefined) return handshake;
  const cause: { code?: unknown; message?: unknown } =
    failure.cause instanceof Error ? failure.cause : {};
  if (typeof cause.code === "string") {
    if (UNTRUSTED_SERVER_CERTIFICATE.has(cause.code)) {
      return `the server at ${url} presented a certificate this system does not trust (${cause.message}): pass --ca-file (or DECKY_CA_FILE) with the CA that signed it`;
    }
    if (cause.code === "ERR_TLS_CERT_ALTNAME_INVALID") {
      return `the certificate of the server at ${url} is not for that host (${cause.message}): call the server by a name or address its certificate holds`;
    }
  }
  const described = `${failure.rawMessage} (${codeName(failure.code)})`;
  return failure.code === Code.Unimplemented
    ? `no decky-lifecycle service answers at ${url}: ${described}`
    : described;
}

/**
 * What went wrong in the TLS handshake with the server at `url`, when
 * `text` is OpenSSL's, such as "…:error:0A00045C:SSL routines:
 * ssl3_read_bytes:tlsv13 alert certificate required:../deps/…:1601:SSL
 * alert number 116".
 */
function describeOpenSslFailure(
  url: string,
  text: string | undefined,
): string | undefined {
  const reason = /:error:[0-9A-F]+:[^:]*:[^:]*:([^:]+)/.exec(text ?? "")?.[1];
  if (reason === undefined) return undefined;
  const alert = Number(/SSL alert number (\d+)/.exec(text ?? "")?.[1]);
  const name = reason.replace(/^\S+ alert /, "");
  if (alert === CERTIFICATE_REQUIRED) {
    return `the server at ${url} asks for a client certificate (TLS alert "${name}"): pass --cert-file and --key-file (or DECKY_CERT_FILE and DECKY_KEY_FILE)`;
  }
  if (REFUSED_CLIENT_CERTIFICATE.has(alert)) {
    return `the server at ${url} refused the client certificate (TLS alert "${name}"): pass --cert-file and --key-file of a certificate its client CA signed`;
  }
  if (!Number.isNaN(alert)) {
    return `the server at ${url} ended the TLS handshake (TLS alert "${name}")`;
  }
  if (reason === "wrong version number") {
    return `the server at ${url} does not answer in TLS (${reason}): for a server without TLS, give an http:// URL`;
  }
  return `the TLS handshake with the server at ${url} failed (${reason})`;
}
