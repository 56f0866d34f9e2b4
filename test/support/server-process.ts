import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { SETTING_NAMES } from "../../src/config/settings.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** One JSON line that the server logged. */
export interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly [field: string]: unknown;
}

/** The entry point running as a child process, as an operator starts it. */
export interface ServerProcess {
  readonly child: ChildProcess;
  readonly log: LogLine[];
  /** What the process wrote to stderr so far. */
  stderr(): string;
  /** How the process ended, once all it logged has been read. */
  readonly exited: Promise<{ code: number | null; signal: string | null }>;
  /** The first line logged with `msg`; fails if the process exits first. */
  logged(msg: string): Promise<LogLine>;
  /** The URL the server logged once it was serving. */
  servingUrl(): Promise<string>;
}

/**
 * Runs `node --import tsx src/bin/server.ts` with only `env`'s settings: any
 * setting in this process's environment is left out.
 */
export function spawnServer(env: Record<string, string>): ServerProcess {
  const inherited = Object.fromEntries(
    Object.entries(process.env).filter(
      ([name]) => !(SETTING_NAMES as readonly string[]).includes(name),
    ),
  );
  const child = spawn(
    process.execPath,
    ["--import", "tsx", "src/bin/server.ts"],
    { cwd: ROOT, env: { ...inherited, ...env }, stdio: "pipe" },
  );
  const log: LogLine[] = [];
  const waiting: { msg: string; resolve: (line: LogLine) => void }[] = [];
  let buffered = "";
  child.stdout!.setEncoding("utf8").on("data", (text: string) => {
    const lines = (buffered + text).split("\n");
    buffered = lines.pop()!;
    for (const line of lines) {
      const entry = JSON.parse(line) as LogLine;
      log.push(entry);
      for (const wait of waiting.filter((w) => w.msg === entry.msg)) {
        wait.resolve(entry);
      }
    }
  });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (text: string) => {
    stderr += text;
  });
  const exited = new Promise<{ code: number | null; signal: string | null }>(
    (resolve) => {
      // "close" rather than "exit": it comes after the last logged line.
      child.once("close", (code, signal) => resolve({ code, signal }));
    },
  );
  const logged = (msg: string) => {
    const line = log.find((entry) => entry.msg === msg);
    if (line) return Promise.resolve(line);
    return new Promise<LogLine>((resolve, reject) => {
      waiting.push({ msg, resolve });
      void exited.then(({ code, signal }) =>
        reject(
          new Error(
            `the server exited (${code ?? signal}) before logging "${msg}": ${JSON.stringify(log)} ${stderr}`,
          ),
        ),
      );
    });
  };
  return {
    child,
    log,
    stderr: () => stderr,
    exited,
    logged,
    async servingUrl() {
      const serving = await logged("decky-lifecycle is serving");
      return serving.url as string;
    },
  };
}

/** Stops `child` the way an operator does, with SIGTERM, and waits for it. */
export async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill("SIGTERM");
  await exited;
}
