import type { AppContext } from "../../app/context.js";
import { type Credits, creditsFromDb, formatCredits } from "../ledger/credits.js";
import { monthlyEntryTotals } from "../ledger/ledger.repo.js";
import { listOrgs } from "../orgs/orgs.repo.js";
import * as repo from "./reports.repo.js";
import type { ChargebackRow, DailyUsage, LedgerSummary, UsageSummary } from "./reports.schemas.js";

// ---- periods --------------------------------------------------------------------------------

/** A calendar month in UTC, `YYYY-MM`. */
export type Period = string;

export interface PeriodFilter {
  year?: number;
  month?: number;
}

const pad2 = (n: number) => String(n).padStart(2, "0");
const periodOf = (year: number, month: number): Period =>
  `${String(year).padStart(4, "0")}-${pad2(month)}`;

/**
 * The months a report covers: `year` + `month` → that month; `year` → its twelve months;
 * neither → the twelve months ending with the current one (UTC). Callers refuse `month`
 * without `year`.
 */
export function periodsOf(now: Date, filter: PeriodFilter): Period[] {
  if (filter.year !== undefined && filter.month !== undefined) {
    return [periodOf(filter.year, filter.month)];
  }
  if (filter.year !== undefined) {
    return Array.from({ length: 12 }, (_, i) => periodOf(filter.year!, i + 1));
  }
  const end = now.getUTCFullYear() * 12 + now.getUTCMonth();
  return Array.from({ length: 12 }, (_, i) => {
    const m = end - 11 + i;
    return periodOf(Math.floor(m / 12), (m % 12) + 1);
  });
}

/** `2026-11` → the month's first instant and the next month's first instant (UTC). */
export function periodBounds(period: Period): { start: Date; end: Date } {
  const [y, m] = period.split("-").map(Number) as [number, number];
  return { start: new Date(Date.UTC(y, m - 1, 1)), end: new Date(Date.UTC(y, m, 1)) };
}

const firstDay = (period: Period) => `${period}-01`;

// ---- ordering -------------------------------------------------------------------------------

interface Sortable {
  cost: Credits;
  events: bigint;
  key: string | null;
}

/** Largest cost first; then more events; then by key, "none" (null) last. */
function byCostDesc(a: Sortable, b: Sortable): number {
  if (a.cost !== b.cost) return a.cost > b.cost ? -1 : 1;
  if (a.events !== b.events) return a.events > b.events ? -1 : 1;
  if (a.key === b.key) return 0;
  if (a.key === null) return 1;
  if (b.key === null) return -1;
  return a.key < b.key ? -1 : 1;
}

function sortedDtos<L extends Sortable, D>(lines: L[], dto: (l: L) => D): D[] {
  return lines.sort(byCostDesc).map(dto);
}

/** Token counts fit a JSON number: 2^53 tokens is far beyond any month of any organisation. */
const count = (text: string) => Number(BigInt(text));
/** A rollup dimension stores "none" as ''. */
const dimension = (value: string | null) => (value === null || value === "" ? null : value);

// ---- usage summaries ------------------------------------------------------------------------

function emptySummary(orgId: string, period: Period): UsageSummary {
  return {
    org_id: orgId,
    period,
    total_cost: "0",
    events: 0,
    by_type: [],
    by_model: [],
    by_operation: [],
    by_user: [],
    by_resource: [],
  };
}

/**
 * Monthly usage summaries of one organisation, one per requested period (zeros for months
 * without usage), computed from the monthly rollups the ingest engine maintains — never from
 * the raw events.
 */
