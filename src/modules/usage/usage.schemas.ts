import { type Static, Type } from "@sinclair/typebox";
import { ClientId, Credits, Metadata, Timestamp } from "../../app/http.js";

const TokenCount = Type.Integer({ minimum: 0, maximum: 1_000_000_000_000 });

export const UsageTypeSchema = Type.Union(
  [
    Type.Literal("ai_tokens"),
    Type.Literal("compute"),
    Type.Literal("storage"),
    Type.Literal("bandwidth"),
    Type.Literal("data_ops"),
  ],
  { description: "What was used." },
);

const Label = (description: string) => Type.String({ minLength: 1, maxLength: 200, description });

export const UsageEventSchema = Type.Object(
  {
    id: ClientId("Your id for the event; a repeated id is recorded once."),
    org_id: Type.Optional(
      Type.String({
        maxLength: 160,
        description: "`org_…` or `ext:<external_id>`; may be omitted with an organisation key.",
      }),
    ),
    type: UsageTypeSchema,
    timestamp: Type.Optional(Timestamp("When the usage happened (default: now).")),
    user_id: Type.Optional(ClientId("The platform user who caused the usage.")),
    operation: Type.Optional(Label("What the usage was for, e.g. `chat.completion`.")),
    model: Type.Optional(Label("ai_tokens: the model priced.")),
    tokens: Type.Optional(
      Type.Object(
        {
          input: Type.Optional(TokenCount),
          cached_input: Type.Optional(TokenCount),
          cache_write: Type.Optional(TokenCount),
          output: Type.Optional(TokenCount),
        },
        {
          additionalProperties: false,
          description: "Disjoint buckets: `input` excludes cached input and cache writes.",
        },
      ),
    ),
    provider_usage: Type.Optional(
      Type.Object(
        {
          provider: Type.Union([Type.Literal("openai"), Type.Literal("anthropic")]),
          usage: Type.Record(Type.String(), Type.Unknown(), {
            maxProperties: 50,
            description: "The `usage` object exactly as the provider's API returned it.",
          }),
        },
        { additionalProperties: false },
      ),
    ),
    meter: Type.Optional(Label("compute/storage/bandwidth/data_ops: the meter priced.")),
    quantity: Type.Optional(
      Type.String({
        pattern: "^\\+?\\d{1,12}(\\.\\d{1,6})?$",
        description: "Units used (storage: the gauge reading in GB now); ≤ 6 fractional digits.",
        examples: ["12.5"],
      }),
    ),
    resource: Type.Optional(Label("The resource metered (required for storage).")),
    metadata: Type.Optional(Metadata),
  },
  { additionalProperties: false, title: "UsageEvent" },
);
export type UsageEventInput = Static<typeof UsageEventSchema>;

export const UsageBatchSchema = Type.Object(
  { events: Type.Array(UsageEventSchema, { minItems: 1, maxItems: 1000 }) },
  { additionalProperties: false, title: "UsageBatch" },
);

export const UsageResultSchema = Type.Object(
  {
    data: Type.Array(
      Type.Object({
        id: Type.String(),
        status: Type.Union([Type.Literal("accepted"), Type.Literal("duplicate")]),
        cost: Credits(),
        transaction_id: Type.String(),
        balance_after: Credits(),
      }),
    ),
  },
  { title: "UsageIngestResult" },
);

export const StoredUsageEventSchema = Type.Object(
  {
    id: Type.String(),
    org_id: Type.String(),
    type: UsageTypeSchema,
    timestamp: Timestamp(),
    user_id: Type.Union([Type.String(), Type.Null()]),
    operation: Type.Union([Type.String(), Type.Null()]),
    model: Type.Union([Type.String(), Type.Null()]),
    meter: Type.Union([Type.String(), Type.Null()]),
    resource: Type.Union([Type.String(), Type.Null()]),
    quantities: Type.Object(
      {
        input_tokens: Type.Optional(Type.Integer()),
        cached_input_tokens: Type.Optional(Type.Integer()),
        cache_write_tokens: Type.Optional(Type.Integer()),
        output_tokens: Type.Optional(Type.Integer()),
        quantity: Type.Optional(Type.String()),
        billed_quantity: Type.Optional(Type.String()),
      },
      {
        description: "Tokens per bucket, or the meter quantity (and GB-hours billed for storage).",
      },
    ),
    cost: Credits(),
    price_version: Type.Union([Type.Integer(), Type.Null()]),
    transaction_id: Type.String(),
    reservation_id: Type.Union([Type.String(), Type.Null()]),
    provider_usage: Type.Union([Type.Unknown(), Type.Null()]),
    metadata: Type.Union([Type.Record(Type.String(), Type.String()), Type.Null()]),
    received_at: Timestamp(),
  },
  { title: "StoredUsageEvent" },
);

export const ReservationSchema = Type.Object(
  {
    id: Type.String({ examples: ["rsv_01JD3M6Q8Z4X2N7V5B9C1K3H0T"] }),
    org_id: Type.String(),
    amount: Credits(),
    status: Type.Union([
      Type.Literal("held"),
      Type.Literal("settled"),
      Type.Literal("released"),
      Type.Literal("expired"),
    ]),
    description: Type.Union([Type.String(), Type.Null()]),
    expires_at: Timestamp(),
    settled_cost: Type.Union([Credits(), Type.Null()]),
    created_at: Timestamp(),
    closed_at: Type.Union([Timestamp(), Type.Null()]),
  },
  { title: "Reservation" },
);
