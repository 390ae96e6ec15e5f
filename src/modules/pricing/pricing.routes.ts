import { type Static, Type } from "@sinclair/typebox";
import type { AppContext } from "../../app/context.js";
import { AppError, unwrap } from "../../app/errors.js";
import {
  type App,
  decodeCursor,
  encodeCursor,
  ListQuery,
  Page,
  pageOf,
  ROLES,
  Timestamp,
} from "../../app/http.js";
import { formatScaled6, parseScaled6 } from "../ledger/credits.js";
import { requestPrincipal } from "../orgs/auth.js";
import type { PriceVersion } from "./catalogue.js";
import * as service from "./pricing.service.js";

const tags = ["pricing"];

/** ≤ 12 integer digits keeps every rated cost far inside NUMERIC(38,12). */
const PriceRate = (description: string, examples: string[]) =>
  Type.String({ pattern: "^\\d{1,12}(\\.\\d{1,6})?$", description, examples });

const ModelName = Type.String({
  minLength: 1,
  maxLength: 200,
  pattern: "^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$",
  description: "Model name exactly as usage events name it.",
  examples: ["gpt-4o"],
});
const ProviderName = Type.String({
  minLength: 1,
  maxLength: 64,
  pattern: "^[a-z0-9][a-z0-9._-]*$",
  description: "The model's provider (informational; e.g. `openai`, `anthropic`).",
  examples: ["openai"],
});
const MeterName = Type.String({
  minLength: 1,
  maxLength: 128,
  pattern: "^[A-Za-z0-9][A-Za-z0-9._:-]*$",
  description: "Meter name exactly as usage events name it.",
  examples: ["compute.vcpu_seconds"],
});
const MeterTypeSchema = Type.Union(
  [
    Type.Literal("compute"),
    Type.Literal("storage"),
    Type.Literal("bandwidth"),
    Type.Literal("data_ops"),
  ],
  { description: "The usage event type this meter prices." },
);
const AggregationSchema = Type.Union([Type.Literal("sum"), Type.Literal("time_weighted")], {
  description:
    "`time_weighted` for storage (gauge readings billed per unit-hour between readings), `sum` for every other type. Follows from `type`; a different value is refused.",
});
const Unit = Type.String({
  minLength: 1,
  maxLength: 64,
  description: "What one unit of the rate is (shown in reports).",
  examples: ["vCPU-second"],
});

const ModelPriceSchema = Type.Object(
  {
    model: ModelName,
    provider: ProviderName,
    input: PriceRate("Credits per 1M input tokens (not cached).", ["250"]),
    cached_input: PriceRate("Credits per 1M cached input tokens.", ["125"]),
    cache_write: PriceRate("Credits per 1M tokens written to the prompt cache.", ["250"]),
    output: PriceRate("Credits per 1M output tokens (reasoning included).", ["1000"]),
  },
  { title: "ModelPrice" },
);
const MeterPriceSchema = Type.Object(
  {
    meter: MeterName,
    type: MeterTypeSchema,
    unit: Unit,
    rate: PriceRate("Credits per unit.", ["0.002"]),
    aggregation: AggregationSchema,
  },
  { title: "MeterPrice" },
);

const PriceCatalogueSchema = Type.Object(
  {
    version: Type.Integer({ minimum: 1, description: "Version number, in creation order." }),
    effective_from: Timestamp(
      "Events at or after this time are priced with this version (unless a later-created version takes over).",
    ),
    created_at: Timestamp(),
    models: Type.Array(ModelPriceSchema),
    meters: Type.Array(MeterPriceSchema),
  },
  { title: "PriceCatalogue" },
);
export type PriceCatalogueDto = Static<typeof PriceCatalogueSchema>;

const PutCatalogueBody = Type.Object(
  {
    effective_from: Type.Optional(
      Timestamp("When this version takes effect (default now); may be in the past or future."),
    ),
    models: Type.Array(
      Type.Object(
        {
          model: ModelName,
          provider: ProviderName,
          input: ModelPriceSchema.properties.input,
          cached_input: Type.Optional(
            PriceRate("Credits per 1M cached input tokens (default: the input rate).", ["125"]),
          ),
          cache_write: Type.Optional(
            PriceRate("Credits per 1M cache-write tokens (default: the input rate).", ["250"]),
          ),
          output: ModelPriceSchema.properties.output,
        },
        { additionalProperties: false },
      ),
      { maxItems: 1000, description: "Every model priced by this version (names unique)." },
    ),
    meters: Type.Array(
      Type.Object(
        {
          meter: MeterName,
          type: MeterTypeSchema,
          unit: Unit,
          rate: MeterPriceSchema.properties.rate,
          aggregation: Type.Optional(AggregationSchema),
        },
        { additionalProperties: false },
      ),
      { maxItems: 1000, description: "Every meter priced by this version (names unique)." },
    ),
  },
  {
    additionalProperties: false,
    title: "PutPriceCatalogue",
    examples: [
      {
        effective_from: "2026-11-01T00:00:00Z",
        models: [
          {
            model: "gpt-4o",
            provider: "openai",
            input: "250",
            cached_input: "125",
            cache_write: "250",
            output: "1000",
          },
        ],
        meters: [
          { meter: "compute.vcpu_seconds", type: "compute", unit: "vCPU-second", rate: "0.002" },
          {
            meter: "storage.gb",
            type: "storage",
            unit: "GB-hour",
            rate: "0.0001",
            aggregation: "time_weighted",
          },
        ],
      },
    ],
  },
);

