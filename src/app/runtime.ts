import { sql } from "kysely";
import pino, { type Logger } from "pino";
import { type Database, migrateToLatest, openDatabase } from "../db/index.js";
import { createPaymentProvider, type PaymentProvider } from "../modules/billing/providers/index.js";
import { purchaseExpiryTask } from "../modules/billing/purchases.service.js";
import { refundRecoveryTask } from "../modules/billing/refunds.service.js";
import { createNotifyWorker, notifyRetentionTask } from "../modules/notify/notify.service.js";
import { RequestLookups } from "../modules/orgs/lookups.js";
import { bootstrapPlatformKey } from "../modules/orgs/orgs.service.js";
import { sharedCatalogue } from "../modules/pricing/pricing.service.js";
import { registerTopupJobs, topupReconcileTask } from "../modules/topup/topup.runner.js";
import { createSessionAuthenticator } from "../modules/web/web.routes.js";
import { balanceReactions } from "./balance-reactions.js";
import type { Config } from "./config.js";
import { type AppContext, type Clock, systemClock } from "./context.js";
import { type DemoSeed, seedDemo } from "./demo.js";
import { createIdGenerator, type IdGenerator } from "./ids.js";
import { createMetrics } from "./metrics.js";
import { buildServer } from "./server.js";
import { Workers } from "./workers.js";

/** Secrets that must never reach a log line. */
export const REDACT_PATHS = [
  "req.headers.authorization",
  "req.headers.cookie",
  'req.headers["stripe-signature"]',
  'res.headers["set-cookie"]',
  "key",
  "secret",
  "*.key",
  "*.secret",
  "*.password",
];

/** Query parameters that carry secrets (portal links: `?token=`). */
const SECRET_PARAMS = new Set(["token", "key", "api_key", "secret"]);

/**
 * The URL with the values of secret query parameters replaced. Names are compared as the query
 * parser reads them, decoded: `?%74oken=` is redeemed as `token` and must be hidden as such.
 */
export function redactUrl(url: string): string {
  const q = url.indexOf("?");
  if (q < 0) return url;
  const hash = url.indexOf("#", q);
  const end = hash < 0 ? url.length : hash;
  const parts = url
    .slice(q + 1, end)
    .split("&")
    .map((part) => {
      const eq = part.indexOf("=");
      if (eq < 0) return part;
      const raw = part.slice(0, eq);
      let name = raw;
      try {
        name = decodeURIComponent(raw.replaceAll("+", " "));
      } catch {
        // Not decodable: compared as written.
      }
      return SECRET_PARAMS.has(name.trim().toLowerCase()) ? `${raw}=[redacted]` : part;
    });
  return `${url.slice(0, q + 1)}${parts.join("&")}${url.slice(end)}`;
}

interface LoggedRequest {
  method?: string;
  url?: string;
  headers?: Record<string, unknown>;
  host?: string;
  ip?: string;
  socket?: { remotePort?: number };
}

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      serializers: {
        // Fastify's request serializer, with secrets taken out of the URL.
        req: (req: LoggedRequest) => ({
          method: req.method,
          url: typeof req.url === "string" ? redactUrl(req.url) : req.url,
          version: req.headers?.["accept-version"],
          host: req.host,
          remoteAddress: req.ip,
          remotePort: req.socket?.remotePort,
        }),
      },
    },
    destination,
  );
}

export interface RuntimeOptions {
  clock?: Clock;
  ids?: IdGenerator;
  logger?: Logger;
  database?: Database;
  /** The payment processor (default: the one `config` names). */
  payments?: PaymentProvider;
  /** Start background workers (default true). */
  workers?: boolean;
  /** Printed lines for a person at the terminal (first-start key, URLs). */
  print?: (line: string) => void;
}

export interface Runtime {
  ctx: AppContext;
  app: Awaited<ReturnType<typeof buildServer>>;
  database: Database;
  workers: Workers;
  /** The generated platform key when this start created one, else null. */
  generatedAdminKey: string | null;
  /** The demo organisation when this start seeded or found it, else null. */
  demo: DemoSeed | null;
  listen(): Promise<string>;
  close(): Promise<void>;
}

