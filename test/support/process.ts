import { type ChildProcess, spawn } from "node:child_process";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, onTestFinished } from "vitest";
import { waitFor } from "./app.js";

const ROOT = resolve(fileURLToPath(import.meta.url), "../../..");

/** A running `tally start` child process. */
export interface TallyProcess {
  /** Base URL the process listens on (from its "listening on" line). */
  readonly url: string;
  readonly pid: number;
  /** Sends `signal` (default SIGKILL) and resolves with the exit code (null when killed). */
  kill(signal?: NodeJS.Signals): Promise<number | null>;
  /** SIGTERM (clean shutdown), SIGKILL if still running after 20 s; resolves with the exit code. */
  stop(): Promise<number | null>;
  /** Everything the process wrote to stdout and stderr so far. */
  logs(): string;
}

/**
 * Starts `node bin/tally.mjs start` with the parent's environment stripped of any Tally settings,
 * plus `env` (PORT defaults to 0: the OS picks a free port; LOG_LEVEL to warn). Resolves once
 * `/readyz` answers 200. The process is SIGKILLed after the current test (or file) if still alive.
 */
export async function start(options: {
  env: Record<string, string>;
  timeoutMs?: number;
}): Promise<TallyProcess> {
  const env = {
    ...Object.fromEntries(
      Object.entries(process.env).filter(
        ([k]) => !/^(TALLY_|STRIPE_|DATABASE_URL$|PORT$|HOST$|LOG_LEVEL$)/.test(k),
      ),
    ),
    PORT: "0",
    LOG_LEVEL: "warn",
    ...options.env,
  };
  const child = spawn(process.execPath, [join(ROOT, "bin/tally.mjs"), "start"], {
    cwd: ROOT,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  killAfterwards(child);
  let output = "";
  child.stdout!.on("data", (d) => {
    output += d;
  });
  child.stderr!.on("data", (d) => {
    output += d;
  });
  const exited = new Promise<number | null>((done) => {
    if (child.exitCode !== null || child.signalCode !== null) done(child.exitCode);
    else child.once("exit", (code) => done(code));
  });
  const timeoutMs = options.timeoutMs ?? 60_000;

  const url = await waitFor(
    () => {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`tally start exited (${child.exitCode ?? child.signalCode}):\n${output}`);
      }
      return /listening on (http:\/\/\S+)/.exec(output)?.[1];
    },
    { timeoutMs, intervalMs: 50 },
  ).catch((error: Error) => {
    child.kill("SIGKILL");
    throw new Error(`${error.message}\n--- tally output ---\n${output}`);
  });
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`tally start exited:\n${output}`);
      const res = await fetch(`${url}/readyz`).catch(() => null);
      return res?.status === 200;
    },
    { timeoutMs, intervalMs: 50 },
  );

  const kill = async (signal: NodeJS.Signals = "SIGKILL") => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    return exited;
  };
  return {
    url,
    pid: child.pid!,
    kill,
    async stop() {
      const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
      try {
        return await kill("SIGTERM");
      } finally {
        clearTimeout(timer);
      }
    },
    logs: () => output,
  };
}

function killAfterwards(child: ChildProcess): void {
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  try {
    onTestFinished(kill);
  } catch {
    afterAll(kill);
  }
}
