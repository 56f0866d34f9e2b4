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
}

/** The server was told to listen where anyone could act as an admin. */
export class ExposureError extends Error {
  override name = "ExposureError";
}

/**
 * Refuses to listen beyond this machine with AUTH=none, whatever the TLS:
 * every caller that can connect would act as an admin, and TLS, even
 * mutual, encrypts but does not say who is calling. AUTH=none is the
 * development default, on loopback only. The error says how to fix it.
 */
export function checkExposure(exposure: Exposure): void {
  const { host, auth } = exposure;
  if (auth === "tokens" || isLoopback(host)) return;
  throw new ExposureError(
    `refusing to listen on ${host} with AUTH=none: every caller that reaches it would act as an admin, and TLS, even mutual TLS, encrypts the calls but does not say who is calling. Set AUTH=tokens (create the first admin token with "npm run cli -- token create --role admin --name <name>"), or listen on 127.0.0.1 (HOST=127.0.0.1)`,
  );
}
