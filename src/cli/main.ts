import { Command, Option } from "commander";
import { ConfigError, loadConfig } from "../app/config.js";
import type { AppContext } from "../app/context.js";
import { systemClock } from "../app/context.js";
import { createIdGenerator } from "../app/ids.js";
import { createMetrics } from "../app/metrics.js";
import { DataDirLockedError, migrateToLatest, openDatabase } from "../db/index.js";
import { verifyLedger } from "../modules/ledger/ledger.service.js";
import { createApiKey, resolveOrganization } from "../modules/orgs/orgs.service.js";

// The HTTP server and every module load only for `start`: one-shot commands and configuration
// errors answer about a second sooner.
const runtimeModule = () => import("../app/runtime.js");

const out = (line: string) => process.stdout.write(`${line}\n`);

/** Opens the configured database, migrated, as a context for one-shot commands. */
async function withContext<T>(fn: (ctx: AppContext) => Promise<T>): Promise<T> {
  const config = loadConfig();
  const database = await openDatabase({
    url: config.databaseUrl,
    dataDir: config.dataDir,
    onInitialising: () =>
      process.stderr.write(`Initialising embedded database in ${config.dataDir}…\n`),
  });
  try {
    await migrateToLatest(database.db);
    const ctx: AppContext = {
      config,
      db: database.db,
      dbKind: database.kind,
      clock: systemClock,
      ids: createIdGenerator(),
      logger: (await runtimeModule()).createLogger("warn"),
      metrics: createMetrics(),
      balanceObservers: [],
    };
    return await fn(ctx);
  } finally {
    await database.close();
  }
}

export function buildCli(): Command {
  const program = new Command("tally")
    .description("Tally — prepaid credits billing service")
    .showHelpAfterError();

  program
    .command("start")
    .description("Start the HTTP API, dashboard and background workers")
    .action(async () => {
      const config = loadConfig();
      const { createRuntime } = await runtimeModule();
      const runtime = await createRuntime(config, { print: out });
      const url = await runtime.listen();
      out(
        `Tally is listening on ${url} (database: ${runtime.database.kind}, payments: ${config.paymentProvider})`,
      );
      out(`  Dashboard: ${config.publicUrl}/dashboard`);
      out(`  API docs:  ${config.publicUrl}/docs`);
      if (runtime.generatedAdminKey) {
        out("");
        out("  A platform API key was generated. It is shown only this once — store it now:");
        out(`    ${runtime.generatedAdminKey}`);
        out("  (sign in to the dashboard with it)");
      }
      if (runtime.demo) {
        out("");
        out('  Demo data: organisation ext:demo ("Demo Labs"), users ada/grace/linus.');
        out(`  Customer portal as ada (one-time link, 15 min): ${runtime.demo.portalUrl}`);
        out("  New links: `npx tally demo`. Start with TALLY_DEMO=false to skip demo data.");
      }
      out("");
      const shutdown = async (signal: string) => {
        out(`${signal} received, shutting down…`);
        await runtime.close();
        process.exit(0);
      };
      process.once("SIGINT", () => void shutdown("SIGINT"));
      process.once("SIGTERM", () => void shutdown("SIGTERM"));
    });

  program
    .command("migrate")
    .description("Apply pending database migrations and exit")
    .action(async () => {
      const config = loadConfig();
      const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir });
      try {
        const applied = await migrateToLatest(database.db);
        out(applied.length ? `Applied: ${applied.join(", ")}` : "Database is up to date.");
      } finally {
        await database.close();
      }
    });

  const keys = program.command("keys").description("Manage API keys");
  keys
    .command("create")
    .description("Create an API key and print its secret once")
    .option("--platform", "a platform key (all organisations)")
    .option("--org <id>", "organisation id or ext:<external_id>")
    .addOption(
      new Option("--role <role>", "role of an organisation key").choices([
        "admin",
        "billing",
        "ingest",
        "read",
      ]),
    )
    .option("--name <name>", "a name for the key", "cli")
    .option("--json", "print JSON")
    .action(
      async (opts: {
        platform?: boolean;
        org?: string;
        role?: string;
        name: string;
        json?: boolean;
      }) => {
        if (Boolean(opts.platform) === Boolean(opts.org)) {
          throw new UsageError("Give exactly one of --platform or --org ID.");
        }
        if (opts.org && !opts.role)
          throw new UsageError("--org needs --role admin|billing|ingest|read.");
        await withContext(async (ctx) => {
          let orgId: string | null = null;
          if (opts.org) {
            const org = await resolveOrganization(ctx.db, opts.org);
            if (!org) throw new UsageError(`No organisation ${opts.org}.`);
            orgId = org.id;
          }
          const role = opts.platform ? "platform" : (opts.role as "admin");
          const { row, secret } = await createApiKey(ctx, { orgId, name: opts.name, role });
          if (opts.json) out(JSON.stringify({ id: row.id, org_id: orgId, role, key: secret }));
          else out(`${row.id} (${role}${orgId ? ` of ${orgId}` : ""}): ${secret}`);
        });
      },
    );

  program
    .command("demo")
    .description("Seed the demo organisation (ext:demo) if absent and print a customer portal link")
    .option("--json", "print JSON")
    .action(async (opts: { json?: boolean }) => {
      await withContext(async (ctx) => {
        const { seedDemo } = await import("../app/demo.js");
        const demo = await seedDemo(ctx);
        if (opts.json) out(JSON.stringify(demo));
        else {
          out(`${demo.created ? "Seeded" : "Found"} demo organisation ${demo.orgId} (ext:demo).`);
          out(`Customer portal as ada (one-time link, 15 min): ${demo.portalUrl}`);
        }
      });
    });

  program
    .command("verify")
    .description(
      "Verify ledgers: hash chain, gapless sequences, balance = Σ entries = Σ blocks − debt (exit 1 on any mismatch)",
    )
    .option("--org <id>", "only this organisation (id or ext:<external_id>)")
    .option("--json", "print JSON")
    .action(async (opts: { org?: string; json?: boolean }) => {
      const failed = await withContext(async (ctx) => {
        let orgIds: string[];
        if (opts.org) {
          const org = await resolveOrganization(ctx.db, opts.org);
          if (!org) throw new UsageError(`No organisation ${opts.org}.`);
          orgIds = [org.id];
        } else {
          orgIds = (
            await ctx.db.selectFrom("organizations").select("id").orderBy("id").execute()
          ).map((o) => o.id);
        }
        let bad = 0;
        for (const orgId of orgIds) {
          const report = await verifyLedger(ctx.db, orgId);
          if (!report.ok) bad++;
          if (opts.json) out(JSON.stringify({ org_id: orgId, ...report }));
          else {
            out(
              `${report.ok ? "ok  " : "FAIL"} ${orgId}  ${report.entries} entries  head ${report.head_hash.slice(0, 16)}…`,
            );
            for (const p of report.problems) out(`       ${p}`);
          }
        }
        if (!opts.json) out(`${orgIds.length - bad} of ${orgIds.length} organisations verified.`);
        return bad;
      });
      if (failed > 0) process.exitCode = 1;
    });

  return program;
}

class UsageError extends Error {}

export async function runCli(argv: string[]): Promise<number> {
  try {
    await buildCli().parseAsync(argv);
    return 0;
  } catch (error) {
    if (
      error instanceof ConfigError ||
      error instanceof UsageError ||
      error instanceof DataDirLockedError
    ) {
      process.stderr.write(`${error.message}\n`);
      return 2;
    }
    throw error;
  }
}

const code = await runCli(process.argv);
if (code !== 0) process.exit(code);
