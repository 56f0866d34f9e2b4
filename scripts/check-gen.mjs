// Regenerates the protobuf code into a temporary directory and compares it
// byte for byte with the committed gen/, so a contract change that was not
// followed by `npm run generate` fails the build. gen/ itself is never written.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const committed = join(root, "gen");

/** Lists every file below `dir` as a path relative to `dir`, sorted. */
function listFiles(dir) {
  const files = [];
  const walk = (current) => {
    for (const entry of readdirSync(current, { withFileTypes: true })) {
      const path = join(current, entry.name);
      if (entry.isDirectory()) {
        walk(path);
      } else {
        files.push(relative(dir, path));
      }
    }
  };
  try {
    walk(dir);
  } catch (err) {
    if (err.code !== "ENOENT") throw err;
  }
  return files.sort();
}

/** Returns the problems found, or an empty list when gen/ is current. */
function compareWithFreshCopy(scratch) {
  // `--output` is prepended to the template's `out: gen`, so the fresh copy
  // lands in <scratch>/gen and `clean: true` only clears that directory.
  const bin = join(root, "node_modules", ".bin");
  const result = spawnSync("buf", ["generate", "--output", scratch], {
    cwd: root,
    stdio: "inherit",
    env: { ...process.env, PATH: `${bin}${delimiter}${process.env.PATH}` },
  });
  if (result.error) throw result.error;
  if (result.status !== 0) {
    return [`buf generate exited with ${result.status}`];
  }

  const fresh = join(scratch, "gen");
  const expected = listFiles(fresh);
  const actual = new Set(listFiles(committed));
  const differing = [];
  const missing = [];
  for (const file of expected) {
    if (!actual.has(file)) {
      missing.push(file);
    } else if (
      !readFileSync(join(fresh, file)).equals(
        readFileSync(join(committed, file)),
      )
    ) {
      differing.push(file);
    }
    actual.delete(file);
  }
  return [
    ...differing.map((file) => `differs: gen/${file}`),
    ...missing.map((file) => `missing: gen/${file}`),
    ...[...actual].map((file) => `extra:   gen/${file}`),
  ];
}

const scratch = mkdtempSync(join(tmpdir(), "check-gen-"));
let problems;
try {
  problems = compareWithFreshCopy(scratch);
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
if (problems.length > 0) {
  console.error("check-gen: gen/ does not match what proto/ generates:");
  for (const problem of problems) console.error(`  ${problem}`);
  console.error("Run `npm run generate` and commit the result.");
  process.exitCode = 1;
} else {
  console.log("check-gen: gen/ matches what proto/ generates.");
}
