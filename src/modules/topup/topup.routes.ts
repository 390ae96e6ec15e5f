import { type Static, Type } from "@sinclair/typebox";
import type { AppContext } from "../../app/context.js";
import { unwrap } from "../../app/errors.js";
import {
  type App,
  decodeCursor,
  encodeCursor,
  ListQuery,
  OrgParams,
  Page,
  pageOf,
  ROLES,
  Timestamp,
} from "../../app/http.js";
import { creditsFromDb, formatCredits, parseCredits } from "../ledger/credits.js";
import { formatMoney } from "../ledger/money.js";
import { requestOrg } from "../orgs/auth.js";
import { registerTopupSandboxRoutes } from "./topup.sandbox.js";
import * as service from "./topup.service.js";

const Money = (description: string) =>
  Type.String({ pattern: "^\\d{1,15}(\\.\\d{1,4})?$", description, examples: ["500.00"] });

const TopupSettingsBody = Type.Object(
  {
    enabled: Type.Boolean(),
    threshold: Type.Optional(
      Type.String({
        pattern: "^\\+?\\d{1,26}(\\.\\d{1,12})?$",
        description:
          "Credits (≥ 0). A write that leaves the balance at or below it starts a topup. " +
          "Required when enabled is true unless already set.",
        examples: ["100"],
      }),
    ),
    package_id: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 64,
        description:
          "The credit package bought (must be active). Required when enabled is true unless already set.",
        examples: ["pkg_01JD3M6Q8Z4X2N7V5B9C1K3H0T"],
      }),
    ),
    monthly_limit: Type.Optional(
      Type.Union([
        Money(
          "Most money auto-topup may spend per calendar month (UTC), in the package's currency; " +
            "null/absent: no limit. An attempt that would pass it is recorded as skipped_limit.",
        ),
        Type.Null(),
      ]),
    ),
    max_failures: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 10,
        default: 1,
        description: "Declined payments in a row after which auto-topup turns itself off.",
      }),
    ),
  },
  { additionalProperties: false },
);

export const TopupSettingsSchema = Type.Object(
  {
    org_id: Type.String(),
    enabled: Type.Boolean(),
    threshold: Type.String({ examples: ["100"] }),
    package_id: Type.Union([Type.String(), Type.Null()]),
    monthly_limit: Type.Union([Type.String({ examples: ["500.00"] }), Type.Null()]),
    max_failures: Type.Integer(),
    currency: Type.String({ examples: ["USD"] }),
    payment_method: Type.Union([
      Type.Object({
        brand: Type.Union([Type.String(), Type.Null()]),
        last4: Type.Union([Type.String(), Type.Null()]),
      }),
      Type.Null(),
    ]),
    status: Type.Union(
      [Type.Literal("idle"), Type.Literal("in_flight"), Type.Literal("disabled")],
      {
        description: "in_flight while an attempt is being charged; disabled when not enabled.",
      },
    ),
    disabled_reason: Type.Union([Type.String(), Type.Null()], {
      description:
        "Why auto-topup turned itself off (`payment_failed: …`, `no_payment_method: …`, " +
        "`package_unavailable: …`); null when it is on or was turned off by a PUT.",
    }),
    failure_count: Type.Integer({ description: "Declined payments since the last success." }),
    spent_this_month: Type.String({
      description: "Money of succeeded auto-topups created this calendar month (UTC).",
      examples: ["49.00"],
    }),
    updated_at: Type.Union([Timestamp(), Type.Null()]),
  },
  { title: "AutoTopupSettings" },
);
export type TopupSettingsDto = Static<typeof TopupSettingsSchema>;

export const TopupAttemptSchema = Type.Object(
  {
    id: Type.String({ examples: ["att_01JD3M6Q8Z4X2N7V5B9C1K3H0T"] }),
    status: Type.Union([
      Type.Literal("in_flight"),
      Type.Literal("succeeded"),
      Type.Literal("failed"),
      Type.Literal("action_required"),
      Type.Literal("skipped_limit"),
    ]),
    purchase_id: Type.Union([Type.String(), Type.Null()]),
    package_id: Type.String(),
    amount: Type.String({ examples: ["49.00"] }),
    currency: Type.String({ examples: ["USD"] }),
    error: Type.Union([Type.String(), Type.Null()]),
    action_url: Type.Union([Type.String(), Type.Null()], {
      description: "action_required: where the customer confirms the payment.",
    }),
    balance: Type.String({ description: "The balance left by the write that started it." }),
    created_at: Timestamp(),
    updated_at: Timestamp(),
  },
  { title: "AutoTopupAttempt" },
);

