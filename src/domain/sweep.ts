const UNITS = [
  ["d", 24 * 3600 * 1000],
  ["h", 3600 * 1000],
  ["m", 60 * 1000],
] as const;

/**
 * A duration as people write it: 1h, 1h30m, 2d4h, 1m1.5s, 250ms. Units that
 * come out zero are left out.
 */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${ms}ms`;
  let rest = ms;
  let text = "";
  for (const [unit, size] of UNITS) {
    const count = Math.floor(rest / size);
    if (count > 0) text += `${count}${unit}`;
    rest -= count * size;
  }
  if (rest > 0) text += `${rest / 1000}s`;
  return text;
}

/** The error of a row that the stale sweep failed. */
export function staleRowError(staleAfterMs: number): string {
  return `no progress for ${formatDuration(staleAfterMs)}; the runner was lost`;
}
