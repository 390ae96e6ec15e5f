import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { type Database, openDatabase } from "../../src/db/index.js";
import { migrations } from "../../src/db/migrations/index.js";
import { formatCredits, parseCredits } from "../../src/modules/ledger/credits.js";
import { waitFor } from "../support/app.js";
import { emptyPostgresDatabaseUrl, onPostgres } from "../support/db.js";
import { start, type TallyProcess } from "../support/process.js";
import { client, expectStatus, type Reply } from "./client.js";
import { checkOrgInvariants } from "./invariants.js";

/**
 * Three real `tally start` processes on one PostgreSQL database that none of them has migrated:
 * they race the migrations, then take concurrent usage (the same event ids through different
 * instances), reservations, sandbox checkouts paid through several instances at once, refunds
 * requested through several instances at once, and auto-topups run by whichever worker claims
 * them. Afterwards every DESIGN.md invariant is checked on the database.
 */

const ADMIN_KEY = "reliability-instances-admin-key-0123456789";
const N = 3;
const TIMESTAMP = new Date(Date.now() - 60_000).toISOString();

interface UsageResult {
  id: string;
  status: "accepted" | "duplicate";
  cost: string;
  transaction_id: string;
  balance_after: string;
}

/** 2 credits each: gpt-4o 8000 input tokens (250/1M), or 1000 vCPU-seconds (0.002). */
function usageEvent(orgId: string, id: string, n: number) {
  const common = {
    id,
    org_id: orgId,
    timestamp: TIMESTAMP,
    user_id: `u-${n % 4}`,
    operation: n % 2 ? "chat" : "batch",
  };
  return n % 3 === 0
    ? { ...common, type: "compute", meter: "compute.vcpu_seconds", quantity: "1000" }
    : { ...common, type: "ai_tokens", model: "gpt-4o", tokens: { input: 8000 } };
}

