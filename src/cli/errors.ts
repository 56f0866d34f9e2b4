import { Code, ConnectError } from "@connectrpc/connect";

/** Thrown for a mistake in how the CLI was called; printed without a trace. */
export class UsageError extends Error {}

/** A code as gRPC spells it, such as PERMISSION_DENIED. */
function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/**
 * The line the CLI prints for a command that failed: the server's message
 * and code, a usage mistake as written, anything else as it converts.
 */
export function describeFailure(error: unknown): string {
  return error instanceof ConnectError
    ? `${error.rawMessage} (${codeName(error.code)})`
    : error instanceof UsageError
      ? error.message
      : String(error);
}
