import Stripe from "stripe";
import {
  type ChargeInput,
  type ChargeResult,
  type CheckoutSession,
  type CheckoutState,
  type CreateCheckoutInput,
  type PaymentProvider,
  PaymentProviderError,
  type RefundInput,
  type RefundResult,
  type SavedPaymentMethod,
} from "./provider.js";

/**
 * The Stripe API version Tally is written against. Pinned so that a Stripe account default or an
 * SDK upgrade never silently changes object shapes; upgrading the SDK major must revisit this
 * (the type makes a mismatch a compile error).
 */
export const STRIPE_API_VERSION = "2026-10-28.endive" satisfies Stripe.LatestApiVersion;

/** Oldest accepted `Stripe-Signature` timestamp, in seconds (Stripe's recommended default). */
export const STRIPE_WEBHOOK_TOLERANCE_S = 300;

export interface StripeProviderOptions {
  secretKey: string;
  /** e.g. `http://127.0.0.1:12111` for a local fake; null → api.stripe.com. */
  apiBase?: string | null;
  /** Per-request timeout (default 15 s). */
  timeoutMs?: number;
  /** SDK retries of connection errors, 409 and 5xx, always with the same Idempotency-Key. */
  maxNetworkRetries?: number;
}

/** Stripe Checkout for purchases, off-session PaymentIntents for auto-topup, the Refunds API. */
export class StripeProvider implements PaymentProvider {
  readonly name = "stripe" as const;
  readonly client: Stripe;

  constructor(options: StripeProviderOptions) {
    const config: Stripe.StripeConfig = {
      apiVersion: STRIPE_API_VERSION,
      timeout: options.timeoutMs ?? 15_000,
      maxNetworkRetries: options.maxNetworkRetries ?? 2,
      telemetry: false,
      appInfo: { name: "Tally" },
    };
    if (options.apiBase) {
      const base = new URL(options.apiBase);
      const protocol = base.protocol === "http:" ? "http" : "https";
      config.protocol = protocol;
      config.host = base.hostname.replace(/^\[(.*)\]$/, "$1");
      config.port = base.port || (protocol === "http" ? 80 : 443);
    }
    this.client = new Stripe(options.secretKey, config);
  }

  /**
   * Verifies a webhook delivery with the SDK: the HMAC of the raw body under `secret`, and the
   * signature timestamp no older than the tolerance at `receivedAt` (Tally's clock). Throws when
   * the signature is missing, forged or stale, or the body is not an event.
   */
  constructWebhookEvent(
    rawBody: string,
    signatureHeader: string,
    secret: string,
    receivedAt: Date,
  ): Stripe.Event {
    return this.client.webhooks.constructEvent(
      rawBody,
      signatureHeader,
      secret,
      STRIPE_WEBHOOK_TOLERANCE_S,
      undefined,
      receivedAt.getTime(),
    );
  }

  async createCheckout(input: CreateCheckoutInput): Promise<CheckoutSession> {
    const { purchase } = input;
    const metadata = { purchase_id: purchase.id, org_id: purchase.orgId };
    // Off-session charges need the card attached to a customer.
    const newCustomer = async (idempotencyKey: string) =>
      (
        await this.client.customers.create(
          { name: input.customer.name, metadata: { org_id: input.customer.orgId } },
          { idempotencyKey },
        )
      ).id;
    return call(async () => {
      let customerId = input.customer.customerId ?? null;
      if (input.savePaymentMethod && !customerId) {
        customerId = await newCustomer(`tally:customer:${purchase.id}`);
      }
      const params: Stripe.Checkout.SessionCreateParams = {
        mode: "payment",
        client_reference_id: purchase.id,
        metadata,
        success_url: input.successUrl,
        cancel_url: input.cancelUrl,
        line_items: [
          {
            quantity: 1,
            price_data: {
              currency: purchase.currency.toLowerCase(),
              unit_amount: stripeAmount(purchase.amountMinor),
              product_data: {
                name: input.package.name,
                ...(input.package.description ? { description: input.package.description } : {}),
                metadata: { package_id: input.package.id },
              },
            },
          },
        ],
        payment_intent_data: {
          metadata,
          ...(input.savePaymentMethod ? { setup_future_usage: "off_session" as const } : {}),
        },
        ...(customerId ? { customer: customerId } : {}),
      };
      let session: Stripe.Checkout.Session;
      try {
        session = await this.client.checkout.sessions.create(params, {
          idempotencyKey: `tally:checkout:${purchase.id}`,
        });
      } catch (error) {
        // The organisation's customer was deleted at Stripe (in its dashboard): every checkout
        // would fail for good. Open this one with a new customer (or none), as for a first one.
        if (!(isMissing(error, "customer") && customerId)) throw error;
        customerId = input.savePaymentMethod
          ? await newCustomer(`tally:customer:${purchase.id}:renewed`)
          : null;
        const { customer: _, ...rest } = params;
        session = await this.client.checkout.sessions.create(
          { ...rest, ...(customerId ? { customer: customerId } : {}) },
          { idempotencyKey: `tally:checkout:${purchase.id}:renewed` },
        );
      }
      if (!session.url) throw new PaymentProviderError("Stripe returned no checkout URL", false);
      return { sessionId: session.id, url: session.url, customerId };
    });
  }

