import { Code, ConnectError } from "@connectrpc/connect";

/** An INVALID_ARGUMENT error whose message names the field at fault. */
export function invalidArgument(message: string): ConnectError {
  return new ConnectError(message, Code.InvalidArgument);
}

/**
 * A short, printable quote of a caller's value for an error message: at most
 * 80 code points, so that no emoji is cut in half.
 */
export function quote(value: string): string {
  const points = Array.from(value);
  const shown = points.length > 80 ? `${points.slice(0, 80).join("")}…` : value;
  return JSON.stringify(shown);
}

/** Refuses text the database cannot store. */
export function checkText(
  field: string,
  value: string,
  maxLength: number,
): void {
  if (value.includes("\0")) {
    throw invalidArgument(`${field} must not contain NUL characters`);
  }
  if (value.length > maxLength) {
    throw invalidArgument(
      `${field} is ${value.length} characters long; at most ${maxLength} are allowed`,
    );
  }
}