const VersionSummarySchema = Type.Object(
  {
    version: Type.Integer(),
    effective_from: Timestamp(),
    created_at: Timestamp(),
    models_count: Type.Integer(),
    meters_count: Type.Integer(),
  },
  { title: "PriceVersionSummary" },
);

export function catalogueDto(v: PriceVersion): PriceCatalogueDto {
  return {
    version: v.version,
    effective_from: v.effectiveFrom.toISOString(),
    created_at: v.createdAt.toISOString(),
    models: v.models.map((m) => ({
      model: m.model,
      provider: m.provider,
      input: formatScaled6(m.input),
      cached_input: formatScaled6(m.cached_input),
      cache_write: formatScaled6(m.cache_write),
      output: formatScaled6(m.output),
    })),
    meters: v.meters.map((m) => ({
      meter: m.meter,
      type: m.type,
      unit: m.unit,
      rate: formatScaled6(m.rate),
      aggregation: m.aggregation,
    })),
  };
}

const optionalRate = (value: string | undefined) =>
  value === undefined ? undefined : parseScaled6(value);

export function registerPricingRoutes(app: App, ctx: AppContext): void {
  const anyKey = { access: { roles: ROLES.readBalance } } as const;

  app.get(
    "/v1/prices",
    {
      schema: {
        tags,
        summary: "Get the price catalogue in effect",
        description:
          "The catalogue version that prices an event timestamped now (or at `at`): the most recently created version whose `effective_from` ≤ that time. Model rates are credits per 1M tokens; meter rates credits per unit.",
        querystring: Type.Object(
          { at: Type.Optional(Timestamp("Price catalogue in effect at this time (default now).")) },
          { additionalProperties: false },
        ),
        response: { 200: PriceCatalogueSchema },
      },
      config: anyKey,
    },
    async (request) => {
      const at = request.query.at ? new Date(request.query.at) : ctx.clock.now();
      return catalogueDto(unwrap(await service.getCatalogueAt(ctx, at)));
    },
  );

  app.put(
    "/v1/prices",
    {
      schema: {
        tags,
        summary: "Replace the price catalogue with a new version",
        description:
          "Creates a new, immutable version holding the whole catalogue. From `effective_from` on (default now) it prices every event, also when that is earlier than the `effective_from` of older versions; events before it keep the prices they had. Rates are decimal strings with at most 6 fractional digits.",
        body: PutCatalogueBody,
        response: { 200: PriceCatalogueSchema },
      },
      config: { access: { roles: ROLES.platform } },
    },
    async (request) => {
      const b = request.body;
      const version = unwrap(
        await service.putCatalogue(
          ctx,
          {
            effectiveFrom: b.effective_from ? new Date(b.effective_from) : undefined,
            models: b.models.map((m) => ({
              model: m.model,
              provider: m.provider,
              input: parseScaled6(m.input),
              cached_input: optionalRate(m.cached_input),
              cache_write: optionalRate(m.cache_write),
              output: parseScaled6(m.output),
            })),
            meters: b.meters.map((m) => ({
              meter: m.meter,
              type: m.type,
              unit: m.unit,
              rate: parseScaled6(m.rate),
              aggregation: m.aggregation,
            })),
          },
          requestPrincipal(request).actor,
        ),
      );
      return catalogueDto(version);
    },
  );

  app.get(
    "/v1/prices/versions",
    {
      schema: {
        tags,
        summary: "List price catalogue versions",
        description: "Newest first.",
        querystring: Type.Object(ListQuery, { additionalProperties: false }),
        response: { 200: Page(VersionSummarySchema) },
      },
      config: anyKey,
    },
    async (request) => {
      const limit = request.query.limit ?? 50;
      let before: number | undefined;
      if (request.query.cursor) {
        const [value] = decodeCursor(request.query.cursor, 1);
        if (typeof value !== "number" || !Number.isSafeInteger(value)) {
          throw new AppError("invalid_request", "The cursor is not valid.", [
            { field: "query.cursor", message: "not a cursor returned by this list" },
          ]);
        }
        before = value;
      }
      const rows = await service.listVersions(ctx, { limit, before });
      return pageOf(
        rows,
        limit,
        (v) => ({
          version: v.version,
          effective_from: v.effective_from.toISOString(),
          created_at: v.created_at.toISOString(),
          models_count: v.models_count,
          meters_count: v.meters_count,
        }),
        (v) => encodeCursor([v.version]),
      );
    },
  );

  app.get(
    "/v1/prices/versions/:version",
    {
      schema: {
        tags,
        summary: "Get one price catalogue version",
        params: Type.Object({ version: Type.Integer({ minimum: 1, maximum: 2 ** 53 - 1 }) }),
        response: { 200: PriceCatalogueSchema },
      },
      config: anyKey,
    },
    async (request) => catalogueDto(unwrap(await service.getVersion(ctx, request.params.version))),
  );
}
