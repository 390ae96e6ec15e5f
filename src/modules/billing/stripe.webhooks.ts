import { Type } from "@sinclair/typebox";
import type Stripe from "stripe";
import type { AppContext } from "../../app/context.js";
import { AppError, ErrorEnvelopeSchema, invalid, notFound } from "../../app/errors.js";
import type { App } from "../../app/http.js";
import type { Db } from "../../db/index.js";
import { onTopupPurchaseSettled } from "../topup/topup.service.js";
import * as repo from "./billing.repo.js";
import { paymentProvider } from "./providers/index.js";
import { PaymentProviderError } from "./providers/provider.js";
import { StripeProvider } from "./providers/stripe.js";
import {
  DEBIT_WAIT_MS,
  expirePurchaseInTx,
  failPurchaseInTx,
  fulfilPurchaseInTx,
  type Purchase,
} from "./purchases.service.js";
import { reflectProviderRefundInTx } from "./refunds.service.js";

/**
 * Stripe's notifications. Each delivery is verified on the raw body (`Stripe-Signature`, the
 * SDK's `constructEvent`, 300 s tolerance against Tally's clock) and applied at most once: the
 * event id is inserted into `inbound_webhook_events` in the same transaction as its effect, so a
 * duplicate — sequential or concurrent — finds the row and changes nothing, and a failure rolls
 * both back so Stripe's retry applies it.
 *
 * Nothing is taken from the payload on trust where Stripe can be asked: checkout events re-fetch
 * the session and act on its current state (which also makes out-of-order delivery harmless);
 * `charge.refunded` uses the cumulative `amount_refunded`. Off-session PaymentIntents (auto-topup)
 * are checked against the purchase's amount and currency.
 */

export const HANDLED_EVENTS = [
  "checkout.session.completed",
  "checkout.session.async_payment_succeeded",
  "checkout.session.async_payment_failed",
  "checkout.session.expired",
  "payment_intent.succeeded",
  "payment_intent.payment_failed",
  "charge.refunded",
] as const;
type HandledType = (typeof HANDLED_EVENTS)[number];
type HandledEvent = Extract<Stripe.Event, { type: HandledType }>;

export interface WebhookAck {
  received: true;
  /** This event id was already processed; nothing changed. */
  duplicate?: true;
  /** An event type Tally does not act on, or one about something Tally does not know. */
  ignored?: true;
  /** What processing did, for the Stripe dashboard's delivery log. */
  outcome?: string;
}

interface Outcome {
  status: "processed" | "ignored" | "failed";
  /** Short machine-readable description. */
  detail: string;
  orgId?: string | null;
}

/** What an event does, prepared outside the transaction (processor calls happen here). */
interface Plan {
  orgId: string | null;
  objectId: string | null;
  apply(tx: Db): Promise<Outcome>;
}

export async function handleStripeWebhook(
  ctx: AppContext,
  rawBody: string,
  signature: string | undefined,
): Promise<WebhookAck> {
  const provider = paymentProvider(ctx);
  const secret = ctx.config.stripe.webhookSecret;
  if (ctx.config.paymentProvider !== "stripe" || !(provider instanceof StripeProvider)) {
    throw notFound("No route POST /v1/webhooks/stripe.");
  }
  if (!secret) {
    // Refused, not acknowledged: Stripe retries for three days, so once the secret is set the
    // notifications arrive after all.
    throw new AppError(
      "service_unavailable",
      "STRIPE_WEBHOOK_SECRET is not set: this notification cannot be verified.",
    );
  }
  if (!signature)
    throw invalid("The Stripe-Signature header is missing.", "header.stripe-signature");
  let event: Stripe.Event;
  try {
    event = provider.constructWebhookEvent(rawBody, signature, secret, ctx.clock.now());
  } catch (error) {
    throw invalid(
      `Webhook signature verification failed: ${error instanceof Error ? error.message : "invalid"}`,
      "header.stripe-signature",
    );
  }
  if (!isHandled(event)) return { received: true, ignored: true, outcome: "unhandled_type" };
  if (await repo.findInboundEvent(ctx.db, "stripe", event.id)) {
    return { received: true, duplicate: true };
  }

  const plan = await planFor(ctx, provider, event);
  const receivedAt = ctx.clock.now();
  const result = await ctx.db.transaction().execute(async (tx) => {
    const claimed = await repo.claimInboundEvent(tx, {
      provider: "stripe",
      event_id: event.id,
      type: event.type,
      org_id: plan.orgId,
      object_id: plan.objectId,
      status: "received",
      error: null,
      received_at: receivedAt,
      processed_at: null,
    });
    if (!claimed) return null;
    const outcome = await plan.apply(tx);
    await repo.finishInboundEvent(tx, "stripe", event.id, {
      status: outcome.status,
      error: outcome.status === "failed" ? outcome.detail : null,
      org_id: outcome.orgId ?? plan.orgId,
      object_id: plan.objectId,
      processed_at: ctx.clock.now(),
    });
    return outcome;
  });
  if (!result) return { received: true, duplicate: true };
  const log = { event_id: event.id, type: event.type, outcome: result.detail };
  if (result.status === "failed") ctx.logger.error(log, "Stripe event could not be applied");
  else ctx.logger.info(log, "Stripe event processed");
  return {
    received: true,
    ...(result.status === "ignored" ? { ignored: true as const } : {}),
    outcome: result.detail,
  };
}

