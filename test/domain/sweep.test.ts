import { expect, test } from "vitest";
import { formatDuration, staleRowError } from "../../src/domain/sweep.js";

test.each([
  [0, "0ms"],
  [250, "250ms"],
  [999, "999ms"],
  [1000, "1s"],
  [1500, "1.5s"],
  [60_000, "1m"],
  [61_500, "1m1.5s"],
  [3_600_000, "1h"],
  [5_400_000, "1h30m"],
  [90_061_000, "1d1h1m1s"],
  [7 * 24 * 3_600_000, "7d"],
])("formatDuration(%i) is %s", (ms, text) => {
  expect(formatDuration(ms)).toBe(text);
});

test("a stale row's error says how long it went without progress and why", () => {
  expect(staleRowError(3_600_000)).toBe(
    "no progress for 1h; the runner was lost",
  );
});
