import type { AddressInfo } from "node:net";
import { SMTPServer } from "smtp-server";
import { afterAll, describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import {
  autoTopupActionRequiredEmail,
  autoTopupFailedEmail,
  depletedEmail,
  EMAIL_QUEUE,
  enqueueEmail,
  lowBalanceEmail,
  runDueJobs,
} from "./notify.service.js";

interface Received {
  from: string;
  to: string[];
  raw: string;
}

async function startSmtp(): Promise<{
  url: string;
  received: Received[];
  reject: boolean;
  defer: Set<string>;
}> {
  const state = { url: "", received: [] as Received[], reject: false, defer: new Set<string>() };
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ["STARTTLS", "AUTH"],
    logger: false,
    onRcptTo(address, _session, callback) {
      if (state.defer.has(address.address)) {
        const err = new Error("greylisted, try again later") as Error & { responseCode: number };
        err.responseCode = 450;
        callback(err);
        return;
      }
      if (state.reject) {
        const err = new Error("mailbox unavailable") as Error & { responseCode: number };
        err.responseCode = 550;
        callback(err);
        return;
      }
      callback();
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        state.received.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : "",
          to: session.envelope.rcptTo.map((r) => r.address),
          raw: Buffer.concat(chunks).toString("utf8"),
        });
        callback();
      });
    },
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  state.url = `smtp://127.0.0.1:${(server.server.address() as AddressInfo).port}`;
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return state;
}

