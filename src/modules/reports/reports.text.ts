import type { LedgerSummary, UsageSummary } from "./reports.schemas.js";

/** Left-aligned text columns, numbers right-aligned: the human form of `tally report`. */
function table(header: string[], rows: (string | number | null)[][], numeric: boolean[]): string[] {
  const cells = [header, ...rows.map((r) => r.map((c) => (c === null ? "—" : String(c))))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  return cells.map(
    (r) =>
      `    ${r
        .map((c, i) => (numeric[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
        .join("  ")
        .trimEnd()}`,
  );
}

export function reportText(
  org: { id: string; name: string },
  usage: UsageSummary,
  ledger: LedgerSummary,
): string[] {
  const lines = [
    `${org.name} (${org.id}) — ${usage.period} (UTC)`,
    "",
    `  Usage: ${usage.total_cost} credits, ${usage.events} events`,
  ];
  const section = (
    title: string,
    header: string[],
    rows: (string | number | null)[][],
    numeric: boolean[],
  ) => {
    if (rows.length === 0) return;
    lines.push("", `  ${title}`, ...table(header, rows, numeric));
  };
  section(
    "by type",
    ["type", "unit", "quantity", "cost", "events"],
    usage.by_type.map((t) => [t.type, t.unit, t.quantity, t.cost, t.events]),
    [false, false, true, true, true],
  );
  section(
    "by model",
    ["model", "input", "cached input", "cache write", "output", "cost", "events"],
    usage.by_model.map((m) => [
      m.model,
      m.input_tokens,
      m.cached_input_tokens,
      m.cache_write_tokens,
      m.output_tokens,
      m.cost,
      m.events,
    ]),
    [false, true, true, true, true, true, true],
  );
  section(
    "by operation",
    ["operation", "cost", "events"],
    usage.by_operation.map((o) => [o.operation, o.cost, o.events]),
    [false, true, true],
  );
  section(
    "by user",
    ["user", "cost", "events"],
    usage.by_user.map((u) => [u.user_id, u.cost, u.events]),
    [false, true, true],
  );
  section(
    "by resource",
    ["resource", "type", "unit", "quantity", "cost", "events"],
    usage.by_resource.map((r) => [r.resource, r.type, r.unit, r.quantity, r.cost, r.events]),
    [false, false, false, true, true, true],
  );
  lines.push(
    "",
    `  Ledger (${ledger.entries} entries)`,
    ...table(
      ["", "credits"],
      [
        ["opening balance", ledger.opening_balance],
        ["purchased", ledger.purchased],
        ["bonus", ledger.bonus],
        ["consumed", ledger.consumed],
        ["refunded", ledger.refunded],
        ["expired", ledger.expired],
        ["adjusted in", ledger.adjusted_in],
        ["adjusted out", ledger.adjusted_out],
        ["net", ledger.net],
        ["closing balance", ledger.closing_balance],
      ],
      [false, true],
    ),
  );
  return lines;
}
