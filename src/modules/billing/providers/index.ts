import type { Config } from "../../../app/config.js";
import type { AppContext } from "../../../app/context.js";
import type { PaymentProvider } from "./provider.js";
import { SandboxProvider } from "./sandbox.js";
import { StripeProvider, type StripeProviderOptions } from "./stripe.js";

export type { PaymentProvider } from "./provider.js";
export { PaymentProviderError } from "./provider.js";

/** The processor named by `TALLY_PAYMENT_PROVIDER` (config validation guarantees Stripe keys). */
export function createPaymentProvider(
  config: Config,
  stripeOptions: Partial<StripeProviderOptions> = {},
): PaymentProvider {
  switch (config.paymentProvider) {
    case "sandbox":
      return new SandboxProvider(config.publicUrl);
    case "stripe":
      if (!config.stripe.secretKey) throw new Error("STRIPE_SECRET_KEY is not configured");
      return new StripeProvider({
        secretKey: config.stripe.secretKey,
        apiBase: config.stripe.apiBase,
        ...stripeOptions,
      });
  }
}

const overrides = new WeakMap<AppContext, PaymentProvider>();

/**
 * The payment provider of a context: `ctx.payments`, unless a test replaced it for this context
 * with `setPaymentProvider` (a context is immutable; tests that build their own runtime pass
 * `payments` to `createRuntime` instead).
 */
export function paymentProvider(ctx: AppContext): PaymentProvider {
  return overrides.get(ctx) ?? ctx.payments;
}

export function setPaymentProvider(ctx: AppContext, provider: PaymentProvider): void {
  overrides.set(ctx, provider);
}
