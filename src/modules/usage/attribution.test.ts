import { describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";

describe("usage attribution", async () => {
  const app = await createTestApp();
  const orgId = await app.createOrg();
  const key = await app.orgKey(orgId, "ingest");
  await app.call("POST", `/v1/organizations/${orgId}/users`, {
    body: { id: "u-ada", email: "ada@example.com", role: "viewer" },
  });
  const event = (id: string, extra: Record<string, unknown> = {}) => ({
    id,
    type: "compute",
    meter: "compute.vcpu_seconds",
    quantity: "1",
    ...extra,
  });

  it("records the On-Behalf-Of user when the event names none, and the event's user otherwise", async () => {
    const headers = { "on-behalf-of": "u-ada" };
    const res = await app.call("POST", "/v1/usage-events", {
      key,
      headers,
      body: { events: [event("a-1"), event("a-2", { user_id: "u-other" })] },
    });
    expect(res.statusCode).toBe(200);
    const entries = (
      await app.call("GET", `/v1/organizations/${orgId}/transactions?type=usage`)
    ).json().data as { reference: { id: string }; user_id: string; actor: { type: string } }[];
    const byEvent = new Map(entries.map((e) => [e.reference.id, e]));
    expect(byEvent.get("a-1")).toMatchObject({ user_id: "u-ada", actor: { type: "api_key" } });
    expect(byEvent.get("a-2")).toMatchObject({ user_id: "u-other" });
  });

  it("refuses an On-Behalf-Of user who is not in the organisation", async () => {
    const res = await app.call("POST", "/v1/usage-events", {
      key,
      headers: { "on-behalf-of": "u-nobody" },
      body: event("a-3"),
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details[0].field).toBe("header.on-behalf-of");
  });

  it("takes a platform key's On-Behalf-Of, checked against each event's organisation", async () => {
    const other = await app.createOrg();
    const events = [event("p-1", { org_id: orgId }), event("p-2", { org_id: orgId })];
    const ok = await app.call("POST", "/v1/usage-events", {
      headers: { "on-behalf-of": "u-ada" },
      body: { events },
    });
    expect(ok.statusCode, ok.body).toBe(200);
    const entries = (
      await app.call("GET", `/v1/organizations/${orgId}/transactions?type=usage&user_id=u-ada`)
    ).json().data as { reference: { id: string } }[];
    expect(entries.map((e) => e.reference.id)).toEqual(expect.arrayContaining(["p-1", "p-2"]));
    // u-ada is no user of the other organisation: the whole request is refused.
    const refused = await app.call("POST", "/v1/usage-events", {
      headers: { "on-behalf-of": "u-ada" },
      body: { events: [event("p-3", { org_id: orgId }), event("p-4", { org_id: other })] },
    });
    expect(refused.statusCode).toBe(400);
    expect(refused.json().error.details).toContainEqual(
      expect.objectContaining({ field: "header.on-behalf-of" }),
    );
    const stored = await app.call("GET", `/v1/organizations/${orgId}/usage-events`);
    expect(stored.json().data.map((e: { id: string }) => e.id)).not.toContain("p-3");
  });

  it("points at the event and field at fault with JSON pointers", async () => {
    const res = await app.call("POST", "/v1/usage-events", {
      key,
      body: { events: [event("a-4"), event("a-5", { quantity: 5 })] },
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.details).toContainEqual(
      expect.objectContaining({ field: "/events/1/quantity" }),
    );
  });
});
