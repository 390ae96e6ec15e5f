import formbody from "@fastify/formbody";
import type { TypeBoxTypeProvider } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import type { AppContext } from "../../app/context.js";
import { notFound } from "../../app/errors.js";
import type { App } from "../../app/http.js";
import { findPurchaseIn } from "../billing/offsession.service.js";
import { paymentProvider } from "../billing/providers/index.js";
import { SandboxProvider } from "../billing/providers/sandbox.js";
import { failPurchase, fulfilPurchase, type Purchase } from "../billing/purchases.service.js";
import { escapeHtml, SANDBOX_PAGE_HEADERS } from "../billing/sandbox.page.js";
import { creditsFromDb, formatCredits } from "../ledger/credits.js";
import { formatMoney } from "../ledger/money.js";
import * as repo from "./topup.repo.js";
import { onTopupPurchaseSettled, type TopupAttempt } from "./topup.service.js";

const Params = Type.Object({ attempt_id: Type.String({ minLength: 1, maxLength: 64 }) });
const FormBody = Type.Object(
  { action: Type.Union([Type.Literal("confirm"), Type.Literal("decline")]) },
  { additionalProperties: false },
);

/**
 * The sandbox's stand-in for the bank's authentication page (3-D Secure) of an auto-topup that
 * came back `requires_action` (test card `action_off_session`): the `action_url` of the attempt.
 * Confirm pays the purchase (credits granted, attempt succeeded); decline fails it (counted as a
 * declined payment). Only served with the sandbox provider, for sandbox attempts.
 */
export function registerTopupSandboxRoutes(app: App, ctx: AppContext): void {
  app.register(async (plain) => {
    await plain.register(formbody, { bodyLimit: 16 * 1024 });
    const scope = plain.withTypeProvider<TypeBoxTypeProvider>();
    const config = { access: { public: true } } as const;

    async function load(id: string): Promise<{ attempt: TopupAttempt; purchase: Purchase }> {
      const attempt = await repo.findAttemptById(ctx.db, id);
      const purchase = attempt?.purchase_id
        ? await findPurchaseIn(ctx.db, attempt.org_id, attempt.purchase_id)
        : undefined;
      if (
        !attempt ||
        purchase?.provider !== "sandbox" ||
        !(paymentProvider(ctx) instanceof SandboxProvider)
      ) {
        throw notFound("Payment not found.");
      }
      return { attempt, purchase };
    }

    scope.get(
      "/sandbox/auto-topup/:attempt_id",
      { schema: { hide: true, params: Params }, config },
      async (request, reply) => {
        const { attempt, purchase } = await load(request.params.attempt_id);
        return reply.headers(SANDBOX_PAGE_HEADERS).send(renderPage(attempt, purchase));
      },
    );

    scope.post(
      "/sandbox/auto-topup/:attempt_id",
      { schema: { hide: true, params: Params, body: FormBody }, config },
      async (request, reply) => {
        const { attempt, purchase } = await load(request.params.attempt_id);
        if (attempt.status !== "action_required") {
          return reply
            .code(409)
            .headers(SANDBOX_PAGE_HEADERS)
            .send(renderPage(attempt, purchase, "This payment does not need confirming."));
        }
        let settled: Purchase = purchase;
        if (request.body.action === "confirm") {
          const paid = await fulfilPurchase(ctx, purchase.org_id, purchase.id, {
            providerPaymentId: attempt.payment_id ?? SandboxProvider.paymentIdFor(purchase.id),
          });
          if (paid.ok) settled = paid.value.purchase;
        } else {
          const failed = await failPurchase(ctx, purchase.org_id, purchase.id, {
            code: "authentication_failed",
            message: "The customer did not authenticate the payment (sandbox).",
          });
          if (failed.ok) settled = failed.value;
        }
        await onTopupPurchaseSettled(ctx.db, ctx, settled);
        const after = (await repo.findAttempt(ctx.db, attempt.org_id, attempt.id)) ?? attempt;
        const message =
          after.status === "succeeded"
            ? "Payment confirmed: the credits were added."
            : "Payment not confirmed.";
        return reply.headers(SANDBOX_PAGE_HEADERS).send(renderPage(after, settled, message));
      },
    );
  });
}

function renderPage(attempt: TopupAttempt, purchase: Purchase, message?: string): string {
  const amount = `${formatMoney({ minor: BigInt(purchase.amount_minor), currency: purchase.currency })} ${purchase.currency}`;
  const bonus = creditsFromDb(purchase.bonus_credits);
  const credits = `${formatCredits(creditsFromDb(purchase.credits))}${bonus > 0n ? ` + ${formatCredits(bonus)} bonus` : ""}`;
  const action = `/sandbox/auto-topup/${encodeURIComponent(attempt.id)}`;
  const form =
    attempt.status === "action_required"
      ? `<form method="post" action="${escapeHtml(action)}">
<button type="submit" name="action" value="confirm">Confirm ${escapeHtml(amount)}</button>
<button type="submit" name="action" value="decline">Decline</button>
</form>`
      : "";
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>Sandbox · confirm auto-topup payment</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem}
button{font:inherit;padding:.5rem 1rem;margin-right:.5rem}</style>
</head>
<body>
<p><strong>SANDBOX · no real money moves</strong></p>
<h1>Confirm the automatic purchase of ${escapeHtml(purchase.package_name)}</h1>
<p>Credits: ${escapeHtml(credits)}<br>Amount: ${escapeHtml(amount)}<br>Status: ${escapeHtml(attempt.status.replace("_", " "))}</p>
${message ? `<p role="status">${escapeHtml(message)}</p>` : ""}
${form}
</body>
</html>
`;
}
