import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import { ROOT } from "./servers.js";
import type { Results, Target } from "./types.js";

export const RESULTS_DIR = join(ROOT, "bench", "results");
const START = "<!-- bench:start -->";
const END = "<!-- bench:end -->";

export function fmt(value: number, unit = ""): string {
  if (!Number.isFinite(value)) return "n/a";
  const abs = Math.abs(value);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : 2;
  const text = value.toLocaleString("en-US", {
    maximumFractionDigits: digits,
    minimumFractionDigits: 0,
  });
  if (unit === "×") return `${text}×`;
  if (unit === "%") return `${text} %`;
  return unit ? `${text} ${unit}` : text;
}

/** A free file name `<date>[-n].<ext>` for today's results. */
export function resultBase(date: string, prefix = ""): string {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const day = date.slice(0, 10);
  for (let n = 1; ; n++) {
    const base = join(RESULTS_DIR, `${prefix}${day}${n === 1 ? "" : `-${n}`}`);
    if (!existsSync(`${base}.json`) && !existsSync(`${base}.md`)) return base;
  }
}

function machineLine(r: Results): string {
  const m = r.machine;
  return `${m.cpus} × ${m.cpuModel}, ${m.memoryGb} GB RAM, PostgreSQL ${m.postgres} (fsync=${m.postgresSettings.fsync ?? "?"}, synchronous_commit=${m.postgresSettings.synchronous_commit ?? "?"}), Node ${m.node}; load average ${m.loadAverageStart.join("/")} at start, ${m.loadAverageEnd.join("/")} at end`;
}

function targetValue(t: Target): string {
  return fmt(t.value, t.unit);
}

/** Median of a floor scenario's CPU per event (`field` of its runs' extra), µs. */
function medianCpu(r: Results, key: string, field: string): number | null {
  const cpu = (r.scenarios[key]?.runs ?? [])
    .map((x) => Number(x.extra?.[field]))
    .filter((v) => Number.isFinite(v) && v > 0)
    .sort((a, b) => a - b);
  return cpu.length === 0 ? null : cpu[Math.floor(cpu.length / 2)]!;
}

/** What this machine allows: the database's CPU per event (the ceiling it puts on ingest) and the wait of a request that does no work under load. */
export function floorLine(r: Results): string | null {
  const lines: string[] = [];
  const us = medianCpu(r, "pg_floor", "backendCpuPerEventUs");
  if (us !== null) {
    const ceiling = (r.machine.cpus * 1e6) / us;
    lines.push(
      `PostgreSQL alone spends ${fmt(us)} µs of CPU per event writing the event and ledger rows (server-side INSERT…SELECT, median backend CPU), so even with no HTTP, JSON, hashing or driver work at all, ${r.machine.cpus} cores cannot write more than about ${fmt(ceiling)} events/s with this schema.`,
    );
  }
  const lite = medianCpu(r, "pglite_floor", "cpuPerEventUs");
  if (lite !== null) {
    lines.push(
      `PGlite alone spends ${fmt(lite)} µs of CPU per event for the same rows, on the one thread it shares with the server, so Tally on PGlite cannot ingest more than about ${fmt(1e6 / lite)} events/s on any number of cores, before any of its own work.`,
    );
  }
  const minimal = r.scenarios.group_commit?.summary.median;
  if (minimal !== undefined) {
    const ratio = (key: string, unit: "×" | "%") => {
      const base = r.scenarios[key]?.summary.median;
      if (base === undefined) return "n/a";
      return unit === "%" ? fmt((minimal / base) * 100, "%") : fmt(minimal / base, "×");
    };
    lines.push(
      `A minimal group commit — the rows Tally writes, one statement per flush, none of the API (bench/baselines/group-commit.ts) — reached ${fmt(minimal, "events/s")} for the hot organisation in the same run: ${ratio("pgbench_s1", "×")} pgbench scale 1, ${ratio("bare_fastify", "%")} of bare Fastify, ${ratio("naive", "×")} the naive implementation (the targets ask Tally for 5×, 30 % and 10×).`,
    );
  }
  const health = r.scenarios.healthz_p99?.summary.median;
  const balance = r.scenarios.balance_p99?.summary.median;
  if (health !== undefined && balance !== undefined) {
    lines.push(
      `While the hot organisation ingests, a GET of /healthz — no authentication, no database, nothing but the answer — has a p99 of ${fmt(health, "ms")} on this machine, against ${fmt(balance, "ms")} for the balance: that much of the balance read's p99 is waiting for the event loop and a core, before any of its own work.`,
    );
  }
  return lines.length > 0 ? lines.join("\n\n") : null;
}

