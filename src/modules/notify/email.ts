import nodemailer from "nodemailer";
import type { AppContext } from "../../app/context.js";
import type { Db } from "../../db/index.js";
import {
  backoffDelay,
  enqueueJob,
  type Job,
  PermanentJobError,
  type QueueOptions,
} from "./jobs.js";

/**
 * Email over SMTP (`TALLY_SMTP_URL`, from `TALLY_EMAIL_FROM`), sent by a job so that it leaves
 * only when the change behind it has committed. Without an SMTP URL email is off: nothing is
 * enqueued, and jobs enqueued while it was on are dropped with a debug log.
 */

export const EMAIL_QUEUE = "email.send";

export interface EmailMessage {
  to: string[];
  subject: string;
  text: string;
  html?: string;
  /** How many times the server deferred these recipients already (see `handle`). */
  deferrals?: number;
}

/** Recipients a server keeps deferring are given up after this many new tries (logged). */
const MAX_DEFERRALS = 10;

export const EMAIL_QUEUE_OPTIONS: QueueOptions = {
  backoff: { baseMs: 30_000, maxMs: 60 * 60_000, jitter: 0.25 },
  maxAgeMs: 24 * 60 * 60_000,
};

const ADDRESS = /^[^\s@<>",;]+@[^\s@<>",;]+$/;

/**
 * Enqueues an email in the caller's transaction. Returns `enqueued: false` when email is off
 * (no SMTP URL), there is no valid recipient, or `dedupeKey` was used before.
 */
export async function enqueueEmail(
  db: Db,
  ctx: AppContext,
  input: EmailMessage & { orgId?: string | null; dedupeKey?: string },
): Promise<{ enqueued: boolean }> {
  const to = [...new Set(input.to.map((a) => a.trim()).filter((a) => ADDRESS.test(a)))];
  if (!ctx.config.smtpUrl) {
    ctx.logger.debug({ subject: input.subject }, "email not sent: TALLY_SMTP_URL is not set");
    return { enqueued: false };
  }
  if (to.length === 0) {
    ctx.logger.warn({ subject: input.subject }, "email not sent: no valid recipient");
    return { enqueued: false };
  }
  const message: EmailMessage = { to, subject: input.subject, text: input.text };
  if (input.html !== undefined) message.html = input.html;
  const { enqueued } = await enqueueJob(db, ctx, {
    queue: EMAIL_QUEUE,
    orgId: input.orgId ?? null,
    payload: message,
    dedupeKey: input.dedupeKey,
  });
  return { enqueued };
}

type Transport = ReturnType<typeof nodemailer.createTransport>;

/** The `email.send` handler; one SMTP transport per handler (per runner). */
export function createEmailHandler(): {
  handle: (job: Job<EmailMessage>, ctx: AppContext) => Promise<void>;
  close: () => void;
} {
  let transport: Transport | null = null;
  let transportUrl: string | null = null;
  return {
    async handle(job, ctx) {
      const url = ctx.config.smtpUrl;
      if (!url) {
        ctx.logger.debug({ job: job.id }, "email dropped: TALLY_SMTP_URL is not set");
        return;
      }
      if (!transport || transportUrl !== url) {
        transport?.close();
        transport = nodemailer.createTransport({
          url,
          connectionTimeout: 10_000,
          greetingTimeout: 10_000,
          socketTimeout: 30_000,
        } as Parameters<typeof nodemailer.createTransport>[0]);
        transportUrl = url;
      }
      const message = job.payload;
      if (!Array.isArray(message?.to) || message.to.length === 0) {
        throw new PermanentJobError("email job without recipients");
      }
      let rejected: { recipient?: string; responseCode?: number }[];
      try {
        const info = await transport.sendMail({
          // The same on every try of this job: a copy sent again after a crash that lost the
          // "sent" (email is at least once) is recognisable as the same message.
          messageId: `<${job.id}@${senderDomain(ctx.config.emailFrom)}>`,
          from: ctx.config.emailFrom,
          to: message.to,
          subject: message.subject,
          text: message.text,
          html: message.html,
        });
        rejected = (info as { rejectedErrors?: typeof rejected }).rejectedErrors ?? [];
      } catch (error) {
        // Every recipient refused, some for now (4xx) and some for good (5xx): sent to nobody,
        // and the deferred ones are tried again below, as when the others took it.
        const all = (error as { rejectedErrors?: typeof rejected }).rejectedErrors ?? [];
        const later = (e: (typeof all)[number]) => !!e.responseCode && e.responseCode < 500;
        if (all.some(later) && !all.every(later)) {
          rejected = all;
        } else {
          // A 5xx reply (unknown mailbox, policy refusal) will not change on retry.
          const code = (error as { responseCode?: number }).responseCode;
          if (code !== undefined && code >= 500 && code < 600) {
            throw new PermanentJobError(`SMTP ${code}: ${(error as Error).message}`);
          }
          throw error;
        }
      }
      // Sent, but not to everyone. A 5xx recipient will never take it; a 4xx one (greylisting, a
      // full mailbox) may later: those alone are tried again, as a job of their own, so that the
      // others do not get it twice.
      const refused = rejected.filter((e) => !(e.responseCode && e.responseCode < 500));
      if (refused.length > 0) {
        ctx.logger.warn(
          { job: job.id, recipients: refused.map((e) => e.recipient) },
          "email refused for some recipients",
        );
      }
      const deferred = rejected
        .filter((e) => e.responseCode && e.responseCode < 500 && e.recipient)
        .map((e) => e.recipient!);
      if (deferred.length === 0) return;
      const deferrals = (message.deferrals ?? 0) + 1;
      if (deferrals > MAX_DEFERRALS) {
        ctx.logger.error(
          { job: job.id, recipients: deferred },
          "email deferred too often; given up",
        );
        return;
      }
      const backoff = EMAIL_QUEUE_OPTIONS.backoff!;
      await enqueueJob(ctx.db, ctx, {
        queue: EMAIL_QUEUE,
        orgId: job.orgId,
        payload: { ...message, to: deferred, deferrals },
        runAt: new Date(ctx.clock.now().getTime() + backoffDelay(backoff, deferrals)),
        dedupeKey: `${job.id}:deferred`,
      });
    },
    close() {
      transport?.close();
      transport = null;
    },
  };
}

/** The domain of the sender address (`Billing <billing@example.com>` → `example.com`). */
function senderDomain(from: string): string {
  return /@([^\s<>@]+)>?\s*$/.exec(from)?.[1] ?? "tally.invalid";
}