function isHandled(event: Stripe.Event): event is HandledEvent {
  return (HANDLED_EVENTS as readonly string[]).includes(event.type);
}

const ignore = (detail: string, orgId: string | null = null): Outcome => ({
  status: "ignored",
  detail,
  orgId,
});

async function planFor(
  ctx: AppContext,
  provider: StripeProvider,
  event: HandledEvent,
): Promise<Plan> {
  switch (event.type) {
    case "checkout.session.completed":
    case "checkout.session.async_payment_succeeded":
    case "checkout.session.async_payment_failed":
    case "checkout.session.expired":
      return planCheckout(ctx, provider, event.type, event.data.object);
    case "payment_intent.succeeded":
    case "payment_intent.payment_failed":
      return planPaymentIntent(ctx, event.type, event.data.object);
    case "charge.refunded":
      return planRefund(ctx, event.data.object);
  }
}

async function planCheckout(
  ctx: AppContext,
  provider: StripeProvider,
  type: HandledType,
  session: Stripe.Checkout.Session,
): Promise<Plan> {
  const purchase = await checkoutPurchase(ctx, session);
  if (!purchase) {
    return { orgId: null, objectId: session.id, apply: async () => ignore("unknown_session") };
  }
  const { org_id: orgId, id } = purchase;
  // The payload may be stale or out of order: act on the session as Stripe has it now.
  const state = await provider.retrieveCheckout(session.id);
  return {
    orgId,
    objectId: session.id,
    async apply(tx) {
      if (state.paymentStatus === "paid" && state.paymentId) {
        // The session is the purchase's own (checked above); what it charged must be too.
        if (
          state.amountMinor != null &&
          !chargesPurchase(purchase, state.amountMinor, state.currency)
        ) {
          ctx.logger.error(
            { purchase_id: id, session_id: session.id, amount: String(state.amountMinor) },
            "a paid checkout session does not charge its purchase's amount; not granted",
          );
          return { status: "failed", detail: AMOUNT_MISMATCH };
        }
        const result = await fulfilPurchaseInTx(tx, ctx, orgId, id, {
          providerPaymentId: state.paymentId,
          paymentMethod: state.paymentMethod,
        });
        if (!result.ok) return { status: "failed", detail: result.message ?? result.code };
        return {
          status: "processed",
          detail: result.value.fulfilled ? "purchase_paid" : "already_paid",
        };
      }
      if (type === "checkout.session.async_payment_failed") {
        const failed = await failPurchaseInTx(tx, ctx, orgId, id, {
          code: "async_payment_failed",
          message: "The payment failed after checkout.",
        });
        return failed.ok
          ? { status: "processed", detail: "purchase_failed" }
          : ignore("purchase_not_pending", orgId);
      }
      if (state.status === "expired") {
        const expired = await expirePurchaseInTx(tx, ctx, orgId, id);
        return expired
          ? { status: "processed", detail: "purchase_expired" }
          : ignore("purchase_not_pending", orgId);
      }
      // Complete but unpaid: an asynchronous method (bank debit) — wait for its outcome, which
      // can take days: the purchase stays pending that long rather than showing `expired`.
      if (state.status === "complete") {
        await repo.updatePurchase(
          tx,
          orgId,
          id,
          {
            expires_at: new Date(ctx.clock.now().getTime() + DEBIT_WAIT_MS),
            updated_at: ctx.clock.now(),
          },
          ["pending"],
        );
      }
      return { status: "processed", detail: "awaiting_payment" };
    },
  };
}

