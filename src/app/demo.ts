import { createPackage } from "../modules/billing/packages.service.js";
import { createPurchase, settleSandboxCheckout } from "../modules/billing/purchases.service.js";
import { adjustCredits } from "../modules/ledger/ledger.service.js";
import type { Principal } from "../modules/orgs/auth.js";
import * as orgsRepo from "../modules/orgs/orgs.repo.js";
import {
  createOrganization,
  createPortalSession,
  resolveOrganization,
} from "../modules/orgs/orgs.service.js";
import { writeBatch } from "../modules/usage/engine.js";
import { prepareEvents } from "../modules/usage/prepare.js";
import type { UsageEventInput } from "../modules/usage/usage.schemas.js";
import type { AppContext } from "./context.js";

/**
 * Demo data for a first look: one clearly labelled organisation (`ext:demo`), three users, three
 * credit packages, a paid purchase through the sandbox processor and two months of realistic
 * usage (AI tokens on three models, compute, storage gauges, bandwidth, data operations). Written
 * through the same service functions and ingest path as real traffic, so balances, ledger,
 * rollups and charts are all consistent. Idempotent: does nothing if `ext:demo` exists.
 */
export const DEMO_EXTERNAL_ID = "demo";
const DAYS = 60;
const DAY_MS = 86_400_000;

export interface DemoSeed {
  orgId: string;
  created: boolean;
  portalUrl: string;
}

export async function seedDemo(ctx: AppContext): Promise<DemoSeed> {
  const existing = await resolveOrganization(ctx.db, `ext:${DEMO_EXTERNAL_ID}`);
  if (existing) {
    const link = await createPortalSession(ctx, {
      orgId: existing.id,
      userId: "ada",
      returnUrl: null,
    });
    return { orgId: existing.id, created: false, portalUrl: link.ok ? link.value.url : "" };
  }
  const now = ctx.clock.now();
  const system = { type: "system" as const, id: "demo" };

  const packages = [];
  for (const p of [
    { name: "Starter", credits: 1_000n, bonus: 0n, price: 1_000n },
    { name: "Growth", credits: 5_000n, bonus: 500n, price: 4_500n },
    { name: "Scale", credits: 20_000n, bonus: 4_000n, price: 16_000n },
  ]) {
    packages.push(
      await createPackage(ctx, {
        name: p.name,
        description: `${p.name} credits (demo package)`,
        credits: p.credits * 10n ** 12n,
        bonusCredits: p.bonus * 10n ** 12n,
        priceMinor: p.price,
        currency: ctx.config.currency,
        bonusExpiresInDays: p.bonus > 0n ? 365 : null,
        active: true,
      }),
    );
  }

  const created = await createOrganization(ctx, {
    name: "Demo Labs (demo data)",
    external_id: DEMO_EXTERNAL_ID,
    plan: ctx.config.creditPlans[0],
    metadata: {
      demo: "true",
      note: "Demo data seeded by TALLY_DEMO / `tally demo`; start with TALLY_DEMO=false on a new data directory for an install without it.",
    },
  });
  if (!created.ok) throw new Error(created.message);
  const org = created.value;
  for (const u of [
    { id: "ada", email: "ada@demo.example", name: "Ada (admin)", role: "admin" },
    { id: "grace", email: "grace@demo.example", name: "Grace (billing)", role: "billing" },
    { id: "linus", email: "linus@demo.example", name: "Linus (viewer)", role: "viewer" },
  ]) {
    await orgsRepo.insertUser(ctx.db, { org_id: org.id, ...u, created_at: now, updated_at: now });
  }

  // Credits: the Scale package bought through the sandbox checkout, plus a welcome grant.
  const buyer = { actor: { type: "user" as const, id: "grace" }, userId: "grace" };
  if (ctx.config.paymentProvider === "sandbox") {
    const purchase = await createPurchase(ctx, {
      org,
      principal: buyer,
      packageId: packages[2]!.id,
      savePaymentMethod: true,
    });
    if (purchase.ok) await settleSandboxCheckout(ctx, purchase.value.id, "success");
  }
  await adjustCredits(ctx, {
    orgId: org.id,
    amount: 2_500n * 10n ** 12n,
    reason: "Welcome credits (demo)",
    category: "promotional",
    expiresAt: null,
    priority: null,
    actor: system,
    userId: null,
  });

  // Two months of usage, written through the ingest path in daily batches.
  const principal: Principal = {
    kind: "api_key",
    id: "demo",
    role: "platform",
    orgId: null,
    actor: system,
    userId: null,
  };
  const backdated = { ...ctx, config: { ...ctx.config, usageBackdateDays: DAYS + 5 } };
  const random = mulberry32(20261124);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(random() * xs.length)]!;
  const users = ["ada", "grace", "u-1042", "u-2077", "u-3310"];
  const models = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4"] as const;
  const operations = ["chat.completion", "summarise", "embed.rerank", "agent.step"];
  for (let day = DAYS; day >= 1; day--) {
    const start = now.getTime() - day * DAY_MS;
    const at = (fraction: number) => new Date(start + Math.floor(fraction * DAY_MS)).toISOString();
    const growth = 1 + (DAYS - day) / DAYS; // usage grows over the period
    const events: UsageEventInput[] = [];
    const calls = Math.round((6 + random() * 6) * growth);
    for (let i = 0; i < calls; i++) {
      const model = pick(models);
      events.push({
        id: `demo-${day}-ai-${i}`,
        org_id: org.id,
        type: "ai_tokens",
        timestamp: at((i + random()) / (calls + 1)),
        user_id: pick(users),
        operation: pick(operations),
        model,
        tokens: {
          input: 500 + Math.floor(random() * 4000),
          cached_input: Math.floor(random() * 2000),
          cache_write: 0,
          output: 100 + Math.floor(random() * 1500),
        },
      });
    }
    events.push(
      {
        id: `demo-${day}-compute`,
        org_id: org.id,
        type: "compute",
        timestamp: at(0.5),
        meter: "compute.vcpu_seconds",
        quantity: String(Math.round(2000 * growth + random() * 1500)),
        resource: "worker-pool",
      },
      {
        id: `demo-${day}-egress`,
        org_id: org.id,
        type: "bandwidth",
        timestamp: at(0.6),
        meter: "bandwidth.egress_gb",
        quantity: (1 + random() * 4).toFixed(3),
      },
      {
        id: `demo-${day}-reads`,
        org_id: org.id,
        type: "data_ops",
        timestamp: at(0.7),
        meter: "data_ops.reads",
        quantity: String(Math.round(20_000 + random() * 30_000)),
      },
      ...["vol-db", "vol-media"].map(
        (volume, v): UsageEventInput => ({
          id: `demo-${day}-${volume}`,
          org_id: org.id,
          type: "storage",
          timestamp: at(0.05 + v * 0.01),
          meter: "storage.gb",
          quantity: (v === 0 ? 40 + (DAYS - day) * 0.5 : 120 + (DAYS - day) * 2).toFixed(1),
          resource: volume,
        }),
      ),
    );
    const prepared = await prepareEvents(backdated, principal, events, (i) => `/events/${i}`);
    await ctx.db
      .transaction()
      .execute((tx) => writeBatch(tx, ctx, [{ events: prepared, actor: system }]));
  }

  const link = await createPortalSession(ctx, { orgId: org.id, userId: "ada", returnUrl: null });
  return { orgId: org.id, created: true, portalUrl: link.ok ? link.value.url : "" };
}

/** A small seeded PRNG so that the demo looks the same on every machine. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
