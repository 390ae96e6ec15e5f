import type { Summary } from "./util.js";

export interface RunDetail {
  value: number;
  requests?: number;
  statuses?: Record<string, number>;
  errors?: number;
  timeouts?: number;
  latencyMs?: { p50: number; p90: number; p99: number; max: number };
  /** Requests re-sent after the run because their response was cut off or not a 200. */
  retried?: number;
  /** Share of one core used during the run, in percent (200 = both cores of a 2-core box). */
  cpu?: { serverPct: number; postgresPct: number | null; loadGeneratorPct: number };
  /** CPU time per acknowledged event, microseconds (PostgreSQL: null on embedded PGlite). */
  cpuPerEventUs?: { server: number; postgres: number | null };
  /** Ingest engine flushes during the run (from /metrics). */
  flush?: { count: number; avgEvents: number; avgMs: number };
  extra?: Record<string, number | string>;
}

export interface Scenario {
  key: string;
  label: string;
  unit: string;
  summary: Summary;
  runs: RunDetail[];
  notes?: string;
}

export interface Target {
  key: string;
  label: string;
  value: number;
  target: number;
  /** ">=" — higher is better; "<=" — lower is better. */
  comparator: ">=" | "<=";
  unit: string;
  pass: boolean;
  /** How the value was computed. */
  basis: string;
}

export interface Invariant {
  name: string;
  ok: boolean;
  detail: string;
}

export interface Machine {
  cpus: number;
  cpuModel: string;
  memoryGb: number;
  os: string;
  node: string;
  postgres: string;
  postgresSettings: Record<string, string>;
  loadAverageStart: number[];
  loadAverageEnd: number[];
  note: string;
}

export interface Results {
  date: string;
  mode: "full" | "quick";
  gitCommit: string | null;
  machine: Machine;
  settings: Record<string, number | string>;
  scenarios: Record<string, Scenario>;
  targets: Target[];
  invariants: Invariant[];
  totalSeconds: number;
  ok: boolean;
}
