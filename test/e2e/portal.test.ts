/// <reference lib="dom" />
// page.evaluate callbacks run in the browser.
import { afterEach, describe, expect, it } from "vitest";
import { parseCredits } from "../../src/modules/ledger/credits.js";
import {
  buyWithSandbox,
  expectNoHorizontalOverflow,
  launchBrowser,
  newContext,
  screenshot,
  seedUsage,
  startServer,
} from "./browser.js";

const browser = await launchBrowser();
const { app, url } = await startServer();

const org = await app.createOrg({ name: "Acme Robotics" });
for (const [id, role] of [
  ["bill", "billing"],
  ["vic", "viewer"],
] as const) {
  const res = await app.call("POST", `/v1/organizations/${org}/users`, {
    body: { id, email: `${id}@acme.test`, name: id === "bill" ? "Bill Payer" : "Vic Viewer", role },
  });
  expect(res.statusCode).toBe(201);
}
const starter = (
  await app.call("POST", "/v1/credit-packages", {
    body: { name: "Starter", credits: "1000", bonus_credits: "200", price: "10.00" },
  })
).json();
await app.call("POST", "/v1/credit-packages", {
  body: { name: "Team", credits: "5000", bonus_credits: "1500", price: "45.00" },
});
await app.call("POST", `/v1/organizations/${org}/adjustments`, {
  body: { amount: "+40.5", reason: "trial credit" },
});
await seedUsage(app, org);

async function portalLink(userId: string): Promise<string> {
  const res = await app.call("POST", `/v1/organizations/${org}/portal-sessions`, {
    body: { user_id: userId },
  });
  expect(res.statusCode).toBe(201);
  expect(res.json().url.startsWith(`${url}/portal/enter?token=`)).toBe(true);
  return res.json().url;
}

async function available(): Promise<string> {
  return (await app.call("GET", `/v1/organizations/${org}/balance`)).json().available;
}

const contexts: Awaited<ReturnType<typeof newContext>>[] = [];
afterEach(async () => {
  for (const c of contexts.splice(0)) {
    expect(c.problems, "CSP violations or page errors").toEqual([]);
    await c.close();
  }
});

async function context(options?: { width?: number; height?: number }) {
  const c = await newContext(browser, url, options);
  contexts.push(c);
  return c;
}