const AMOUNT_MISMATCH = "amount or currency does not match the purchase";

/** Whether a payment at Stripe is for exactly what the purchase costs (never grant otherwise). */
function chargesPurchase(
  purchase: Purchase,
  amountMinor: bigint | number,
  currency: string | null | undefined,
): boolean {
  return (
    String(amountMinor) === purchase.amount_minor && currency?.toUpperCase() === purchase.currency
  );
}

/**
 * The purchase a session belongs to: by our reference, confirmed by the session id stored when
 * Tally opened the checkout — always, since a reference can be set by anyone who opens a session
 * on the account (a payment link's `client_reference_id`): a purchase whose own checkout could not
 * be opened has no session, and no other session can pay it.
 */
async function checkoutPurchase(
  ctx: AppContext,
  session: Stripe.Checkout.Session,
): Promise<Purchase | undefined> {
  const reference = session.client_reference_id ?? session.metadata?.purchase_id ?? null;
  const purchase = reference
    ? await repo.findPurchaseById(ctx.db, reference)
    : await repo.findPurchaseBySessionId(ctx.db, "stripe", session.id);
  if (purchase?.provider !== "stripe" || purchase.provider_session_id !== session.id) {
    return undefined;
  }
  return purchase;
}

async function planPaymentIntent(
  ctx: AppContext,
  type: "payment_intent.succeeded" | "payment_intent.payment_failed",
  intent: Stripe.PaymentIntent,
): Promise<Plan> {
  const purchaseId = intent.metadata?.purchase_id;
  const purchase = purchaseId ? await repo.findPurchaseById(ctx.db, purchaseId) : undefined;
  const objectId = intent.id;
  if (purchase?.provider !== "stripe") {
    return { orgId: null, objectId, apply: async () => ignore("unknown_payment") };
  }
  const { org_id: orgId, id } = purchase;
  // Checkout payments settle through the session's events (re-fetched); a failed attempt inside
  // Checkout is not a failed purchase — the customer can try another card.
  if (purchase.source === "checkout") {
    return { orgId, objectId, apply: async () => ignore("checkout_payment", orgId) };
  }
  if (purchase.provider_payment_id !== null && purchase.provider_payment_id !== intent.id) {
    return { orgId, objectId, apply: async () => ignore("other_payment_of_purchase", orgId) };
  }
  // Off-session, a card that wants 3-D Secure fails with `authentication_required`. The charge
  // job got the same answer and asks the customer to authenticate (`action_required`); the
  // purchase stays payable, so this is not a decline to count.
  const error = intent.last_payment_error;
  if (
    type === "payment_intent.payment_failed" &&
    (error?.code === "authentication_required" || error?.decline_code === "authentication_required")
  ) {
    return { orgId, objectId, apply: async () => ignore("authentication_required", orgId) };
  }
  const matches = chargesPurchase(purchase, intent.amount, intent.currency);
  return {
    orgId,
    objectId,
    async apply(tx) {
      if (!matches) {
        return { status: "failed", detail: AMOUNT_MISMATCH };
      }
      if (type === "payment_intent.succeeded") {
        const result = await fulfilPurchaseInTx(tx, ctx, orgId, id, {
          providerPaymentId: intent.id,
          paymentMethod: null,
        });
        if (!result.ok) return { status: "failed", detail: result.message ?? result.code };
        // The auto-topup attempt behind the purchase follows it, in this transaction.
        await onTopupPurchaseSettled(tx, ctx, result.value.purchase);
        return {
          status: "processed",
          detail: result.value.fulfilled ? "purchase_paid" : "already_paid",
        };
      }
      const failed = await failPurchaseInTx(tx, ctx, orgId, id, {
        code: error?.decline_code ?? error?.code ?? "payment_failed",
        message: error?.message ?? "The payment failed.",
      });
      if (!failed.ok) return ignore("purchase_not_pending", orgId);
      await onTopupPurchaseSettled(tx, ctx, failed.value);
      return { status: "processed", detail: "purchase_failed" };
    },
  };
}

