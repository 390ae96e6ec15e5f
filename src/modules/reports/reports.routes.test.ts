import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { formatCredits, parseCredits } from "../ledger/credits.js";
import { expireDueBlocks } from "../ledger/ledger.service.js";

/**
 * Reports against sums computed here, independently, from the stored events (GET usage-events)
 * and ledger entries (GET transactions) — never from the rollups under test.
 */

// biome-ignore lint/suspicious/noExplicitAny: JSON response bodies are checked by the assertions.
type Json = Record<string, any>;

const NOW = "2026-11-24T10:00:00.000Z";
const C = (value: string) => parseCredits(value);
const SCALE = 10n ** 12n;
/** Units of the default catalogue (DEFAULT_CATALOGUE.md). */
const UNITS: Record<string, string> = {
  ai_tokens: "tokens",
  compute: "vCPU-second",
  storage: "GB-hour",
  bandwidth: "GB",
  data_ops: "operation",
};
const METERS: Record<string, string> = {
  compute: "compute.vcpu_seconds",
  storage: "storage.gb",
  bandwidth: "bandwidth.egress_gb",
  data_ops: "data_ops.reads",
};
const BOUNDARIES = [
  "2026-07-31T23:59:59.999Z",
  "2026-08-01T00:00:00.000Z",
  "2026-09-30T23:59:59.999Z",
  "2026-10-01T00:00:00.000Z",
  "2026-10-31T23:59:59.999Z",
  "2026-11-01T00:00:00.000Z",
];

/** RFC 4180, as src/app/csv.ts writes it. */
function parseCsv(text: string): Record<string, string>[] {
  const records: string[][] = [];
  let field = "";
  let record: string[] = [];
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") {
      record.push(field);
      field = "";
    } else if (c === "\r" && text[i + 1] === "\n") {
      record.push(field);
      records.push(record);
      record = [];
      field = "";
      i++;
    } else field += c;
  }
  expect(field, "CSV ends with CRLF").toBe("");
  const [header, ...rows] = records;
  return rows.map((r) => Object.fromEntries(header!.map((h, i) => [h, r[i] ?? ""])));
}

// ---- the independent model ------------------------------------------------------------------

interface Acc {
  cost: bigint;
  events: number;
  quantity: bigint;
  tokens: [number, number, number, number];
}
const acc = (): Acc => ({ cost: 0n, events: 0, quantity: 0n, tokens: [0, 0, 0, 0] });