export async function usageSummaries(
  ctx: AppContext,
  input: { orgId: string; periods: readonly Period[] },
): Promise<UsageSummary[]> {
  const { orgId, periods } = input;
  if (periods.length === 0) return [];
  const sorted = [...periods].sort();
  const lines = await repo.summaryLines(
    ctx.db,
    orgId,
    firstDay(sorted[0]!),
    firstDay(sorted[sorted.length - 1]!),
  );

  type Line = Sortable & { l: repo.SummaryLine };
  const grouped = new Map<Period, Map<repo.LineKind, Line[]>>();
  for (const l of lines) {
    // Non-ai usage has no model, and most usage no resource: those buckets are not lines.
    if (l.kind === "model" && l.model === "") continue;
    if (l.kind === "resource" && l.resource === "") continue;
    const byKind = grouped.get(l.period) ?? new Map<repo.LineKind, Line[]>();
    grouped.set(l.period, byKind);
    const keyOf: Record<repo.LineKind, string | null> = {
      type: `${l.type}\u0000${l.unit}`,
      model: l.model,
      operation: dimension(l.operation),
      user: dimension(l.user_id),
      resource: `${l.resource}\u0000${l.type}\u0000${l.unit}`,
    };
    const line: Line = {
      l,
      cost: creditsFromDb(l.cost),
      events: BigInt(l.events),
      key: keyOf[l.kind],
    };
    const list = byKind.get(l.kind);
    if (list) list.push(line);
    else byKind.set(l.kind, [line]);
  }

  return periods.map((period) => {
    const byKind = grouped.get(period);
    const summary = emptySummary(orgId, period);
    if (!byKind) return summary;
    const of = (kind: repo.LineKind) => byKind.get(kind) ?? [];
    const types = of("type");
    summary.total_cost = formatCredits(types.reduce((sum, t) => sum + t.cost, 0n));
    summary.events = Number(types.reduce((sum, t) => sum + t.events, 0n));
    summary.by_type = sortedDtos(types, ({ l, cost, events }) => ({
      type: l.type!,
      unit: l.unit!,
      quantity: formatCredits(creditsFromDb(l.quantity)),
      cost: formatCredits(cost),
      events: Number(events),
    }));
    summary.by_model = sortedDtos(of("model"), ({ l, cost, events }) => ({
      model: l.model!,
      input_tokens: count(l.input_tokens),
      cached_input_tokens: count(l.cached_input_tokens),
      cache_write_tokens: count(l.cache_write_tokens),
      output_tokens: count(l.output_tokens),
      cost: formatCredits(cost),
      events: Number(events),
    }));
    summary.by_operation = sortedDtos(of("operation"), ({ l, cost, events }) => ({
      operation: dimension(l.operation),
      cost: formatCredits(cost),
      events: Number(events),
    }));
    summary.by_user = sortedDtos(of("user"), ({ l, cost, events }) => ({
      user_id: dimension(l.user_id),
      cost: formatCredits(cost),
      events: Number(events),
    }));
    summary.by_resource = sortedDtos(of("resource"), ({ l, cost, events }) => ({
      resource: l.resource!,
      type: l.type!,
      unit: l.unit!,
      quantity: formatCredits(creditsFromDb(l.quantity)),
      cost: formatCredits(cost),
      events: Number(events),
    }));
    return summary;
  });
}

// ---- chargeback (all organisations) ---------------------------------------------------------

export type ChargebackSort = "cost" | "org";

/**
 * One row per organisation with usage in a period, periods ascending; within a period by
 * total cost (largest first) or by organisation name. Organisations without usage in a
 * period have no row for it.
 */
export async function chargebackRows(
  ctx: AppContext,
  input: { periods: readonly Period[]; sort: ChargebackSort },
): Promise<ChargebackRow[]> {
  if (input.periods.length === 0) return [];
  const sorted = [...input.periods].sort();
  const wanted = new Set(sorted);
  const lines = await repo.orgTypeLines(
    ctx.db,
    firstDay(sorted[0]!),
    firstDay(sorted[sorted.length - 1]!),
  );

  const orgs = await orgNames(
    ctx,
    lines.map((l) => l.org_id),
  );
  type TypeLine = Sortable & { dto: ChargebackRow["by_type"][number] };
  const rows = new Map<string, { row: ChargebackRow; cost: Credits; types: TypeLine[] }>();
  for (const l of lines) {
    if (!wanted.has(l.period)) continue;
    const k = `${l.period}\u0000${l.org_id}`;
    let r = rows.get(k);
    if (!r) {
      const org = orgs.get(l.org_id);
      const row: ChargebackRow = {
        org_id: l.org_id,
        org_name: org?.name ?? null,
        external_id: org?.external_id ?? null,
        period: l.period,
        total_cost: "0",
        events: 0,
        by_type: [],
      };
      r = { row, cost: 0n, types: [] };
      rows.set(k, r);
    }
    const cost = creditsFromDb(l.cost);
    r.cost += cost;
    r.types.push({
      cost,
      events: BigInt(l.events),
      key: `${l.type}\u0000${l.unit}`,
      dto: {
        type: l.type,
        unit: l.unit,
        quantity: formatCredits(creditsFromDb(l.quantity)),
        cost: formatCredits(cost),
        events: count(l.events),
      },
    });
  }

  const result = [...rows.values()];
  for (const r of result) {
    r.row.total_cost = formatCredits(r.cost);
    r.row.events = Number(r.types.reduce((sum, t) => sum + t.events, 0n));
    r.row.by_type = sortedDtos(r.types, (t) => t.dto);
  }
  result.sort((a, b) => {
    if (a.row.period !== b.row.period) return a.row.period < b.row.period ? -1 : 1;
    if (input.sort === "cost" && a.cost !== b.cost) return a.cost > b.cost ? -1 : 1;
    const an = a.row.org_name ?? "";
    const bn = b.row.org_name ?? "";
    if (input.sort === "org" && an !== bn) return an < bn ? -1 : 1;
    return a.row.org_id < b.row.org_id ? -1 : a.row.org_id > b.row.org_id ? 1 : 0;
  });
  return result.map((r) => r.row);
}

