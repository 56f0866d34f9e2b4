import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "pino";
import { withoutTokenSecrets } from "../auth/token.js";
import { LifecycleError, type LifecycleErrorKind } from "../domain/errors.js";
import { describeCause } from "../logging/describe-cause.js";

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

/**
 * Knex runs a transaction's work even when its BEGIN failed, having marked
 * the transaction complete; the work's first statement then fails with
 * this. The service never runs a statement on a transaction it has ended,
 * so the message means the connection was lost as the transaction began.
 */
const BEGIN_FAILED = /Transaction query already complete/;

/**
 * A statement PostgreSQL ended after DATABASE_TIMEOUT_MS (a call's own
 * cancellation fails with the call's signal instead), or one the driver
 * stopped waiting for because the database did not answer.
 */
const NO_ANSWER =
  /canceling statement due to statement timeout|Query read timeout/;

function isDatabaseUnavailable(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const { code, name, message } = error as Error & { code?: unknown };
  return (
    (typeof code === "string" &&
      (unavailableStates.test(code) || unavailableErrnos.has(code))) ||
    name === "KnexTimeoutError" ||
    BEGIN_FAILED.test(message) ||
    NO_ANSWER.test(message) ||
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
  // A caller that went away aborts the call's signal; what its handler was
  // doing then ends with the signal's reason.
  if (error instanceof Error && error.name === "AbortError") {
    return new ConnectError(
      "the call was cancelled",
      Code.Canceled,
      undefined,
      undefined,
      error,
    );
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

/** `error`, its message without the secret of any token the caller sent. */
function withoutSecrets(error: ConnectError): ConnectError {
  const message = withoutTokenSecrets(error.rawMessage);
  if (message === error.rawMessage) return error;
  return new ConnectError(
    message,
    error.code,
    error.metadata,
    undefined,
    error.cause,
  );
}

/**
 * The one place errors cross the RPC boundary: converts them and logs each
 * call's outcome, failures with what `describeCause` keeps of their cause.
 */
export function errorInterceptor(
  logger: Logger,
  shutdownSignal: AbortSignal,
): Interceptor {
  return (next) => async (request) => {
    const method = request.method.name;
    const fail = (error: unknown): never => {
      const converted = withoutSecrets(toConnectError(error));
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
            cause: describeCause(converted.cause),
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
