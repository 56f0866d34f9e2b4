import { isIP } from "node:net";

/** Whether `host` is an address only this machine can reach. */
export function isLoopback(host: string): boolean {
  const address = host.replace(/^\[(.*)\]$/, "$1").toLowerCase();
  if (address === "localhost") return true;
  if (isIP(address) === 4) return address.startsWith("127.");
  if (isIP(address) === 6) {
    return address === "::1" || /^::ffff:127\./.test(address);
  }
  return false;
}

/** What decides whether the server may listen where it is told to. */
export interface Exposure {
  readonly host: string;
  readonly auth: "tokens" | "none";
  readonly tlsConfigured: boolean;
}

/**
 * Refuses to listen beyond this machine with neither bearer tokens nor TLS:
 * every caller could then act as an admin, in the clear. The error says how
 * to fix it.
 */
export function checkExposure(exposure: Exposure): void {
  if (
    exposure.auth === "none" &&
    !exposure.tlsConfigured &&
    !isLoopback(exposure.host)
  ) {
    throw new Error(
      `refusing to listen on ${exposure.host} with AUTH=none and no TLS: anyone who can reach it could call every method. Set AUTH=tokens (create the first admin token with "npm run cli -- token create --role admin --name <name>"), or serve TLS with TLS_CERT_FILE and TLS_KEY_FILE, or listen on a loopback address such as HOST=127.0.0.1`,
    );
  }
}