export async function createRuntime(
  config: Config,
  options: RuntimeOptions = {},
): Promise<Runtime> {
  const logger = options.logger ?? createLogger(config.logLevel);
  const print = options.print ?? (() => {});
  const database =
    options.database ??
    (await openDatabase({
      url: config.databaseUrl,
      dataDir: config.dataDir,
      onInitialising: () =>
        print(
          `Initialising embedded database in ${config.dataDir} (first start takes a few seconds)…`,
        ),
    }));
  let unlisten = async () => {};
  try {
    const applied = await migrateToLatest(database.db);
    if (applied.length > 0) logger.info({ migrations: applied }, "migrations applied");
    if (config.paymentProvider === "stripe" && !config.stripe.webhookSecret) {
      logger.warn(
        "STRIPE_WEBHOOK_SECRET is not set: Stripe's notifications are refused (503, Stripe retries them) and paid checkouts are not applied until it is",
      );
    }

    const ctx: AppContext = {
      config,
      db: database.db,
      flushDb: database.flushDb,
      dbKind: database.kind,
      clock: options.clock ?? systemClock,
      ids: options.ids ?? createIdGenerator(),
      logger,
      metrics: createMetrics(),
      payments: options.payments ?? createPaymentProvider(config),
      balanceObservers: [],
      lookups: new RequestLookups(database.db),
    };
    const catalogue = sharedCatalogue(ctx);
    unlisten = await database.listen("tally_cache", {
      onMessage: () => {
        ctx.lookups.invalidate();
        catalogue.changed();
      },
      onState: (live) => {
        ctx.lookups.setLive(live);
        catalogue.setLive(live);
      },
    });
    ctx.balanceObservers.push(balanceReactions);
    registerTopupJobs(ctx);
    const generatedAdminKey = await bootstrapPlatformKey(ctx);
    if (generatedAdminKey) {
      // Shown at once: it is stored already, and a start that fails later (a port in use) must
      // not leave the operator without it — the next start finds a platform key and makes none.
      print("A platform API key was generated. It is shown only this once — store it now:");
      print(`  ${generatedAdminKey}`);
      print("(sign in to the dashboard with it)");
      print("");
    }
    const app = await buildServer(ctx, { sessions: createSessionAuthenticator(ctx) });
    // TALLY_DEMO is for the embedded database only (API.md): explicit true seeds it; unset seeds
    // only an empty one that this runtime opened itself (not one handed in by tests). On
    // PostgreSQL it is ignored — a variable left set must never put demo packages on sale in
    // production; `tally demo` seeds any database on purpose.
    if (config.demo === true && database.kind === "postgres") {
      print("TALLY_DEMO is ignored on PostgreSQL (seed demo data there with `tally demo`).");
    }
    const seedDemoData =
      database.kind === "pglite" &&
      (config.demo === true || (config.demo === null && !options.database && (await isEmpty(ctx))));
    let demo: DemoSeed | null = null;
    if (seedDemoData) {
      print("Seeding demo data (TALLY_DEMO)…");
      demo = await seedDemo(ctx);
    }
    const workers = new Workers(ctx);
    workers.add(createNotifyWorker(ctx));
    workers.add(notifyRetentionTask);
    workers.add(purchaseExpiryTask);
    workers.add(topupReconcileTask);
    workers.add(refundRecoveryTask);
    if (options.workers !== false) workers.start();

    return {
      ctx,
      app,
      database,
      workers,
      generatedAdminKey,
      demo,
      listen: () => app.listen({ port: config.port, host: config.host }),
      async close() {
        await workers.stop();
        await app.close();
        await unlisten();
        await database.close();
      },
    };
  } catch (error) {
    await unlisten();
    await database.close();
    throw error;
  }
}

/**
 * Nothing an operator set up: no organisation, credit package or webhook endpoint, and no price
 * catalogue but the seeded one. (A database with a package and no organisation yet is someone's
 * setup: demo packages must not go on sale beside it.)
 */
async function isEmpty(ctx: AppContext): Promise<boolean> {
  const row = await sql<{ used: boolean }>`select
      exists (select 1 from organizations) or exists (select 1 from credit_packages)
      or exists (select 1 from webhook_endpoints)
      or (select count(*) from price_versions) > 1 as used`.execute(ctx.db);
  return row.rows[0]?.used === false;
}
