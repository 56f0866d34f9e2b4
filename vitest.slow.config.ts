import { defineConfig } from "vitest/config";

/** The slow tests: load on real PostgreSQL, one file at a time. */
export default defineConfig({
  test: {
    include: ["test/slow/**/*.test.ts"],
    pool: "forks",
    fileParallelism: false,
    maxWorkers: 1,
    hookTimeout: 120_000,
    teardownTimeout: 30_000,
    watch: false,
  },
});
