import { beforeAll, describe, expect, it } from "vitest";
import { createTestApp } from "../../../test/support/app.js";

type Who = "none" | "revoked" | "platform" | "admin" | "billing" | "ingest" | "read";
type OrgRole = Exclude<Who, "none" | "revoked" | "platform">;

const WHO: Who[] = ["none", "revoked", "platform", "admin", "billing", "ingest", "read"];
const READ: readonly OrgRole[] = ["admin", "billing", "read"];

/** Routes below /v1/organizations/{org}/. */
const ORG_ROUTES = [
  "usage-summaries",
  "usage-summaries?year=2026&month=11",
  "usage-summaries.csv",
  "usage-daily",
  "ledger-summaries?year=2026",
];
/** The all-organisation (chargeback) view: platform keys only. */
const PLATFORM_ROUTES = ["/v1/usage-summaries", "/v1/usage-summaries.csv?year=2026"];

describe("reports security", async () => {
  const app = await createTestApp();
  const own = { id: "", external: "rep-own" };
  const other = { id: "", external: "rep-other" };
  const keys = {} as Record<Who, string | null>;

  beforeAll(async () => {
    for (const org of [own, other]) {
      org.id = await app.createOrg({ external_id: org.external });
      const res = await app.call("POST", "/v1/usage-events", {
        body: {
          id: `sec-${org.external}`,
          org_id: org.id,
          type: "ai_tokens",
          model: "gpt-4o",
          tokens: { input: 1000 },
        },
      });
      expect(res.statusCode, res.body).toBe(200);
    }
    keys.none = null;
    keys.platform = app.platformKey;
    for (const role of ["admin", "billing", "ingest", "read"] as const) {
      keys[role] = await app.orgKey(own.id, role);
    }
    const created = await app.call("POST", `/v1/organizations/${own.id}/api-keys`, {
      body: { name: "to revoke", role: "read" },
    });
    keys.revoked = created.json().key;
    await app.call("DELETE", `/v1/organizations/${own.id}/api-keys/${created.json().id}`);
  });

  const orgCases = ORG_ROUTES.flatMap((path) =>
    WHO.flatMap((who) =>
      [false, true].map((foreign) => {
        let status = 200;
        if (who === "none" || who === "revoked") status = 401;
        else if (who !== "platform" && foreign) status = 404;
        else if (who !== "platform" && !READ.includes(who)) status = 403;
        return { path, who, foreign, status };
      }),
    ),
  );

  it.each(orgCases)(
    "$path with $who key, foreign=$foreign → $status",
    async ({ path, who, foreign, status }) => {
      const org = foreign ? other : own;
      const res = await app.call("GET", `/v1/organizations/${org.id}/${path}`, { key: keys[who] });
      expect(res.statusCode, res.body).toBe(status);
      if (status !== 200) return;
      if (path.includes(".csv")) {
        const orgColumn = res.body
          .split("\r\n")
          .slice(1, -1)
          .map((l) => l.split(",")[0]);
        expect(new Set(orgColumn)).toEqual(new Set([org.id]));
      } else {
        for (const row of res.json().data) if ("org_id" in row) expect(row.org_id).toBe(org.id);
      }
    },
  );

  const platformCases = PLATFORM_ROUTES.flatMap((url) =>
    WHO.map((who) => ({
      url,
      who,
      status: who === "none" || who === "revoked" ? 401 : who === "platform" ? 200 : 403,
    })),
  );

  it.each(platformCases)("$url with $who key → $status", async ({ url, who, status }) => {
    const res = await app.call("GET", url, { key: keys[who] });
    expect(res.statusCode, res.body).toBe(status);
    if (status === 403) expect(res.json().error.code).toBe("forbidden");
  });

  it("answers a foreign organisation exactly like an unknown one", async () => {
    for (const path of ORG_ROUTES) {
      const call = (ref: string) =>
        app.call("GET", `/v1/organizations/${ref}/${path}`, { key: keys.admin });
      const strip = (r: Awaited<ReturnType<typeof call>>) => ({
        status: r.statusCode,
        error: { ...r.json().error, request_id: undefined },
      });
      expect(strip(await call(other.id))).toEqual(
        strip(await call("org_00000000000000000000000000")),
      );
      expect((await call(`ext:${other.external}`)).statusCode).toBe(404);
      expect((await call(`ext:${own.external}`)).statusCode).toBe(200);
    }
  });

  it("refuses organisations whose plan has no credits billing", async () => {
    const starter = await app.createOrg({ plan: "starter" });
    for (const path of ORG_ROUTES) {
      const res = await app.call("GET", `/v1/organizations/${starter}/${path}`);
      expect(res.statusCode).toBe(403);
      expect(res.json().error.code).toBe("plan_not_eligible");
    }
  });
});