describe.runIf(onPostgres)(
  "several instances on one PostgreSQL database",
  {
    timeout: 120_000,
  },
  () => {
    it("migrate together, share the load, and keep every invariant", async () => {
      const url = await emptyPostgresDatabaseUrl();
      const env = {
        DATABASE_URL: url,
        TALLY_ADMIN_KEY: ADMIN_KEY,
        TALLY_PAYMENT_PROVIDER: "sandbox",
      };
      const instances: TallyProcess[] = await Promise.all(
        Array.from({ length: N }, () => start({ env })),
      );
      const admin = instances.map((p) => client(p.url, ADMIN_KEY));
      const anon = instances.map((p) => client(p.url, null));
      const via = (i: number) => admin[i % N]!;

      // ---- set-up (through different instances) ----------------------------------------------
      const pkg = async (i: number, body: Record<string, string>) =>
        expectStatus(await via(i)("POST", "/v1/credit-packages", body), 201, "package")
          .id as string;
      const [auto, refundable, small] = await Promise.all([
        pkg(0, { name: "Auto", credits: "1000", bonus_credits: "200", price: "49.00" }),
        pkg(1, { name: "Refundable", credits: "100", price: "10.00" }),
        pkg(2, { name: "Small", credits: "50", price: "5.00" }),
      ]);

      const buy = async (i: number, orgId: string, packageId: string) =>
        expectStatus(
          await via(i)("POST", `/v1/organizations/${orgId}/purchases`, {
            package_id: packageId,
            save_payment_method: true,
          }),
          201,
          "purchase",
        ).id as string;
      /** The same checkout paid through every instance at once (a double-click, retried posts). */
      const payEverywhere = async (purchaseId: string) => {
        const replies = await Promise.all(
          anon.map((call) =>
            call("POST", `/sandbox/checkout/${purchaseId}`, "action=pay&card=success", {
              "content-type": "application/x-www-form-urlencoded",
            }),
          ),
        );
        for (const r of replies) expect(r.status, r.text).toBe(303);
      };
      /**
       * A refund requested through every instance at once: one refund. A request that finds it
       * still pending completes that same refund (and answers 200 with it); one that finds it
       * finished gets 409.
       */
      const refundEverywhere = async (orgId: string, purchaseId: string) => {
        const replies = await Promise.all(
          admin.map((call) =>
            call("POST", `/v1/organizations/${orgId}/purchases/${purchaseId}/refund`, {
              reason: "instances test",
            }),
          ),
        );
        const done = replies.filter((r) => r.status === 200);
        expect(done.length, replies.map((r) => `${r.status} ${r.text}`).join("\n")).toBeGreaterThan(
          0,
        );
        for (const r of done) expect(r.body).toEqual(done[0]!.body);
        for (const r of replies.filter((r) => r.status !== 200)) {
          expect(r.status, r.text).toBe(409);
          expect(r.body.error.code).toBe("invalid_state");
        }
        return done[0]!.body;
      };

      /**
       * Topup orgs: Auto (1000 + 200 bonus) and Refundable (100) paid → 1300; auto-topup at 300
       * with Auto; a balance.low alert at 500. Purchase org: Auto paid → 1200, no auto-topup.
       */
      const setupOrg = async (i: number, name: string, topup: boolean) => {
        const orgId = expectStatus(
          await via(i)("POST", "/v1/organizations", { name }),
          201,
          "organisation",
        ).id as string;
        const key = expectStatus(
          await via(i + 1)("POST", `/v1/organizations/${orgId}/api-keys`, {
            name: "ingest",
            role: "ingest",
          }),
          201,
          "key",
        ).key as string;
        const first = await buy(i + 2, orgId, auto);
        await payEverywhere(first);
        let refundablePurchase: string | null = null;
        if (topup) {
          refundablePurchase = await buy(i, orgId, refundable);
          await payEverywhere(refundablePurchase);
          expectStatus(
            await via(i + 1)("PUT", `/v1/organizations/${orgId}/auto-topup`, {
              enabled: true,
              threshold: "300",
              package_id: auto,
            }),
            200,
            "auto-topup",
          );
          expectStatus(
            await via(i + 2)("PUT", `/v1/organizations/${orgId}/alerts`, { thresholds: ["500"] }),
            200,
            "alerts",
          );
        }
        return { orgId, key, refundablePurchase, ingest: instances.map((p) => client(p.url, key)) };
      };
      const [t1, t2, p1] = await Promise.all([
        setupOrg(0, "Topup 1", true),
        setupOrg(1, "Topup 2", true),
        setupOrg(2, "Purchases", false),
      ]);

      // ---- concurrent load ---------------------------------------------------------------------
      const usageReplies: { orgId: string; reply: Reply }[] = [];
      const record = (orgId: string, reply: Reply) => {
        usageReplies.push({ orgId, reply });
        return reply;
      };

      /** `count` events of 2 credits in batches of 25; each batch through two instances at once. */
      const ingestLoad = async (org: typeof t1, tag: string, count: number) => {
        const batches = Array.from({ length: Math.ceil(count / 25) }, (_, b) =>
          Array.from({ length: Math.min(25, count - b * 25) }, (_, j) => {
            const n = b * 25 + j;
            return usageEvent(org.orgId, `${tag}-${n}`, n);
          }),
        );
        await Promise.all(
          batches.flatMap((events, b) =>
            [b, b + 1].map(async (i) => {
              const reply = record(
                org.orgId,
                await org.ingest[i % N]!("POST", "/v1/usage-events", { events }),
              );
              expect(reply.status, reply.text).toBe(200);
            }),
          ),
        );
      };

      /**
       * Twelve holds of 10 through different instances: a third settled through one instance while
       * released through another (one wins), a third settled through two instances at once (one
       * wins), a third left held.
       */
      const reservationLoad = async (org: typeof t1, tag: string) => {
        const holds = await Promise.all(
          Array.from({ length: 12 }, async (_, i) =>
            expectStatus(
              await org.ingest[i % N]!("POST", `/v1/organizations/${org.orgId}/reservations`, {
                amount: "10",
                expires_in_seconds: 3600,
              }),
              201,
              "reservation",
            ),
          ),
        );
        await Promise.all(
          holds.map(async (hold, i) => {
            if (i % 3 === 2) return;
            const path = `/v1/organizations/${org.orgId}/reservations/${hold.id}`;
            const events = [0, 1].map((k) => {
              const { org_id: _, ...e } = usageEvent(org.orgId, `${tag}-r${i}-${k}`, i + k);
              return e;
            });
            const settle = (j: number) =>
              org.ingest[j % N]!("POST", `${path}/settle`, { events }).then((r) =>
                record(org.orgId, r),
              );
            const replies = await Promise.all(
              i % 3 === 0
                ? [settle(i + 1), org.ingest[(i + 2) % N]!("POST", `${path}/release`)]
                : [settle(i + 1), settle(i + 2)],
            );
            const won = replies.filter((r) => r.status === 200);
            expect(won, replies.map((r) => `${r.status} ${r.text}`).join("\n")).toHaveLength(1);
            for (const r of replies.filter((r) => r.status !== 200)) {
              expect(r.status, r.text).toBe(409);
              expect(r.body.error.code).toBe("invalid_state");
            }
          }),
        );
      };

      /** Purchase org: three Small checkouts, each paid through every instance; one refunded. */
      const purchaseLoad = async () => {
        const ids = await Promise.all([0, 1, 2].map((i) => buy(i, p1.orgId, small)));
        await Promise.all(ids.map(payEverywhere));
        return { small: ids, refund: await refundEverywhere(p1.orgId, ids[1]!) };
      };

      /**
       * One Idempotency-Key through every instance at once: one adjustment; the other requests
       * get the stored answer or `409 idempotency_in_progress`.
       */
      const idempotentAdjustment = async () => {
        const replies = await Promise.all(
          admin.map((call) =>
            call(
              "POST",
              `/v1/organizations/${p1.orgId}/adjustments`,
              { amount: "+7", reason: "once" },
              { "idempotency-key": "instances-adjustment" },
            ),
          ),
        );
        const created = replies.filter((r) => r.status === 201);
        expect(
          created.length,
          replies.map((r) => `${r.status} ${r.text}`).join("\n"),
        ).toBeGreaterThan(0);
        for (const r of created) expect(r.body).toEqual(created[0]!.body);
        for (const r of replies.filter((r) => r.status !== 201)) {
          expect(r.status, r.text).toBe(409);
          expect(r.body.error.code).toBe("idempotency_in_progress");
        }
        return created[0]!.body.id as string;
      };

      const [, , , , , , purchases, r1, r2, adjustmentId] = await Promise.all([
        ingestLoad(t1, "t1", 500),
        ingestLoad(t2, "t2", 500),
        ingestLoad(p1, "p1", 200),
        reservationLoad(t1, "t1"),
        reservationLoad(t2, "t2"),
        // Shared ids across organisations are distinct events (the key is per organisation).
        ingestLoad(p1, "t1", 25),
        purchaseLoad(),
        refundEverywhere(t1.orgId, t1.refundablePurchase!),
        refundEverywhere(t2.orgId, t2.refundablePurchase!),
        idempotentAdjustment(),
      ]);
      for (const r of [r1, r2]) {
        expect(r).toMatchObject({ status: "succeeded", amount: "10.00", credits_removed: "100" });
      }
      expect(purchases.refund).toMatchObject({ amount: "5.00", credits_removed: "50" });

      // Auto-topup runs in whichever instance's worker claims the job.
      const attemptsOf = async (orgId: string, i: number) =>
        expectStatus(await via(i)("GET", `/v1/organizations/${orgId}/auto-topup/attempts`), 200)
          .data as { id: string; status: string; purchase_id: string | null }[];
      for (const [i, org] of [t1, t2].entries()) {
        await waitFor(
          async () => {
            const attempts = await attemptsOf(org.orgId, i);
            return attempts.length > 0 && attempts.every((a) => a.status !== "in_flight");
          },
          { timeoutMs: 45_000, intervalMs: 200 },
        );
      }

      // ---- what the API says --------------------------------------------------------------------
      // Each usage event id: exactly one `accepted` over every response, through any instance; all
      // responses for it agree on the transaction and the cost.
      const byEvent = new Map<string, UsageResult[]>();
      for (const { orgId, reply } of usageReplies) {
        if (reply.status !== 200) continue;
        for (const r of reply.body.data as UsageResult[]) {
          const k = `${orgId}/${r.id}`;
          byEvent.set(k, [...(byEvent.get(k) ?? []), r]);
        }
      }
      const spent = new Map<string, bigint>();
      for (const [k, results] of byEvent) {
        expect(
          results.filter((r) => r.status === "accepted"),
          k,
        ).toHaveLength(1);
        const first = results[0]!;
        for (const r of results) {
          expect([r.transaction_id, r.cost]).toEqual([first.transaction_id, first.cost]);
        }
        const orgId = k.split("/")[0]!;
        spent.set(orgId, (spent.get(orgId) ?? 0n) + parseCredits(first.cost));
      }
      for (const org of [t1, t2]) {
        // At least the 500 direct events (1000 credits): the threshold was crossed once for sure.
        expect(spent.get(org.orgId)! >= parseCredits("1000")).toBe(true);
      }

      for (const [i, org] of [t1, t2, p1].entries()) {
        for (const call of admin) {
          const verify = expectStatus(
            await call("GET", `/v1/organizations/${org.orgId}/ledger/verify`),
            200,
            "verify",
          );
          expect(verify).toMatchObject({ ok: true, first_bad_sequence: null });
        }
        const balance = expectStatus(
          await via(i)("GET", `/v1/organizations/${org.orgId}/balance`),
          200,
          "balance",
        );
        expect(balance.reserved).toBe(org === p1 ? "0" : "40");
      }

      // Clean shutdown of all three, then the database itself. Nothing went wrong quietly: no
      // process logged an error (a failed job, a deadlock retried, a 500).
      expect(await Promise.all(instances.map((p) => p.stop()))).toEqual([0, 0, 0]);
      for (const p of instances) expect(p.logs()).not.toMatch(/"level":(50|60)/);

      const database: Database = await openDatabase({ url, poolSize: 2 });
      try {
        const { db } = database;
        // The migration race: each migration applied once; the configured key registered once;
        // the default price catalogue seeded once.
        const applied = await sql<{ name: string }>`select name from kysely_migration`.execute(db);
        expect(applied.rows.map((r) => r.name).sort()).toEqual(Object.keys(migrations).sort());
        const platformKeys = await db
          .selectFrom("api_keys")
          .select("id")
          .where("org_id", "is", null)
          .execute();
        expect(platformKeys).toHaveLength(1);
        const versions = await sql<{ n: string }>`select count(*) as n from price_versions`.execute(
          db,
        );
        expect(versions.rows[0]!.n).toBe("1");

        const expected = new Map([
          // 1200 + 100 − 100 refunded + 1200 auto-topup − usage
          [t1.orgId, parseCredits("2400") - spent.get(t1.orgId)!],
          [t2.orgId, parseCredits("2400") - spent.get(t2.orgId)!],
          // 1200 + 3 × 50 − 50 refunded + 7 adjusted once − usage
          [p1.orgId, parseCredits("1307") - spent.get(p1.orgId)!],
        ]);
        for (const org of [t1, t2, p1]) {
          const balance = await checkOrgInvariants(db, org.orgId);
          expect(formatCredits(balance)).toBe(formatCredits(expected.get(org.orgId)!));

          // Every event stored once: exactly the accepted ones.
          const stored = await db
            .selectFrom("usage_events")
            .select("id")
            .where("org_id", "=", org.orgId)
            .execute();
          expect(stored.map((e) => e.id).sort()).toEqual(
            [...byEvent.keys()]
              .filter((k) => k.startsWith(`${org.orgId}/`))
              .map((k) => k.slice(org.orgId.length + 1))
              .sort(),
          );

          // Each payment once: one purchase entry per paid purchase (and one bonus where due),
          // payment ids unique.
          const paid = await db
            .selectFrom("purchases")
            .select(["id", "status", "source", "provider_payment_id", "bonus_credits"])
            .where("org_id", "=", org.orgId)
            .where("status", "in", ["paid", "refunded", "partially_refunded"])
            .execute();
          expect(new Set(paid.map((p) => p.provider_payment_id)).size).toBe(paid.length);
          const credits = await db
            .selectFrom("ledger_entries")
            .select(["type", "reference_id"])
            .where("org_id", "=", org.orgId)
            .where("type", "in", ["purchase", "bonus"])
            .execute();
          const entriesOf = (id: string, type: string) =>
            credits.filter((c) => c.reference_id === id && c.type === type).length;
          for (const p of paid) {
            expect(entriesOf(p.id, "purchase"), `purchase entry of ${p.id}`).toBe(1);
            expect(entriesOf(p.id, "bonus")).toBe(parseCredits(p.bonus_credits) > 0n ? 1 : 0);
          }
          expect(credits).toHaveLength(
            paid.length + paid.filter((p) => parseCredits(p.bonus_credits) > 0n).length,
          );

          const adjustments = await db
            .selectFrom("ledger_entries")
            .select("id")
            .where("org_id", "=", org.orgId)
            .where("type", "=", "adjustment")
            .execute();
          expect(adjustments).toEqual(org === p1 ? [{ id: adjustmentId }] : []);

          // One purchase.completed per paid purchase, one purchase.refunded per refund.
          const notices = await db
            .selectFrom("events")
            .select(["type", "data"])
            .where("org_id", "=", org.orgId)
            .where("type", "in", ["purchase.completed", "purchase.refunded"])
            .execute();
          const purchaseIdsOf = (type: string) =>
            notices
              .filter((n) => n.type === type)
              .map((n) => (n.data as { purchase_id: string }).purchase_id)
              .sort();
          expect(purchaseIdsOf("purchase.completed")).toEqual(paid.map((p) => p.id).sort());

          // One refund per refunded purchase, its entries removing exactly what it says.
          const refunds = await db
            .selectFrom("refunds")
            .select(["id", "purchase_id", "status", "credits_removed", "bonus_removed"])
            .where("org_id", "=", org.orgId)
            .execute();
          expect(refunds).toHaveLength(1);
          expect(refunds[0]).toMatchObject({
            purchase_id: org === p1 ? purchases.small[1] : org.refundablePurchase,
            status: "succeeded",
          });
          expect(purchaseIdsOf("purchase.refunded")).toEqual([refunds[0]!.purchase_id]);
          const refundEntries = await db
            .selectFrom("ledger_entries")
            .select("amount")
            .where("org_id", "=", org.orgId)
            .where("type", "=", "refund")
            .where("reference_id", "=", refunds[0]!.id)
            .execute();
          let removed = 0n;
          for (const e of refundEntries) removed -= parseCredits(e.amount);
          expect(formatCredits(removed)).toBe(
            formatCredits(
              parseCredits(refunds[0]!.credits_removed) + parseCredits(refunds[0]!.bonus_removed),
            ),
          );

          // Invariant 9: one auto-topup per threshold crossing (the load crosses 300 exactly once:
          // ≥ 1000 credits used from 1300 − 100, and after the topup the balance stays ≥ 1300), and
          // one balance.low per crossing of 500 (likewise exactly one).
          const attempts = await db
            .selectFrom("topup_attempts")
            .select(["status", "purchase_id"])
            .where("org_id", "=", org.orgId)
            .execute();
          const autoPurchases = paid.filter((p) => p.source === "auto_topup");
          const lows = await db
            .selectFrom("events")
            .select("id")
            .where("org_id", "=", org.orgId)
            .where("type", "=", "balance.low")
            .execute();
          if (org === p1) {
            expect(attempts).toEqual([]);
            expect(autoPurchases).toEqual([]);
            expect(lows).toEqual([]);
          } else {
            expect(attempts).toEqual([{ status: "succeeded", purchase_id: expect.any(String) }]);
            expect(autoPurchases.map((p) => p.id)).toEqual([attempts[0]!.purchase_id]);
            expect(lows).toHaveLength(1);
          }
        }

        // Invariant 3 on the database the instances migrated together: the ledger is append-only.
        for (const statement of [
          sql`update ledger_entries set amount = 0`,
          sql`delete from ledger_entries`,
          sql`truncate ledger_entries`,
        ]) {
          await expect(statement.execute(db)).rejects.toThrow(/ledger entries are immutable/);
        }
      } finally {
        await database.close();
      }
    });
  },
);
