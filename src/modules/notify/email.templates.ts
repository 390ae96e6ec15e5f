/**
 * Alert emails: each template gives a subject, a plain-text body and an HTML body. Every value
 * is escaped for HTML and stripped of line breaks in the subject (values come from customers:
 * organisation names, processor error messages).
 */

export interface EmailContent {
  subject: string;
  text: string;
  html: string;
}

export function escapeHtml(value: string): string {
  return value
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

function oneLine(value: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: stripping control characters is the point.
  return value.replace(/[\u0000-\u001f\u007f]+/g, " ").trim();
}

/** Only http(s) links are rendered as links; anything else is shown as text. */
function safeUrl(url: string): string | null {
  try {
    const u = new URL(url);
    return u.protocol === "http:" || u.protocol === "https:" ? u.toString() : null;
  } catch {
    return null;
  }
}

interface Paragraphs {
  subject: string;
  heading: string;
  lines: string[];
  link?: { label: string; url: string };
}

function render(p: Paragraphs): EmailContent {
  const subject = oneLine(p.subject);
  const url = p.link ? safeUrl(p.link.url) : null;
  const text = [
    p.heading,
    "",
    ...p.lines.flatMap((l) => [l, ""]),
    ...(p.link && url ? [`${p.link.label}: ${url}`, ""] : []),
    "— Tally",
  ].join("\n");
  const html = [
    "<!doctype html>",
    '<html><body style="font-family: sans-serif; line-height: 1.5; color: #111">',
    `<h2 style="margin: 0 0 1em">${escapeHtml(p.heading)}</h2>`,
    ...p.lines.map((l) => `<p>${escapeHtml(l)}</p>`),
    ...(p.link && url
      ? [`<p><a href="${escapeHtml(url)}">${escapeHtml(p.link.label)}</a></p>`]
      : []),
    '<p style="color: #666">— Tally</p>',
    "</body></html>",
  ].join("\n");
  return { subject, text, html };
}

export interface OrgRef {
  /** The organisation's display name. */
  orgName: string;
  /** Where the customer manages credits (dashboard or portal link), optional. */
  manageUrl?: string;
}

export function lowBalanceEmail(
  input: OrgRef & { balance: string; threshold: string },
): EmailContent {
  return render({
    subject: `Low credit balance for ${input.orgName}`,
    heading: `The credit balance of ${input.orgName} is low`,
    lines: [
      `The balance fell below ${input.threshold} credits and is now ${input.balance} credits.`,
      "Buy credits or enable auto-topup to keep the service running without interruption.",
    ],
    link: input.manageUrl ? { label: "Manage credits", url: input.manageUrl } : undefined,
  });
}

export function depletedEmail(input: OrgRef & { balance: string }): EmailContent {
  return render({
    subject: `Credits used up for ${input.orgName}`,
    heading: `${input.orgName} has no credits left`,
    lines: [
      `The balance is now ${input.balance} credits. Usage that needs credits may be refused until credits are added.`,
    ],
    link: input.manageUrl ? { label: "Buy credits", url: input.manageUrl } : undefined,
  });
}

export function autoTopupFailedEmail(
  input: OrgRef & { error: string; disabled: boolean },
): EmailContent {
  return render({
    subject: `Auto-topup failed for ${input.orgName}`,
    heading: `An automatic credit purchase for ${input.orgName} failed`,
    lines: [
      `The payment was not completed: ${input.error}`,
      input.disabled
        ? "Auto-topup has been turned off. Update the payment method and enable it again."
        : "Tally will try again the next time the balance falls below the threshold.",
    ],
    link: input.manageUrl ? { label: "Review auto-topup", url: input.manageUrl } : undefined,
  });
}

export function autoTopupActionRequiredEmail(input: OrgRef & { actionUrl?: string }): EmailContent {
  return render({
    subject: `Action required: confirm the auto-topup payment for ${input.orgName}`,
    heading: `An automatic credit purchase for ${input.orgName} needs confirmation`,
    lines: [
      "The bank asked for the payment to be confirmed (for example with 3-D Secure). Credits are added once it is confirmed.",
    ],
    link:
      (input.actionUrl ?? input.manageUrl)
        ? { label: "Confirm the payment", url: (input.actionUrl ?? input.manageUrl)! }
        : undefined,
  });
}
