/// <reference lib="dom" />
// page.evaluate callbacks run in the browser.
import { readFile } from "node:fs/promises";
import { afterEach, describe, expect, it } from "vitest";
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
// Webhook endpoints on this machine are allowed so that one can be added without DNS.
const { app, url } = await startServer({ TALLY_ALLOW_PRIVATE_WEBHOOK_URLS: "true" });

const org = await app.createOrg({ name: "Globex Analytics", external_id: "globex" });
await app.createOrg({ name: "Initech" });
await app.call("POST", `/v1/organizations/${org}/adjustments`, {
  body: { amount: "+100", reason: "opening balance" },
});
await seedUsage(app, org);

const contexts: Awaited<ReturnType<typeof newContext>>[] = [];
afterEach(async () => {
  for (const c of contexts.splice(0)) {
    expect(c.problems, "CSP violations or page errors").toEqual([]);
    await c.close();
  }
});

async function signedIn(options?: { width?: number; height?: number }) {
  const context = await newContext(browser, url, options);
  contexts.push(context);
  const page = await context.newPage();
  await page.goto("/");
  expect(new URL(page.url()).pathname).toBe("/dashboard");
  await page.getByLabel("Platform API key").fill(app.platformKey);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Organisations", level: 1 }).waitFor();
  return { context, page };
}

