import {
  closeSync,
  fsyncSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { dirname } from "node:path";
import { fromJson, type JsonValue, toJson } from "@bufbuild/protobuf";
import {
  type LifecycleDelta,
  LifecycleDeltaSchema,
} from "../../gen/decky/lifecycle/v1/lifecycle_pb.js";

/** A delta in the outbox, numbered in the order it was reported. */
export interface OutboxEntry {
  readonly seq: number;
  readonly delta: LifecycleDelta;
}

/** The first line of every outbox file. */
const HEADER = { decky_worker_outbox: 1 };
/** Rewrite the file once it is this large and mostly removed entries. */
const COMPACT_AT_BYTES = 64 * 1024;

/** An entry as a line of the file holds it. */
interface OutboxRecord {
  seq: number;
  delta: JsonValue;
}

type Line = { add: OutboxRecord[] } | { remove: number[] };

function toRecord({ seq, delta }: OutboxEntry): OutboxRecord {
  return { seq, delta: toJson(LifecycleDeltaSchema, delta) };
}

/**
 * The deltas a worker has reported and not yet seen acknowledged.
 *
 * With a path, every change is on disk before the call returns: the file is
 * an append-only log of JSON lines, each `add` and `remove` written with one
 * write and an fsync, so a crash at any moment leaves every line before it
 * whole and at worst a torn last line, which opening ignores (that call never
 * returned). Opening rewrites the file (temporary file, fsync, rename), and so
 * does removal once most of the file is removed entries. Without a path the
 * outbox lives in memory and is lost with the process.
 *
 * One process at a time may use a file, as two would number entries alike:
 * a lock file beside it, `<path>.lock`, holds the user's process id, and is
 * taken over when that process is gone.
 */
export class Outbox {
  readonly #path: string | undefined;
  readonly #entries = new Map<number, OutboxEntry>();
  /** Each entry's size in the file, to tell when a rewrite pays. */
  readonly #entryBytes = new Map<number, number>();
  #liveBytes = 0;
  #nextSeq = 1;
  #fd: number | undefined;
  #lockPath: string | undefined;
  #fileBytes = 0;
  /** Whether an append failed part way, leaving the file to be rewritten. */
  #torn = false;

  private constructor(path: string | undefined) {
    this.#path = path;
  }

  /**
   * Opens the outbox in `path`, creating the file if it is missing, or an
   * outbox in memory when `path` is undefined. Throws if another running
   * process has the file open, if it is not an outbox, or if a line before
   * the last is damaged.
   */
  static open(path?: string): Outbox {
    const outbox = new Outbox(path);
    if (path === undefined) return outbox;
    outbox.#lockPath = lock(path);
    try {
      outbox.#load(path);
      outbox.#rewrite();
    } catch (error) {
      outbox.close();
      throw error;
    }
    return outbox;
  }

  /**
   * The entries of the outbox file at `path`, without opening it for
   * writing: for tools and tests that look at a worker's outbox.
   */
  static read(path: string): OutboxEntry[] {
    const outbox = new Outbox(path);
    outbox.#load(path);
    return outbox.entries();
  }

  /** The file, or undefined for an outbox in memory. */
  get path(): string | undefined {
    return this.#path;
  }

  /** How many deltas wait for acknowledgement. */
  get size(): number {
    return this.#entries.size;
  }

  /** The waiting deltas, oldest first. */
  entries(): OutboxEntry[] {
    return [...this.#entries.values()];
  }

  /** Records `deltas`, in order, durably; returns their entries. */
  add(deltas: readonly LifecycleDelta[]): OutboxEntry[] {
    const added = deltas.map((delta) => ({ seq: this.#nextSeq++, delta }));
    const records = added.map(toRecord);
    this.#append({ add: records });
    for (const [index, entry] of added.entries()) {
      this.#keep(entry, records[index]!);
    }
    return added;
  }

  /** Forgets the entries numbered `seqs`, durably; unknown numbers are skipped. */
  remove(seqs: Iterable<number>): void {
    const known = [...seqs].filter((seq) => this.#entries.has(seq));
    if (known.length === 0) return;
    this.#append({ remove: known });
    for (const seq of known) this.#forget(seq);
    if (
      this.#fileBytes > COMPACT_AT_BYTES &&
      this.#fileBytes > 2 * this.#liveBytes
    ) {
      this.#rewrite();
    }
  }

  /** Closes the file and lets it go; the outbox takes no more changes. */
  close(): void {
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
    if (this.#lockPath !== undefined) {
      rmSync(this.#lockPath, { force: true });
      locksHeld.delete(this.#lockPath);
    }
    this.#lockPath = undefined;
  }

  #load(path: string): void {
    let text: string;
    try {
      text = readFileSync(path, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return;
      throw error;
    }
    if (text.length === 0) return;
    const header = `${JSON.stringify(HEADER)}\n`;
    if (!text.startsWith(header)) {
      throw new Error(`${path} is not a worker outbox`);
    }
    // Only what ends in a newline was written whole.
    const lines = text.slice(header.length).split("\n").slice(0, -1);
    for (const [index, text] of lines.entries()) {
      try {
        this.#replay(JSON.parse(text) as Line);
      } catch (error) {
        throw new Error(`${path} line ${index + 2} is damaged`, {
          cause: error,
        });
      }
    }
  }

  #replay(line: Line): void {
    if ("add" in line) {
      for (const { seq, delta } of line.add) {
        if (!Number.isSafeInteger(seq) || seq < 1) {
          throw new Error(`seq ${seq} is not a positive integer`);
        }
        const parsed = fromJson(LifecycleDeltaSchema, delta, {
          ignoreUnknownFields: true,
        });
        this.#keep({ seq, delta: parsed }, { seq, delta });
        this.#nextSeq = Math.max(this.#nextSeq, seq + 1);
      }
    } else if (Array.isArray(line.remove)) {
      for (const seq of line.remove) this.#forget(seq);
    } else {
      throw new Error("neither add nor remove");
    }
  }

  #keep(entry: OutboxEntry, record: OutboxRecord): void {
    this.#forget(entry.seq);
    const bytes = JSON.stringify(record).length + 1;
    this.#entries.set(entry.seq, entry);
    this.#entryBytes.set(entry.seq, bytes);
    this.#liveBytes += bytes;
  }

  #forget(seq: number): void {
    this.#liveBytes -= this.#entryBytes.get(seq) ?? 0;
    this.#entryBytes.delete(seq);
    this.#entries.delete(seq);
  }

  /**
   * Appends one line and waits until it is on disk. After a failed append
   * the file may end in part of a line, so the next change rewrites it
   * first from what is in memory, which the failed change did not touch.
   */
  #append(line: Line): void {
    if (this.#path === undefined) return;
    if (this.#fd === undefined) {
      throw new Error(`the outbox ${this.#path} is closed`);
    }
    if (this.#torn) this.#rewrite();
    const bytes = Buffer.from(`${JSON.stringify(line)}\n`);
    this.#torn = true;
    writeFully(this.#fd!, bytes);
    fsyncSync(this.#fd!);
    this.#torn = false;
    this.#fileBytes += bytes.length;
  }

  /**
   * Replaces the file with one holding only the waiting entries: a new file
   * beside it, synced, renamed over it, and the directory synced, so the
   * path always names a whole outbox, the old one or the new one.
   */
  #rewrite(): void {
    const path = this.#path!;
    const temporary = `${path}.tmp`;
    const lines = [JSON.stringify(HEADER)];
    const entries = this.entries();
    if (entries.length > 0) {
      lines.push(JSON.stringify({ add: entries.map(toRecord) } satisfies Line));
    }
    const bytes = Buffer.from(`${lines.join("\n")}\n`);

    const fd = openSync(temporary, "w");
    try {
      writeFully(fd, bytes);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temporary, path);
    syncDirectory(dirname(path));

    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = openSync(path, "a");
    this.#fileBytes = bytes.length;
    this.#torn = false;
  }
}

/** The lock files this process holds. */
const locksHeld = new Set<string>();

/**
 * Takes `<path>.lock` for this process, from a process that is gone if need
 * be; returns the lock's path. A lock naming this process's own id that this
 * process does not hold was left by an earlier process that had the same id,
 * as a worker restarted in a container often has.
 */
function lock(path: string): string {
  const lockPath = `${path}.lock`;
  for (;;) {
    try {
      writeFileSync(lockPath, `${process.pid}\n`, { flag: "wx" });
      locksHeld.add(lockPath);
      return lockPath;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
    let holder: number;
    try {
      holder = Number.parseInt(readFileSync(lockPath, "utf8"), 10);
    } catch (error) {
      // Released between the two calls: try again.
      if ((error as NodeJS.ErrnoException).code === "ENOENT") continue;
      throw error;
    }
    const leftByEarlierSelf =
      holder === process.pid && !locksHeld.has(lockPath);
    if (!leftByEarlierSelf && !isGone(holder)) {
      throw new Error(
        `${path} is in use by process ${Number.isNaN(holder) ? "unknown" : holder}; stop it, or remove ${lockPath} if no worker uses the outbox`,
      );
    }
    rmSync(lockPath, { force: true });
  }
}

/** Whether `pid` names no running process on this machine. */
function isGone(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "ESRCH";
  }
}

/** Writes all of `bytes`; `writeSync` may write fewer than asked. */
function writeFully(fd: number, bytes: Buffer): void {
  let offset = 0;
  while (offset < bytes.length) {
    offset += writeSync(fd, bytes, offset, bytes.length - offset);
  }
}

/** Makes a rename in `directory` durable. */
function syncDirectory(directory: string): void {
  const fd = openSync(directory, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