function settingsDto(orgId: string, v: service.TopupSettingsView): TopupSettingsDto {
  const money = (minor: bigint) => formatMoney({ minor, currency: v.currency });
  return {
    org_id: orgId,
    enabled: v.enabled,
    threshold: formatCredits(v.threshold),
    package_id: v.packageId,
    monthly_limit: v.monthlyLimitMinor === null ? null : money(v.monthlyLimitMinor),
    max_failures: v.maxFailures,
    currency: v.currency,
    payment_method: v.paymentMethod,
    status: v.status,
    disabled_reason: v.disabledReason,
    failure_count: v.failureCount,
    spent_this_month: money(v.spentThisMonthMinor),
    updated_at: v.updatedAt?.toISOString() ?? null,
  };
}

function attemptDto(a: service.TopupAttempt) {
  return {
    id: a.id,
    status: a.status,
    purchase_id: a.purchase_id,
    package_id: a.package_id,
    amount: formatMoney({ minor: BigInt(a.amount_minor), currency: a.currency }),
    currency: a.currency,
    error: a.error,
    action_url: a.action_url,
    balance: formatCredits(creditsFromDb(a.balance)),
    created_at: a.created_at.toISOString(),
    updated_at: a.updated_at.toISOString(),
  };
}

export function registerTopupRoutes(app: App, ctx: AppContext): void {
  const tags = ["auto-topup"];
  const path = "/v1/organizations/:org_id/auto-topup";

  app.get(
    path,
    {
      schema: {
        tags,
        summary: "Auto-topup settings and status",
        params: OrgParams,
        response: { 200: TopupSettingsSchema },
      },
      config: { access: { roles: ROLES.read, org: true, credits: true } },
    },
    async (request) => {
      const org = requestOrg(request);
      return settingsDto(org.id, await service.getTopupSettings(ctx, org.id));
    },
  );

  app.put(
    path,
    {
      schema: {
        tags,
        summary: "Configure auto-topup",
        description:
          "Enabling needs a saved card (409 `invalid_state` otherwise) and an active package " +
          "(unknown → 404, inactive → 409). Enabling re-arms the trigger; the next write that " +
          "leaves the balance at or below the threshold starts a topup.",
        params: OrgParams,
        body: TopupSettingsBody,
        response: { 200: TopupSettingsSchema },
      },
      config: { access: { roles: ROLES.billing, org: true, credits: true } },
    },
    async (request) => {
      const org = requestOrg(request);
      const b = request.body;
      const view = unwrap(
        await service.putTopupSettings(ctx, org.id, {
          enabled: b.enabled,
          threshold: b.threshold === undefined ? undefined : parseCredits(b.threshold),
          packageId: b.package_id,
          monthlyLimit: b.monthly_limit,
          maxFailures: b.max_failures,
        }),
      );
      return settingsDto(org.id, view);
    },
  );

  app.get(
    `${path}/attempts`,
    {
      schema: {
        tags,
        summary: "Auto-topup attempts, newest first",
        params: OrgParams,
        querystring: Type.Object({ ...ListQuery }, { additionalProperties: false }),
        response: { 200: Page(TopupAttemptSchema) },
      },
      config: { access: { roles: ROLES.read, org: true, credits: true } },
    },
    async (request) => {
      const org = requestOrg(request);
      const limit = request.query.limit ?? 50;
      const before = request.query.cursor
        ? String(decodeCursor(request.query.cursor, 1)[0])
        : undefined;
      const rows = await service.listAttempts(ctx, org.id, { limit, before });
      return pageOf(rows, limit, attemptDto, (a) => encodeCursor([a.id]));
    },
  );

  registerTopupSandboxRoutes(app, ctx);
}
