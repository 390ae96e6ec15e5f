/// <reference lib="dom" />
// page.evaluate callbacks run in the browser.
import { existsSync, mkdirSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { afterAll, expect } from "vitest";
import { createTestApp, type TestApp } from "../support/app.js";

/** Debian's Chromium; CI installs it (.ci/run). A browser is never downloaded. */
export const CHROMIUM = process.env.TALLY_CHROMIUM ?? "/usr/bin/chromium";
export const ARTIFACTS = join(import.meta.dirname, "..", "..", "test-artifacts");

const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

/** One headless Chromium per test file, closed after it. Fails loudly when it is missing. */
export async function launchBrowser(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `Chromium not found at ${CHROMIUM}. Install Debian's package (apt-get install -y chromium) or set TALLY_CHROMIUM.`,
    );
  }
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
  afterAll(() => browser.close());
  return browser;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0));
    });
  });
}

/**
 * A Tally runtime on a fresh test database (PGlite, or PostgreSQL with TEST_DATABASE_URL)
 * listening on 127.0.0.1, with TALLY_PUBLIC_URL set to that address so that checkout and portal
 * links lead back to it. The port is chosen first because the public URL is part of the config.
 */
export async function startServer(
  env: Record<string, string> = {},
): Promise<{ app: TestApp; url: string }> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const app = await createTestApp({
    env: { ...env, HOST: "127.0.0.1", PORT: String(port), TALLY_PUBLIC_URL: url },
  });
  await app.runtime.listen();
  return { app, url };
}

/**
 * A fresh browser context (its own cookies) whose pages fail the test on a Content Security
 * Policy violation or an uncaught error.
 */
export async function newContext(
  browser: Browser,
  url: string,
  options: { width?: number; height?: number } = {},
): Promise<BrowserContext & { problems: string[] }> {
  const context = (await browser.newContext({
    baseURL: url,
    locale: "en-US",
    timezoneId: "UTC",
    viewport: { width: options.width ?? 1280, height: options.height ?? 900 },
    acceptDownloads: true,
  })) as BrowserContext & { problems: string[] };
  context.problems = [];
  context.on("page", (page) => watch(page, context.problems));
  return context;
}

function watch(page: Page, problems: string[]): void {
  page.on("console", (msg) => {
    if (msg.type() === "error" && /Content.Security.Policy|Refused to/i.test(msg.text())) {
      problems.push(msg.text());
    }
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
}

export async function screenshot(page: Page, name: string): Promise<void> {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** The page fits a phone's width: nothing makes the whole document scroll sideways. */
export async function expectNoHorizontalOverflow(page: Page): Promise<void> {
  const { scroll, client } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    client: document.documentElement.clientWidth,
  }));
  expect(scroll, "document wider than the viewport").toBeLessThanOrEqual(client);
}

/** Buys a package for an organisation through the sandbox checkout (saves the test card). */
export async function buyWithSandbox(
  app: TestApp,
  orgId: string,
  packageId: string,
): Promise<string> {
  const purchase = await app.call("POST", `/v1/organizations/${orgId}/purchases`, {
    body: { package_id: packageId },
  });
  if (purchase.statusCode !== 201) throw new Error(`purchase: ${purchase.body}`);
  const paid = await app.runtime.app.inject({
    method: "POST",
    url: `/sandbox/checkout/${purchase.json().id}`,
    headers: { "content-type": "application/x-www-form-urlencoded" },
    payload: "action=pay&card=success",
  });
  if (paid.statusCode !== 303) throw new Error(`sandbox pay: ${paid.statusCode} ${paid.body}`);
  return purchase.json().id;
}

/** Usage over the last weeks (relative to the test clock) so that charts have data. */
export async function seedUsage(app: TestApp, orgId: string): Promise<void> {
  const now = app.clock.now().getTime();
  const events = [];
  for (let day = 0; day < 20; day++) {
    const timestamp = new Date(now - day * 86_400_000 - 3_600_000).toISOString();
    events.push({
      id: `e2e-ai-${day}`,
      org_id: orgId,
      type: "ai_tokens",
      timestamp,
      user_id: day % 2 ? "ada" : "bob",
      operation: "chat.completion",
      model: "gpt-4o",
      tokens: { input: 1000 + day * 100, cached_input: 0, cache_write: 0, output: 500 },
    });
    events.push({
      id: `e2e-cpu-${day}`,
      org_id: orgId,
      type: "compute",
      timestamp,
      meter: "compute.vcpu_seconds",
      quantity: String(100 + day * 10),
    });
  }
  const res = await app.call("POST", "/v1/usage-events", { body: { events } });
  if (res.statusCode !== 200) throw new Error(`usage: ${res.statusCode} ${res.body}`);
}
