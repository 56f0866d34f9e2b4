import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The slow tests run on their own: `npm run test:slow`.
    exclude: ["test/slow/**", "node_modules/**"],
    // Each test file gets its own process: it starts its own server and
    // database, and a crash in one file cannot take the others down.
    pool: "forks",
    // Two cores: two files at a time, each with its own database.
    fileParallelism: true,
    maxWorkers: 2,
    testTimeout: 60_000,
    // Starting an embedded PGlite database and migrating it can take seconds.
    hookTimeout: 120_000,
    teardownTimeout: 30_000,
    watch: false,
  },
});
