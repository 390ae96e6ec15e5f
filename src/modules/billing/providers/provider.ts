import type { ProviderName, SandboxCardBehaviour } from "../billing.tables.js";

/**
 * The payment processor as billing sees it. Implementations: `stripe` (Stripe Checkout and
 * PaymentIntents through the official SDK) and `sandbox` (no network, for local use and tests).
 *
 * Amounts are integer minor units (`bigint`) with an ISO currency code. Every call that moves
 * money carries an idempotency key derived from Tally's own ids, so a retry after a crash or a
 * timeout never charges or refunds twice. Declines and authentication requests are results;
 * faults (network, 5xx, misconfiguration) are thrown, and the caller retries with the same key.
 */
export interface PaymentProvider {
  readonly name: ProviderName;
  createCheckout(input: CreateCheckoutInput): Promise<CheckoutSession>;
  retrieveCheckout(sessionId: string): Promise<CheckoutState>;
  chargeOffSession(input: ChargeInput): Promise<ChargeResult>;
  refund(input: RefundInput): Promise<RefundResult>;
  /**
   * Makes an unfinished payment (one waiting for the customer to authenticate) unable to
   * succeed any more. Throws `PaymentProviderError` when it cannot: not retryable if the payment
   * already succeeded or is being processed.
   */
  cancelPayment(paymentId: string): Promise<void>;
}

export interface CheckoutPurchase {
  id: string;
  orgId: string;
  amountMinor: bigint;
  currency: string;
}

export interface CheckoutPackage {
  id: string;
  name: string;
  description?: string | null;
}

export interface CheckoutCustomer {
  orgId: string;
  name: string;
  /** The processor's customer for this organisation, when one is already known. */
  customerId?: string | null;
}

export interface CreateCheckoutInput {
  purchase: CheckoutPurchase;
  package: CheckoutPackage;
  customer: CheckoutCustomer;
  successUrl: string;
  cancelUrl: string;
  /** Keep the card for later off-session charges (auto-topup). */
  savePaymentMethod: boolean;
}

export interface CheckoutSession {
  sessionId: string;
  url: string;
  /** The processor customer the session is tied to (created when saving the card). */
  customerId: string | null;
}

export interface SavedPaymentMethod {
  /** The processor's payment method id (`pm_…`, or a sandbox id). */
  id: string;
  brand: string | null;
  last4: string | null;
  customerId: string | null;
  /** Sandbox only: how later off-session charges of this card behave. */
  sandboxBehaviour?: SandboxCardBehaviour | null;
}

export interface CheckoutState {
  /** `open`: not finished; `complete`: the customer finished (payment may still be pending). */
  status: "open" | "complete" | "expired";
  paymentStatus: "paid" | "unpaid" | "no_payment_required";
  paymentId: string | null;
  /** The card used, when the session saved it for later use. */
  paymentMethod?: SavedPaymentMethod | null;
  /** What the session charges, as the processor has it (minor units, ISO code upper case). */
  amountMinor?: bigint | null;
  currency?: string | null;
}

export interface ChargeInput {
  orgId: string;
  paymentMethod: SavedPaymentMethod;
  amountMinor: bigint;
  currency: string;
  /** Deterministic (e.g. the auto-topup attempt id): the same key is one charge. */
  idempotencyKey: string;
  metadata: Record<string, string>;
}

/**
 * `pending`: the processor has not decided yet (asynchronous methods); the outcome arrives as a
 * `payment_intent.succeeded` / `payment_intent.payment_failed` notification.
 */
export type ChargeResult =
  | { status: "succeeded"; paymentId: string }
  | { status: "pending"; paymentId: string }
  | { status: "declined"; paymentId: string | null; error: string }
  | { status: "requires_action"; paymentId: string | null; error?: string; actionUrl?: string };

export interface RefundInput {
  paymentId: string;
  amountMinor: bigint;
  idempotencyKey: string;
  metadata?: Record<string, string>;
}

export interface RefundResult {
  /** Null when the money went back by other means (see `completeRefund`). */
  refundId: string | null;
  status: "succeeded" | "pending" | "failed";
}

/** A fault talking to the processor (network, timeout, 5xx, rejected request): retry later. */
export class PaymentProviderError extends Error {
  constructor(
    message: string,
    readonly retryable: boolean,
    override readonly cause?: unknown,
    /** The processor's own error code, e.g. Stripe's `charge_already_refunded`. */
    readonly code?: string,
  ) {
    super(message);
    this.name = "PaymentProviderError";
  }
}
