import { sql } from "kysely";
import { type Db, inSnapshot } from "../../db/index.js";
import { creditsFromDb, creditsToDb } from "../ledger/credits.js";

/** Which breakdown a summary line belongs to (the grouping set it came from). */
export type LineKind = "type" | "model" | "operation" | "user" | "resource";

export interface SummaryLine {
  kind: LineKind;
  /** `YYYY-MM`. */
  period: string;
  type: string | null;
  unit: string | null;
  model: string | null;
  operation: string | null;
  user_id: string | null;
  resource: string | null;
  /** Sums as exact decimal text. */
  quantity: string;
  input_tokens: string;
  cached_input_tokens: string;
  cache_write_tokens: string;
  output_tokens: string;
  cost: string;
  events: string;
}

/**
 * The breakdowns of an organisation's months `from`..`to` (first days of months) over the
 * monthly rollups, which the primary key (org_id, period, …) range-scans. Sums are done by
 * PostgreSQL in NUMERIC, so they are exact. Two queries of about equal cost: the lines per model
 * and per resource (with quantities and tokens), and the cost-only lines per operation and per
 * user — on PostgreSQL they run side by side on two connections, which about halves the
 * latency; if a write landed between them, they are read again from one snapshot. The lines per
 * type are summed here from the lines per resource (every event has one resource, `''` for
 * none), which saves the database a third pass over the rollups; the month's total is the sum
 * of its `type` lines (every event has exactly one type).
 */
export function summaryLinesQueries(orgId: string, from: string, to: string) {
  const rollups = sql`usage_rollups
     where org_id = ${orgId} and period >= ${from}::date and period <= ${to}::date`;
  const quantities = sql<QuantityRow>`
    select to_char(period, 'YYYY-MM') as period, grouping(type, unit, model, resource) as mask,
           type, unit, model, resource,
           sum(quantity)::text as quantity,
           sum(input_tokens)::text as input_tokens,
           sum(cached_input_tokens)::text as cached_input_tokens,
           sum(cache_write_tokens)::text as cache_write_tokens,
           sum(output_tokens)::text as output_tokens,
           sum(cost)::text as cost,
           sum(events)::text as events
      from ${rollups}
     group by grouping sets ((period, model), (period, resource, type, unit))`;
  const costs = sql<CostRow>`
    select to_char(period, 'YYYY-MM') as period, grouping(operation, user_id) as mask,
           operation, user_id, sum(cost)::text as cost, sum(events)::text as events
      from ${rollups}
     group by grouping sets ((period, operation), (period, user_id))`;
  return { quantities, costs };
}

/** `grouping(…)` is a bitmask with a 1 for each argument aggregated away (last = bit 0). */
const QUANTITY_KINDS: Record<number, LineKind> = {
  13: "model", // model | type, unit, resource aggregated away
  2: "resource", // type, unit, resource | model
};
const COST_KINDS: Record<number, LineKind> = { 1: "operation", 2: "user" };

export async function summaryLines(
  db: Db,
  orgId: string,
  from: string,
  to: string,
): Promise<SummaryLine[]> {
  const q = summaryLinesQueries(orgId, from, to);
  const inOrder = async (tx: Db) => {
    const quantities = await q.quantities.execute(tx);
    return toLines(quantities.rows, (await q.costs.execute(tx)).rows);
  };
  // In the caller's transaction (e.g. `tally report`): one connection, its snapshot.
  if (db.isTransaction) return inOrder(db);
  const [quantities, costs] = await Promise.all([q.quantities.execute(db), q.costs.execute(db)]);
  const lines = toLines(quantities.rows, costs.rows);
  // A usage write committed between the two queries. Rare: read again from one snapshot.
  return breakdownsAgree(lines) ? lines : inSnapshot(db, inOrder);
}

type QuantityRow = Omit<SummaryLine, "kind" | "operation" | "user_id"> & { mask: number };
type CostRow = Pick<SummaryLine, "period" | "operation" | "user_id" | "cost" | "events"> & {
  mask: number;
};

