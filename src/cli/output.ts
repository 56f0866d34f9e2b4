import {
  type DescMessage,
  type MessageShape,
  toJsonString,
} from "@bufbuild/protobuf";

/** Prints a response on stdout as the API's JSON, indented. */
export function print<Desc extends DescMessage>(
  schema: Desc,
  message: MessageShape<Desc>,
): void {
  process.stdout.write(
    `${toJsonString(schema, message, { prettySpaces: 2 })}\n`,
  );
}

/** Tells the operator, on stderr, to keep the token just printed. */
export function warnShownOnce(): void {
  process.stderr.write(
    "The token above is shown this once and stored only as a hash; keep it somewhere safe.\n",
  );
}
