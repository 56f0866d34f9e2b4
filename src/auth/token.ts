import {
  createHash,
  randomBytes,
  randomUUID,
  timingSafeEqual,
} from "node:crypto";

/**
 * A bearer token: `dl_`, the token's id as 32 hex digits, `_`, and 32 random
 * bytes in base64url. The id finds the stored row; only the SHA-256 of the
 * random part is stored, so the token itself exists only where it was
 * handed out.
 */
const TOKEN_PATTERN = /^dl_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$/;
const SECRET_BYTES = 32;

/** A new token: the text to hand out once, and what to store. */
export interface IssuedToken {
  readonly id: string;
  readonly text: string;
  readonly secretHash: Buffer;
}

/** The parts of a token's text. */
export interface ParsedToken {
  readonly id: string;
  readonly secret: Buffer;
}

export function issueToken(): IssuedToken {
  const id = randomUUID();
  const secret = randomBytes(SECRET_BYTES);
  return {
    id,
    text: `dl_${id.replaceAll("-", "")}_${secret.toString("base64url")}`,
    secretHash: hashSecret(secret),
  };
}

/** The id and secret of a token's text, or undefined if it is not one. */
export function parseToken(text: string): ParsedToken | undefined {
  const match = TOKEN_PATTERN.exec(text);
  if (!match) return undefined;
  const [, hex, secret] = match;
  const id = [
    hex!.slice(0, 8),
    hex!.slice(8, 12),
    hex!.slice(12, 16),
    hex!.slice(16, 20),
    hex!.slice(20),
  ].join("-");
  return { id, secret: Buffer.from(secret!, "base64url") };
}

/** A token in some text, whole or cut short after its id. */
const TOKEN_IN_TEXT = /dl_([0-9a-f]{32})_[A-Za-z0-9_-]*/g;
/** A token's secret on its own: 43 base64url characters. */
const SECRET_IN_TEXT = /(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])/g;

/**
 * `text` with the secret of every token in it left out, keeping the id that
 * names the token, and any run of characters that could be a secret on its
 * own left out too. A caller who pastes a token where an id belongs gets an
 * error, and neither it nor the log may carry the token back.
 */
export function withoutTokenSecrets(text: string): string {
  return text
    .replace(TOKEN_IN_TEXT, "dl_$1_<secret withheld>")
    .replace(SECRET_IN_TEXT, "<secret withheld>");
}

export function hashSecret(secret: Buffer): Buffer {
  return createHash("sha256").update(secret).digest();
}

/** Whether `secret` hashes to `storedHash`, compared in constant time. */
export function secretMatches(secret: Buffer, storedHash: Buffer): boolean {
  const hash = hashSecret(secret);
  return hash.length === storedHash.length && timingSafeEqual(hash, storedHash);
}
