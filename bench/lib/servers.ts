import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { freePort, log, peakRssMb, processCpuSeconds, sleep } from "./util.js";

export const ROOT = join(import.meta.dirname, "..", "..");

export interface Server {
  name: string;
  pid: number;
  url: string;
  port: number;
  /** Peak RSS so far (VmHWM), MB. */
  peakRssMb(): number | null;
  /** RSS right after the server became ready, MB. */
  readyRssMb: number | null;
  cpuSeconds(): number;
  /** Last lines the process printed (for error messages). */
  output(): string;
  stop(): Promise<void>;
}

interface StartOptions {
  name: string;
  /** Arguments to `node` (script and its arguments, flags first). */
  args: string[];
  env: Record<string, string>;
  /** Path answering 200 once the server is ready. */
  readyPath: string;
  timeoutMs?: number;
}

const running = new Set<ChildProcess>();

/** Kills every server still running (used on errors and signals). */
export function killAll(): void {
  for (const child of running) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
  running.clear();
}

/** Environment without anything that would point a child at another database or key. */
function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined) continue;
    if (k === "DATABASE_URL" || k.startsWith("TALLY_") || k === "PORT" || k === "HOST") continue;
    if (k === "NODE_OPTIONS") continue;
    env[k] = v;
  }
  return env;
}

export async function startServer(options: StartOptions): Promise<Server> {
  const port = await freePort();
  const env = { ...baseEnv(), ...options.env, PORT: String(port), HOST: "127.0.0.1" };
  const child = spawn(process.execPath, options.args, {
    cwd: ROOT,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  running.add(child);
  const lines: string[] = [];
  const keep = (chunk: Buffer) => {
    for (const line of chunk.toString().split("\n")) {
      if (line.trim() === "") continue;
      lines.push(line);
      if (lines.length > 50) lines.shift();
    }
  };
  child.stdout!.on("data", keep);
  child.stderr!.on("data", keep);
  let exited: number | null = null;
  const exit = new Promise<void>((resolve) => {
    child.once("exit", (code, signal) => {
      exited = code ?? (signal ? 128 : 1);
      running.delete(child);
      resolve();
    });
  });

  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  for (;;) {
    if (exited !== null) {
      throw new Error(`${options.name} exited with ${exited} during start:\n${lines.join("\n")}`);
    }
    try {
      const res = await fetch(url + options.readyPath);
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`${options.name} did not become ready:\n${lines.join("\n")}`);
    }
    await sleep(100);
  }
  const pid = child.pid!;
  let lastRss: number | null = null;
  return {
    name: options.name,
    pid,
    url,
    port,
    readyRssMb: peakRssMb(pid, "VmRSS"),
    peakRssMb: () => {
      const v = peakRssMb(pid);
      if (v !== null) lastRss = v;
      return lastRss;
    },
    cpuSeconds: () => processCpuSeconds(pid),
    output: () => lines.join("\n"),
    async stop() {
      if (exited !== null) return;
      child.kill("SIGINT");
      const killer = setTimeout(() => {
        log(`${options.name} did not stop on SIGINT; killing`);
        child.kill("SIGKILL");
      }, 30_000);
      await exit;
      clearTimeout(killer);
    },
  };
}

export const ADMIN_KEY = `bench_${randomBytes(18).toString("hex")}`;

let built = false;

/** `npm run build` once per bench process: the server runs as `npm start` runs it. */
function ensureBuilt(): void {
  if (built) return;
  log("building dist/ (npm run build)");
  execFileSync("npm", ["run", "--silent", "build"], { cwd: ROOT, stdio: "inherit" });
  built = true;
}

/**
 * Tally as `npm start` runs it (compiled, `dist/`), or from the TypeScript sources through tsx
 * (`fromSource`, for CPU profiles whose positions map back to the sources).
 */
export function startTally(
  name: string,
  db: { databaseUrl: string } | { dataDir: string },
  nodeFlags: string[] = [],
  options: { fromSource?: boolean } = {},
): Promise<Server> {
  const env: Record<string, string> = {
    LOG_LEVEL: "warn",
    TALLY_ADMIN_KEY: ADMIN_KEY,
    TALLY_DEMO: "false",
  };
  if ("databaseUrl" in db) env.DATABASE_URL = db.databaseUrl;
  else env.TALLY_DATA_DIR = db.dataDir;
  if (!options.fromSource) ensureBuilt();
  return startServer({
    name,
    args: [...nodeFlags, options.fromSource ? "bin/tally.mjs" : "dist/cli/main.js", "start"],
    env,
    readyPath: "/readyz",
    timeoutMs: 120_000,
  });
}

export function startBaseline(
  name: string,
  script: string,
  env: Record<string, string> = {},
): Promise<Server> {
  return startServer({
    name,
    args: ["--import", "tsx", script],
    env,
    readyPath: "/healthz",
  });
}