async function planRefund(ctx: AppContext, charge: Stripe.Charge): Promise<Plan> {
  const paymentId =
    typeof charge.payment_intent === "string"
      ? charge.payment_intent
      : (charge.payment_intent?.id ?? null);
  if (!paymentId || !Number.isSafeInteger(charge.amount_refunded) || charge.amount_refunded < 0) {
    return { orgId: null, objectId: charge.id, apply: async () => ignore("unknown_payment") };
  }
  return {
    orgId: null,
    objectId: charge.id,
    async apply(tx) {
      const result = await reflectProviderRefundInTx(tx, ctx, {
        provider: "stripe",
        paymentId,
        refundedTotalMinor: BigInt(charge.amount_refunded),
        currency: charge.currency,
      });
      return result.status === "processed"
        ? { status: "processed", detail: "refund_recorded", orgId: result.orgId }
        : ignore(result.reason.replaceAll(" ", "_"), result.orgId);
    },
  };
}

// ---- route ----------------------------------------------------------------------------------

const WebhookAckSchema = Type.Object(
  {
    received: Type.Literal(true),
    duplicate: Type.Optional(Type.Literal(true)),
    ignored: Type.Optional(Type.Literal(true)),
    outcome: Type.Optional(Type.String({ examples: ["purchase_paid"] })),
  },
  { title: "StripeWebhookAck" },
);

/** 1 MiB: Stripe events are far smaller. */
const WEBHOOK_BODY_LIMIT = 1024 * 1024;

/**
 * `POST /v1/webhooks/stripe`, in its own plugin scope so that this route alone receives the raw
 * body (the signature covers the exact bytes) and every other route keeps the JSON parser.
 */
export function registerStripeWebhookRoutes(app: App, ctx: AppContext): void {
  app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser(
      "application/json",
      { parseAs: "string", bodyLimit: WEBHOOK_BODY_LIMIT },
      (_request, body, done) => done(null, body),
    );
    scope.post(
      "/v1/webhooks/stripe",
      {
        schema: {
          tags: ["billing"],
          summary: "Stripe webhook endpoint",
          description:
            "Point a Stripe webhook endpoint here (events `checkout.session.completed`, " +
            "`checkout.session.async_payment_succeeded`, `checkout.session.async_payment_failed`, " +
            "`checkout.session.expired`, `payment_intent.succeeded`, " +
            "`payment_intent.payment_failed`, `charge.refunded`) and set `STRIPE_WEBHOOK_SECRET` " +
            "to its signing secret. The body must be the exact bytes Stripe sent. A missing, " +
            "forged or older than 300 s signature → 400 and nothing changes; an event already " +
            "processed → 200 with `duplicate: true`; an event type Tally does not use → 200 with " +
            "`ignored: true`; a processing failure → 5xx, so Stripe retries. Only served when " +
            "the payment provider is `stripe` (404 otherwise).",
          security: [],
          headers: Type.Object({
            "stripe-signature": Type.Optional(
              Type.String({ description: "Stripe's signature header (`t=…,v1=…`)." }),
            ),
          }),
          body: Type.Unknown({ description: "A Stripe Event object, exactly as Stripe sent it." }),
          response: {
            200: WebhookAckSchema,
            503: {
              ...ErrorEnvelopeSchema,
              description:
                "Stripe was unreachable while processing, or STRIPE_WEBHOOK_SECRET is not set; Stripe retries.",
            },
          },
        },
        config: { access: { public: true } },
      },
      async (request) => {
        const header = request.headers["stripe-signature"];
        const raw = typeof request.body === "string" ? request.body : "";
        try {
          return await handleStripeWebhook(
            ctx,
            raw,
            typeof header === "string" ? header : undefined,
          );
        } catch (error) {
          if (error instanceof PaymentProviderError) {
            request.log.warn({ err: error }, "Stripe unreachable while processing a webhook");
            throw new AppError("service_unavailable", "Stripe is unreachable; retry later.");
          }
          throw error;
        }
      },
    );
  });
}
