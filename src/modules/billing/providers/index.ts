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

const providers = new WeakMap<AppContext, PaymentProvider>();

/**
 * The payment provider of a context: one injected with `setPaymentProvider` (tests), else
 * `ctx.payments` once the composition root provides it, else one built from the configuration
 * on first use and kept for the life of the context.
 */
export function paymentProvider(ctx: AppContext): PaymentProvider {
  let provider = providers.get(ctx) ?? (ctx as { payments?: PaymentProvider }).payments;
  if (!provider) {
    provider = createPaymentProvider(ctx.config);
    providers.set(ctx, provider);
  }
  return provider;
}

export function setPaymentProvider(ctx: AppContext, provider: PaymentProvider): void {
  providers.set(ctx, provider);
}
