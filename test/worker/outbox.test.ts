import { spawn } from "node:child_process";
import {
  appendFileSync,
  existsSync,
  readFileSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { afterEach, beforeEach, expect, test } from "vitest";
import {
  type LifecycleDelta,
  LifecycleDeltaSchema,
  Operation,
  Status,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";
import { Outbox } from "../../src/worker/outbox.js";

const HEADER_LINE = '{"decky_worker_outbox":1}\n';

let directory: string;
let path: string;
const opened: Outbox[] = [];

beforeEach(async () => {
  directory = await mkdtemp(join(tmpdir(), "dl-outbox-"));
  path = join(directory, "outbox.jsonl");
});

afterEach(async () => {
  for (const outbox of opened.splice(0)) outbox.close();
  await rm(directory, { recursive: true, force: true });
});

function open(): Outbox {
  const outbox = Outbox.open(path);
  opened.push(outbox);
  return outbox;
}

function delta(n: number, status = Status.RUNNING): LifecycleDelta {
  return create(LifecycleDeltaSchema, {
    deckyName: `web-${n}`,
    operation: Operation.DEPLOY,
    status,
    lifecycleId: `6f1c2a7e-4b1d-4c3e-9a51-2f0d8e7b9c${String(n).padStart(2, "0")}`,
  });
}

test("Outbox creates a missing file holding only its header", () => {
  const outbox = open();

  expect(outbox.size).toBe(0);
  expect(readFileSync(path, "utf8")).toBe(HEADER_LINE);
});

test("Outbox keeps every field of added deltas, in order, across a reopen", () => {
  const failed = create(LifecycleDeltaSchema, {
    deckyName: "smb-01",
    operation: Operation.MUTATE,
    status: Status.FAILED,
    error: 'smb "share" did not come up\nafter 30 s',
    completedAt: timestampFromDate(new Date("2026-12-03T10:11:12.345Z")),
    lifecycleId: "0b7e9a52-6c1f-4d8e-b2a3-5f4e6d7c8b9a",
  });
  const first = open();
  first.add([delta(1), delta(2, Status.SUCCEEDED)]);
  first.add([failed]);
  first.close();

  const entries = open().entries();

  expect(entries).toEqual([
    { seq: 1, delta: delta(1) },
    { seq: 2, delta: delta(2, Status.SUCCEEDED) },
    { seq: 3, delta: failed },
  ]);
});

test("Outbox forgets removed entries across a reopen and never reuses their numbers", () => {
  const first = open();
  first.add([delta(1), delta(2), delta(3)]);
  first.remove([2, 3]);
  first.close();

  const second = open();
  const [added] = second.add([delta(4)]);

  expect(added!.seq).toBe(4);
  expect(second.entries()).toEqual([
    { seq: 1, delta: delta(1) },
    { seq: 4, delta: delta(4) },
  ]);
});

test("Outbox removes nothing for numbers it does not hold", () => {
  const outbox = open();
  outbox.add([delta(1)]);
  const before = readFileSync(path, "utf8");

  outbox.remove([7, 8]);

  expect(readFileSync(path, "utf8")).toBe(before);
  expect(outbox.entries()).toEqual([{ seq: 1, delta: delta(1) }]);
});

test("Outbox has every change on disk when the call returns", () => {
  const outbox = open();

  outbox.add([delta(1), delta(2)]);
  const afterAdd = Outbox.read(path);
  outbox.remove([1]);
  const afterRemove = Outbox.read(path);

  expect(afterAdd.map((entry) => entry.seq)).toEqual([1, 2]);
  expect(afterRemove).toEqual([{ seq: 2, delta: delta(2) }]);
});

test("Outbox ignores a torn last line, as a crash in the middle of a write leaves it", () => {
  const first = open();
  first.add([delta(1)]);
  first.add([delta(2)]);
  first.close();
  const whole = readFileSync(path, "utf8");
  const lastLine = whole.slice(whole.lastIndexOf("\n", whole.length - 2) + 1);
  // Every prefix of the last line is what a write cut short could leave.
  for (const cut of [1, 10, lastLine.length - 1]) {
    writeFileSync(path, whole.slice(0, whole.length - lastLine.length));
    appendFileSync(path, lastLine.slice(0, cut));

    const reopened = Outbox.open(path);
    const entries = reopened.entries();
    reopened.close();

    expect(entries).toEqual([{ seq: 1, delta: delta(1) }]);
    expect(readFileSync(path, "utf8")).toBe(
      whole.slice(0, whole.length - lastLine.length),
    );
  }
});

test("Outbox ignores zeros after its last line, as a crash can leave in a file that grew", () => {
  const first = open();
  first.add([delta(1)]);
  first.close();
  appendFileSync(path, Buffer.alloc(300));

  const entries = open().entries();

  expect(entries).toEqual([{ seq: 1, delta: delta(1) }]);
});

test("Outbox keeps appending after a torn line, with the torn bytes gone", () => {
  const first = open();
  first.add([delta(1)]);
  first.close();
  appendFileSync(path, '{"add":[{"seq":2,"del');

  const second = open();
  second.add([delta(3)]);
  second.close();

  expect(open().entries()).toEqual([
    { seq: 1, delta: delta(1) },
    { seq: 2, delta: delta(3) },
  ]);
});

test("Outbox refuses a file with a damaged line before the last, naming the line", () => {
  const first = open();
  first.add([delta(1)]);
  first.add([delta(2)]);
  first.close();
  const lines = readFileSync(path, "utf8").split("\n");
  lines[1] = lines[1]!.slice(0, 20);
  writeFileSync(path, lines.join("\n"));

  expect(() => Outbox.open(path)).toThrow(
    new Error(`${path} line 2 is damaged`),
  );
});

test("Outbox refuses a file that is not an outbox and leaves it as it was", () => {
  for (const text of ["host = web-01\nport = 80\n", "port = 80"]) {
    writeFileSync(path, text);

    expect(() => Outbox.open(path)).toThrow(
      new Error(`${path} is not a worker outbox`),
    );
    expect(readFileSync(path, "utf8")).toBe(text);
  }
});

test("Outbox takes an empty file for an empty outbox", () => {
  writeFileSync(path, "");

  const outbox = open();

  expect(outbox.size).toBe(0);
  expect(readFileSync(path, "utf8")).toBe(HEADER_LINE);
});

test("Outbox ignores what an interrupted rewrite left beside the file", () => {
  const first = open();
  first.add([delta(1)]);
  first.close();
  writeFileSync(`${path}.tmp`, '{"decky_worker_outbox":1}\n{"add":[{"se');

  const entries = open().entries();

  expect(entries).toEqual([{ seq: 1, delta: delta(1) }]);
  expect(existsSync(`${path}.tmp`)).toBe(false);
});

test("Outbox rewrites its file once most of it is removed entries", () => {
  const outbox = open();
  const big = (n: number) =>
    create(LifecycleDeltaSchema, {
      deckyName: `web-${n}`,
      operation: Operation.DEPLOY,
      status: Status.FAILED,
      error: "x".repeat(1000),
    });
  const entries = outbox.add(Array.from({ length: 200 }, (_, n) => big(n)));
  const grown = statSync(path).size;

  outbox.remove(entries.slice(0, 199).map((entry) => entry.seq));

  expect(grown).toBeGreaterThan(200_000);
  expect(statSync(path).size).toBeLessThan(2_000);
  expect(Outbox.read(path)).toEqual([{ seq: 200, delta: big(199) }]);
});

test("Outbox refuses a file that another running process has open, naming it", () => {
  open();

  expect(() => Outbox.open(path)).toThrow(
    new Error(
      `${path} is in use by process ${process.pid}; stop it, or remove ${path}.lock if no worker uses the outbox`,
    ),
  );
});

test("Outbox lets its file go when closed, for the next process", () => {
  const first = open();
  first.add([delta(1)]);

  first.close();
  const lockedAfterClose = existsSync(`${path}.lock`);
  const second = open();

  expect(lockedAfterClose).toBe(false);
  expect(second.entries()).toEqual([{ seq: 1, delta: delta(1) }]);
  expect(readFileSync(`${path}.lock`, "utf8")).toBe(`${process.pid}\n`);
});

test("Outbox takes over a file whose process is gone", async () => {
  const gone = spawn(process.execPath, ["-e", ""]);
  await new Promise((resolve) => gone.once("exit", resolve));
  writeFileSync(`${path}.lock`, `${gone.pid}\n`);

  const outbox = open();

  expect(outbox.size).toBe(0);
  expect(readFileSync(`${path}.lock`, "utf8")).toBe(`${process.pid}\n`);
});

test("Outbox takes over a file locked under this process's id by an earlier process that had the same id", () => {
  writeFileSync(`${path}.lock`, `${process.pid}\n`);

  const outbox = open();
  outbox.add([delta(1)]);

  expect(outbox.entries()).toEqual([{ seq: 1, delta: delta(1) }]);
  expect(() => Outbox.open(path)).toThrow(
    `${path} is in use by process ${process.pid}`,
  );
});

test("Outbox in memory writes no file and keeps its entries until removed", () => {
  const outbox = Outbox.open();
  outbox.add([delta(1), delta(2)]);

  outbox.remove([1]);

  expect(outbox.path).toBeUndefined();
  expect(outbox.entries()).toEqual([{ seq: 2, delta: delta(2) }]);
});

test("Outbox refuses changes once closed", () => {
  const outbox = open();
  outbox.close();

  expect(() => outbox.add([delta(1)])).toThrow(
    new Error(`the outbox ${path} is closed`),
  );
});

test("Outbox killed at a random moment of a run of adds, removals and rewrites reopens with every change it confirmed", async () => {
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "test/worker/outbox-writer.ts", path],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  const exited = new Promise<NodeJS.Signals | null>((resolve) =>
    child.once("exit", (_, signal) => resolve(signal)),
  );
  const added: number[] = [];
  const removed = new Set<number>();
  const killAfter = 150 + Math.floor(Math.random() * 300);
  let lastVerb = "";
  let lines = 0;
  for await (const line of createInterface({ input: child.stdout })) {
    const [verb, ...numbers] = line.split(" ");
    if (verb === "added") added.push(Number(numbers[0]));
    else for (const n of numbers) removed.add(Number(n));
    lastVerb = verb!;
    if (++lines === killAfter) child.kill("SIGKILL");
  }
  expect(await exited).toBe("SIGKILL");

  const reopened = open();
  const seqs = reopened.entries().map((entry) => entry.seq);

  // Every confirmed change is there; the one in flight may be there too.
  const confirmed = added.filter((seq) => !removed.has(seq));
  const last = added.at(-1)!;
  const inFlight =
    lastVerb === "added" && last % 3 === 0
      ? confirmed.filter((seq) => seq !== last - 2 && seq !== last - 1)
      : [...confirmed, last + 1];
  expect(confirmed.length).toBeGreaterThan(30);
  expect([confirmed, inFlight]).toContainEqual(seqs);
  for (const entry of reopened.entries()) {
    expect([entry.delta.deckyName, entry.delta.error]).toEqual([
      `d-${entry.seq}`,
      `failure ${entry.seq} `.repeat(60),
    ]);
  }
});
