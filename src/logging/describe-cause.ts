/** What a log line keeps of a failure's cause. */
export interface DescribedCause {
  readonly type: string;
  readonly code?: string;
  readonly message: string;
}

// An absolute path of at least two parts, as a message may name a socket
// or a file.
const ABSOLUTE_PATH = /(^|[\s'"(=])((?:\/[^\s/'"():]+){2,}\/?)/g;

/**
 * What the log keeps of a failure's cause: its type, its SQLSTATE or errno
 * code and its message, without the statement that the query builder puts
 * in front of a database error's message, without file paths, and without
 * a stack trace. A statement can carry what a caller sent, and none of the
 * three helps an operator more than the code and the database's own words.
 *
 * Paths in or under `operatorPaths` (DATA_DIR, say), which the operator
 * chose and needs to recognise, are kept as written.
 */
export function describeCause(
  cause: unknown,
  operatorPaths: readonly string[] = [],
): DescribedCause | undefined {
  if (cause === undefined || cause === null) return undefined;
  if (!(cause instanceof Error)) return { type: typeof cause, message: "" };
  const { code } = cause as { code?: unknown };
  let message = cause.message;
  // A database error (a five-character SQLSTATE) reads "<statement> - <what
  // the database said>".
  const statementEnd = message.lastIndexOf(" - ");
  if (
    typeof code === "string" &&
    /^[0-9A-Z]{5}$/.test(code) &&
    statementEnd >= 0
  ) {
    message = message.slice(statementEnd + 3);
  }
  message = message.replace(ABSOLUTE_PATH, (_, before: string, path: string) =>
    operatorPaths.some((kept) => path === kept || path.startsWith(`${kept}/`))
      ? `${before}${path}`
      : `${before}<path>`,
  );
  return {
    type: cause.constructor.name,
    ...(typeof code === "string" ? { code } : {}),
    message,
  };
}
