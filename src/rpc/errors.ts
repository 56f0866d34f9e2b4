import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import { LifecycleError, type LifecycleErrorKind } from "../domain/errors.js";

const codeOfKind: Record<LifecycleErrorKind, Code> = {
  invalid_argument: Code.InvalidArgument,
  not_found: Code.NotFound,
  failed_precondition: Code.FailedPrecondition,
  already_exists: Code.AlreadyExists,
  out_of_range: Code.OutOfRange,
  permission_denied: Code.PermissionDenied,
};

/**
 * SQLSTATE classes and codes that mean the database cannot be reached now.
 * 55000 is what a database that does not accept connections (ALLOW_CONNECTIONS
 * false, or being dropped) answers a new connection; none of the service's
 * own statements raises it.
 */
const unavailableStates = /^(08|53|55000$|57P0[1-3])/;
const unavailableErrnos = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "ENOTFOUND",
  "EHOSTUNREACH",
  "ENOENT",
]);

function isDatabaseUnavailable(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const { code, name, message } = error as Error & { code?: unknown };
  return (
    (typeof code === "string" &&
      (unavailableStates.test(code) || unavailableErrnos.has(code))) ||
    name === "KnexTimeoutError" ||
    /Connection terminated|connection is closed|Timeout acquiring a connection|is not queryable/i.test(
      message,
    )
  );
}

/**
 * Converts anything a handler throws into the ConnectError the caller gets.
 * Rule violations keep their message; database outages become UNAVAILABLE;
 * anything else is INTERNAL with a generic message, its cause kept for the
 * log only.
 */
export function toConnectError(error: unknown): ConnectError {
  if (error instanceof ConnectError) return error;
  if (error instanceof LifecycleError) {
    return new ConnectError(error.message, codeOfKind[error.kind]);
  }
  if (isDatabaseUnavailable(error)) {
    return new ConnectError(
      "the database is unavailable; retry later",
      Code.Unavailable,
      undefined,
      undefined,
      error,
    );
  }
  return new ConnectError(
    "internal error",
    Code.Internal,
    undefined,
    undefined,
    error,
  );
}

/**
 * The one place errors cross the RPC boundary: converts them and logs each
 * call's outcome, failures with their cause.
 */
export function errorInterceptor(
  logger: Logger,
  shutdownSignal: AbortSignal,
): Interceptor {
  return (next) => async (request) => {
    const method = request.method.name;
    const fail = (error: unknown): never => {
      const converted = toConnectError(error);
      // Streams that the server ends while shutting down are expected.
      const level =
        converted.code === Code.Internal
          ? "error"
          : converted.code === Code.Unavailable && !shutdownSignal.aborted
            ? "warn"
            : "info";
      if (converted.code === Code.Canceled || request.signal.aborted) {
        logger.debug({ method }, "call ended by the client");
      } else {
        logger[level](
          {
            method,
            code: Code[converted.code],
            err: converted.cause ?? undefined,
          },
          converted.rawMessage,
        );
      }
      throw converted;
    };
    try {
      const response = await next(request);
      if (!response.stream) {
        logger.debug({ method }, "call succeeded");
        return response;
      }
      const messages = response.message;
      return {
        ...response,
        message: (async function* () {
          try {
            yield* messages;
            logger.debug({ method }, "stream ended");
          } catch (error) {
            fail(error);
          }
        })(),
      };
    } catch (error) {
      return fail(error);
    }
  };
}
