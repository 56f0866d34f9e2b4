import { describe, expect, test } from "vitest";
import {
  canMove,
  cutError,
  isTerminal,
  MAX_ERROR_LENGTH,
  type Status,
} from "../../src/domain/lifecycle.js";

/** Every pair of statuses and whether the contract allows the move. */
const moves: [from: Status, to: Status, allowed: boolean][] = [
  ["pending", "pending", false],
  ["pending", "running", true],
  ["pending", "succeeded", true],
  ["pending", "failed", true],
  ["running", "pending", false],
  ["running", "running", false],
  ["running", "succeeded", true],
  ["running", "failed", true],
  ["succeeded", "pending", false],
  ["succeeded", "running", false],
  ["succeeded", "succeeded", false],
  ["succeeded", "failed", false],
  ["failed", "pending", false],
  ["failed", "running", false],
  ["failed", "succeeded", false],
  ["failed", "failed", false],
];

describe("canMove", () => {
  test.each(moves.filter(([, , allowed]) => allowed))(
    "allows %s → %s",
    (from, to) => {
      expect(canMove(from, to)).toBe(true);
    },
  );

  test.each(moves.filter(([, , allowed]) => !allowed))(
    "refuses %s → %s",
    (from, to) => {
      expect(canMove(from, to)).toBe(false);
    },
  );
});

describe("isTerminal", () => {
  test.each<Status>(["pending", "running"])("%s is open", (status) => {
    expect(isTerminal(status)).toBe(false);
  });

  test.each<Status>(["succeeded", "failed"])("%s is terminal", (status) => {
    expect(isTerminal(status)).toBe(true);
  });
});

describe("cutError", () => {
  test("keeps a short error as it is", () => {
    expect(cutError("disk full")).toBe("disk full");
  });

  test("keeps an error of exactly 2000 characters", () => {
    const text = "x".repeat(MAX_ERROR_LENGTH);

    expect(cutError(text)).toBe(text);
  });

  test("cuts an error of 2001 characters to its first 2000", () => {
    const text = `${"a".repeat(2000)}b`;

    expect(cutError(text)).toBe("a".repeat(2000));
  });

  test("counts an emoji as one character and never splits it", () => {
    const text = "🔥".repeat(2001);

    const cut = cutError(text);

    expect(Array.from(cut)).toHaveLength(2000);
    expect(cut).toBe("🔥".repeat(2000));
    expect(cut.length).toBe(4000);
  });

  test("keeps 2000 emoji whose UTF-16 length is 4000", () => {
    const text = "😀".repeat(2000);

    expect(cutError(text)).toBe(text);
  });

  test("cuts mixed one-, two-, three- and four-byte characters at 2000 code points", () => {
    const text = "aé€😀".repeat(600);

    const cut = cutError(text);

    expect(cut).toBe("aé€😀".repeat(500));
    expect(Array.from(cut)).toHaveLength(2000);
  });

  test("keeps an emoji that is the 2000th code point and drops the next", () => {
    const text = `${"a".repeat(1999)}😀😀`;

    expect(cutError(text)).toBe(`${"a".repeat(1999)}😀`);
  });
});
