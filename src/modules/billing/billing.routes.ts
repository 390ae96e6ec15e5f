import { type Static, Type } from "@sinclair/typebox";
import type { AppContext } from "../../app/context.js";
import { ErrorEnvelopeSchema, invalid, unwrap } from "../../app/errors.js";
import {
  type App,
  decodeCursor,
  encodeCursor,
  ListQuery,
  Name,
  OrgParams,
  Page,
  pageOf,
  ROLES,
  Timestamp,
} from "../../app/http.js";
import {
  type Credits,
  creditsFromDb,
  DecimalFormatError,
  formatCredits,
  parseCredits,
} from "../ledger/credits.js";
import { formatMoney, isCurrency, parseMoney } from "../ledger/money.js";
import { requestOrg, requestPrincipal } from "../orgs/auth.js";
import type { PurchaseStatus } from "./billing.tables.js";
import { type PackageFigures, PERCENT_DIGITS, PRICE_PER_CREDIT_DIGITS } from "./package-figures.js";
import * as packages from "./packages.service.js";
import { unitCostOf } from "./purchase-figures.js";
import * as purchases from "./purchases.service.js";
import * as refunds from "./refunds.service.js";
import { registerSandboxRoutes } from "./sandbox.routes.js";
import { registerStripeWebhookRoutes } from "./stripe.webhooks.js";

// ---- schemas --------------------------------------------------------------------------------

const UnsignedCredits = (description: string) =>
  Type.String({ pattern: "^\\+?\\d{1,15}(\\.\\d{1,12})?$", description, examples: ["1000"] });

const Price = Type.String({
  pattern: "^\\d{1,15}(\\.\\d{1,12})?$",
  description:
    "Price as a decimal string in major units, with at most the currency's fractional digits " +
    '("49.00" USD; "1200" JPY).',
  examples: ["49.00"],
});

const Currency = Type.String({
  pattern: "^[A-Z]{3}$",
  description: "ISO 4217 code; defaults to TALLY_CURRENCY.",
  examples: ["USD"],
});

const Description = Type.String({ maxLength: 500, description: "Up to 500 characters." });

const BonusExpiry = Type.Integer({
  minimum: 1,
  maximum: 3650,
  description: "Bonus credits expire this many days after payment; null/absent: never.",
  examples: [90],
});

export const CreditPackageSchema = Type.Object(
  {
    id: Type.String({ examples: ["pkg_01JD3M6Q8Z4X2N7V5B9C1K3H0T"] }),
    name: Type.String(),
    description: Type.Union([Type.String(), Type.Null()]),
    credits: Type.String({ description: "Paid credits.", examples: ["1000"] }),
    bonus_credits: Type.String({ examples: ["200"] }),
    total_credits: Type.String({ description: "credits + bonus_credits.", examples: ["1200"] }),
    price: Type.String({ description: "Money decimal string.", examples: ["49.00"] }),
    currency: Type.String({ examples: ["USD"] }),
    effective_price_per_credit: Type.String({
      description:
        `price ÷ total_credits, rounded half to even to ${PRICE_PER_CREDIT_DIGITS} fractional ` +
        "digits. A display value, never used for ledger arithmetic.",
      examples: ["0.040833"],
    }),
    bonus_percent: Type.String({
      description: `bonus_credits ÷ credits × 100, rounded half to even to ${PERCENT_DIGITS} digits.`,
      examples: ["20.00"],
    }),
    savings_percent: Type.String({
      description:
        "How much cheaper per credit than the active package of the same currency with the " +
        `highest price per credit, in percent, rounded half to even to ${PERCENT_DIGITS} digits ` +
        "(negative only for an inactive package priced above it).",
      examples: ["18.33"],
    }),
    bonus_expires_in_days: Type.Union([Type.Integer(), Type.Null()]),
    active: Type.Boolean(),
    created_at: Timestamp(),
    updated_at: Timestamp(),
  },
  { title: "CreditPackage" },
);
export type CreditPackageDto = Static<typeof CreditPackageSchema>;