describe("customer portal", () => {
  it("opens from a link, buys a package through the sandbox checkout and shows the new balance", async () => {
    const before = await available();
    const page = await (await context()).newPage();
    await page.goto(await portalLink("bill"));
    expect(new URL(page.url()).pathname).toBe("/portal");
    await expect.poll(() => page.getByRole("heading", { name: "Buy credits" }).count()).toBe(1);

    const balance = page.getByTestId("balance");
    await expect
      .poll(() => balance.locator("[data-value]").getAttribute("data-value"))
      .toBe(before);
    await expect.poll(() => page.getByText("Acme Robotics").count()).toBeGreaterThan(0);
    // Packages show bonus, effective price and price per paid credit, formatted from decimals.
    const card = page.getByTestId("package").filter({ hasText: "Starter" });
    await expect.poll(() => card.textContent()).toContain("1,200");
    const text = (await card.textContent()) ?? "";
    expect(text).toContain("200 bonus");
    expect(text).toContain("+20%");
    expect(text).toContain("$10.00");
    expect(text).toContain("$0.008333");
    expect(text).toContain("$0.01");
    await screenshot(page, "portal-before-purchase");

    await page.getByRole("button", { name: "Buy Starter" }).click();
    await page.waitForURL(/\/sandbox\/checkout\/pur_/);
    await page.locator('input[name="card"][value="success"]').check();
    await page.locator("button.pay").click();

    await page.waitForURL((u) => u.pathname === "/portal");
    const notice = page.getByTestId("checkout-notice");
    await expect
      .poll(() => notice.textContent(), { timeout: 15_000 })
      .toContain("Payment received: 1,000 credits + 200 bonus added.");
    const after = await available();
    expect(parseCredits(after) - parseCredits(before)).toBe(parseCredits("1200"));
    await expect.poll(() => balance.locator("[data-value]").getAttribute("data-value")).toBe(after);

    const rows = page.locator("table.transactions tbody tr");
    await expect.poll(() => rows.first().getAttribute("data-type")).toBe("bonus");
    expect(await rows.nth(1).getAttribute("data-type")).toBe("purchase");
    expect(await rows.first().textContent()).toContain("+200");
    expect(await rows.nth(1).textContent()).toContain("+1,000");
    await screenshot(page, "portal-after-purchase");

    // Every entry of the purchase is attributed to the portal user.
    const ledger = await app.call("GET", `/v1/organizations/${org}/transactions?limit=2`);
    for (const entry of ledger.json().data) {
      expect(entry.actor).toEqual({ type: "user", id: "bill" });
      expect(entry.user_id).toBe("bill");
    }
    const purchases = await app.call("GET", `/v1/organizations/${org}/purchases`);
    expect(purchases.json().data[0]).toMatchObject({
      package_id: starter.id,
      status: "paid",
      user_id: "bill",
      actor: { type: "user", id: "bill" },
    });

    // A link is for one visit: opened again elsewhere, it is refused.
    const link = await portalLink("bill");
    await (await (await context()).newPage()).goto(link);
    const reused = await (await context()).newPage();
    await reused.goto(link);
    expect(reused.url()).toBe(`${url}/portal?link=invalid`);
    await expect.poll(() => reused.getByText("expired or was already used").count()).toBe(1);
  });

  it("keeps a signed-in customer's session when a link for another user is opened", async () => {
    const browserContext = await context();
    const page = await browserContext.newPage();
    await page.goto(await portalLink("bill"));
    await expect.poll(() => page.getByText("Bill Payer").count()).toBe(1);
    const planted = await portalLink("vic");
    await page.goto(planted);
    expect(page.url()).toBe(`${url}/portal?link=signed-in`);
    await expect
      .poll(() => page.getByText("A portal link for another account was opened").count())
      .toBe(1);
    expect(await page.getByText("Bill Payer").count()).toBe(1);
    // The link was left unused for the browser it was meant for.
    const other = await (await context()).newPage();
    await other.goto(planted);
    expect(other.url()).toBe(`${url}/portal`);
    await expect.poll(() => other.getByText("Vic Viewer").count()).toBe(1);
  });

  it("a page keeps working after another tab renewed the session with a new link", async () => {
    const browserContext = await context();
    const first = await browserContext.newPage();
    await first.goto(await portalLink("bill"));
    const alerts = first.getByRole("form", { name: "Alert settings" });
    await expect.poll(() => alerts.count()).toBe(1);
    // A second tab enters through a new link: the session (and its CSRF token) is renewed.
    const second = await browserContext.newPage();
    await second.goto(await portalLink("bill"));
    await expect.poll(() => second.getByText("Bill Payer").count()).toBe(1);
    await alerts.getByLabel("Thresholds (credits)").fill("250");
    await alerts.getByLabel("Email alerts to").fill("renewed@acme.test");
    await alerts.getByRole("button", { name: "Save alerts" }).click();
    await expect.poll(() => alerts.getByText("Alert settings saved.").count()).toBe(1);
    const saved = (await app.call("GET", `/v1/organizations/${org}/alerts`)).json();
    expect(saved.emails).toEqual(["renewed@acme.test"]);
  });

  it("lets billing users change auto-topup and alert settings", async () => {
    await buyWithSandbox(app, org, starter.id); // saves the sandbox card for auto-topup
    const page = await (await context()).newPage();
    await page.goto(await portalLink("bill"));

    const alerts = page.getByRole("form", { name: "Alert settings" });
    await alerts.getByLabel("Thresholds (credits)").fill("500, 100");
    await alerts.getByLabel("Email alerts to").fill("ops@acme.test");
    await alerts.getByRole("button", { name: "Save alerts" }).click();
    await expect.poll(() => alerts.getByText("Alert settings saved.").count()).toBe(1);
    const saved = (await app.call("GET", `/v1/organizations/${org}/alerts`)).json();
    expect([...saved.thresholds].sort()).toEqual(["100", "500"]);
    expect(saved.emails).toEqual(["ops@acme.test"]);

    const topup = page.getByRole("form", { name: "Auto-topup settings" });
    await expect.poll(() => page.getByText("visa ···· 4242").count()).toBe(1);
    await topup.getByLabel("Top up automatically").check();
    await topup.getByLabel("When the balance falls to (credits)").fill("50");
    await topup.getByLabel("Buy this package").selectOption(starter.id);
    await topup.getByLabel("Monthly spending limit (optional)").fill("100.00");
    await topup.getByRole("button", { name: "Save auto-topup" }).click();
    await expect.poll(() => topup.getByText("Auto-topup settings saved.").count()).toBe(1);
    const settings = (await app.call("GET", `/v1/organizations/${org}/auto-topup`)).json();
    expect(settings).toMatchObject({
      enabled: true,
      threshold: "50",
      package_id: starter.id,
      monthly_limit: "100.00",
    });
    await screenshot(page, "portal-settings");
  });

  it("renders the usage charts with data", async () => {
    const page = await (await context()).newPage();
    await page.goto(await portalLink("bill"));
    const daily = page.locator("figure.chart", { hasText: "Daily cost by type" });
    await expect.poll(() => daily.getAttribute("data-points"), { timeout: 15_000 }).not.toBeNull();
    expect(Number(await daily.getAttribute("data-points"))).toBeGreaterThan(20);
    expect(await daily.getAttribute("data-series")).toBe("2");
    expect(await daily.locator(".uplot canvas").count()).toBe(1);
    // The chart may be drawn again as the page settles (its canvas replaced): poll, not one look.
    const canvas = daily.locator(".uplot canvas");
    await expect.poll(async () => (await canvas.boundingBox())?.width ?? 0).toBeGreaterThan(200);
    // Something was drawn: the bars leave coloured pixels on the canvas.
    const painted = () =>
      canvas.evaluate((c: HTMLCanvasElement) => {
        const ctx = c.getContext("2d")!;
        const { data } = ctx.getImageData(0, 0, c.width, c.height);
        let n = 0;
        for (let i = 0; i < data.length; i += 4)
          if (data[i + 3]! > 0 && data[i + 2]! > data[i]!) n++;
        return n;
      });
    await expect.poll(painted).toBeGreaterThan(100);

    const monthly = page.locator("figure.chart", { hasText: "Monthly cost by type" });
    await expect.poll(() => monthly.locator(".uplot canvas").count()).toBe(1);
    expect(Number(await monthly.getAttribute("data-points"))).toBeGreaterThan(0);
    await expect
      .poll(() => page.getByRole("table", { name: "By model" }).getByText("gpt-4o").count())
      .toBe(1);
    await daily.scrollIntoViewIfNeeded();
    await screenshot(page, "portal-usage");
  });

  it("viewers see everything read-only; the server refuses their changes", async () => {
    const page = await (await context()).newPage();
    await page.goto(await portalLink("vic"));
    await expect.poll(() => page.getByTestId("package").count()).toBe(2);
    await expect.poll(() => page.getByText("read-only access").count()).toBe(1);
    expect(await page.getByRole("button", { name: /^Buy/ }).count()).toBe(0);
    expect(await page.getByRole("button", { name: /Save/ }).count()).toBe(0);
    expect(await page.getByRole("form").count()).toBe(1); // only the transaction filters
    await screenshot(page, "portal-viewer");

    const statuses = await page.evaluate(
      async ({ orgId, packageId }) => {
        const session = await (await fetch("/web/session")).json();
        const post = (path: string, body: unknown, csrf?: string) =>
          fetch(path, {
            method: "POST",
            headers: {
              "content-type": "application/json",
              ...(csrf ? { "x-csrf-token": csrf } : {}),
            },
            body: JSON.stringify(body),
          }).then(async (r) => ({ status: r.status, code: (await r.json()).error?.code }));
        const put = (path: string, body: unknown) =>
          fetch(path, {
            method: "PUT",
            headers: { "content-type": "application/json", "x-csrf-token": session.csrf_token },
            body: JSON.stringify(body),
          }).then((r) => r.status);
        return {
          role: session.role,
          buy: await post(
            `/v1/organizations/${orgId}/purchases`,
            { package_id: packageId },
            session.csrf_token,
          ),
          buyWithoutCsrf: await post(`/v1/organizations/${orgId}/purchases`, {
            package_id: packageId,
          }),
          adjust: await post(
            `/v1/organizations/${orgId}/adjustments`,
            { amount: "+1", reason: "x" },
            session.csrf_token,
          ),
          alerts: await put(`/v1/organizations/${orgId}/alerts`, { thresholds: ["10"] }),
          cookieVisible: document.cookie.includes("tally_session"),
        };
      },
      { orgId: org, packageId: starter.id },
    );
    expect(statuses).toEqual({
      role: "read",
      buy: { status: 403, code: "forbidden" },
      buyWithoutCsrf: { status: 403, code: "forbidden" },
      adjust: { status: 403, code: "forbidden" },
      alerts: 403,
      cookieVisible: false,
    });
  });

  it("fits a phone screen (375 px)", async () => {
    const page = await (await context({ width: 375, height: 812 })).newPage();
    await page.goto(await portalLink("bill"));
    await expect.poll(() => page.getByTestId("package").count()).toBe(2);
    await expect
      .poll(() => page.locator("figure.chart .uplot canvas").count(), { timeout: 15_000 })
      .toBe(2);
    await expectNoHorizontalOverflow(page);
    await screenshot(page, "portal-phone");
  });
});
