import { Type } from "@sinclair/typebox";
import type { FastifyReply } from "fastify";
import type { AppContext } from "../../app/context.js";
import { csvStream } from "../../app/csv.js";
import { AppError } from "../../app/errors.js";
import { type App, CsvResponse, OrgParams, ROLES } from "../../app/http.js";
import { requestOrg } from "../orgs/auth.js";
import {
  CHARGEBACK_CSV_COLUMNS,
  chargebackCsvRows,
  USAGE_SUMMARY_CSV_COLUMNS,
  usageSummaryCsvRows,
} from "./reports.csv.js";
import {
  ChargebackRowSchema,
  DailyUsageSchema,
  LedgerSummarySchema,
  PeriodQuery,
  UsageSummarySchema,
} from "./reports.schemas.js";
import * as service from "./reports.service.js";

const DAY_MS = 86_400_000;
/** The daily series covers at most this many days per request. */
export const MAX_DAILY_RANGE_DAYS = 366;
const DEFAULT_DAILY_DAYS = 60;

const orgAccess = { access: { roles: ROLES.read, org: true, credits: true } } as const;
const platformAccess = { access: { roles: ROLES.platform } } as const;

const PeriodQuerySchema = Type.Object(PeriodQuery, { additionalProperties: false });
const SortSchema = Type.Optional(
  Type.Union([Type.Literal("cost"), Type.Literal("org")], {
    description: "Within each period: `cost` (largest first, the default) or `org` (by name).",
  }),
);
const ChargebackQuerySchema = Type.Object(
  { ...PeriodQuery, sort: SortSchema },
  { additionalProperties: false },
);

const PERIODS_DESCRIPTION =
  "Calendar months in UTC by usage timestamp. `year` and `month` → that month; `year` → its twelve months; neither → the twelve months ending with the current one. Months without usage appear with zeros.";

/** `month` needs `year`; the schema cannot say so for a query string. */
function periodsOf(ctx: AppContext, query: service.PeriodFilter): service.Period[] {
  if (query.month !== undefined && query.year === undefined) {
    throw new AppError("invalid_request", "month needs year.", [
      { field: "query.month", message: "needs year" },
    ]);
  }
  return service.periodsOf(ctx.clock.now(), query);
}

function csvReply(reply: FastifyReply, filename: string) {
  return reply
    .type("text/csv; charset=utf-8")
    .header("content-disposition", `attachment; filename="${filename}"`);
}

const suffix = (q: service.PeriodFilter) =>
  q.year === undefined
    ? ""
    : q.month === undefined
      ? `-${q.year}`
      : `-${q.year}-${String(q.month).padStart(2, "0")}`;

/** PostgreSQL's first `date` after 1 BC (year 0000 is a 500 there). */
const FIRST_DAY = "0001-01-01";