const CreatePackageBody = Type.Object(
  {
    name: Name(),
    credits: UnsignedCredits("Paid credits (> 0)."),
    bonus_credits: Type.Optional(UnsignedCredits("Bonus credits (≥ 0, default 0).")),
    price: Price,
    currency: Type.Optional(Currency),
    bonus_expires_in_days: Type.Optional(Type.Union([BonusExpiry, Type.Null()])),
    active: Type.Optional(Type.Boolean({ default: true })),
    description: Type.Optional(Type.Union([Description, Type.Null()])),
  },
  { additionalProperties: false },
);

const UpdatePackageBody = Type.Object(
  {
    name: Type.Optional(Name()),
    credits: Type.Optional(UnsignedCredits("Paid credits (> 0).")),
    bonus_credits: Type.Optional(UnsignedCredits("Bonus credits (≥ 0).")),
    price: Type.Optional(Price),
    bonus_expires_in_days: Type.Optional(Type.Union([BonusExpiry, Type.Null()])),
    active: Type.Optional(Type.Boolean({ description: "false withdraws it from sale." })),
    description: Type.Optional(Type.Union([Description, Type.Null()])),
  },
  {
    additionalProperties: false,
    minProperties: 1,
    description:
      "The currency of a package cannot change (create another package). Changes apply to " +
      "future purchases only: a purchase keeps what it was sold with.",
  },
);

const PackageParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) });

const PurchaseStatusSchema = Type.Union(
  [
    Type.Literal("pending"),
    Type.Literal("paid"),
    Type.Literal("failed"),
    Type.Literal("expired"),
    Type.Literal("refunded"),
    Type.Literal("partially_refunded"),
  ],
  { description: "pending → paid | failed | expired; paid → refunded | partially_refunded." },
);

export const PurchaseSchema = Type.Object(
  {
    id: Type.String({ examples: ["pur_01JD3M6Q8Z4X2N7V5B9C1K3H0T"] }),
    org_id: Type.String(),
    status: PurchaseStatusSchema,
    source: Type.Union([Type.Literal("checkout"), Type.Literal("auto_topup")]),
    package_id: Type.String(),
    package_name: Type.String(),
    credits: Type.String({ description: "Paid credits granted on payment.", examples: ["1000"] }),
    bonus_credits: Type.String({ examples: ["200"] }),
    bonus_expires_in_days: Type.Union([Type.Integer(), Type.Null()]),
    amount: Type.String({ description: "Money decimal string.", examples: ["49.00"] }),
    currency: Type.String({ examples: ["USD"] }),
    refunded_amount: Type.String({ description: "Money refunded so far.", examples: ["0.00"] }),
    provider: Type.String({ examples: ["stripe", "sandbox"] }),
    checkout_url: Type.Union([Type.String(), Type.Null()], {
      description: "Where to send the customer to pay.",
    }),
    success_url: Type.Union([Type.String(), Type.Null()]),
    cancel_url: Type.Union([Type.String(), Type.Null()]),
    save_payment_method: Type.Boolean(),
    user_id: Type.Union([Type.String(), Type.Null()]),
    actor: Type.Object({ type: Type.String(), id: Type.String() }),
    failure_code: Type.Union([Type.String(), Type.Null()]),
    failure_message: Type.Union([Type.String(), Type.Null()]),
    paid_at: Type.Union([Timestamp(), Type.Null()]),
    expires_at: Type.Union([Timestamp(), Type.Null()], {
      description: "An unpaid checkout expires at this time.",
    }),
    created_at: Timestamp(),
    updated_at: Timestamp(),
  },
  { title: "Purchase" },
);
export type PurchaseDto = Static<typeof PurchaseSchema>;

const ReturnUrl = (description: string) =>
  Type.String({
    format: "uri",
    // With a host: Stripe refuses `https://`, which would fail the purchase.
    pattern: "^https?://[^/?#\\s]+",
    maxLength: 2000,
    description,
    examples: ["https://app.example.com/billing?done=1"],
  });