/** Summaries of `events` (as GET usage-events returns them) per period, computed directly. */
function modelSummaries(orgId: string, events: Json[], periods: string[]) {
  const months = new Map<
    string,
    {
      total: Acc;
      type: Map<string, Acc>;
      model: Map<string, Acc>;
      operation: Map<string | null, Acc>;
      user: Map<string | null, Acc>;
      resource: Map<string, Acc>;
    }
  >();
  for (const e of events) {
    const period = e.timestamp.slice(0, 7);
    let m = months.get(period);
    if (!m) {
      m = {
        total: acc(),
        type: new Map(),
        model: new Map(),
        operation: new Map(),
        user: new Map(),
        resource: new Map(),
      };
      months.set(period, m);
    }
    const q = e.quantities;
    const tokens: [number, number, number, number] =
      e.type === "ai_tokens"
        ? [q.input_tokens, q.cached_input_tokens, q.cache_write_tokens, q.output_tokens]
        : [0, 0, 0, 0];
    const quantity =
      e.type === "ai_tokens"
        ? BigInt(tokens.reduce((a, b) => a + b, 0)) * SCALE
        : e.type === "storage"
          ? C(q.billed_quantity ?? "0")
          : C(q.quantity);
    const add = <K>(map: Map<K, Acc>, key: K) => {
      const a = map.get(key) ?? acc();
      a.cost += C(e.cost);
      a.events += 1;
      a.quantity += quantity;
      a.tokens = a.tokens.map((t, i) => t + tokens[i]!) as Acc["tokens"];
      map.set(key, a);
    };
    const total = m.total;
    total.cost += C(e.cost);
    total.events += 1;
    add(m.type, e.type);
    if (e.type === "ai_tokens") add(m.model, e.model);
    add(m.operation, e.operation ?? null);
    add(m.user, e.user_id ?? null);
    if (e.resource) add(m.resource, `${e.resource}|${e.type}`);
  }
  const F = formatCredits;
  return periods.map((period) => {
    const m = months.get(period);
    if (!m) {
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
    return {
      org_id: orgId,
      period,
      total_cost: F(m.total.cost),
      events: m.total.events,
      by_type: [...m.type].map(([type, a]) => ({
        type,
        unit: UNITS[type],
        quantity: F(a.quantity),
        cost: F(a.cost),
        events: a.events,
      })),
      by_model: [...m.model].map(([model, a]) => ({
        model,
        input_tokens: a.tokens[0],
        cached_input_tokens: a.tokens[1],
        cache_write_tokens: a.tokens[2],
        output_tokens: a.tokens[3],
        cost: F(a.cost),
        events: a.events,
      })),
      by_operation: [...m.operation].map(([operation, a]) => ({
        operation,
        cost: F(a.cost),
        events: a.events,
      })),
      by_user: [...m.user].map(([user_id, a]) => ({ user_id, cost: F(a.cost), events: a.events })),
      by_resource: [...m.resource].map(([k, a]) => {
        const [resource, type] = k.split("|") as [string, string];
        return {
          resource,
          type,
          unit: UNITS[type],
          quantity: F(a.quantity),
          cost: F(a.cost),
          events: a.events,
        };
      }),
    };
  });
}

const BREAKDOWNS = ["by_type", "by_model", "by_operation", "by_user", "by_resource"] as const;

/** Breakdown lines in a canonical order, so that two summaries compare as sets of lines. */
function canonical(summary: Json): Json {
  const out: Json = { ...summary };
  for (const b of BREAKDOWNS) {
    out[b] = [...summary[b]].sort((x: Json, y: Json) =>
      JSON.stringify(x) < JSON.stringify(y) ? -1 : 1,
    );
  }
  return out;
}

/** Cost never increases along a breakdown; Σ cost of the complete breakdowns is the total. */
function checkShape(summary: Json) {
  for (const b of BREAKDOWNS) {
    const costs = summary[b].map((l: Json) => C(l.cost));
    for (let i = 1; i < costs.length; i++) expect(costs[i - 1] >= costs[i], b).toBe(true);
  }
  for (const b of ["by_type", "by_operation", "by_user"]) {
    const sum = summary[b].reduce((s: bigint, l: Json) => s + C(l.cost), 0n);
    expect(formatCredits(sum), b).toBe(summary.total_cost);
    expect(summary[b].reduce((s: number, l: Json) => s + l.events, 0)).toBe(summary.events);
  }
}

/** The CSV export read back into the JSON shape. */
function summariesFromCsv(text: string): Json[] {
  const rows = parseCsv(text);
  const nul = (s: string) => (s === "" ? null : s);
  const periods = [...new Set(rows.map((r) => `${r.org_id}|${r.period}`))];
  return periods.map((p) => {
    const [org_id, period] = p.split("|");
    const of = (b: string) =>
      rows.filter((r) => r.org_id === org_id && r.period === period && r.breakdown === b);
    const total = of("total");
    expect(total).toHaveLength(1);
    return {
      org_id,
      period,
      total_cost: total[0]!.cost,
      events: Number(total[0]!.events),
      by_type: of("type").map((r) => ({
        type: r.key,
        unit: r.unit,
        quantity: r.quantity,
        cost: r.cost,
        events: Number(r.events),
      })),
      by_model: of("model").map((r) => ({
        model: r.key,
        input_tokens: Number(r.input_tokens),
        cached_input_tokens: Number(r.cached_input_tokens),
        cache_write_tokens: Number(r.cache_write_tokens),
        output_tokens: Number(r.output_tokens),
        cost: r.cost,
        events: Number(r.events),
      })),
      by_operation: of("operation").map((r) => ({
        operation: nul(r.key!),
        cost: r.cost,
        events: Number(r.events),
      })),
      by_user: of("user").map((r) => ({
        user_id: nul(r.key!),
        cost: r.cost,
        events: Number(r.events),
      })),
      by_resource: of("resource").map((r) => ({
        resource: r.key,
        type: r.type,
        unit: r.unit,
        quantity: r.quantity,
        cost: r.cost,
        events: Number(r.events),
      })),
    };
  });
}

describe("reports", async () => {
  const app = await createTestApp({ env: { TALLY_USAGE_BACKDATE_DAYS: "400" } });
  const ctx = app.runtime.ctx;

  async function ok(url: string, key?: string): Promise<Json> {
    const res = await app.call("GET", url, { key });
    expect(res.statusCode, res.body).toBe(200);
    return res.json();
  }
  async function csv(url: string, key?: string): Promise<string> {
    const res = await app.call("GET", url, { key });
    expect(res.statusCode, res.body).toBe(200);
    expect(res.headers["content-type"]).toMatch(/^text\/csv/);
    return res.body;
  }
  const summaries = async (orgId: string, query: string) =>
    (await ok(`/v1/organizations/${orgId}/usage-summaries${query}`)).data as Json[];

  let n = 0;
  async function ingest(events: Json[]) {
    for (let i = 0; i < events.length; i += 1000) {
      const res = await app.call("POST", "/v1/usage-events", {
        body: { events: events.slice(i, i + 1000) },
      });
      expect(res.statusCode, res.body).toBe(200);
    }
  }
  const tokens = (orgId: string, timestamp: string, extra: Json = {}) => ({
    id: `e-${++n}`,
    org_id: orgId,
    type: "ai_tokens",
    timestamp,
    model: "gpt-4o",
    tokens: { input: 1000 },
    ...extra,
  });

  async function storedEvents(orgId: string): Promise<Json[]> {
    const all: Json[] = [];
    let cursor: string | null = null;
    do {
      const page: Json = await ok(
        `/v1/organizations/${orgId}/usage-events?limit=1000${cursor ? `&cursor=${cursor}` : ""}`,
      );
      all.push(...page.data);
      cursor = page.next_cursor;
    } while (cursor);
    return all;
  }

  const YEAR_2026 = Array.from({ length: 12 }, (_, i) => `2026-${String(i + 1).padStart(2, "0")}`);

  it("summaries equal sums of the stored events (random events over months, users, models)", async () => {
    const instant = fc.oneof(
      fc.constantFrom(...BOUNDARIES),
      fc
        .integer({ min: Date.parse("2026-07-01T00:00:00Z"), max: Date.parse(NOW) })
        .map((ms) => new Date(ms).toISOString()),
    );
    const event = fc.record({
      type: fc.constantFrom(
        "ai_tokens",
        "ai_tokens",
        "compute",
        "bandwidth",
        "data_ops",
        "storage",
      ),
      timestamp: instant,
      user_id: fc.constantFrom(undefined, "u-1", "u-2", "u-3"),
      operation: fc.constantFrom(undefined, "chat", "embed", "index"),
      model: fc.constantFrom("gpt-4o", "gpt-4o-mini", "claude-sonnet-4"),
      tokens: fc.record({
        input: fc.nat(5000),
        cached_input: fc.nat(2000),
        cache_write: fc.nat(500),
        output: fc.nat(3000),
      }),
      quantity: fc
        .tuple(fc.nat(1000), fc.nat(999_999))
        .map(([i, f]) => `${i}.${String(f).padStart(6, "0")}`),
      resource: fc.constantFrom(undefined, "vol-1", "vm-2"),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(event, { minLength: 1, maxLength: 60 }), async (drawn) => {
        const orgId = await app.createOrg();
        const events = drawn.map((d) => {
          const base: Json = {
            id: `p-${++n}`,
            org_id: orgId,
            type: d.type,
            timestamp: d.timestamp,
          };
          if (d.user_id) base.user_id = d.user_id;
          if (d.operation) base.operation = d.operation;
          if (d.type === "ai_tokens") return { ...base, model: d.model, tokens: d.tokens };
          const resource = d.type === "storage" ? (d.resource ?? "vol-1") : d.resource;
          return {
            ...base,
            meter: METERS[d.type],
            quantity: d.quantity,
            ...(resource ? { resource } : {}),
          };
        });
        await ingest(events);
        const stored = await storedEvents(orgId);
        expect(stored).toHaveLength(events.length);

        const got = await summaries(orgId, "?year=2026");
        expect(got.map((s) => s.period)).toEqual(YEAR_2026);
        const expected = modelSummaries(orgId, stored, YEAR_2026);
        expect(got.map(canonical)).toEqual(expected.map(canonical));
        for (const s of got) checkShape(s);

        const text = await csv(`/v1/organizations/${orgId}/usage-summaries.csv?year=2026`);
        expect(summariesFromCsv(text)).toEqual(got);
      }),
      { numRuns: 25 },
    );
  }, 120_000);

  it("a summary read while usage is written still adds up (Σ by_user, by_operation = total)", async () => {
    const orgId = await app.createOrg();
    await ingest([tokens(orgId, NOW, { user_id: "u-0" })]);
    for (let i = 1; i <= 150; i++) {
      const [, [summary]] = await Promise.all([
        ingest([tokens(orgId, NOW, { user_id: `u-${i % 7}`, operation: `op-${i % 3}` })]),
        summaries(orgId, "?year=2026&month=11"),
      ]);
      checkShape(summary!);
    }
  });

  it("puts events in calendar months by UTC timestamp", async () => {
    const orgId = await app.createOrg();
    await ingest([
      tokens(orgId, "2026-10-31T23:59:59.999Z", { user_id: "late" }),
      tokens(orgId, "2026-11-01T00:00:00.000Z", { user_id: "early" }),
      tokens(orgId, "2026-11-01T00:00:00.000+01:00", { user_id: "tz" }),
      tokens(orgId, NOW, { user_id: "now" }),
    ]);
    const oct = (await summaries(orgId, "?year=2026&month=10"))[0]!;
    const nov = (await summaries(orgId, "?year=2026&month=11"))[0]!;
    // 2026-11-01T00:00+01:00 is 2026-10-31T23:00Z: October.
    expect(oct).toMatchObject({ period: "2026-10", events: 2, total_cost: "0.5" });
    expect(oct.by_user.map((u: Json) => u.user_id).sort()).toEqual(["late", "tz"]);
    expect(nov).toMatchObject({ period: "2026-11", events: 2, total_cost: "0.5" });
    expect(nov.by_user.map((u: Json) => u.user_id).sort()).toEqual(["early", "now"]);
    expect(nov.by_model).toEqual([
      {
        model: "gpt-4o",
        input_tokens: 2000,
        cached_input_tokens: 0,
        cache_write_tokens: 0,
        output_tokens: 0,
        cost: "0.5",
        events: 2,
      },
    ]);
    expect(nov.by_type).toEqual([
      { type: "ai_tokens", unit: "tokens", quantity: "2000", cost: "0.5", events: 2 },
    ]);
  });

  it("fills months without usage with zeros", async () => {
    const orgId = await app.createOrg();
    await ingest([tokens(orgId, "2026-09-15T12:00:00Z")]);
    const year = await summaries(orgId, "?year=2026");
    expect(year).toHaveLength(12);
    for (const s of year) {
      if (s.period === "2026-09") expect(s).toMatchObject({ total_cost: "0.25", events: 1 });
      else {
        expect(s).toEqual({
          org_id: orgId,
          period: s.period,
          total_cost: "0",
          events: 0,
          by_type: [],
          by_model: [],
          by_operation: [],
          by_user: [],
          by_resource: [],
        });
      }
    }
    // Neither year nor month: the twelve months ending with the current one (the clock's).
    const last12 = await summaries(orgId, "");
    expect(last12.map((s) => s.period)).toEqual(["2025-12", ...YEAR_2026.slice(0, 11)]);
    expect(last12.find((s) => s.period === "2026-09")).toMatchObject({ events: 1 });
    const one = await summaries(orgId, "?year=2027&month=1");
    expect(one).toEqual([expect.objectContaining({ period: "2027-01", total_cost: "0" })]);
    // The CSV has a total row for every month, with or without usage.
    const rows = parseCsv(await csv(`/v1/organizations/${orgId}/usage-summaries.csv?year=2026`));
    expect(rows.filter((r) => r.breakdown === "total").map((r) => [r.period, r.cost])).toEqual(
      YEAR_2026.map((p) => [p, p === "2026-09" ? "0.25" : "0"]),
    );
  });

  it("breaks infrastructure usage down by type and resource", async () => {
    const orgId = await app.createOrg({ name: "Infra" });
    const meter = (type: string, quantity: string, timestamp: string, resource?: string) => ({
      id: `m-${++n}`,
      org_id: orgId,
      type,
      timestamp,
      meter: METERS[type],
      quantity,
      ...(resource ? { resource } : {}),
    });
    await ingest([
      meter("compute", "100", "2026-11-02T00:00:00Z", "vm-1"),
      meter("compute", "50.5", "2026-11-03T00:00:00Z"),
      meter("bandwidth", "2", "2026-11-03T00:00:00Z", "vm-1"),
      // Storage: 10 GB from 00:00 to 06:00 = 60 GB-hours; the first reading bills nothing.
      meter("storage", "10", "2026-11-04T00:00:00Z", "vol-1"),
      meter("storage", "4", "2026-11-04T06:00:00Z", "vol-1"),
    ]);
    const [nov] = await summaries(orgId, "?year=2026&month=11");
    // compute 150.5 × 0.002 = 0.301; bandwidth 2 × 0.9 = 1.8; storage 60 × 0.0001 = 0.006
    expect(nov).toMatchObject({ total_cost: "2.107", events: 5, by_model: [] });
    expect(nov!.by_type).toEqual([
      { type: "bandwidth", unit: "GB", quantity: "2", cost: "1.8", events: 1 },
      { type: "compute", unit: "vCPU-second", quantity: "150.5", cost: "0.301", events: 2 },
      { type: "storage", unit: "GB-hour", quantity: "60", cost: "0.006", events: 2 },
    ]);
    expect(nov!.by_resource).toEqual([
      { resource: "vm-1", type: "bandwidth", unit: "GB", quantity: "2", cost: "1.8", events: 1 },
      {
        resource: "vm-1",
        type: "compute",
        unit: "vCPU-second",
        quantity: "100",
        cost: "0.2",
        events: 1,
      },
      {
        resource: "vol-1",
        type: "storage",
        unit: "GB-hour",
        quantity: "60",
        cost: "0.006",
        events: 2,
      },
    ]);
    expect(nov!.by_user).toEqual([{ user_id: null, cost: "2.107", events: 5 }]);
    expect(nov!.by_operation).toEqual([{ operation: null, cost: "2.107", events: 5 }]);

    const daily = await ok(`/v1/organizations/${orgId}/usage-daily?from=2026-11-01&to=2026-11-30`);
    expect(daily).toEqual({
      from: "2026-11-01",
      to: "2026-11-30",
      data: [
        { day: "2026-11-02", type: "compute", cost: "0.2", events: 1 },
        { day: "2026-11-03", type: "bandwidth", cost: "1.8", events: 1 },
        { day: "2026-11-03", type: "compute", cost: "0.101", events: 1 },
        { day: "2026-11-04", type: "storage", cost: "0.006", events: 2 },
      ],
    });
    // Default range: the last 60 days ending today (the clock's).
    const recent = await ok(`/v1/organizations/${orgId}/usage-daily`);
    expect(recent).toMatchObject({ from: "2026-09-26", to: "2026-11-24" });
    expect(recent.data).toHaveLength(4);
    const before = await ok(`/v1/organizations/${orgId}/usage-daily?to=2026-11-02`);
    expect(before.data).toEqual([{ day: "2026-11-02", type: "compute", cost: "0.2", events: 1 }]);
  });

  it("lists every organisation's month for chargeback, sortable, also as CSV", async () => {
    const a = await app.createOrg({ name: "Zeta chargeback", external_id: "cb-zeta" });
    const b = await app.createOrg({ name: "Alpha chargeback" });
    const c = await app.createOrg({ name: "Mid chargeback" });
    await ingest([
      tokens(a, "2026-08-05T00:00:00Z", { tokens: { input: 4000 } }), // 1
      tokens(b, "2026-08-06T00:00:00Z", { tokens: { input: 12000 } }), // 3
      tokens(c, "2026-08-07T00:00:00Z", { tokens: { input: 8000 } }), // 2
      tokens(c, "2026-08-07T00:00:00Z", { model: "gpt-4o-mini", tokens: { output: 1000 } }), // 0.06
      tokens(a, "2026-07-07T00:00:00Z"),
    ]);
    const all = (await ok("/v1/usage-summaries?year=2026&month=8")).data as Json[];
    // Other tests' organisations are in August too; the order holds for all of them.
    for (let i = 1; i < all.length; i++) {
      expect(C(all[i - 1]!.total_cost) >= C(all[i]!.total_cost)).toBe(true);
    }
    const ours = all.filter((r) => [a, b, c].includes(r.org_id));
    expect(ours).toEqual([
      {
        org_id: b,
        org_name: "Alpha chargeback",
        external_id: null,
        period: "2026-08",
        total_cost: "3",
        events: 1,
        by_type: [{ type: "ai_tokens", unit: "tokens", quantity: "12000", cost: "3", events: 1 }],
      },
      {
        org_id: c,
        org_name: "Mid chargeback",
        external_id: null,
        period: "2026-08",
        total_cost: "2.06",
        events: 2,
        by_type: [{ type: "ai_tokens", unit: "tokens", quantity: "9000", cost: "2.06", events: 2 }],
      },
      {
        org_id: a,
        org_name: "Zeta chargeback",
        external_id: "cb-zeta",
        period: "2026-08",
        total_cost: "1",
        events: 1,
        by_type: [{ type: "ai_tokens", unit: "tokens", quantity: "4000", cost: "1", events: 1 }],
      },
    ]);
    // Every org row equals that organisation's own summary of the month.
    for (const row of ours) {
      const [own] = await summaries(row.org_id, "?year=2026&month=8");
      expect(row).toMatchObject({
        total_cost: own!.total_cost,
        events: own!.events,
        by_type: own!.by_type,
      });
    }

    const byName = (await ok("/v1/usage-summaries?year=2026&month=8&sort=org")).data as Json[];
    const names = byName.map((r) => r.org_name as string);
    expect(names).toEqual([...names].sort());
    expect(byName.filter((r) => [a, b, c].includes(r.org_id)).map((r) => r.org_id)).toEqual([
      b,
      c,
      a,
    ]);

    // A year: periods ascending, an organisation appears in each month it had usage.
    const year = (await ok("/v1/usage-summaries?year=2026")).data as Json[];
    const periods = year.map((r) => r.period);
    expect(periods).toEqual([...periods].sort());
    expect(year.filter((r) => r.org_id === a).map((r) => [r.period, r.total_cost])).toEqual([
      ["2026-07", "0.25"],
      ["2026-08", "1"],
    ]);

    const rows = parseCsv(await csv("/v1/usage-summaries.csv?year=2026&month=8"));
    expect(Object.keys(rows[0]!)).toEqual([
      "period",
      "org_id",
      "org_name",
      "external_id",
      "breakdown",
      "type",
      "unit",
      "quantity",
      "cost",
      "events",
    ]);
    const fromCsv = all.map((r) => {
      const mine = rows.filter((x) => x.org_id === r.org_id);
      const total = mine.filter((x) => x.breakdown === "total");
      expect(total).toHaveLength(1);
      return {
        ...r,
        total_cost: total[0]!.cost,
        events: Number(total[0]!.events),
        org_name: total[0]!.org_name,
        external_id: total[0]!.external_id === "" ? null : total[0]!.external_id,
        by_type: mine
          .filter((x) => x.breakdown === "type")
          .map((x) => ({
            type: x.type,
            unit: x.unit,
            quantity: x.quantity,
            cost: x.cost,
            events: Number(x.events),
          })),
      };
    });
    expect(fromCsv).toEqual(all);
    expect(rows.length).toBe(all.reduce((s, r) => s + 1 + r.by_type.length, 0));
  });

  it("summarises the ledger per month, matching the entries", async () => {
    const orgId = await app.createOrg({ name: "Ledger" });
    const pkg = (
      await app.call("POST", "/v1/credit-packages", {
        body: {
          name: "Reports",
          credits: "1000",
          bonus_credits: "200",
          price: "49.00",
          bonus_expires_in_days: 30,
        },
      })
    ).json();
    try {
      app.clock.set("2026-09-10T08:00:00Z");
      const purchase = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
        body: { package_id: pkg.id },
      });
      expect(purchase.statusCode, purchase.body).toBe(201);
      const paid = await app.call("POST", `/sandbox/checkout/${purchase.json().id}`, {
        key: null,
        rawBody: new URLSearchParams({ action: "pay", card: "success" }).toString(),
        headers: { "content-type": "application/x-www-form-urlencoded" },
      });
      expect(paid.statusCode, paid.body).toBeLessThan(400);
      app.clock.set("2026-09-30T23:59:59.999Z");
      const adjust = (amount: string) =>
        app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
          body: { amount, reason: "reports test" },
        });
      expect((await adjust("-50")).statusCode).toBe(201);
      app.clock.set("2026-10-05T12:00:00Z");
      await ingest([
        tokens(orgId, "2026-10-05T11:00:00Z", { tokens: { input: 400_000 } }), // 100
        tokens(orgId, "2026-10-05T11:30:00Z", { tokens: { output: 20_000 } }), // 20
      ]);
      app.clock.set("2026-10-15T00:00:00Z");
      expect(await expireDueBlocks(ctx)).toBeGreaterThan(0);
      app.clock.set("2026-11-01T00:00:00Z");
      expect((await adjust("+25")).statusCode).toBe(201);
    } finally {
      app.clock.set(NOW);
    }

    const entries = (await ok(`/v1/organizations/${orgId}/transactions?limit=1000`)).data as Json[];
    const got = (await ok(`/v1/organizations/${orgId}/ledger-summaries?year=2026`)).data as Json[];
    expect(got.map((s) => s.period)).toEqual(YEAR_2026);

    let balance = 0n;
    for (const s of got) {
      const mine = entries.filter((e) => e.created_at.slice(0, 7) === s.period);
      const sum = (f: (e: Json) => boolean) => mine.filter(f).reduce((t, e) => t + C(e.amount), 0n);
      const net = sum(() => true);
      expect(s).toEqual({
        org_id: orgId,
        period: s.period,
        opening_balance: formatCredits(balance),
        purchased: formatCredits(sum((e) => e.type === "purchase")),
        bonus: formatCredits(sum((e) => e.type === "bonus")),
        consumed: formatCredits(-sum((e) => e.type === "usage")),
        refunded: formatCredits(-sum((e) => e.type === "refund")),
        expired: formatCredits(-sum((e) => e.type === "expiry")),
        adjusted_in: formatCredits(sum((e) => e.type === "adjustment" && C(e.amount) > 0n)),
        adjusted_out: formatCredits(-sum((e) => e.type === "adjustment" && C(e.amount) < 0n)),
        net: formatCredits(net),
        closing_balance: formatCredits(balance + net),
        entries: mine.length,
      });
      balance += net;
      // The closing balance is the balance after the month's last entry.
      const last = mine.sort((x, y) => y.sequence - x.sequence)[0];
      if (last) expect(s.closing_balance).toBe(formatCredits(C(last.balance_after)));
    }
    const bal = await ok(`/v1/organizations/${orgId}/balance`);
    expect(got[11]!.closing_balance).toBe(formatCredits(C(bal.balance)));

    const [sep, oct, nov] = [got[8]!, got[9]!, got[10]!];
    expect(sep).toMatchObject({ purchased: "1000", bonus: "200", adjusted_out: "50", net: "1150" });
    // The −50 and the usage drew from the bonus block first (it expires first): 30 expired.
    expect(oct).toMatchObject({ consumed: "120", expired: "30", opening_balance: "1150" });
    expect(nov).toMatchObject({ adjusted_in: "25", closing_balance: "1025", entries: 1 });
    // One month; and the last twelve by default.
    expect(
      (await ok(`/v1/organizations/${orgId}/ledger-summaries?year=2026&month=10`)).data,
    ).toEqual([oct]);
    const last12 = (await ok(`/v1/organizations/${orgId}/ledger-summaries`)).data as Json[];
    expect(last12.map((s) => s.period)[0]).toBe("2025-12");
    expect(last12[11]).toEqual(nov);
  });

  it("a month's ledger summary is the same asked alone or in its year, when a writer's clock lags across the boundary", async () => {
    const orgId = await app.createOrg();
    const adjust = (amount: string) =>
      app.call("POST", `/v1/organizations/${orgId}/adjustments`, {
        body: { amount, reason: "clocks" },
      });
    try {
      app.clock.set("2026-11-01T00:00:00.010Z");
      expect((await adjust("+100")).statusCode).toBe(201);
      app.clock.set("2026-10-31T23:59:59.990Z"); // another instance, 20 ms behind
      expect((await adjust("+1")).statusCode).toBe(201);
    } finally {
      app.clock.set(NOW);
    }
    const year = (await ok(`/v1/organizations/${orgId}/ledger-summaries?year=2026`)).data as Json[];
    const nov = (await ok(`/v1/organizations/${orgId}/ledger-summaries?year=2026&month=11`))
      .data as Json[];
    expect(year.find((s) => s.period === "2026-10")).toMatchObject({ net: "0", entries: 0 });
    expect(nov).toEqual([year.find((s) => s.period === "2026-11")]);
    expect(nov[0]).toMatchObject({ opening_balance: "0", net: "101", closing_balance: "101" });
  });

  it("answers for the last year it accepts: December 9999 ends in year 10000", async () => {
    const orgId = await app.createOrg();
    for (const path of [
      `/v1/organizations/${orgId}/ledger-summaries?year=9999`,
      `/v1/organizations/${orgId}/ledger-summaries?year=9999&month=12`,
      `/v1/organizations/${orgId}/usage-summaries?year=9999&month=12`,
    ]) {
      const data = (await ok(path)).data as Json[];
      expect(data.at(-1)!.period).toBe("9999-12");
    }
  });

  it("refuses invalid filters with 400", async () => {
    const orgId = await app.createOrg();
    const bad = [
      `/v1/organizations/${orgId}/usage-summaries?year=2026&month=13`,
      `/v1/organizations/${orgId}/usage-summaries?year=2026&month=0`,
      `/v1/organizations/${orgId}/usage-summaries?year=99999`,
      `/v1/organizations/${orgId}/usage-summaries?year=twenty`,
      `/v1/organizations/${orgId}/usage-summaries?year=2026.5`,
      `/v1/organizations/${orgId}/usage-summaries?month=11`,
      `/v1/organizations/${orgId}/usage-summaries?year=2026&org=all`,
      `/v1/organizations/${orgId}/usage-summaries.csv?month=13&year=2026`,
      `/v1/organizations/${orgId}/usage-summaries.csv?limit=5`,
      "/v1/usage-summaries?year=2026&sort=name",
      "/v1/usage-summaries?month=2",
      "/v1/usage-summaries.csv?year=10000",
      `/v1/organizations/${orgId}/ledger-summaries?month=2`,
      `/v1/organizations/${orgId}/ledger-summaries?year=2026&type=usage`,
      `/v1/organizations/${orgId}/usage-daily?from=2026-11-31`,
      `/v1/organizations/${orgId}/usage-daily?from=2026-11-10&to=2026-11-01`,
      `/v1/organizations/${orgId}/usage-daily?from=2025-01-01&to=2026-11-01`,
      `/v1/organizations/${orgId}/usage-daily?from=2026-11-01T00:00:00Z`,
      `/v1/organizations/${orgId}/usage-daily?days=3`,
      `/v1/organizations/${orgId}/usage-daily?from=0000-12-31`,
      `/v1/organizations/${orgId}/usage-daily?from=0000-12-31&to=0001-01-02`,
      `/v1/organizations/${orgId}/usage-daily?to=0000-12-31`,
    ];
    for (const url of bad) {
      const res = await app.call("GET", url);
      expect(res.statusCode, url).toBe(400);
      expect(res.json().error.code).toBe("invalid_request");
      expect(res.json().error.details.length, url).toBeGreaterThan(0);
    }
    // The default window ending early in year 1 starts on its first day.
    const early = await ok(`/v1/organizations/${orgId}/usage-daily?to=0001-01-10`);
    expect(early).toMatchObject({ from: "0001-01-01", to: "0001-01-10", data: [] });
    const res = await app.call("GET", `/v1/organizations/${orgId}/usage-summaries?month=11`);
    expect(res.json().error.details).toEqual([{ field: "query.month", message: "needs year" }]);
  });

  it("names CSV files by period, the month on two digits", async () => {
    const orgId = await app.createOrg();
    const name = async (query: string) =>
      (await app.call("GET", `/v1/organizations/${orgId}/usage-summaries.csv${query}`)).headers[
        "content-disposition"
      ];
    expect(await name("?year=2026&month=1")).toMatch(/-2026-01\.csv"$/);
    expect(await name("?year=2026&month=11")).toMatch(/-2026-11\.csv"$/);
    expect(await name("?year=2026")).toMatch(/-2026\.csv"$/);
  });

  it("documents the routes in the OpenAPI document", async () => {
    const doc = (await app.call("GET", "/openapi.json", { key: null })).json();
    for (const path of [
      "/v1/organizations/{org_id}/usage-summaries",
      "/v1/organizations/{org_id}/usage-summaries.csv",
      "/v1/usage-summaries",
      "/v1/usage-summaries.csv",
      "/v1/organizations/{org_id}/usage-daily",
      "/v1/organizations/{org_id}/ledger-summaries",
    ]) {
      expect(doc.paths[path]?.get, path).toBeDefined();
    }
  });

  // Last: it changes the price catalogue.
  it("a meter whose unit changes within a month is summarised per unit, never added up", async () => {
    const orgId = await app.createOrg({ name: "Unit change" });
    const compute = (quantity: string, timestamp: string) => ({
      id: `u-${++n}`,
      org_id: orgId,
      type: "compute",
      meter: "compute.vcpu_seconds",
      quantity,
      timestamp,
    });
    await ingest([compute("100", "2026-10-10T00:00:00Z")]);
    const current = await ok("/v1/prices");
    const put = await app.call("PUT", "/v1/prices", {
      body: {
        effective_from: "2026-10-15T00:00:00Z",
        models: current.models,
        meters: current.meters.map(({ aggregation: _a, ...m }: Json) =>
          m.meter === "compute.vcpu_seconds" ? { ...m, unit: "vCPU-hour", rate: "7.2" } : m,
        ),
      },
    });
    expect(put.statusCode, put.body).toBe(200);
    await ingest([compute("2", "2026-10-20T00:00:00Z"), compute("1", "2026-10-21T00:00:00Z")]);
    const [oct] = await summaries(orgId, "?year=2026&month=10");
    // 100 vCPU-seconds × 0.002 = 0.2; 3 vCPU-hours × 7.2 = 21.6
    expect(oct!.by_type).toEqual([
      { type: "compute", unit: "vCPU-hour", quantity: "3", cost: "21.6", events: 2 },
      { type: "compute", unit: "vCPU-second", quantity: "100", cost: "0.2", events: 1 },
    ]);
    expect(oct).toMatchObject({ total_cost: "21.8", events: 3 });
  });
});