describe("operator console", () => {
  it("signs in with a platform key kept only as an httpOnly session cookie", async () => {
    const { context, page } = await signedIn();
    const cookies = await context.cookies();
    expect(cookies).toHaveLength(1);
    expect(cookies[0]).toMatchObject({ name: "tally_session", httpOnly: true, sameSite: "Lax" });
    expect(cookies[0]!.value).not.toContain(app.platformKey);
    const storage = await page.evaluate(() => ({
      cookie: document.cookie,
      local: JSON.stringify(localStorage),
      session: JSON.stringify(sessionStorage),
      html: document.documentElement.outerHTML,
    }));
    expect(storage.cookie).toBe("");
    for (const value of [storage.local, storage.session, storage.html]) {
      expect(value).not.toContain(app.platformKey);
    }

    const badKey = await newContext(browser, url);
    contexts.push(badKey);
    const other = await badKey.newPage();
    await other.goto("/dashboard");
    await other.getByLabel("Platform API key").fill("tally_not_a_key");
    await other.getByRole("button", { name: "Sign in" }).click();
    await expect.poll(() => other.getByText("That key is unknown or revoked.").count()).toBe(1);
  });

  it("a signed-out visit to the console or the portal logs nothing in the browser console", async () => {
    const context = await newContext(browser, url);
    contexts.push(context);
    const page = await context.newPage();
    const logged: string[] = [];
    page.on("console", (msg) => {
      if (msg.type() === "error" || msg.type() === "warning") logged.push(msg.text());
    });
    for (const path of ["/dashboard", "/portal"]) {
      await page.goto(path);
      await page.waitForLoadState("networkidle");
    }
    await page.goto("/dashboard");
    await page.getByLabel("Platform API key").waitFor();
    expect(logged).toEqual([]);
  });

  it("adjusts credits with a reason, shows it in the history and downloads the CSV", async () => {
    const { page } = await signedIn();
    // Organisations list: search, balance, low-balance and auto-topup status.
    const row = page.locator("tr", { hasText: "Globex Analytics" });
    await expect.poll(() => row.locator("[data-value]").count()).toBe(1);
    await page.getByRole("searchbox", { name: "Search" }).fill("initech");
    await page.getByRole("button", { name: "Search" }).click();
    await expect.poll(() => page.locator("table.orgs tbody tr").count()).toBe(1);
    await page.getByRole("searchbox", { name: "Search" }).fill("globex");
    await page.getByRole("button", { name: "Search" }).click();
    await expect.poll(() => page.locator("table.orgs tbody tr").count()).toBe(1);
    await screenshot(page, "dashboard-organisations");
    await page.getByRole("link", { name: "Globex Analytics" }).click();
    await page.getByRole("heading", { name: "Globex Analytics", level: 1 }).waitFor();

    const before = (await app.call("GET", `/v1/organizations/${org}/balance`)).json().balance;
    const form = page.getByRole("form", { name: "Adjust credits" });
    // The reason is required: nothing is sent without it.
    await form.getByLabel("Amount").fill("+250.125");
    await form.getByRole("button", { name: "Apply adjustment" }).click();
    await expect.poll(() => form.getByText("A reason is required.").count()).toBe(1);
    expect((await app.call("GET", `/v1/organizations/${org}/balance`)).json().balance).toBe(before);

    await form.getByLabel("Reason (required)").fill("Goodwill credit for the outage of 3 May");
    await form.getByRole("button", { name: "Apply adjustment" }).click();
    await expect
      .poll(() => page.getByRole("status").filter({ hasText: "Adjusted by" }).count())
      .toBe(1);
    expect(
      await page.getByRole("status").filter({ hasText: "Adjusted by" }).textContent(),
    ).toContain("+250.125 credits");
    await screenshot(page, "dashboard-organisation");

    await page.getByRole("link", { name: "Transactions" }).click();
    const first = page.locator("table.transactions tbody tr").first();
    await expect.poll(() => first.getAttribute("data-type")).toBe("adjustment");
    expect(await first.textContent()).toContain("Goodwill credit for the outage of 3 May");
    expect(await first.textContent()).toContain("+250.125");

    // Filters: only adjustments.
    await page.getByLabel("Type").selectOption("adjustment");
    await page.getByRole("button", { name: "Apply" }).click();
    await expect.poll(() => page.locator("table.transactions tbody tr").count()).toBe(2);
    await screenshot(page, "dashboard-transactions");

    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.getByTestId("csv-download").click(),
    ]);
    expect(download.suggestedFilename()).toBe(`${org}-transactions.csv`);
    const csv = await readFile((await download.path())!, "utf8");
    const lines = csv.trim().split(/\r?\n/);
    expect(lines[0]).toMatch(/^id,sequence,created_at,type,amount/);
    expect(lines).toHaveLength(3); // header + the two adjustments (the filter applies)
    expect(lines[1]).toContain("Goodwill credit for the outage of 3 May");
    expect(lines[1]).toContain("250.125");

    // The entry is attributed to the platform key that signed in.
    const entry = (await app.call("GET", `/v1/organizations/${org}/transactions?limit=1`)).json()
      .data[0];
    expect(entry.actor.type).toBe("api_key");
    expect(entry.reason).toBe("Goodwill credit for the outage of 3 May");
  });

  it("draws the usage charts with data", async () => {
    const { page } = await signedIn();
    await page.goto(`/dashboard/orgs/${org}/usage`);
    const daily = page.locator("figure.chart", { hasText: "Daily cost by type" });
    await expect.poll(() => daily.locator(".uplot canvas").count(), { timeout: 15_000 }).toBe(1);
    expect(Number(await daily.getAttribute("data-points"))).toBeGreaterThan(20);
    const monthly = page.locator("figure.chart", { hasText: "Monthly cost by type" });
    await expect.poll(() => monthly.locator(".uplot canvas").count()).toBe(1);
    expect(Number(await monthly.getAttribute("data-points"))).toBeGreaterThan(0);
    // The exact figures behind the chart are in an accessible table.
    await daily.getByText("Show the figures").click();
    await expect.poll(() => daily.locator("tbody tr").count()).toBeGreaterThanOrEqual(20);
    await expect.poll(() => page.getByRole("table", { name: "By user" }).count()).toBe(1);
    await screenshot(page, "dashboard-usage");
  });

  it("refunds a paid purchase from the purchases list", async () => {
    const pkg = await app.call("POST", "/v1/credit-packages", {
      body: { name: "Refundable", credits: "500", bonus_credits: "50", price: "5.00" },
    });
    const purchaseId = await buyWithSandbox(app, org, pkg.json().id);
    const { page } = await signedIn();
    await page.goto(`/dashboard/orgs/${org}/purchases`);
    const row = page.locator("tr", { hasText: "Refundable" });
    await expect.poll(() => row.getByText("paid", { exact: true }).count()).toBe(1);
    page.once("dialog", (dialog) => void dialog.accept("Customer changed their mind"));
    await row.getByRole("button", { name: /^Refund purchase/ }).click();
    await expect
      .poll(() => page.getByRole("status").filter({ hasText: "Refunded" }).count())
      .toBe(1);
    expect(await page.getByRole("status").filter({ hasText: "Refunded" }).textContent()).toContain(
      "550 credits removed",
    );
    await expect.poll(() => row.getByText("refunded", { exact: true }).count()).toBe(1);
    const purchase = await app.call("GET", `/v1/organizations/${org}/purchases/${purchaseId}`);
    expect(purchase.json()).toMatchObject({ status: "refunded", refunded_amount: "5.00" });
    const refunds = await app.call("GET", `/v1/organizations/${org}/transactions?type=refund`);
    expect(refunds.json().data.length).toBeGreaterThan(0);
    await screenshot(page, "dashboard-purchases");
  });

  it("shows packages, prices, purchases, settings and webhooks pages", async () => {
    const { page } = await signedIn();
    await page.getByRole("link", { name: "Packages" }).click();
    const create = page.getByRole("form", { name: "Create a package" });
    await create.getByLabel("Name").fill("Pro");
    await create.getByLabel("Credits", { exact: true }).fill("10000");
    await create.getByLabel("Bonus credits (optional)").fill("2500");
    await create.getByLabel("Price").fill("90.00");
    await create.getByRole("button", { name: "Create package" }).click();
    await expect.poll(() => page.locator("tr", { hasText: "Pro" }).count()).toBe(1);
    expect(await page.locator("tr", { hasText: "Pro" }).textContent()).toContain("$90.00");

    await page.getByRole("link", { name: "Prices" }).click();
    await expect.poll(() => page.getByText("gpt-4o", { exact: true }).count()).toBe(1);

    for (const tab of ["Purchases", "Auto-topup & alerts", "Webhooks"]) {
      await page.goto(`/dashboard/orgs/${org}`);
      await page.getByRole("link", { name: tab }).click();
      await expect.poll(() => page.locator(".loading").count()).toBe(0);
      expect(await page.getByRole("alert").count()).toBe(0);
    }
    await page.getByLabel("URL").fill("http://127.0.0.1:9/tally-hooks");
    await page.getByRole("button", { name: "Add endpoint" }).click();
    await expect.poll(() => page.getByText("signing secret is shown only now").count()).toBe(1);
    await expect.poll(() => page.getByText("http://127.0.0.1:9/tally-hooks").count()).toBe(1);
    await screenshot(page, "dashboard-webhooks");
  });

  it("signs out, and fits a phone screen", async () => {
    const { context, page } = await signedIn({ width: 375, height: 812 });
    await expectNoHorizontalOverflow(page);
    await page.goto(`/dashboard/orgs/${org}`);
    await page.getByRole("heading", { name: "Globex Analytics", level: 1 }).waitFor();
    await expectNoHorizontalOverflow(page);
    await screenshot(page, "dashboard-phone");
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByLabel("Platform API key").waitFor();
    expect(await context.cookies()).toHaveLength(0);
    const status = await page.evaluate(async () => (await fetch("/v1/organizations")).status);
    expect(status).toBe(401);
  });
});