export function markdown(r: Results): string {
  const lines: string[] = [];
  lines.push(`# Tally benchmark — ${r.date.slice(0, 16).replace("T", " ")} UTC`);
  lines.push("");
  lines.push(`Commit \`${r.gitCommit ?? "?"}\`, ${r.mode} run, ${r.totalSeconds} s in all.`);
  lines.push("");
  lines.push(`**Machine:** ${machineLine(r)}.`);
  lines.push("");
  lines.push(`> ${r.machine.note}`);
  lines.push("");
  lines.push(
    `Settings: ${r.settings.reps} measured repetitions of ${r.settings.durationSec} s after a ${r.settings.warmupSec} s warm-up; load generator autocannon (in the bench process, pipelining 1); Tally and the baselines run as separate Node processes; PostgreSQL with durable commits.${r.settings.tallyNodeFlags ? ` **Tally ran with \`${r.settings.tallyNodeFlags}\`** (BENCH_NODE_FLAGS), not as \`npm start\` runs it.` : ""}`,
  );
  lines.push("");
  lines.push("## Targets");
  lines.push("");
  lines.push("| | measured | target | |");
  lines.push("|---|---:|---:|---|");
  for (const t of r.targets) {
    lines.push(
      `| ${t.label} | ${targetValue(t)} | ${t.comparator} ${fmt(t.target, t.unit)} | ${t.pass ? "met" : "**missed**"} |`,
    );
  }
  lines.push("");
  lines.push("## Scenarios");
  lines.push("");
  lines.push("| scenario | median | min | max | spread | runs |");
  lines.push("|---|---:|---:|---:|---:|---|");
  for (const s of Object.values(r.scenarios)) {
    lines.push(
      `| ${s.label} | ${fmt(s.summary.median, s.unit)} | ${fmt(s.summary.min)} | ${fmt(s.summary.max)} | ${fmt(s.summary.spreadPct)} % | ${s.summary.values.map((v) => fmt(v)).join(", ")} |`,
    );
  }
  lines.push("");
  const floor = floorLine(r);
  if (floor) {
    lines.push(floor);
    lines.push("");
  }
  const detailed = Object.values(r.scenarios).filter((s) => s.runs.some((x) => x.cpu));
  if (detailed.length > 0) {
    lines.push("## Where the CPU went (Tally runs)");
    lines.push("");
    lines.push(
      "CPU as % of one core over the run (this machine has " +
        `${r.machine.cpus}); PostgreSQL counts the backends of the bench database and the WAL writer, checkpointer and background writer; µs of CPU per acknowledged event; ingest flushes from \`/metrics\`. On PGlite the database runs inside the Tally process.`,
    );
    lines.push("");
    lines.push(
      "| run | events/s | Tally CPU | PostgreSQL CPU | load generator CPU | Tally µs/event | PostgreSQL µs/event | flushes | events/flush | ms/flush | p99 latency | server peak RSS so far |",
    );
    lines.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (const s of detailed) {
      for (const [i, x] of s.runs.entries()) {
        if (!x.cpu) continue;
        lines.push(
          `| ${s.key} #${i + 1} | ${fmt(x.value)} | ${x.cpu.serverPct} % | ${x.cpu.postgresPct === null ? "(in process)" : `${x.cpu.postgresPct} %`} | ${x.cpu.loadGeneratorPct} % | ${x.cpuPerEventUs?.server ?? ""} | ${x.cpuPerEventUs?.postgres ?? "(in process)"} | ${x.flush?.count ?? ""} | ${x.flush?.avgEvents ?? ""} | ${x.flush?.avgMs ?? ""} | ${fmt(x.latencyMs?.p99 ?? Number.NaN, "ms")} | ${x.extra?.serverPeakRssMb ?? ""} MB |`,
        );
      }
    }
    lines.push("");
  }
  lines.push("## Invariants");
  lines.push("");
  const failed = r.invariants.filter((i) => !i.ok);
  lines.push(
    failed.length === 0
      ? `All ${r.invariants.length} checks held.`
      : `**${failed.length} of ${r.invariants.length} checks failed.**`,
  );
  lines.push("");
  for (const i of r.invariants)
    lines.push(`- ${i.ok ? "ok" : "**FAILED**"} — ${i.name}: ${i.detail}`);
  lines.push("");
  return lines.join("\n");
}

/**
 * Horizontal bars on a log scale: each target's measured value as a multiple of its target
 * (1 = met; for "at most" targets, target ÷ value), from 0.01× to 10×.
 */
