import formbody from "@fastify/formbody";
import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import type { FastifyReply } from "fastify";
import type { AppContext } from "../../app/context.js";
import { AppError, invalid, notFound } from "../../app/errors.js";
import type { App } from "../../app/http.js";
import * as repo from "./billing.repo.js";
import { paymentProvider } from "./providers/index.js";
import { isSandboxCard, SandboxProvider } from "./providers/sandbox.js";
import { isExpired, type Purchase, settleSandboxCheckout } from "./purchases.service.js";
import {
  type CheckoutPageOptions,
  renderCheckoutPage,
  SANDBOX_PAGE_HEADERS,
} from "./sandbox.page.js";

const Params = Type.Object({ purchase_id: Type.String({ minLength: 1, maxLength: 64 }) });

const FormBody = Type.Object(
  {
    action: Type.Union([Type.Literal("pay"), Type.Literal("cancel")]),
    card: Type.Optional(Type.String({ maxLength: 64 })),
  },
  { additionalProperties: false },
);

/**
 * The sandbox processor's hosted checkout page (public, HTML). Only served when the sandbox is
 * the payment provider, and only for sandbox purchases. The form body parser is registered in
 * this encapsulated scope, so JSON API routes keep refusing form bodies.
 */
export function registerSandboxRoutes(app: App, ctx: AppContext): void {
  app.register(async (plain) => {
    await plain.register(formbody, { bodyLimit: 16 * 1024 });
    const scope = plain.withTypeProvider<TypeBoxTypeProvider>();
    const config = { access: { public: true } } as const;

    async function sandboxPurchase(id: string): Promise<Purchase> {
      const purchase = await repo.findPurchaseById(ctx.db, id);
      if (
        purchase?.provider !== "sandbox" ||
        purchase.source !== "checkout" ||
        !(paymentProvider(ctx) instanceof SandboxProvider)
      ) {
        throw notFound("Checkout not found.");
      }
      return purchase;
    }

    function page(
      reply: FastifyReply,
      status: number,
      purchase: Purchase,
      options: CheckoutPageOptions,
    ) {
      return reply
        .code(status)
        .headers(SANDBOX_PAGE_HEADERS)
        .send(renderCheckoutPage(purchase, options));
    }

    function stateNotice(purchase: Purchase): CheckoutPageOptions {
      if (purchase.status === "pending" && !isExpired(ctx, purchase)) return { payable: true };
      if (purchase.status === "failed" && !isExpired(ctx, purchase)) {
        return {
          payable: true,
          message: {
            kind: "error",
            text: `The last attempt failed: ${purchase.failure_message ?? "declined"}. Try another card.`,
          },
        };
      }
      if (isExpired(ctx, purchase)) {
        return { payable: false, message: { kind: "error", text: "This checkout has expired." } };
      }
      return {
        payable: false,
        message: { kind: "info", text: `This purchase is ${purchase.status.replace("_", " ")}.` },
      };
    }

    scope.get(
      "/sandbox/checkout/:purchase_id",
      { schema: { hide: true, params: Params }, config },
      async (request, reply) => {
        const purchase = await sandboxPurchase(request.params.purchase_id);
        return page(reply, 200, purchase, stateNotice(purchase));
      },
    );

    scope.post(
      "/sandbox/checkout/:purchase_id",
      { schema: { hide: true, params: Params, body: FormBody }, config },
      async (request, reply) => {
        const purchase = await sandboxPurchase(request.params.purchase_id);
        const { action, card } = request.body;
        if (action === "cancel") {
          // Leaves the purchase pending until it expires, like abandoning a Stripe Checkout.
          return reply.redirect(purchase.cancel_url ?? `${ctx.config.publicUrl}/portal`, 303);
        }
        if (!isSandboxCard(card)) throw invalid("choose one of the test cards", "/card");

        const result = await settleSandboxCheckout(ctx, purchase.id, card);
        if (!result.ok) {
          if (result.code === "invalid_state") {
            const current = (await repo.findPurchaseById(ctx.db, purchase.id)) ?? purchase;
            return page(reply, 409, current, {
              payable: false,
              message: { kind: "error", text: result.message ?? "This checkout cannot be paid." },
            });
          }
          throw new AppError(result.code, result.message);
        }
        const settled = result.value;
        switch (settled.outcome) {
          case "paid":
          case "already_paid":
            return reply.redirect(
              settled.purchase.success_url ?? `${ctx.config.publicUrl}/portal`,
              303,
            );
          case "declined":
            return page(reply, 402, settled.purchase, {
              payable: true,
              message: { kind: "error", text: "Your card was declined. Try another card." },
            });
          case "requires_action":
            return page(reply, 402, settled.purchase, {
              payable: true,
              message: {
                kind: "error",
                text: "This card requires authentication (3-D Secure), which was not completed. Try another card.",
              },
            });
        }
      },
    );
  });
}
