import { creditsFromDb, formatCredits } from "../ledger/credits.js";
import { formatMoney } from "../ledger/money.js";
import { SANDBOX_CARDS } from "./providers/sandbox.js";
import type { Purchase } from "./purchases.service.js";

/** Every interpolated value goes through this: the page shows platform- and user-chosen text. */
export function escapeHtml(value: string): string {
  return value.replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!,
  );
}

export const SANDBOX_PAGE_HEADERS = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-store",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  // The form posts to this page and is redirected to the purchase's return URLs.
  "content-security-policy":
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https: http:; frame-ancestors 'none'; base-uri 'none'",
} as const;

export interface CheckoutPageOptions {
  /** A notice above the form (declined, authentication required, expired…). */
  message?: { kind: "error" | "info"; text: string };
  /** false: show the purchase without the payment form (settled or expired). */
  payable: boolean;
}

const STYLE = `
body{font:16px/1.5 system-ui,sans-serif;background:#f4f5f7;color:#1d2330;margin:0}
main{max-width:28rem;margin:3rem auto;background:#fff;border-radius:12px;padding:2rem;box-shadow:0 2px 12px #0001}
.badge{display:inline-block;background:#fff3cd;color:#7a5b00;border-radius:6px;padding:.1rem .5rem;font-size:.8rem;font-weight:600;letter-spacing:.04em}
h1{font-size:1.4rem;margin:.6rem 0 1rem}
dl{display:grid;grid-template-columns:auto 1fr;gap:.3rem 1rem;margin:0 0 1.5rem}dt{color:#5b6475}dd{margin:0;font-weight:600}
fieldset{border:1px solid #d9dce3;border-radius:8px;margin:0 0 1.2rem;padding:.6rem 1rem}
label{display:block;padding:.25rem 0}
.msg{border-radius:8px;padding:.6rem .9rem;margin:0 0 1rem}.error{background:#fde8e8;color:#8a1c1c}.info{background:#e8f0fd;color:#1c3f8a}
button{font:inherit;border:0;border-radius:8px;padding:.6rem 1.2rem;cursor:pointer}
.pay{background:#2d5bff;color:#fff}.cancel{background:#e6e8ee;color:#1d2330;margin-left:.5rem}
`;

/** The sandbox processor's hosted checkout: the package, the amount, a test card, Pay/Cancel. */
export function renderCheckoutPage(purchase: Purchase, options: CheckoutPageOptions): string {
  const amount = `${formatMoney({ minor: BigInt(purchase.amount_minor), currency: purchase.currency })} ${purchase.currency}`;
  const credits = formatCredits(creditsFromDb(purchase.credits));
  const bonus = creditsFromDb(purchase.bonus_credits);
  const creditsText = bonus > 0n ? `${credits} + ${formatCredits(bonus)} bonus` : credits;
  const action = `/sandbox/checkout/${encodeURIComponent(purchase.id)}`;
  const message = options.message
    ? `<p class="msg ${options.message.kind}" role="${options.message.kind === "error" ? "alert" : "status"}">${escapeHtml(options.message.text)}</p>`
    : "";
  const cards = SANDBOX_CARDS.map(
    (c, i) =>
      `<label><input type="radio" name="card" value="${escapeHtml(c.card)}"${i === 0 ? " checked" : ""}> •••• ${escapeHtml(c.last4)} — ${escapeHtml(c.label)} <code>${escapeHtml(c.card)}</code></label>`,
  ).join("\n");
  const form = options.payable
    ? `<form method="post" action="${escapeHtml(action)}">
<fieldset><legend>Test card</legend>
${cards}
</fieldset>
<button class="pay" type="submit" name="action" value="pay">Pay ${escapeHtml(amount)}</button>
<button class="cancel" type="submit" name="action" value="cancel">Cancel</button>
</form>`
    : "";
  const expiry = purchase.expires_at
    ? `<dt>Expires</dt><dd>${escapeHtml(purchase.expires_at.toISOString())}</dd>`
    : "";
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>Sandbox checkout · ${escapeHtml(purchase.package_name)}</title>
<style>${STYLE}</style>
</head>
<body>
<main>
<span class="badge">SANDBOX · no real money moves</span>
<h1>${escapeHtml(purchase.package_name)}</h1>
<dl>
<dt>Credits</dt><dd>${escapeHtml(creditsText)}</dd>
<dt>Amount</dt><dd>${escapeHtml(amount)}</dd>
<dt>Status</dt><dd>${escapeHtml(purchase.status)}</dd>
<dt>Purchase</dt><dd><code>${escapeHtml(purchase.id)}</code></dd>
${expiry}
</dl>
${message}
${form}
</main>
</body>
</html>
`;
}
