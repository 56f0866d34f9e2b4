import { isUtf8 } from "node:buffer";
import {
  type DescMessage,
  fromBinary,
  fromJsonString,
  ScalarType,
} from "@bufbuild/protobuf";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";
import { withoutTokenSecrets } from "../auth/token.js";

/**
 * Decodes one binary request message as connect will; if it cannot be
 * decoded, throws INVALID_ARGUMENT naming the message type and, for a string
 * that is not UTF-8, the field.
 */
export function checkBinary(desc: DescMessage, data: Uint8Array): void {
  try {
    fromBinary(desc, data);
  } catch (error) {
    const field = findInvalidUtf8(desc, data);
    const reason = field
      ? `${field} is not valid UTF-8`
      : error instanceof Error
        ? error.message
        : String(error);
    throw invalidRequest(
      reason.startsWith("cannot decode")
        ? reason
        : `cannot decode message ${desc.typeName} from binary: ${reason}`,
    );
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });
/** A JSON escape of a UTF-16 surrogate, paired or not. */
const SURROGATE_ESCAPE = /\\u[dD][89a-fA-F]/;

/**
 * Refuses a JSON request message that is not UTF-8 (connect would decode
 * it with U+FFFD in place of the bad bytes) or whose strings hold an
 * unpaired surrogate (which no UTF-8 column can store), and JSON that does
 * not decode as the message, as connect would refuse it.
 */
export function checkJson(desc: DescMessage, data: Uint8Array): void {
  let text: string;
  try {
    text = utf8.decode(data);
  } catch {
    throw invalidRequest(
      `cannot decode message ${desc.typeName} from JSON: the body is not valid UTF-8`,
    );
  }
  if (SURROGATE_ESCAPE.test(text)) {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      value = undefined;
    }
    const path = findLoneSurrogate(value, "");
    if (path !== undefined) {
      throw invalidRequest(
        `cannot decode message ${desc.typeName} from JSON: ${path || "the body"} holds an unpaired UTF-16 surrogate`,
      );
    }
  }
  // Decoded here as connect will, so that a message naming what the caller
  // sent (an unknown key, say) goes out without a token's secret.
  try {
    fromJsonString(desc, text, { ignoreUnknownFields: false });
  } catch (error) {
    throw invalidRequest(
      error instanceof Error ? error.message : String(error),
    );
  }
}

function findLoneSurrogate(value: unknown, path: string): string | undefined {
  if (typeof value === "string") {
    return /\p{Cs}/u.test(value) ? path : undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  const entries = Array.isArray(value)
    ? value.map((item, index) => [`${path}[${index}]`, item] as const)
    : Object.entries(value).map(
        ([key, item]) => [path ? `${path}.${key}` : key, item] as const,
      );
  for (const [itemPath, item] of entries) {
    const found = findLoneSurrogate(item, itemPath);
    if (found !== undefined) return found;
  }
  return undefined;
}

/**
 * The path of the first string field of `bytes` that is not UTF-8, such as
 * `targets[1].decky_name`; undefined if there is none or the bytes break
 * off before one is found.
 */
function findInvalidUtf8(
  desc: DescMessage,
  bytes: Uint8Array,
  prefix = "",
): string | undefined {
  const reader = new BinaryReader(bytes);
  const occurrences = new Map<number, number>();
  try {
    while (reader.pos < reader.len) {
      const [number, wireType] = reader.tag();
      const field = desc.fields.find((known) => known.number === number);
      if (!field || wireType !== WireType.LengthDelimited) {
        reader.skip(wireType, number);
        continue;
      }
      const index = occurrences.get(number) ?? 0;
      occurrences.set(number, index + 1);
      const name = `${prefix}${field.name}${field.fieldKind === "list" ? `[${index}]` : ""}`;
      const value = reader.bytes();
      const nested =
        field.fieldKind === "message" ||
        (field.fieldKind === "list" && field.listKind === "message")
          ? field.message
          : undefined;
      if (nested) {
        const found = findInvalidUtf8(nested, value, `${name}.`);
        if (found) return found;
      } else if (
        (field.fieldKind === "scalar" ||
          (field.fieldKind === "list" && field.listKind === "scalar")) &&
        field.scalar === ScalarType.STRING &&
        !isUtf8(value)
      ) {
        return name;
      }
    }
  } catch {
    // The bytes break off; the parser's own message says how.
  }
  return undefined;
}

function invalidRequest(message: string): ConnectError {
  return new ConnectError(withoutTokenSecrets(message), Code.InvalidArgument);
}