export function registerReportsRoutes(app: App, ctx: AppContext): void {
  const tags = ["reports"];

  app.get(
    "/v1/organizations/:org_id/usage-summaries",
    {
      schema: {
        tags,
        summary: "Monthly usage summaries of an organisation",
        description: `${PERIODS_DESCRIPTION} Served from the monthly rollups. Breakdown lines are ordered by cost, largest first.`,
        params: OrgParams,
        querystring: PeriodQuerySchema,
        response: { 200: Type.Object({ data: Type.Array(UsageSummarySchema) }) },
      },
      config: orgAccess,
    },
    async (request) => {
      const periods = periodsOf(ctx, request.query);
      const orgId = requestOrg(request).id;
      return { data: await service.usageSummaries(ctx, { orgId, periods }) };
    },
  );

  app.get(
    "/v1/organizations/:org_id/usage-summaries.csv",
    {
      schema: {
        tags,
        summary: "Monthly usage summaries as CSV (streamed)",
        description: `${PERIODS_DESCRIPTION} One row per period and breakdown line; columns: ${USAGE_SUMMARY_CSV_COLUMNS.join(", ")}.`,
        params: OrgParams,
        querystring: PeriodQuerySchema,
        response: { 200: CsvResponse("CSV with a header row.") },
      },
      config: orgAccess,
    },
    async (request, reply) => {
      const periods = periodsOf(ctx, request.query);
      const orgId = requestOrg(request).id;
      csvReply(reply, `${orgId}-usage${suffix(request.query)}.csv`);
      return reply.send(
        csvStream(
          USAGE_SUMMARY_CSV_COLUMNS,
          async function* () {
            for (const s of await service.usageSummaries(ctx, { orgId, periods })) {
              yield usageSummaryCsvRows(s);
            }
          },
          (row) => row,
        ),
      );
    },
  );

  app.get(
    "/v1/usage-summaries",
    {
      schema: {
        tags,
        summary: "Chargeback: every organisation's usage per month (platform keys)",
        description: `${PERIODS_DESCRIPTION.replace(" Months without usage appear with zeros.", "")} One row per organisation with usage in a month; periods ascending.`,
        querystring: ChargebackQuerySchema,
        response: { 200: Type.Object({ data: Type.Array(ChargebackRowSchema) }) },
      },
      config: platformAccess,
    },
    async (request) => {
      const periods = periodsOf(ctx, request.query);
      const sort = request.query.sort ?? "cost";
      return { data: await service.chargebackRows(ctx, { periods, sort }) };
    },
  );

  app.get(
    "/v1/usage-summaries.csv",
    {
      schema: {
        tags,
        summary: "Chargeback as CSV (streamed, platform keys)",
        description: `One row per period, organisation and breakdown line (\`total\`, then one per usage type); columns: ${CHARGEBACK_CSV_COLUMNS.join(", ")}.`,
        querystring: ChargebackQuerySchema,
        response: { 200: CsvResponse("CSV with a header row.") },
      },
      config: platformAccess,
    },
    async (request, reply) => {
      const periods = periodsOf(ctx, request.query);
      const sort = request.query.sort ?? "cost";
      csvReply(reply, `usage-chargeback${suffix(request.query)}.csv`);
      return reply.send(
        csvStream(
          CHARGEBACK_CSV_COLUMNS,
          async function* () {
            // A month at a time: the export never holds more than one month of organisations.
            for (const period of periods) {
              const rows = await service.chargebackRows(ctx, { periods: [period], sort });
              yield rows.flatMap(chargebackCsvRows);
            }
          },
          (row) => row,
        ),
      );
    },
  );

  app.get(
    "/v1/organizations/:org_id/usage-daily",
    {
      schema: {
        tags,
        summary: "Daily cost and events per usage type (for charts)",
        description: `Days are UTC, \`from\`..\`to\` inclusive (default: the last ${DEFAULT_DAILY_DAYS} days, ending today), at most ${MAX_DAILY_RANGE_DAYS} days. Sparse: days and types without usage have no row.`,
        params: OrgParams,
        querystring: Type.Object(
          {
            from: Type.Optional(Type.String({ format: "date", examples: ["2026-10-01"] })),
            to: Type.Optional(Type.String({ format: "date", examples: ["2026-11-30"] })),
          },
          { additionalProperties: false },
        ),
        response: {
          200: Type.Object({
            from: Type.String({ format: "date" }),
            to: Type.String({ format: "date" }),
            data: Type.Array(DailyUsageSchema),
          }),
        },
      },
      config: orgAccess,
    },
    async (request) => {
      // `format: "date"` takes year 0000, which PostgreSQL's date has not (a 500).
      for (const field of ["from", "to"] as const) {
        const day = request.query[field];
        if (day !== undefined && day < FIRST_DAY) {
          throw new AppError("invalid_request", `${field} must be 0001-01-01 or later.`, [
            { field: `query.${field}`, message: "before year 1" },
          ]);
        }
      }
      const today = ctx.clock.now().toISOString().slice(0, 10);
      const to = request.query.to ?? today;
      const defaultFrom = new Date(Date.parse(to) - (DEFAULT_DAILY_DAYS - 1) * DAY_MS)
        .toISOString()
        .slice(0, 10);
      const from = request.query.from ?? (defaultFrom < FIRST_DAY ? FIRST_DAY : defaultFrom);
      const days = (Date.parse(to) - Date.parse(from)) / DAY_MS + 1;
      if (days < 1) {
        throw new AppError("invalid_request", "from must not be after to.", [
          { field: "query.from", message: "after to" },
        ]);
      }
      if (days > MAX_DAILY_RANGE_DAYS) {
        throw new AppError("invalid_request", `At most ${MAX_DAILY_RANGE_DAYS} days.`, [
          { field: "query.from", message: `range longer than ${MAX_DAILY_RANGE_DAYS} days` },
        ]);
      }
      const orgId = requestOrg(request).id;
      return { from, to, data: await service.dailyUsage(ctx, { orgId, from, to }) };
    },
  );

  app.get(
    "/v1/organizations/:org_id/ledger-summaries",
    {
      schema: {
        tags,
        summary: "Monthly credits movements from the ledger (for reconciliation)",
        description:
          "Per calendar month (UTC, by entry creation): credits purchased, bonus granted, consumed by usage, refunded, expired and adjusted, the net movement and the opening and closing balances. `year`/`month` as for usage summaries.",
        params: OrgParams,
        querystring: PeriodQuerySchema,
        response: { 200: Type.Object({ data: Type.Array(LedgerSummarySchema) }) },
      },
      config: orgAccess,
    },
    async (request) => {
      const periods = periodsOf(ctx, request.query);
      const orgId = requestOrg(request).id;
      return { data: await service.ledgerSummaries(ctx, { orgId, periods }) };
    },
  );
}