describe("email", async () => {
  const smtp = await startSmtp();
  const app = await createTestApp({
    env: { TALLY_SMTP_URL: smtp.url, TALLY_EMAIL_FROM: "Tally <alerts@tally.test>" },
  });
  const ctx = app.runtime.ctx;

  it("sends an enqueued email after commit, not after rollback", async () => {
    const content = lowBalanceEmail({ orgName: "Acme", balance: "42.5", threshold: "100" });
    await ctx.db
      .transaction()
      .execute(async (trx) => {
        await enqueueEmail(trx, ctx, { to: ["lost@example.com"], ...content });
        throw new Error("roll back");
      })
      .catch(() => {});
    const result = await ctx.db
      .transaction()
      .execute((trx) =>
        enqueueEmail(trx, ctx, { to: ["ops@example.com", "cfo@example.com"], ...content }),
      );
    expect(result.enqueued).toBe(true);
    expect(smtp.received).toHaveLength(0);
    await runDueJobs(ctx);
    expect(smtp.received).toHaveLength(1);
    const [mail] = smtp.received;
    expect(mail!.from).toBe("alerts@tally.test");
    expect(mail!.to.sort()).toEqual(["cfo@example.com", "ops@example.com"]);
    expect(mail!.raw).toContain("Subject: Low credit balance for Acme");
    expect(mail!.raw).toContain("multipart/alternative");
    expect(mail!.raw).toContain("now 42.5 credits");
  });

  it("a job sent again (a crash after the send, before it was marked done) keeps its Message-ID", async () => {
    const content = lowBalanceEmail({ orgName: "Acme", balance: "1", threshold: "100" });
    await ctx.db
      .transaction()
      .execute((trx) => enqueueEmail(trx, ctx, { to: ["twice@example.com"], ...content }));
    await runDueJobs(ctx);
    const job = await ctx.db
      .selectFrom("jobs")
      .select("id")
      .where("queue", "=", EMAIL_QUEUE)
      .orderBy("id", "desc")
      .executeTakeFirstOrThrow();
    await ctx.db.updateTable("jobs").set({ status: "pending" }).where("id", "=", job.id).execute();
    await runDueJobs(ctx);
    const copies = smtp.received.filter((m) => m.to.includes("twice@example.com"));
    expect(copies).toHaveLength(2);
    const ids = copies.map((m) => /^Message-ID: (.*)$/im.exec(m.raw)?.[1]?.trim());
    expect(ids).toEqual([`<${job.id}@tally.test>`, `<${job.id}@tally.test>`]);
  });

  it("does not retry a permanent SMTP refusal", async () => {
    smtp.reject = true;
    try {
      await enqueueEmail(ctx.db, ctx, { to: ["gone@example.com"], subject: "x", text: "y" });
      await runDueJobs(ctx);
      const job = await ctx.db
        .selectFrom("jobs")
        .select(["status", "last_error"])
        .where("queue", "=", "email.send")
        .orderBy("id", "desc")
        .executeTakeFirstOrThrow();
      expect(job.status).toBe("dead");
      expect(job.last_error).toMatch(/^SMTP 550/);
    } finally {
      smtp.reject = false;
    }
  });

  it("tries a recipient the server deferred again, alone, later", async () => {
    smtp.defer.add("grey@example.com");
    const before = smtp.received.length;
    try {
      await enqueueEmail(ctx.db, ctx, {
        to: ["ok@example.com", "grey@example.com"],
        subject: "Deferred",
        text: "y",
      });
      await runDueJobs(ctx);
      expect(smtp.received.slice(before).map((m) => m.to)).toEqual([["ok@example.com"]]);
      // Not yet: the new try waits for its backoff (30 s ± 25 %).
      await runDueJobs(ctx);
      expect(smtp.received.length).toBe(before + 1);
    } finally {
      smtp.defer.delete("grey@example.com");
    }
    app.clock.advance(60_000);
    await runDueJobs(ctx);
    expect(smtp.received.slice(before).map((m) => m.to)).toEqual([
      ["ok@example.com"],
      ["grey@example.com"],
    ]);
    expect(smtp.received.at(-1)!.raw).toContain("Subject: Deferred");
  });

  it("every recipient refused, one for now and one for good: the deferred one is tried again", async () => {
    smtp.defer.add("later@example.com");
    smtp.reject = true;
    const before = smtp.received.length;
    try {
      await enqueueEmail(ctx.db, ctx, {
        to: ["later@example.com", "never@example.com"],
        subject: "All refused",
        text: "z",
      });
      await runDueJobs(ctx);
      expect(smtp.received.length).toBe(before);
    } finally {
      smtp.defer.delete("later@example.com");
      smtp.reject = false;
    }
    app.clock.advance(60_000);
    await runDueJobs(ctx);
    expect(smtp.received.slice(before).map((m) => m.to)).toEqual([["later@example.com"]]);
  });

  it("templates escape every value in HTML and keep subjects on one line", () => {
    const evil = `<script>alert("x")</script> & co\r\nBcc: victim@example.com`;
    const all = [
      lowBalanceEmail({ orgName: evil, balance: "1", threshold: "<b>2</b>" }),
      depletedEmail({ orgName: evil, balance: "0", manageUrl: "javascript:alert(1)" }),
      autoTopupFailedEmail({ orgName: evil, error: "<img src=x onerror=y>", disabled: true }),
      autoTopupActionRequiredEmail({
        orgName: evil,
        actionUrl: 'https://pay.example.com/confirm?a=1&b="2"',
      }),
    ];
    for (const email of all) {
      expect(email.subject).not.toMatch(/[\r\n]/);
      expect(email.html).not.toContain("<script>");
      expect(email.html).not.toContain("<img");
      expect(email.html).not.toContain("<b>2</b>");
      expect(email.html).not.toContain("javascript:");
      expect(email.text.length).toBeGreaterThan(20);
    }
    expect(all[0]!.html).toContain("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co");
    expect(all[3]!.html).toContain('href="https://pay.example.com/confirm?a=1&amp;b=%222%22"');
    expect(all[3]!.text).toContain("https://pay.example.com/confirm");
  });
});

describe("email without TALLY_SMTP_URL", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;

  it("enqueues nothing", async () => {
    const result = await enqueueEmail(ctx.db, ctx, {
      to: ["ops@example.com"],
      subject: "s",
      text: "t",
    });
    expect(result.enqueued).toBe(false);
    const jobs = await ctx.db.selectFrom("jobs").selectAll().execute();
    expect(jobs).toHaveLength(0);
  });
});