async function orgNames(ctx: AppContext, ids: readonly string[]) {
  const unique = [...new Set(ids)];
  const names = new Map<string, { name: string; external_id: string | null }>();
  for (let i = 0; i < unique.length; i += 1000) {
    const chunk = unique.slice(i, i + 1000);
    for (const o of await listOrgs(ctx.db, { limit: chunk.length, ids: chunk })) {
      names.set(o.id, { name: o.name, external_id: o.external_id });
    }
  }
  return names;
}

// ---- daily series ---------------------------------------------------------------------------

/**
 * Cost and events per UTC day and usage type, `from`..`to` inclusive (`YYYY-MM-DD`), oldest
 * first. Sparse: a day or type without usage has no row.
 */
export async function dailyUsage(
  ctx: AppContext,
  input: { orgId: string; from: string; to: string },
): Promise<DailyUsage[]> {
  const rows = await repo.dailyRows(ctx.db, input.orgId, input.from, input.to);
  return rows.map((r) => ({
    day: r.day,
    type: r.type,
    cost: formatCredits(creditsFromDb(r.cost)),
    events: count(r.events),
  }));
}

// ---- ledger-side monthly view ---------------------------------------------------------------

/**
 * Credits movements per calendar month (UTC, by entry creation), for reconciling usage with
 * money. Each month's closing balance is its opening balance plus its net movement, so the
 * months chain exactly.
 */
export async function ledgerSummaries(
  ctx: AppContext,
  input: { orgId: string; periods: readonly Period[] },
): Promise<LedgerSummary[]> {
  if (input.periods.length === 0) return [];
  const sorted = [...input.periods].sort();
  const from = periodBounds(sorted[0]!).start;
  const to = periodBounds(sorted[sorted.length - 1]!).end;
  const { openingBalance, totals } = await monthlyEntryTotals(ctx.db, input.orgId, from, to);

  interface Month {
    purchased: Credits;
    bonus: Credits;
    consumed: Credits;
    refunded: Credits;
    expired: Credits;
    adjusted_in: Credits;
    adjusted_out: Credits;
    net: Credits;
    entries: bigint;
  }
  const months = new Map<Period, Month>();
  for (const t of totals) {
    const m = months.get(t.period) ?? {
      purchased: 0n,
      bonus: 0n,
      consumed: 0n,
      refunded: 0n,
      expired: 0n,
      adjusted_in: 0n,
      adjusted_out: 0n,
      net: 0n,
      entries: 0n,
    };
    months.set(t.period, m);
    const amount = creditsFromDb(t.amount);
    m.net += amount;
    m.entries += BigInt(t.entries);
    // Signed as they are booked, so that the identity for `net` holds whatever the signs.
    switch (t.type) {
      case "purchase":
        m.purchased += amount;
        break;
      case "bonus":
        m.bonus += amount;
        break;
      case "usage":
        m.consumed -= amount;
        break;
      case "refund":
        m.refunded -= amount;
        break;
      case "expiry":
        m.expired -= amount;
        break;
      case "adjustment":
        if (t.positive) m.adjusted_in += amount;
        else m.adjusted_out -= amount;
        break;
    }
  }

  // Months are contiguous from the first requested one, so the balance carries forward.
  const result: LedgerSummary[] = [];
  let balance = creditsFromDb(openingBalance);
  const all = contiguous(sorted[0]!, sorted[sorted.length - 1]!);
  const wanted = new Set(input.periods);
  for (const period of all) {
    const m = months.get(period);
    const opening = balance;
    balance += m?.net ?? 0n;
    if (!wanted.has(period)) continue;
    result.push({
      org_id: input.orgId,
      period,
      opening_balance: formatCredits(opening),
      purchased: formatCredits(m?.purchased ?? 0n),
      bonus: formatCredits(m?.bonus ?? 0n),
      consumed: formatCredits(m?.consumed ?? 0n),
      refunded: formatCredits(m?.refunded ?? 0n),
      expired: formatCredits(m?.expired ?? 0n),
      adjusted_in: formatCredits(m?.adjusted_in ?? 0n),
      adjusted_out: formatCredits(m?.adjusted_out ?? 0n),
      net: formatCredits(m?.net ?? 0n),
      closing_balance: formatCredits(balance),
      entries: Number(m?.entries ?? 0n),
    });
  }
  const order = new Map(input.periods.map((p, i) => [p, i]));
  return result.sort((a, b) => order.get(a.period)! - order.get(b.period)!);
}

function contiguous(first: Period, last: Period): Period[] {
  const out: Period[] = [];
  let { start } = periodBounds(first);
  const end = periodBounds(last).end;
  while (start < end) {
    out.push(periodOf(start.getUTCFullYear(), start.getUTCMonth() + 1));
    start = new Date(Date.UTC(start.getUTCFullYear(), start.getUTCMonth() + 1, 1));
  }
  return out;
}
