/** What kind of rule a request broke; the RPC layer maps each to a code. */
export type LifecycleErrorKind =
  | "invalid_argument"
  | "not_found"
  | "failed_precondition"
  | "already_exists"
  | "out_of_range"
  | "permission_denied";

/** A request broke a rule of the service; the message names what and where. */
export class LifecycleError extends Error {
  override name = "LifecycleError";

  constructor(
    readonly kind: LifecycleErrorKind,
    message: string,
  ) {
    super(message);
  }
}
