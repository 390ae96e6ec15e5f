import { createHash } from "node:crypto";
import type { SandboxCardBehaviour } from "../billing.tables.js";
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

/** The test cards of the sandbox checkout page. */
export const SANDBOX_CARDS = [
  {
    card: "success",
    last4: "4242",
    label: "Succeeds (and later off-session charges succeed)",
  },
  { card: "decline", last4: "0002", label: "Declined at checkout" },
  { card: "requires_action", last4: "3155", label: "Requires authentication at checkout" },
  {
    card: "decline_off_session",
    last4: "0341",
    label: "Succeeds now; later off-session charges decline",
  },
  {
    card: "action_off_session",
    last4: "3184",
    label: "Succeeds now; later off-session charges require authentication",
  },
] as const;

export type SandboxCard = (typeof SANDBOX_CARDS)[number]["card"];

export function isSandboxCard(value: unknown): value is SandboxCard {
  return SANDBOX_CARDS.some((c) => c.card === value);
}

/** What a card chosen at checkout does now and in later off-session charges. */
export function sandboxCardOutcome(
  card: SandboxCard,
): { kind: "paid"; behaviour: SandboxCardBehaviour } | { kind: "declined" | "requires_action" } {
  switch (card) {
    case "success":
      return { kind: "paid", behaviour: "success" };
    case "decline_off_session":
      return { kind: "paid", behaviour: "decline_off_session" };
    case "action_off_session":
      return { kind: "paid", behaviour: "action_off_session" };
    case "decline":
      return { kind: "declined" };
    case "requires_action":
      return { kind: "requires_action" };
  }
}

const digest = (value: string) => createHash("sha256").update(value).digest("hex").slice(0, 24);

/**
 * The built-in processor for local use and tests: no network. Checkout happens on Tally's own
 * `/sandbox/checkout/{purchase_id}` page; ids are derived from Tally's ids and idempotency keys,
 * so results are deterministic — the same key always gives the same result and one charge, even
 * across restarts and instances (the in-memory maps only let tests look at what happened and
 * catch a key reused with other parameters).
 */
export class SandboxProvider implements PaymentProvider {
  readonly name = "sandbox" as const;
  private readonly sessions = new Map<string, CheckoutState>();
  private readonly chargesByKey = new Map<string, { fingerprint: string; result: ChargeResult }>();
  private readonly refundsByKey = new Map<string, { fingerprint: string; result: RefundResult }>();

  constructor(private readonly publicUrl: string) {}

  /** Successful charges made so far (one per idempotency key). */
  get charges(): { idempotencyKey: string; paymentId: string }[] {
    return [...this.chargesByKey]
      .filter(([, c]) => c.result.status === "succeeded")
      .map(([key, c]) => ({ idempotencyKey: key, paymentId: c.result.paymentId! }));
  }

  get refunds(): { idempotencyKey: string; refundId: string | null }[] {
    return [...this.refundsByKey].map(([key, r]) => ({
      idempotencyKey: key,
      refundId: r.result.refundId,
    }));
  }

  static sessionIdFor(purchaseId: string): string {
    return `sbx_cs_${purchaseId}`;
  }

  static paymentIdFor(purchaseId: string): string {
    return `sbx_pi_${purchaseId}`;
  }

  static customerIdFor(orgId: string): string {
    return `sbx_cus_${orgId}`;
  }

  async createCheckout(input: CreateCheckoutInput): Promise<CheckoutSession> {
    const id = input.purchase.id;
    return {
      sessionId: SandboxProvider.sessionIdFor(id),
      url: `${this.publicUrl}/sandbox/checkout/${encodeURIComponent(id)}`,
      customerId:
        input.customer.customerId ??
        (input.savePaymentMethod ? SandboxProvider.customerIdFor(input.customer.orgId) : null),
    };
  }

  /**
   * The sandbox checkout page's Pay button: what the card does to this checkout, and for a
   * successful card the payment id and the card as it would be saved.
   */
  completeCheckout(input: { purchaseId: string; orgId: string; card: SandboxCard }): CheckoutState {
    const outcome = sandboxCardOutcome(input.card);
    const info = SANDBOX_CARDS.find((c) => c.card === input.card)!;
    const state: CheckoutState =
      outcome.kind === "paid"
        ? {
            status: "complete",
            paymentStatus: "paid",
            paymentId: SandboxProvider.paymentIdFor(input.purchaseId),
            paymentMethod: {
              id: `sbx_pm_${digest(`${input.purchaseId}:${input.card}`)}`,
              brand: "visa",
              last4: info.last4,
              customerId: SandboxProvider.customerIdFor(input.orgId),
              sandboxBehaviour: outcome.behaviour,
            },
          }
        : { status: "open", paymentStatus: "unpaid", paymentId: null, paymentMethod: null };
    this.sessions.set(SandboxProvider.sessionIdFor(input.purchaseId), state);
    return state;
  }

  async retrieveCheckout(sessionId: string): Promise<CheckoutState> {
    return (
      this.sessions.get(sessionId) ?? {
        status: "open",
        paymentStatus: "unpaid",
        paymentId: null,
        paymentMethod: null,
      }
    );
  }

  async chargeOffSession(input: ChargeInput): Promise<ChargeResult> {
    const fingerprint = JSON.stringify([
      input.orgId,
      input.paymentMethod.id,
      String(input.amountMinor),
      input.currency,
    ]);
    const previous = this.chargesByKey.get(input.idempotencyKey);
    if (previous) {
      if (previous.fingerprint !== fingerprint) throw reusedKey(input.idempotencyKey);
      return previous.result;
    }
    const result = sandboxCharge(input.paymentMethod, input.idempotencyKey);
    this.chargesByKey.set(input.idempotencyKey, { fingerprint, result });
    return result;
  }

  /** The sandbox's authentication page refuses an attempt that is no longer waiting for it. */
  async cancelPayment(_paymentId: string): Promise<void> {}

  async refund(input: RefundInput): Promise<RefundResult> {
    const fingerprint = JSON.stringify([input.paymentId, String(input.amountMinor)]);
    const previous = this.refundsByKey.get(input.idempotencyKey);
    if (previous) {
      if (previous.fingerprint !== fingerprint) throw reusedKey(input.idempotencyKey);
      return previous.result;
    }
    if (input.amountMinor <= 0n) {
      throw new PaymentProviderError("sandbox: refund amount must be positive", false);
    }
    const result: RefundResult = {
      refundId: `sbx_re_${digest(input.idempotencyKey)}`,
      status: "succeeded",
    };
    this.refundsByKey.set(input.idempotencyKey, { fingerprint, result });
    return result;
  }
}

/** A pure function of the card and the key: the same key always gives the same answer. */
function sandboxCharge(paymentMethod: SavedPaymentMethod, key: string): ChargeResult {
  const paymentId = `sbx_pi_${digest(key)}`;
  switch (paymentMethod.sandboxBehaviour ?? "success") {
    case "success":
      return { status: "succeeded", paymentId };
    case "decline_off_session":
      return {
        status: "declined",
        paymentId,
        error: "Your card was declined (sandbox card decline_off_session).",
      };
    case "action_off_session":
      return {
        status: "requires_action",
        paymentId,
        error: "This payment requires authentication (sandbox card action_off_session).",
      };
  }
}

function reusedKey(key: string): PaymentProviderError {
  return new PaymentProviderError(
    `sandbox: idempotency key "${key}" was used with different parameters`,
    false,
  );
}
