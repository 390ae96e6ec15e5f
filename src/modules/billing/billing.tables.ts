/** Billing: the package catalogue, purchases, saved payment methods, inbound webhooks, refunds. */

/** The platform's catalogue; global (not per organisation). */
export interface CreditPackagesTable {
  id: string;
  name: string;
  description: string | null;
  /** numeric(38,12) */
  credits: string;
  /** numeric(38,12) */
  bonus_credits: string;
  /** Integer minor units of `currency` (bigint as text). */
  price_minor: string;
  currency: string;
  bonus_expires_in_days: number | null;
  active: boolean;
  created_at: Date;
  updated_at: Date;
}

export type PurchaseStatus =
  | "pending"
  | "paid"
  | "failed"
  | "expired"
  | "refunded"
  | "partially_refunded";
export type PurchaseSource = "checkout" | "auto_topup";
export type ProviderName = "sandbox" | "stripe";

/**
 * A purchase snapshots what was sold (credits, bonus, price, bonus expiry) so that later package
 * edits never change what a paid purchase grants.
 */
export interface PurchasesTable {
  org_id: string;
  id: string;
  package_id: string;
  package_name: string;
  source: PurchaseSource;
  status: PurchaseStatus;
  provider: ProviderName;
  provider_session_id: string | null;
  /** The provider's payment (Stripe PaymentIntent) id; globally unique: one payment, one grant. */
  provider_payment_id: string | null;
  amount_minor: string;
  currency: string;
  credits: string;
  bonus_credits: string;
  bonus_expires_in_days: number | null;
  /** Minor units refunded so far (bigint as text). */
  refunded_minor: string;
  user_id: string | null;
  actor_type: "api_key" | "user" | "system";
  actor_id: string;
  success_url: string | null;
  cancel_url: string | null;
  checkout_url: string | null;
  save_payment_method: boolean;
  /** The saved method charged (auto-topup) or saved by this checkout. */
  payment_method_id: string | null;
  failure_code: string | null;
  failure_message: string | null;
  paid_at: Date | null;
  expires_at: Date | null;
  created_at: Date;
  updated_at: Date;
}

/** How a sandbox card behaves in later off-session charges. */
export type SandboxCardBehaviour = "success" | "decline_off_session" | "action_off_session";

export interface PaymentMethodsTable {
  org_id: string;
  id: string;
  provider: ProviderName;
  provider_payment_method_id: string;
  provider_customer_id: string | null;
  brand: string | null;
  last4: string | null;
  /** Sandbox only: the test-card behaviour chosen at checkout. */
  sandbox_behaviour: SandboxCardBehaviour | null;
  status: "active" | "detached";
  created_at: Date;
  updated_at: Date;
}

/** Inbound payment-provider events, de-duplicated by (provider, event_id). */
export interface InboundWebhookEventsTable {
  provider: ProviderName;
  event_id: string;
  type: string;
  org_id: string | null;
  object_id: string | null;
  /** received | processed | ignored | failed */
  status: string;
  error: string | null;
  received_at: Date;
  processed_at: Date | null;
}

export interface RefundsTable {
  org_id: string;
  id: string;
  purchase_id: string;
  /** `api` (POST …/refund) or `provider` (refunded at the processor, e.g. the Stripe dashboard). */
  origin: "api" | "provider";
  status: "pending" | "succeeded" | "failed";
  provider: ProviderName;
  provider_refund_id: string | null;
  amount_minor: string;
  currency: string;
  /** Paid credits removed (numeric(38,12)). */
  credits_removed: string;
  /** Bonus credits voided alongside (numeric(38,12)). */
  bonus_removed: string;
  reason: string | null;
  user_id: string | null;
  actor_type: "api_key" | "user" | "system";
  actor_id: string;
  created_at: Date;
  updated_at: Date;
}

/** A refund notice for a payment no purchase carries yet, applied when one is paid with it. */
export interface RefundNoticesTable {
  provider: ProviderName;
  payment_id: string;
  /** The largest cumulative refunded amount notified (minor units, numeric). */
  refunded_total_minor: string;
  currency: string;
  received_at: Date;
}

export interface BillingTables {
  credit_packages: CreditPackagesTable;
  purchases: PurchasesTable;
  payment_methods: PaymentMethodsTable;
  inbound_webhook_events: InboundWebhookEventsTable;
  refunds: RefundsTable;
  refund_notices: RefundNoticesTable;
}
