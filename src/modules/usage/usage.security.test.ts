import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";
import { runSecurityMatrix } from "../../../test/support/security-matrix.js";
import { USAGE_MATRIX } from "./usage.security.matrix.js";

runSecurityMatrix(USAGE_MATRIX);

describe("usage: organisations named inside the body", async () => {
  const app = await createTestApp();
  const own = await app.createOrg();
  const foreign = await app.createOrg({ external_id: "usage-foreign" });
  for (const org of [own, foreign]) {
    await app.call("POST", `/v1/organizations/${org}/adjustments`, {
      body: { amount: "+1000", reason: "seed" },
    });
  }
  const ingest = await app.orgKey(own, "ingest");
  const event = (id: string, orgId?: string) => ({
    id,
    ...(orgId ? { org_id: orgId } : {}),
    type: "ai_tokens",
    model: "gpt-4o",
    tokens: { input: 1000 },
  });
  const recorded = async () =>
    (await app.runtime.ctx.db.selectFrom("usage_events").select("id").execute()).map((e) => e.id);

  it("a batch naming another organisation anywhere is refused whole (404) and records nothing", async () => {
    for (const ref of [foreign, "ext:usage-foreign"]) {
      const res = await app.call("POST", "/v1/usage-events", {
        key: ingest,
        body: { events: [event("mine-1"), event("theirs-1", ref), event("mine-2", own)] },
      });
      expect(res.statusCode, res.body).toBe(404);
      expect(res.json().error.code).toBe("not_found");
      expect(res.body).not.toContain(foreign);
    }
    expect(await recorded()).toEqual([]);
  });

  it("a settlement cannot carry events of another organisation", async () => {
    const hold = await app.call("POST", `/v1/organizations/${own}/reservations`, {
      key: ingest,
      body: { amount: "5" },
    });
    expect(hold.statusCode).toBe(201);
    const url = `/v1/organizations/${own}/reservations/${hold.json().id}/settle`;
    const byOrgKey = await app.call("POST", url, {
      key: ingest,
      body: { events: [event("settle-theirs", foreign)] },
    });
    expect(byOrgKey.statusCode, byOrgKey.body).toBe(404);
    const byPlatform = await app.call("POST", url, {
      body: { events: [event("settle-theirs", foreign)] },
    });
    expect(byPlatform.statusCode, byPlatform.body).toBe(400);
    expect(byPlatform.json().error.details[0]).toMatchObject({ field: "/events/0/org_id" });
    expect(await recorded()).toEqual([]);
    const still = await app.call("GET", `/v1/organizations/${own}/reservations/${hold.json().id}`);
    expect(still.json().status).toBe("held");
    expect((await app.call("GET", `/v1/organizations/${foreign}/balance`)).json().balance).toBe(
      "1000",
    );
  });

  it("an event id used by another organisation is not a duplicate of it", async () => {
    const theirs = await app.call("POST", "/v1/usage-events", {
      body: event("shared-id", foreign),
    });
    expect(theirs.statusCode, theirs.body).toBe(200);
    const mine = await app.call("POST", "/v1/usage-events", {
      key: ingest,
      body: event("shared-id"),
    });
    expect(mine.statusCode, mine.body).toBe(200);
    expect(mine.json().data[0].status).toBe("accepted");
    expect(mine.body).not.toContain(theirs.json().data[0].transaction_id);
  });
});