const CreatePurchaseBody = Type.Object(
  {
    package_id: Type.String({ minLength: 1, maxLength: 64, examples: ["pkg_01JD3M6Q8Z4X"] }),
    success_url: Type.Optional(
      ReturnUrl("Where the checkout returns after payment (default: the portal)."),
    ),
    cancel_url: Type.Optional(
      ReturnUrl("Where the checkout returns when cancelled (default: the portal)."),
    ),
    save_payment_method: Type.Optional(
      Type.Boolean({
        default: true,
        description: "Save the card for auto-topup (off-session charges).",
      }),
    ),
  },
  { additionalProperties: false },
);

const PurchaseParams = Type.Object({
  org_id: OrgParams.properties.org_id,
  id: Type.String({ minLength: 1, maxLength: 64 }),
});

const RefundBody = Type.Object(
  {
    reason: Type.Optional(
      Type.String({
        minLength: 1,
        maxLength: 500,
        description: "Recorded on the refund and its ledger entries.",
        examples: ["Customer cancelled"],
      }),
    ),
  },
  { additionalProperties: false },
);

export const RefundSchema = Type.Object(
  {
    refund_id: Type.String({ examples: ["ref_01JD3M6Q8Z4X2N7V5B9C1K3H0T"] }),
    purchase_id: Type.String(),
    status: Type.Union([Type.Literal("succeeded"), Type.Literal("pending")], {
      description:
        "`succeeded`: the processor refunded; `pending`: the processor accepted the refund and " +
        "completes it asynchronously.",
    }),
    amount: Type.String({
      description:
        "Money refunded: the purchase amount × unused paid credits ÷ paid credits, rounded " +
        "down to the currency's minor unit.",
      examples: ["24.50"],
    }),
    currency: Type.String({ examples: ["USD"] }),
    credits_removed: Type.String({
      description: "All credits voided (paid + bonus): the balance went down by this much.",
      examples: ["600"],
    }),
    paid_credits_removed: Type.String({ examples: ["500"] }),
    bonus_credits_removed: Type.String({ examples: ["100"] }),
    reason: Type.Union([Type.String(), Type.Null()]),
    purchase: PurchaseSchema,
  },
  { title: "Refund" },
);
export type RefundDto = Static<typeof RefundSchema>;

// ---- DTOs -----------------------------------------------------------------------------------

function packageDto(p: packages.CreditPackage, f: PackageFigures): CreditPackageDto {
  return {
    id: p.id,
    name: p.name,
    description: p.description,
    credits: formatCredits(creditsFromDb(p.credits)),
    bonus_credits: formatCredits(creditsFromDb(p.bonus_credits)),
    total_credits: formatCredits(f.totalCredits),
    price: formatMoney({ minor: BigInt(p.price_minor), currency: p.currency }),
    currency: p.currency,
    effective_price_per_credit: f.effectivePricePerCredit,
    bonus_percent: f.bonusPercent,
    savings_percent: f.savingsPercent,
    bonus_expires_in_days: p.bonus_expires_in_days,
    active: p.active,
    created_at: p.created_at.toISOString(),
    updated_at: p.updated_at.toISOString(),
  };
}

export function purchaseDto(p: purchases.Purchase): PurchaseDto {
  return {
    id: p.id,
    org_id: p.org_id,
    status: p.status,
    source: p.source,
    package_id: p.package_id,
    package_name: p.package_name,
    credits: formatCredits(creditsFromDb(p.credits)),
    bonus_credits: formatCredits(creditsFromDb(p.bonus_credits)),
    bonus_expires_in_days: p.bonus_expires_in_days,
    amount: formatMoney({ minor: BigInt(p.amount_minor), currency: p.currency }),
    currency: p.currency,
    refunded_amount: formatMoney({ minor: BigInt(p.refunded_minor), currency: p.currency }),
    provider: p.provider,
    checkout_url: p.checkout_url,
    success_url: p.success_url,
    cancel_url: p.cancel_url,
    save_payment_method: p.save_payment_method,
    user_id: p.user_id,
    actor: { type: p.actor_type, id: p.actor_id },
    failure_code: p.failure_code,
    failure_message: p.failure_message,
    paid_at: p.paid_at?.toISOString() ?? null,
    expires_at: p.expires_at?.toISOString() ?? null,
    created_at: p.created_at.toISOString(),
    updated_at: p.updated_at.toISOString(),
  };
}