function toLines(quantities: readonly QuantityRow[], costs: readonly CostRow[]): SummaryLine[] {
  const lines: SummaryLine[] = [
    ...quantities.map(({ mask, ...r }) => ({
      ...r,
      operation: null,
      user_id: null,
      kind: QUANTITY_KINDS[Number(mask)]!,
    })),
    ...costs.map(({ mask, ...r }) => ({
      ...r,
      type: null,
      unit: null,
      model: null,
      resource: null,
      quantity: "0",
      input_tokens: "0",
      cached_input_tokens: "0",
      cache_write_tokens: "0",
      output_tokens: "0",
      kind: COST_KINDS[Number(mask)]!,
    })),
  ];
  return [...typeLines(lines), ...lines];
}

/** Per month, type and unit: the sums of the `resource` lines, exact (credits at scale 12). */
function typeLines(lines: readonly SummaryLine[]): SummaryLine[] {
  const decimals = ["quantity", "cost"] as const;
  const counts = [
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "events",
  ] as const;
  type Sum = Record<(typeof decimals)[number] | (typeof counts)[number], bigint>;
  const sums = new Map<string, { line: SummaryLine; sum: Sum }>();
  for (const l of lines) {
    if (l.kind !== "resource") continue;
    const k = `${l.period}\u0000${l.type}\u0000${l.unit}`;
    let entry = sums.get(k);
    if (!entry) {
      const zero = Object.fromEntries([...decimals, ...counts].map((f) => [f, 0n])) as Sum;
      entry = { line: { ...l, kind: "type", resource: null }, sum: zero };
      sums.set(k, entry);
    }
    for (const f of decimals) entry.sum[f] += creditsFromDb(l[f]);
    for (const f of counts) entry.sum[f] += BigInt(l[f]);
  }
  return [...sums.values()].map(({ line, sum }) => {
    for (const f of decimals) line[f] = creditsToDb(sum[f]);
    for (const f of counts) line[f] = String(sum[f]);
    return line;
  });
}

/**
 * Whether the two queries saw the same rollups: each month's events, summed over its `type`
 * lines and over its `user` lines, are equal. Rollups only ever grow by a positive event count,
 * so a write between the queries always shows here.
 */
function breakdownsAgree(lines: readonly SummaryLine[]): boolean {
  const events = new Map<string, bigint>();
  for (const l of lines) {
    const sign = l.kind === "type" ? 1n : l.kind === "user" ? -1n : 0n;
    events.set(l.period, (events.get(l.period) ?? 0n) + sign * BigInt(l.events));
  }
  return [...events.values()].every((n) => n === 0n);
}

export interface OrgTypeLine {
  org_id: string;
  period: string;
  type: string;
  unit: string;
  quantity: string;
  cost: string;
  events: string;
}

/**
 * Per organisation and month (`from`..`to`), a line per (type, unit), for the chargeback view.
 * Uses the `usage_rollups_period` index (migration 0009).
 */
export async function orgTypeLines(db: Db, from: string, to: string): Promise<OrgTypeLine[]> {
  const { rows } = await sql<OrgTypeLine>`
    select org_id, to_char(period, 'YYYY-MM') as period, type, unit,
           sum(quantity)::text as quantity, sum(cost)::text as cost, sum(events)::text as events
      from usage_rollups
     where period >= ${from}::date and period <= ${to}::date
     group by org_id, period, type, unit`.execute(db);
  return rows;
}

/** Daily cost and events per type (`from`..`to` inclusive, `YYYY-MM-DD`). */
export function dailyRows(db: Db, orgId: string, from: string, to: string) {
  return db
    .selectFrom("usage_daily")
    .select(["day", "type", "cost", "events"])
    .where("org_id", "=", orgId)
    .where("day", ">=", from)
    .where("day", "<=", to)
    .orderBy("day")
    .orderBy("type")
    .execute();
}