export function svgChart(r: Results): string {
  const rows = r.targets;
  const width = 820;
  const left = 340;
  const axis = 380;
  const rowH = 30;
  const top = 50;
  const bottom = top + rows.length * rowH;
  const height = bottom + 42;
  const [lo, hi] = [0.01, 10];
  const x = (score: number) => {
    const v = Math.min(hi, Math.max(lo, score));
    return left + ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * axis;
  };
  const esc = (s: string) =>
    s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/÷/g, "&#247;");
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="12">`,
  );
  parts.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  parts.push(
    `<text x="12" y="20" font-size="14" font-weight="600">${esc("Tally benchmark: measured ÷ target (log scale; 1× = target met)")}</text>`,
  );
  parts.push(
    `<text x="12" y="36" fill="#555">${esc(`${r.date.slice(0, 10)} · ${r.machine.cpus} × ${r.machine.cpuModel} · PostgreSQL ${r.machine.postgres} · Node ${r.machine.node} · load ${r.machine.loadAverageStart[0] ?? "?"}`)}</text>`,
  );
  for (const tick of [0.01, 0.1, 1, 10]) {
    const tx = x(tick).toFixed(1);
    parts.push(
      `<line x1="${tx}" y1="${top - 4}" x2="${tx}" y2="${bottom}" stroke="${tick === 1 ? "#222" : "#ddd"}"${tick === 1 ? ' stroke-dasharray="4 3"' : ""}/>`,
    );
    parts.push(
      `<text x="${tx}" y="${bottom + 16}" fill="#555" text-anchor="middle">${tick === 1 ? "1× target" : `${tick}×`}</text>`,
    );
  }
  for (const [i, t] of rows.entries()) {
    const y = top + i * rowH;
    const score = t.comparator === ">=" ? t.value / t.target : t.target / t.value;
    const safe = Number.isFinite(score) && score > 0 ? score : lo;
    const color = safe >= 1 ? "#2e7d32" : safe >= 0.5 ? "#ef6c00" : "#c62828";
    const end = x(safe);
    parts.push(`<text x="12" y="${y + 18}">${esc(t.label)}</text>`);
    parts.push(
      `<rect x="${left}" y="${y + 6}" width="${Math.max(2, end - left).toFixed(1)}" height="16" fill="${color}" rx="2"/>`,
    );
    const label = esc(`${fmt(t.value, t.unit)} (${safe.toFixed(2)}× target)`);
    parts.push(
      end > left + axis - 120
        ? `<text x="${(end - 6).toFixed(1)}" y="${y + 18}" fill="#fff" text-anchor="end">${label}</text>`
        : `<text x="${(end + 6).toFixed(1)}" y="${y + 18}" fill="#222">${label}</text>`,
    );
  }
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}

export function readmeTable(r: Results, resultsFile: string): string {
  const lines: string[] = [];
  lines.push(
    `Measured by \`npm run bench\` on ${r.date.slice(0, 10)} (commit \`${r.gitCommit ?? "?"}\`): ${machineLine(r)}. Baselines run in the same session on the same machine; medians of ${r.settings.reps} runs of ${r.settings.durationSec} s. Details: [${resultsFile}](${resultsFile}).`,
  );
  lines.push("");
  lines.push("| | measured | target | |");
  lines.push("|---|---:|---:|---|");
  for (const t of r.targets) {
    lines.push(
      `| ${t.label} | ${targetValue(t)} | ${t.comparator} ${fmt(t.target, t.unit)} | ${t.pass ? "met" : "missed"} |`,
    );
  }
  lines.push("");
  lines.push("| scenario | median |");
  lines.push("|---|---:|");
  for (const s of Object.values(r.scenarios)) {
    lines.push(`| ${s.label} | ${fmt(s.summary.median, s.unit)} |`);
  }
  lines.push("");
  const floor = floorLine(r);
  if (floor) {
    lines.push(floor);
    lines.push("");
  }
  lines.push("![Benchmark: measured ÷ target](bench/results/latest.svg)");
  return lines.join("\n");
}

/** Replaces the text between the bench markers, adding a Benchmarks section if absent. */
export function updateReadme(table: string): void {
  const path = join(ROOT, "README.md");
  let text = readFileSync(path, "utf8");
  if (!text.includes(START) || !text.includes(END)) {
    text = `${text.replace(/\s*$/, "")}\n\n## Benchmarks\n\n${START}\n${END}\n`;
  }
  const a = text.indexOf(START) + START.length;
  const b = text.indexOf(END);
  writeFileSync(path, `${text.slice(0, a)}\n${table}\n${text.slice(b)}`);
}

export function writeReports(r: Results): string[] {
  const base = resultBase(r.date);
  writeFileSync(`${base}.json`, `${JSON.stringify(r, null, 2)}\n`);
  writeFileSync(`${base}.md`, markdown(r));
  const rel = relative(ROOT, `${base}.md`);
  // A run with tuned Node flags is recorded, but the README shows Tally as `npm start` runs it.
  if (r.settings.tallyNodeFlags) return [relative(ROOT, `${base}.json`), rel];
  writeFileSync(join(RESULTS_DIR, "latest.svg"), svgChart(r));
  updateReadme(readmeTable(r, rel));
  return [relative(ROOT, `${base}.json`), rel, "bench/results/latest.svg", "README.md"];
}
