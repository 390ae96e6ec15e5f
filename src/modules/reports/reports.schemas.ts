import { type Static, Type } from "@sinclair/typebox";
import { Credits } from "../../app/http.js";

const Period = Type.String({
  pattern: "^\\d{4}-\\d{2}$",
  description: "Calendar month in UTC (`YYYY-MM`).",
  examples: ["2026-11"],
});
const Count = (description: string) => Type.Integer({ minimum: 0, description });
const Quantity = Type.String({
  description:
    "Exact decimal: total tokens (ai_tokens), the meter quantity, or GB-hours billed (storage).",
  examples: ["1250000"],
});
const Nullable = <T extends ReturnType<typeof Type.String>>(t: T) => Type.Union([t, Type.Null()]);

export const PeriodQuery = {
  year: Type.Optional(
    Type.Integer({ minimum: 1970, maximum: 9999, description: "Calendar year (UTC)." }),
  ),
  month: Type.Optional(
    Type.Integer({
      minimum: 1,
      maximum: 12,
      description: "Month 1–12; needs `year`. Without `month`: every month of the year.",
    }),
  ),
};

export const ByTypeSchema = Type.Object(
  {
    type: Type.String({ examples: ["ai_tokens"] }),
    unit: Type.String({ examples: ["tokens", "vCPU-second", "GB-hour"] }),
    quantity: Quantity,
    cost: Credits(),
    events: Count("Usage events."),
  },
  { title: "UsageByType" },
);

export const ByModelSchema = Type.Object(
  {
    model: Type.String({ examples: ["gpt-4o"] }),
    input_tokens: Count("Uncached input tokens."),
    cached_input_tokens: Count("Input tokens served from the provider's cache."),
    cache_write_tokens: Count("Input tokens written to the cache."),
    output_tokens: Count("Output tokens."),
    cost: Credits(),
    events: Count("Usage events."),
  },
  { title: "UsageByModel" },
);

export const ByOperationSchema = Type.Object(
  {
    operation: Nullable(
      Type.String({ description: "null: events sent without an operation.", examples: ["chat"] }),
    ),
    cost: Credits(),
    events: Count("Usage events."),
  },
  { title: "UsageByOperation" },
);

export const ByUserSchema = Type.Object(
  {
    user_id: Nullable(
      Type.String({ description: "null: events sent without a user.", examples: ["u-17"] }),
    ),
    cost: Credits(),
    events: Count("Usage events."),
  },
  { title: "UsageByUser" },
);

export const ByResourceSchema = Type.Object(
  {
    resource: Type.String({ examples: ["vol-1"] }),
    type: Type.String({ examples: ["storage"] }),
    unit: Type.String({ examples: ["GB-hour"] }),
    quantity: Quantity,
    cost: Credits(),
    events: Count("Usage events."),
  },
  { title: "UsageByResource" },
);

export const UsageSummarySchema = Type.Object(
  {
    org_id: Type.String(),
    period: Period,
    total_cost: Credits("Σ cost of the month's usage events."),
    events: Count("Usage events in the month."),
    by_type: Type.Array(ByTypeSchema, {
      description:
        "Per usage type and unit (a type whose meters have different units has a line per unit).",
    }),
    by_model: Type.Array(ByModelSchema, { description: "ai_tokens usage per model." }),
    by_operation: Type.Array(ByOperationSchema, {
      description: "Every event, per operation; sums to the month's total.",
    }),
    by_user: Type.Array(ByUserSchema, {
      description: "Every event, per user; sums to the month's total.",
    }),
    by_resource: Type.Array(ByResourceSchema, {
      description: "Events that named a resource, per resource, type and unit.",
    }),
  },
  { title: "UsageSummary" },
);
export type UsageSummary = Static<typeof UsageSummarySchema>;

export const ChargebackRowSchema = Type.Object(
  {
    org_id: Type.String(),
    org_name: Nullable(Type.String()),
    external_id: Nullable(Type.String()),
    period: Period,
    total_cost: Credits(),
    events: Count("Usage events in the month."),
    by_type: Type.Array(ByTypeSchema),
  },
  { title: "ChargebackRow" },
);
export type ChargebackRow = Static<typeof ChargebackRowSchema>;

export const DailyUsageSchema = Type.Object(
  {
    day: Type.String({ format: "date", examples: ["2026-11-24"] }),
    type: Type.String({ examples: ["ai_tokens"] }),
    cost: Credits(),
    events: Count("Usage events that day (UTC)."),
  },
  { title: "DailyUsage" },
);
export type DailyUsage = Static<typeof DailyUsageSchema>;

export const LedgerSummarySchema = Type.Object(
  {
    org_id: Type.String(),
    period: Period,
    opening_balance: Credits("Balance at the start of the month."),
    purchased: Credits("Credits of paid purchases."),
    bonus: Credits("Bonus credits granted."),
    consumed: Credits("Credits used by usage (positive)."),
    refunded: Credits("Credits removed by refunds (positive)."),
    expired: Credits("Credits that expired (positive)."),
    adjusted_in: Credits("Manual adjustments that added credits."),
    adjusted_out: Credits("Manual adjustments that removed credits (positive)."),
    net: Credits(
      "Σ entry amounts = purchased + bonus − consumed − refunded − expired + adjusted_in − adjusted_out.",
    ),
    closing_balance: Credits("opening_balance + net: the balance at the end of the month."),
    entries: Count("Ledger entries created in the month."),
  },
  { title: "LedgerSummary" },
);
export type LedgerSummary = Static<typeof LedgerSummarySchema>;