function refundDto(outcome: refunds.RefundOutcome): RefundDto {
  const figures = refunds.refundFigures(outcome.refund);
  return {
    refund_id: figures.refund_id,
    purchase_id: outcome.refund.purchase_id,
    status: outcome.refund.status === "succeeded" ? "succeeded" : "pending",
    amount: figures.amount,
    currency: figures.currency,
    credits_removed: figures.credits_removed,
    paid_credits_removed: figures.paid_credits_removed,
    bonus_credits_removed: figures.bonus_credits_removed,
    reason: figures.reason,
    purchase: purchaseDto(outcome.purchase),
  };
}

// ---- parsing --------------------------------------------------------------------------------

function parseCreditsField(value: string, field: string, positive: boolean): Credits {
  let credits: Credits;
  try {
    credits = parseCredits(value);
  } catch (error) {
    if (error instanceof DecimalFormatError) throw invalid(error.problem, `/${field}`);
    throw error;
  }
  if (positive ? credits <= 0n : credits < 0n) {
    throw invalid(positive ? "must be greater than 0" : "must not be negative", `/${field}`);
  }
  return credits;
}

/** The price against the currency's exponent: "49.001" USD and "1200.5" JPY are refused. */
function parsePrice(value: string, currency: string): bigint {
  let minor: bigint;
  try {
    minor = parseMoney(value, currency).minor;
  } catch (error) {
    if (error instanceof DecimalFormatError) {
      throw invalid(`${error.problem} for ${currency}`, "/price");
    }
    throw error;
  }
  if (minor <= 0n) throw invalid("must be greater than 0", "/price");
  return minor;
}

/**
 * The price per paid credit is stored on the paid block (NUMERIC(38,12): below 10^26): a package
 * whose price ÷ credits does not fit could be sold but never granted, so it is refused here.
 */
function checkUnitCost(priceMinor: bigint, currency: string, credits: Credits, field: string) {
  const unitCost = unitCostOf(priceMinor, currency, credits);
  if (unitCost.split(".")[0]!.length > 26) {
    throw invalid(
      "makes the price per credit too large (price ÷ credits must be below 10^26)",
      field,
    );
  }
}

function parseCurrency(value: string): string {
  if (!isCurrency(value)) throw invalid("not an ISO 4217 currency code", "/currency");
  return value;
}

async function packageWithFigures(ctx: AppContext, row: packages.CreditPackage) {
  const [one] = await packages.withFigures(ctx, [row]);
  return packageDto(one!.row, one!.figures);
}

// ---- routes ---------------------------------------------------------------------------------

/**
 * Packages are the platform's catalogue. Platform keys see and manage every package; organisation
 * keys (any role) see only active packages: `?active=false` gives them an empty list and an
 * inactive package's id answers 404.
 */
