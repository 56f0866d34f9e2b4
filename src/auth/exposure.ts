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
  /**
   * `server`: TLS_CERT_FILE and TLS_KEY_FILE; `mutual`: TLS_CLIENT_CA_FILE
   * as well, so that every caller holds a certificate the operator's CA
   * signed.
   */
  readonly tls: "off" | "server" | "mutual";
}

/** The server was told to listen where anyone could act as an admin. */
export class ExposureError extends Error {
  override name = "ExposureError";
}

/**
 * Refuses to listen beyond this machine with AUTH=none unless mutual TLS
 * decides who may connect: otherwise every caller that can reach the port
 * acts as an admin, and server TLS alone only hides that from onlookers.
 * The error says how to fix it.
 */
export function checkExposure(exposure: Exposure): void {
  const { host, auth, tls } = exposure;
  if (auth === "tokens" || tls === "mutual" || isLoopback(host)) return;
  const transport = tls === "off" ? "no TLS" : "TLS without TLS_CLIENT_CA_FILE";
  throw new ExposureError(
    `refusing to listen on ${host} with AUTH=none and ${transport}: anyone who can reach it could call every method as an admin. Set AUTH=tokens (create the first admin token with "npm run cli -- token create --role admin --name <name>"), or turn on mutual TLS with TLS_CERT_FILE, TLS_KEY_FILE and TLS_CLIENT_CA_FILE so that only callers holding a certificate your CA signed get in, or listen on 127.0.0.1 (HOST=127.0.0.1)`,
  );
}
