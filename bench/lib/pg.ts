import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { promisify } from "node:util";
import pg from "pg";
import { processCpuSeconds } from "./util.js";

const run = promisify(execFile);

/** The server to create bench databases on: DATABASE_URL, or the local server. */
export function adminUrl(): string {
  return process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
}

export function databaseUrl(name: string): string {
  const u = new URL(adminUrl());
  u.pathname = `/${name}`;
  return u.toString();
}

export async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

export async function createDatabase(name: string): Promise<string> {
  await withClient(adminUrl(), async (c) => {
    await c.query(`drop database if exists ${name} with (force)`);
    await c.query(`create database ${name}`);
  });
  return databaseUrl(name);
}

export async function dropDatabase(name: string): Promise<void> {
  await withClient(adminUrl(), (c) => c.query(`drop database if exists ${name} with (force)`));
}

let checkpointRefused = false;

/**
 * A CHECKPOINT before a measured run, so that every run starts the same way: no checkpoint
 * already under way, and one only if the run itself writes about half of `max_wal_size`
 * (WAL-triggered checkpoints otherwise fall on some runs and not others). Needs superuser or
 * `pg_checkpoint`; without it the runs go on as they are, once said.
 */
export async function checkpoint(log: (line: string) => void): Promise<void> {
  if (checkpointRefused) return;
  try {
    await withClient(adminUrl(), (c) => c.query("checkpoint"));
  } catch (error) {
    checkpointRefused = true;
    log(`no CHECKPOINT before the runs (${(error as Error).message})`);
  }
}

export async function serverInfo(): Promise<{ version: string; settings: Record<string, string> }> {
  return withClient(adminUrl(), async (c) => {
    const version = (await c.query<{ v: string }>("select current_setting('server_version') as v"))
      .rows[0]!.v;
    const rows = (
      await c.query<{ name: string; setting: string }>(
        `select name, setting from pg_settings
          where name in ('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections',
                         'wal_sync_method', 'commit_delay')`,
      )
    ).rows;
    return { version, settings: Object.fromEntries(rows.map((r) => [r.name, r.setting])) };
  });
}

export function pgbenchPath(): string | null {
  for (const p of ["/usr/lib/postgresql/15/bin/pgbench", "/usr/bin/pgbench"]) {
    if (existsSync(p)) return p;
  }
  return null;
}

function connArgs(url: string): string[] {
  const u = new URL(url);
  const args = [
    "-h",
    u.hostname,
    "-p",
    u.port || "5432",
    "-U",
    decodeURIComponent(u.username || "postgres"),
  ];
  return args;
}

function pgEnv(url: string): NodeJS.ProcessEnv {
  const u = new URL(url);
  return u.password ? { ...process.env, PGPASSWORD: decodeURIComponent(u.password) } : process.env;
}

export async function pgbenchInit(bin: string, url: string, scale: number): Promise<void> {
  const db = new URL(url).pathname.slice(1);
  await run(bin, ["-i", "-q", "-s", String(scale), ...connArgs(url), db], {
    env: pgEnv(url),
    maxBuffer: 16 * 1024 * 1024,
  });
}

/** TPC-B-like run; returns tps without the initial connection time. */
export async function pgbenchRun(
  bin: string,
  url: string,
  clients: number,
  seconds: number,
): Promise<{ tps: number; command: string }> {
  const db = new URL(url).pathname.slice(1);
  const run_ = ["-c", String(clients), "-j", "2", "-T", String(seconds)];
  const args = [...run_, ...connArgs(url), db];
  const { stdout } = await run(bin, args, { env: pgEnv(url), maxBuffer: 16 * 1024 * 1024 });
  const m = /tps = ([\d.]+) \((?:without|excluding)/.exec(stdout);
  if (!m) throw new Error(`pgbench output not understood:\n${stdout}`);
  return { tps: Number(m[1]), command: `pgbench ${run_.join(" ")}` };
}

/**
 * CPU seconds used so far by the PostgreSQL processes serving `database` (its backends, plus the
 * WAL writer, checkpointer and background writer that every commit relies on), per pid. Other
 * databases' backends on a shared server are left out.
 */
export async function postgresCpu(database: string): Promise<Map<number, number>> {
  const pids = await withClient(adminUrl(), async (c) =>
    (
      await c.query<{ pid: number }>(
        `select pid from pg_stat_activity
          where (datname = $1 and pid <> pg_backend_pid())
             or backend_type in ('walwriter', 'checkpointer', 'background writer')`,
        [database],
      )
    ).rows.map((r) => r.pid),
  );
  return new Map(pids.map((pid) => [pid, processCpuSeconds(pid)]));
}

/** CPU seconds between two snapshots; processes that ended in between are not counted. */
export function postgresCpuDelta(before: Map<number, number>, after: Map<number, number>): number {
  let total = 0;
  for (const [pid, cpu] of after) total += Math.max(0, cpu - (before.get(pid) ?? 0));
  return total;
}
