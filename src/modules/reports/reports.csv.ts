import type { ChargebackRow, UsageSummary } from "./reports.schemas.js";

type Cell = string | number | null;

/**
 * `…/usage-summaries.csv`: one row per (period × breakdown line). Every period starts with its
 * `total` row (also for months without usage), then its `type`, `model`, `operation`, `user` and
 * `resource` lines in the order of the JSON. Columns a breakdown does not have are empty.
 */
export const USAGE_SUMMARY_CSV_COLUMNS = [
  "org_id",
  "period",
  "breakdown",
  "key",
  "type",
  "unit",
  "quantity",
  "input_tokens",
  "cached_input_tokens",
  "cache_write_tokens",
  "output_tokens",
  "cost",
  "events",
] as const;

export function usageSummaryCsvRows(s: UsageSummary): Cell[][] {
  const row = (
    breakdown: string,
    key: string | null,
    fields: {
      type?: string;
      unit?: string;
      quantity?: string;
      tokens?: [number, number, number, number];
      cost: string;
      events: number;
    },
  ): Cell[] => [
    s.org_id,
    s.period,
    breakdown,
    key,
    fields.type ?? null,
    fields.unit ?? null,
    fields.quantity ?? null,
    ...(fields.tokens ?? [null, null, null, null]),
    fields.cost,
    fields.events,
  ];
  return [
    row("total", null, { cost: s.total_cost, events: s.events }),
    ...s.by_type.map((t) => row("type", t.type, t)),
    ...s.by_model.map((m) =>
      row("model", m.model, {
        type: "ai_tokens",
        tokens: [m.input_tokens, m.cached_input_tokens, m.cache_write_tokens, m.output_tokens],
        cost: m.cost,
        events: m.events,
      }),
    ),
    ...s.by_operation.map((o) => row("operation", o.operation, o)),
    ...s.by_user.map((u) => row("user", u.user_id, u)),
    ...s.by_resource.map((r) => row("resource", r.resource, r)),
  ];
}

/**
 * `/v1/usage-summaries.csv`: per period and organisation a `total` row, then a `type` row per
 * usage type and unit.
 */
export const CHARGEBACK_CSV_COLUMNS = [
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
] as const;

export function chargebackCsvRows(r: ChargebackRow): Cell[][] {
  const head = [r.period, r.org_id, r.org_name, r.external_id];
  return [
    [...head, "total", null, null, null, r.total_cost, r.events],
    ...r.by_type.map((t) => [...head, "type", t.type, t.unit, t.quantity, t.cost, t.events]),
  ];
}