export function registerBillingRoutes(app: App, ctx: AppContext): void {
  const tags = ["billing"];

  app.post(
    "/v1/credit-packages",
    {
      schema: {
        tags,
        summary: "Create a credit package",
        body: CreatePackageBody,
        response: { 201: CreditPackageSchema },
      },
      config: { access: { roles: ROLES.platform } },
    },
    async (request, reply) => {
      const b = request.body;
      const currency = parseCurrency(b.currency ?? ctx.config.currency);
      const credits = parseCreditsField(b.credits, "credits", true);
      const priceMinor = parsePrice(b.price, currency);
      checkUnitCost(priceMinor, currency, credits, "/price");
      const row = await packages.createPackage(ctx, {
        name: b.name,
        description: b.description ?? null,
        credits,
        bonusCredits:
          b.bonus_credits === undefined
            ? 0n
            : parseCreditsField(b.bonus_credits, "bonus_credits", false),
        priceMinor,
        currency,
        bonusExpiresInDays: b.bonus_expires_in_days ?? null,
        active: b.active ?? true,
      });
      return reply.code(201).send(await packageWithFigures(ctx, row));
    },
  );

  app.get(
    "/v1/credit-packages",
    {
      schema: {
        tags,
        summary: "List credit packages",
        description:
          "Oldest first. Organisation keys see active packages only. Savings are computed " +
          "against the active packages of the same currency.",
        querystring: Type.Object(
          {
            ...ListQuery,
            active: Type.Optional(Type.Boolean({ description: "Only active / inactive ones." })),
          },
          { additionalProperties: false },
        ),
        response: { 200: Page(CreditPackageSchema) },
      },
      config: { access: { roles: ROLES.readBalance } },
    },
    async (request) => {
      const limit = request.query.limit ?? 50;
      const after = request.query.cursor
        ? String(decodeCursor(request.query.cursor, 1)[0])
        : undefined;
      const platform = requestPrincipal(request).role === "platform";
      let active = request.query.active;
      if (!platform) {
        if (active === false) return { data: [], has_more: false, next_cursor: null };
        active = true;
      }
      const rows = await packages.listPackages(ctx, { limit, after, active });
      const page = pageOf(
        rows,
        limit,
        (r) => r,
        (r) => encodeCursor([r.id]),
      );
      const figures = await packages.withFigures(ctx, page.data);
      return { ...page, data: figures.map((f) => packageDto(f.row, f.figures)) };
    },
  );

  app.get(
    "/v1/credit-packages/:id",
    {
      schema: {
        tags,
        summary: "Get a credit package",
        params: PackageParams,
        response: { 200: CreditPackageSchema },
      },
      config: { access: { roles: ROLES.readBalance } },
    },
    async (request) => {
      const platform = requestPrincipal(request).role === "platform";
      const row = unwrap(
        await packages.getPackage(ctx, request.params.id, { activeOnly: !platform }),
      );
      return packageWithFigures(ctx, row);
    },
  );

  app.patch(
    "/v1/credit-packages/:id",
    {
      schema: {
        tags,
        summary: "Update or deactivate a credit package",
        description: "`active: false` withdraws a package from sale; packages are never deleted.",
        params: PackageParams,
        body: UpdatePackageBody,
        response: { 200: CreditPackageSchema },
      },
      config: { access: { roles: ROLES.platform } },
    },
    async (request) => {
      const b = request.body;
      const existing = unwrap(
        await packages.getPackage(ctx, request.params.id, { activeOnly: false }),
      );
      const credits =
        b.credits === undefined ? undefined : parseCreditsField(b.credits, "credits", true);
      const priceMinor = b.price === undefined ? undefined : parsePrice(b.price, existing.currency);
      if (credits !== undefined || priceMinor !== undefined) {
        const amounts = packages.packageAmounts(existing);
        checkUnitCost(
          priceMinor ?? amounts.priceMinor,
          existing.currency,
          credits ?? amounts.credits,
          priceMinor !== undefined ? "/price" : "/credits",
        );
      }
      const row = unwrap(
        await packages.updatePackage(ctx, existing.id, {
          name: b.name,
          description: b.description,
          credits,
          bonusCredits:
            b.bonus_credits === undefined
              ? undefined
              : parseCreditsField(b.bonus_credits, "bonus_credits", false),
          priceMinor,
          bonusExpiresInDays: b.bonus_expires_in_days,
          active: b.active,
        }),
      );
      return packageWithFigures(ctx, row);
    },
  );

  // ---- purchases ----

  app.post(
    "/v1/organizations/:org_id/purchases",
    {
      schema: {
        tags,
        summary: "Buy a credit package",
        description:
          "Creates a pending purchase and the processor's checkout; send the customer to " +
          "`checkout_url`. Credits and bonus are granted when the payment is confirmed. An " +
          "unknown package → 404; an inactive one → 409 `invalid_state`; the processor " +
          "unreachable → 503 `service_unavailable`.",
        params: OrgParams,
        body: CreatePurchaseBody,
        response: {
          201: PurchaseSchema,
          503: {
            ...ErrorEnvelopeSchema,
            description: "The payment processor is unreachable (`service_unavailable`).",
          },
        },
      },
      config: { access: { roles: ROLES.billing, org: true, credits: true } },
    },
    async (request, reply) => {
      const b = request.body;
      const purchase = unwrap(
        await purchases.createPurchase(ctx, {
          org: requestOrg(request),
          principal: requestPrincipal(request),
          packageId: b.package_id,
          successUrl: b.success_url,
          cancelUrl: b.cancel_url,
          savePaymentMethod: b.save_payment_method ?? true,
        }),
      );
      return reply.code(201).send(purchaseDto(purchase));
    },
  );

  app.get(
    "/v1/organizations/:org_id/purchases",
    {
      schema: {
        tags,
        summary: "List purchases (newest first)",
        params: OrgParams,
        querystring: Type.Object(
          { ...ListQuery, status: Type.Optional(PurchaseStatusSchema) },
          { additionalProperties: false },
        ),
        response: { 200: Page(PurchaseSchema) },
      },
      config: { access: { roles: ROLES.read, org: true, credits: true } },
    },
    async (request) => {
      const limit = request.query.limit ?? 50;
      const before = request.query.cursor
        ? String(decodeCursor(request.query.cursor, 1)[0])
        : undefined;
      const rows = await purchases.listPurchases(ctx, requestOrg(request).id, {
        limit,
        before,
        status: request.query.status as PurchaseStatus | undefined,
      });
      return pageOf(rows, limit, purchaseDto, (r) => encodeCursor([r.id]));
    },
  );

  app.get(
    "/v1/organizations/:org_id/purchases/:id",
    {
      schema: {
        tags,
        summary: "Get a purchase",
        params: PurchaseParams,
        response: { 200: PurchaseSchema },
      },
      config: { access: { roles: ROLES.read, org: true, credits: true } },
    },
    async (request) => {
      const p = unwrap(await purchases.getPurchase(ctx, requestOrg(request).id, request.params.id));
      return purchaseDto(p);
    },
  );

  app.post(
    "/v1/organizations/:org_id/purchases/:id/refund",
    {
      schema: {
        tags,
        summary: "Refund a purchase's unused credits",
        description:
          "Refunds the money for the purchase's unused paid credits at its price (amount × " +
          "unused paid credits ÷ paid credits, rounded down to the minor unit) and voids the " +
          "purchase's remaining paid and bonus credits with `refund` ledger entries. The " +
          "purchase becomes `refunded` (nothing had been used) or `partially_refunded`. Not " +
          "paid, already refunded, or nothing unused → 409 `invalid_state`. Credits that " +
          "open reservations hold are not refunded: when the credits removed would exceed the " +
          "available ones (balance − reserved) → 402 `insufficient_credits`; settle or release " +
          "the holds first. A refund made at the processor (its dashboard) is a fact and voids " +
          "the credits regardless. The processor " +
          "unreachable → 503: the refund stays pending and is completed automatically (or by " +
          "repeating this request), never twice.",
        params: PurchaseParams,
        body: RefundBody,
        response: {
          200: RefundSchema,
          402: {
            ...ErrorEnvelopeSchema,
            description:
              "The credits to remove include credits that open reservations hold (`insufficient_credits`).",
          },
          503: {
            ...ErrorEnvelopeSchema,
            description: "The payment processor is unreachable (`service_unavailable`).",
          },
        },
      },
      // Refunds are the platform's decision: a customer asks it, the portal does not refund.
      config: { access: { roles: ROLES.billing, org: true, credits: true, portal: false } },
      // The body is optional: a bare POST is a refund without a reason.
      preValidation: async (request) => {
        request.body ??= {};
      },
    },
    async (request) => {
      const principal = requestPrincipal(request);
      const result = await refunds.refundPurchase(ctx, {
        orgId: requestOrg(request).id,
        purchaseId: request.params.id,
        principal,
        reason: request.body.reason ?? null,
      });
      // The refund stays pending: the same request (same Idempotency-Key too) finishes it.
      if (!result.ok && result.code === "service_unavailable") request.resumable = true;
      return refundDto(unwrap(result));
    },
  );

  registerSandboxRoutes(app, ctx);
  registerStripeWebhookRoutes(app, ctx);
}
