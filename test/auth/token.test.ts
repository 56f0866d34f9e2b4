import { createHash } from "node:crypto";
import { expect, test } from "vitest";
import {
  hashSecret,
  issueToken,
  parseToken,
  secretMatches,
} from "../../src/auth/token.js";

test("a token is dl_, its id as 32 hex digits, _, and 32 random bytes in base64url", () => {
  const issued = issueToken();

  expect(issued.text).toMatch(/^dl_[0-9a-f]{32}_[A-Za-z0-9_-]{43}$/);
  expect(issued.text.slice(3, 35)).toBe(issued.id.replaceAll("-", ""));
  expect(Buffer.from(issued.text.slice(36), "base64url")).toHaveLength(32);
});

test("only the SHA-256 of a token's secret is kept", () => {
  const issued = issueToken();
  const secret = Buffer.from(issued.text.slice(36), "base64url");

  expect(issued.secretHash.toString("hex")).toBe(
    createHash("sha256").update(secret).digest("hex"),
  );
  expect(issued.secretHash.toString("hex")).not.toContain(
    secret.toString("hex"),
  );
});

test("parseToken gives back the id and the secret that match what was issued", () => {
  const issued = issueToken();

  const parsed = parseToken(issued.text);

  expect(parsed?.id).toBe(issued.id);
  expect(secretMatches(parsed!.secret, issued.secretHash)).toBe(true);
});

test("no two tokens share an id or a secret", () => {
  const tokens = Array.from({ length: 100 }, () => issueToken());

  expect(new Set(tokens.map((token) => token.id)).size).toBe(100);
  expect(new Set(tokens.map((token) => token.text.slice(36))).size).toBe(100);
});

test("parseToken refuses text that is not a token", () => {
  const { text } = issueToken();
  for (const wrong of [
    "",
    "not-a-token",
    text.replace(/^dl_/, "xx_"),
    text.toUpperCase(),
    text.slice(0, -1),
    `${text}A`,
    `${text} `,
    ` ${text}`,
    `${text}_extra`,
    text.replace(/_([^_]*)$/, ".$1"),
  ]) {
    expect(parseToken(wrong), wrong).toBeUndefined();
  }
});

test("secretMatches refuses another secret and a hash of another length", () => {
  const issued = issueToken();
  const other = parseToken(issueToken().text)!;

  expect(secretMatches(other.secret, issued.secretHash)).toBe(false);
  expect(
    secretMatches(other.secret, hashSecret(other.secret).subarray(0, 16)),
  ).toBe(false);
});