  async retrieveCheckout(sessionId: string): Promise<CheckoutState> {
    return call(async () => {
      const session = await this.client.checkout.sessions.retrieve(sessionId, {
        expand: ["payment_intent.payment_method"],
      });
      const intent = session.payment_intent;
      const paymentId = typeof intent === "string" ? intent : (intent?.id ?? null);
      const customerId =
        typeof session.customer === "string" ? session.customer : (session.customer?.id ?? null);
      let paymentMethod: SavedPaymentMethod | null = null;
      if (intent && typeof intent !== "string" && intent.payment_method) {
        const pm = intent.payment_method;
        paymentMethod =
          typeof pm === "string"
            ? { id: pm, brand: null, last4: null, customerId }
            : {
                id: pm.id,
                brand: pm.card?.brand ?? null,
                last4: pm.card?.last4 ?? null,
                customerId,
              };
      }
      return {
        status: oneOf(session.status, ["complete", "expired"] as const, "open"),
        paymentStatus: oneOf(
          session.payment_status,
          ["paid", "no_payment_required"] as const,
          "unpaid",
        ),
        paymentId,
        paymentMethod,
        amountMinor: session.amount_total === null ? null : BigInt(session.amount_total),
        currency: session.currency?.toUpperCase() ?? null,
      };
    });
  }

  async chargeOffSession(input: ChargeInput): Promise<ChargeResult> {
    try {
      const intent = await this.client.paymentIntents.create(
        {
          amount: stripeAmount(input.amountMinor),
          currency: input.currency.toLowerCase(),
          payment_method: input.paymentMethod.id,
          ...(input.paymentMethod.customerId ? { customer: input.paymentMethod.customerId } : {}),
          off_session: true,
          confirm: true,
          metadata: { ...input.metadata, org_id: input.orgId },
        },
        { idempotencyKey: input.idempotencyKey },
      );
      switch (intent.status) {
        case "succeeded":
          return { status: "succeeded", paymentId: intent.id };
        case "processing":
          return { status: "pending", paymentId: intent.id };
        case "requires_action": {
          const url = intent.next_action?.redirect_to_url?.url ?? undefined;
          return { status: "requires_action", paymentId: intent.id, actionUrl: url };
        }
        default:
          return {
            status: "declined",
            paymentId: intent.id,
            error: intent.last_payment_error?.message ?? `payment ${intent.status}`,
          };
      }
    } catch (error) {
      if (error instanceof Stripe.errors.StripeCardError) {
        const paymentId = error.payment_intent?.id ?? null;
        // Off-session, a card that wants 3-D Secure fails with `authentication_required`:
        // the customer has to come back on-session.
        if (error.code === "authentication_required") {
          return { status: "requires_action", paymentId, error: error.message };
        }
        return {
          status: "declined",
          paymentId,
          error: error.decline_code ? `${error.message} (${error.decline_code})` : error.message,
        };
      }
      throw fault(error);
    }
  }

  async cancelPayment(paymentId: string): Promise<void> {
    await call(async () => {
      await this.client.paymentIntents.cancel(
        paymentId,
        { cancellation_reason: "abandoned" },
        { idempotencyKey: `tally:cancel:${paymentId}` },
      );
    });
  }

  async refund(input: RefundInput): Promise<RefundResult> {
    return call(async () => {
      const refund = await this.client.refunds.create(
        {
          payment_intent: input.paymentId,
          amount: stripeAmount(input.amountMinor),
          ...(input.metadata ? { metadata: input.metadata } : {}),
        },
        { idempotencyKey: input.idempotencyKey },
      );
      const status =
        refund.status === "succeeded"
          ? "succeeded"
          : refund.status === "failed" || refund.status === "canceled"
            ? "failed"
            : "pending";
      return { refundId: refund.id, status };
    });
  }
}

/**
 * The SDK takes amounts as JS numbers. Minor units are bigint everywhere in Tally; they cross
 * into a number only here, checked to be exact (Stripe's own limit is 8 digits anyway).
 */
export function stripeAmount(minor: bigint): number {
  if (minor < 0n || minor > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new PaymentProviderError(`amount ${minor} is out of range for Stripe`, false);
  }
  return Number(minor);
}

function oneOf<const T extends string, const D extends string>(
  value: string | null,
  known: readonly T[],
  fallback: D,
): T | D {
  return known.find((k) => k === value) ?? fallback;
}

/** Stripe refused a request because the object named by `param` does not exist. */
function isMissing(error: unknown, param: string): boolean {
  return (
    error instanceof Stripe.errors.StripeInvalidRequestError &&
    error.code === "resource_missing" &&
    error.param === param
  );
}

async function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    throw fault(error);
  }
}

function fault(error: unknown): PaymentProviderError {
  if (error instanceof PaymentProviderError) return error;
  if (error instanceof Stripe.errors.StripeError) {
    const retryable =
      error instanceof Stripe.errors.StripeConnectionError ||
      error instanceof Stripe.errors.StripeAPIError ||
      error instanceof Stripe.errors.StripeRateLimitError ||
      error instanceof Stripe.errors.StripeIdempotencyError ||
      (error.statusCode !== undefined && error.statusCode >= 500);
    return new PaymentProviderError(`Stripe: ${error.message}`, retryable, error, error.code);
  }
  return new PaymentProviderError(
    `Stripe: ${error instanceof Error ? error.message : String(error)}`,
    true,
    error,
  );
}
