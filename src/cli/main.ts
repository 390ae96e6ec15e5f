import { Command, CommanderError, Option } from "commander";
import { ConfigError, loadConfig } from "../app/config.js";
import type { AppContext } from "../app/context.js";
import { systemClock } from "../app/context.js";
import { csvLine } from "../app/csv.js";
import { limitHeapGrowth } from "../app/heap.js";
import { CLIENT_ID_PATTERN, createIdGenerator, PLAN_NAME_PATTERN } from "../app/ids.js";
import { createMetrics } from "../app/metrics.js";
import {
  DataDirLockedError,
  inSnapshot,
  isDatabaseUnavailable,
  migrateToLatest,
  openDatabase,
} from "../db/index.js";
import { verifyLedger } from "../modules/ledger/ledger.service.js";
import { RequestLookups } from "../modules/orgs/lookups.js";
import * as orgsRepo from "../modules/orgs/orgs.repo.js";
import {
  ADMIN_KEY_NAME,
  apiKeyView,
  createApiKey,
  createOrganization,
  isCreditsEligible,
  type Organization,
  resolveOrganization,
} from "../modules/orgs/orgs.service.js";
import { USAGE_SUMMARY_CSV_COLUMNS, usageSummaryCsvRows } from "../modules/reports/reports.csv.js";
import { ledgerSummaries, usageSummaries } from "../modules/reports/reports.service.js";
import { reportText } from "../modules/reports/reports.text.js";
import { fields, intOption, table, visible } from "./format.js";

// The HTTP server and every module load only for `start`: one-shot commands and configuration
// errors answer about a second sooner.
const runtimeModule = () => import("../app/runtime.js");

/**
 * A line for the terminal. Names, labels and ids come from API clients: control characters
 * (escape sequences that could rewrite the screen, carriage returns) are shown as `\xNN`.
 */
const out = (line: string) => process.stdout.write(`${visible(line)}\n`);

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
      flushDb: database.flushDb,
      dbKind: database.kind,
      clock: systemClock,
      ids: createIdGenerator(),
      logger: (await runtimeModule()).createLogger("warn"),
      metrics: createMetrics(),
      payments: (await import("../modules/billing/providers/index.js")).createPaymentProvider(
        config,
      ),
      balanceObservers: [],
      // Not listening for changes, so never caching: a one-shot command reads what is there.
      lookups: new RequestLookups(database.db),
    };
    return await fn(ctx);
  } finally {
    await database.close();
  }
}

export function buildCli(): Command {
  // Commander's own argument errors throw (inherited by every subcommand) instead of exiting:
  // `runCli` gives them exit code 2 like Tally's, after one line of message and a hint.
  const program = new Command("tally")
    .description("Tally — prepaid credits billing service")
    .showHelpAfterError("(run the command with --help for its usage)")
    .exitOverride();

  program
    .command("start")
    .description("Start the HTTP API, dashboard and background workers")
    .action(async () => {
      const config = loadConfig();
      limitHeapGrowth();
      const { createRuntime } = await runtimeModule();
      const runtime = await createRuntime(config, { print: out });
      const url = await runtime.listen();
      out(
        `Tally is listening on ${url} (database: ${runtime.database.kind}, payments: ${config.paymentProvider})`,
      );
      out(`  Dashboard: ${config.publicUrl}/dashboard`);
      out(`  API docs:  ${config.publicUrl}/docs`);
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

  const keys = program.command("keys").description("Manage API keys: create, list, revoke");
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
        if (opts.platform && opts.role)
          throw new UsageError("--role is for --org keys; a --platform key has the platform role.");
        const name = nameOption(opts.name);
        // As in the API: the name marks the key TALLY_ADMIN_KEY configures (a start with another
        // value revokes every platform key of that name).
        if (opts.platform && name === ADMIN_KEY_NAME)
          throw new UsageError(
            `The name ${ADMIN_KEY_NAME} is reserved for the key TALLY_ADMIN_KEY configures.`,
          );
        await withContext(async (ctx) => {
          let orgId: string | null = null;
          if (opts.org) {
            const org = await resolveOrganization(ctx.db, opts.org);
            if (!org) throw new UsageError(`No organisation ${opts.org}.`);
            orgId = org.id;
          }
          const role = opts.platform ? "platform" : (opts.role as "admin");
          const { row, secret } = await createApiKey(ctx, { orgId, name, role });
          if (opts.json) out(JSON.stringify({ id: row.id, org_id: orgId, role, key: secret }));
          else out(`${row.id} (${role}${orgId ? ` of ${orgId}` : ""}): ${secret}`);
        });
      },
    );

  const noOrg = (ref: string) =>
    `No organisation ${ref}. Name one by its org_… id or ext:<external_id> (see \`tally orgs list\`).`;
  /** The balance as `GET …/balance` answers it (holds past their expiry no longer reserved). */
  const balanceJson = async (ctx: AppContext, org: Organization) => {
    const [{ balanceFlags }, { balanceDto }] = await Promise.all([
      import("../app/balance-reactions.js"),
      import("../modules/ledger/ledger.routes.js"),
    ]);
    return balanceDto(ctx, org, balanceFlags);
  };
  const organizationJson = async (ctx: AppContext, org: Organization) =>
    (await import("../modules/orgs/orgs.routes.js")).organizationDto(ctx, org);

  keys
    .command("list")
    .description("List API keys (never their secrets): all, one organisation's, or platform keys")
    .option("--org <id>", "only this organisation's keys (id or ext:<external_id>)")
    .option("--platform", "only platform keys")
    .option("--active", "leave out revoked keys")
    .option("--json", 'print JSON: {"data": [key, …]} as the API lists keys')
    .action(
      async (opts: { org?: string; platform?: boolean; active?: boolean; json?: boolean }) => {
        if (opts.org && opts.platform) {
          throw new UsageError("Give at most one of --org ID and --platform.");
        }
        await withContext(async (ctx) => {
          let orgId: string | null | undefined = opts.platform ? null : undefined;
          if (opts.org) {
            const org = await resolveOrganization(ctx.db, opts.org);
            if (!org) throw new UsageError(noOrg(opts.org));
            orgId = org.id;
          }
          const rows = (await orgsRepo.listAllApiKeys(ctx.db, orgId)).filter(
            (k) => !opts.active || k.revoked_at === null,
          );
          if (opts.json) return out(JSON.stringify({ data: rows.map(apiKeyView) }));
          if (rows.length === 0) return out("No API keys.");
          const header = [
            "ID",
            "ORGANISATION",
            "ROLE",
            "NAME",
            "PREFIX",
            "CREATED",
            "LAST USED",
            "STATUS",
          ];
          const day = (d: Date | null) => d?.toISOString().slice(0, 16).replace("T", " ") ?? null;
          for (const line of table(
            header,
            rows.map((k) => [
              k.id,
              k.org_id ?? "(platform)",
              k.role,
              k.name,
              `${k.key_prefix}…`,
              day(k.created_at),
              day(k.last_used_at),
              k.revoked_at ? `revoked ${day(k.revoked_at)}` : "active",
            ]),
          ))
            out(line);
        });
      },
    );

  keys
    .command("revoke")
    .description("Revoke an API key at once (an organisation's or a platform key)")
    .argument("<key_id>", "the key's id (key_…), as `tally keys list` shows it")
    .option("--json", "print JSON: the key as the API lists it")
    .action(async (keyId: string, opts: { json?: boolean }) => {
      await withContext(async (ctx) => {
        const key = await orgsRepo.findApiKeyById(ctx.db, keyId);
        if (!key) throw new UsageError(`No API key ${keyId} (see \`tally keys list\`).`);
        const revoked = key.revoked_at
          ? key
          : ((await orgsRepo.revokeApiKeyById(ctx.db, keyId, ctx.clock.now())) ??
            (await orgsRepo.findApiKeyById(ctx.db, keyId))!);
        if (opts.json) out(JSON.stringify(apiKeyView(revoked)));
        else if (key.revoked_at) {
          out(`${keyId} was already revoked at ${key.revoked_at.toISOString()}.`);
        } else out(`Revoked ${keyId} (${key.role}${key.org_id ? ` of ${key.org_id}` : ""}).`);
        const lastPlatformKey =
          key.role === "platform" &&
          !key.revoked_at &&
          (await orgsRepo.countPlatformKeys(ctx.db)) === 0;
        if (lastPlatformKey) {
          process.stderr.write(
            "No active platform key is left: create one with `tally keys create --platform` " +
              "(or the next `tally start` generates one).\n",
          );
        }
      });
    });

  const orgs = program.command("orgs").description("Manage organisations: create, list, show");
  orgs
    .command("create")
    .description("Create an organisation")
    .requiredOption("--name <name>", "its name (1–200 characters)")
    .option("--external-id <id>", "your own unique id for it (1–128 of A-Z a-z 0-9 . _ : -)")
    .option(
      "--plan <plan>",
      "its plan; only TALLY_CREDIT_PLANS get credits billing",
      "professional",
    )
    .option("--json", "print JSON: the organisation as the API returns it")
    .action(async (opts: { name: string; externalId?: string; plan: string; json?: boolean }) => {
      const name = nameOption(opts.name);
      if (opts.externalId !== undefined && !new RegExp(CLIENT_ID_PATTERN).test(opts.externalId)) {
        throw new UsageError("--external-id must be 1–128 characters of A-Z a-z 0-9 . _ : -");
      }
      if (!new RegExp(PLAN_NAME_PATTERN).test(opts.plan)) {
        throw new UsageError("--plan must be 1–64 characters of A-Z a-z 0-9 . _ -");
      }
      await withContext(async (ctx) => {
        const created = await createOrganization(ctx, {
          name,
          external_id: opts.externalId ?? null,
          plan: opts.plan,
        });
        if (!created.ok) throw new UsageError(created.message ?? "The organisation exists.");
        const org = created.value;
        if (opts.json) return out(JSON.stringify(await organizationJson(ctx, org)));
        out(`Created ${org.id}${org.external_id ? ` (ext:${org.external_id})` : ""}: ${org.name}`);
        if (!isCreditsEligible(ctx, org)) {
          out(`  Note: plan "${org.plan}" is not in TALLY_CREDIT_PLANS; credits billing is off.`);
        }
      });
    });

  orgs
    .command("list")
    .description("List organisations with their balances, newest first")
    .option("--search <text>", "match name, external id or id")
    .option("--limit <n>", "at most this many (1–1000)", intOption("--limit", 1, 1000), 100)
    .option("--json", 'print JSON: {"data": [organisation + balance], "has_more"}')
    .action(async (opts: { search?: string; limit: number; json?: boolean }) => {
      await withContext(async (ctx) => {
        const found = await orgsRepo.listOrgs(ctx.db, { limit: opts.limit, search: opts.search });
        const page = found.slice(0, opts.limit);
        const balances = await Promise.all(page.map((o) => balanceJson(ctx, o)));
        if (opts.json) {
          const data = await Promise.all(
            page.map(async (o, i) => ({
              ...(await organizationJson(ctx, o)),
              balance: balances[i]!.balance,
              available: balances[i]!.available,
            })),
          );
          return out(JSON.stringify({ data, has_more: found.length > opts.limit }));
        }
        if (page.length === 0) {
          return out(
            opts.search ? `No organisation matches "${opts.search}".` : "No organisations.",
          );
        }
        const header = ["ID", "EXTERNAL ID", "NAME", "PLAN", "BALANCE", "AVAILABLE"];
        const rows = page.map((o, i) => [
          o.id,
          o.external_id,
          o.name,
          o.plan,
          balances[i]!.balance,
          balances[i]!.available,
        ]);
        for (const line of table(header, rows)) out(line);
        if (found.length > opts.limit) out(`… more: raise --limit or narrow with --search.`);
      });
    });

  orgs
    .command("show")
    .description("Show an organisation: details, balance, users and API keys")
    .argument("<org>", "organisation id or ext:<external_id>")
    .option("--json", "print JSON: the organisation with balance, users and api_keys")
    .action(async (ref: string, opts: { json?: boolean }) => {
      await withContext(async (ctx) => {
        const org = await resolveOrganization(ctx.db, ref);
        if (!org) throw new UsageError(noOrg(ref));
        const [b, userRows, apiKeys] = await Promise.all([
          balanceJson(ctx, org),
          orgsRepo.listUsers(ctx.db, org.id, 1000),
          orgsRepo.listAllApiKeys(ctx.db, org.id),
        ]);
        const users = userRows.slice(0, 1000);
        const dto = await organizationJson(ctx, org);
        if (opts.json) {
          return out(
            JSON.stringify({
              ...dto,
              balance: b,
              users: users.map((u) => ({
                id: u.id,
                email: u.email,
                name: u.name,
                role: u.role,
                created_at: u.created_at.toISOString(),
              })),
              api_keys: apiKeys.map(apiKeyView),
            }),
          );
        }
        const active = apiKeys.filter((k) => k.revoked_at === null);
        for (const line of fields([
          ["id", org.id],
          ["name", org.name],
          ["external id", org.external_id],
          ["plan", `${org.plan} (credits billing ${dto.credits_enabled ? "on" : "off"})`],
          ["created", dto.created_at],
          ["metadata", Object.keys(dto.metadata).length ? JSON.stringify(dto.metadata) : null],
          ["balance", b.balance],
          ["reserved", b.reserved],
          ["available", b.available],
          ["overdraft limit", dto.overdraft_limit],
          ["ledger entries", b.last_sequence],
          ["users", users.length],
          ["api keys", `${active.length} active, ${apiKeys.length - active.length} revoked`],
        ]))
          out(line);
        if (users.length > 0) {
          out("");
          const rows = users.map((u) => [u.id, u.email, u.name, u.role]);
          for (const line of table(["USER", "EMAIL", "NAME", "ROLE"], rows)) out(`  ${line}`);
        }
      });
    });

  program
    .command("balance")
    .description("Print an organisation's balance (exact decimal credits)")
    .argument("<org>", "organisation id or ext:<external_id>")
    .option(
      "--json",
      "print JSON: the balance as GET /v1/organizations/{org_id}/balance answers it",
    )
    .action(async (ref: string, opts: { json?: boolean }) => {
      await withContext(async (ctx) => {
        const org = await resolveOrganization(ctx.db, ref);
        if (!org) throw new UsageError(noOrg(ref));
        const view = await balanceJson(ctx, org);
        if (opts.json) return out(JSON.stringify(view));
        out(`${org.name} (${org.id}${org.external_id ? `, ext:${org.external_id}` : ""})`);
        for (const line of fields([
          ["balance", view.balance],
          ["reserved", view.reserved],
          ["available", view.available],
          ["overdraft limit", view.overdraft_limit],
          ["debt", view.debt],
          ["low balance", view.low_balance ? "yes" : "no"],
          ["auto-topup", view.auto_topup],
          ["updated", view.updated_at],
        ]))
          out(`  ${line}`);
      });
    });

  program.addHelpText(
    "after",
    `
Organisations are named by their org_… id or ext:<external_id>. Commands that print data take
--json for scripts; \`tally <command> --help\` (e.g. \`tally keys --help\`) lists each one's options.

Examples:
  tally orgs create --name "Acme" --external-id acme
  tally keys create --org ext:acme --role ingest
  tally balance ext:acme --json
  tally keys list --org ext:acme --active
  tally keys revoke key_01JD3M6Q8Z4X2N7V5B9C1K3H0T`,
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

  program
    .command("report")
    .description("Usage summary and ledger movements of an organisation for one month (UTC)")
    .requiredOption("--org <id>", "organisation id or ext:<external_id>")
    .option("--month <YYYY-MM>", "the month, e.g. 2026-11 (default: the current month)")
    .option("--csv", "print the usage summary as CSV (the columns of usage-summaries.csv)")
    .option("--json", "print JSON: {usage, ledger}, as the API's usage and ledger summaries")
    .action(async (opts: { org: string; month?: string; csv?: boolean; json?: boolean }) => {
      if (opts.csv && opts.json) throw new UsageError("Give at most one of --csv and --json.");
      if (
        opts.month !== undefined &&
        !(/^\d{4}-(0[1-9]|1[0-2])$/.test(opts.month) && opts.month >= "1970-01")
      ) {
        throw new UsageError("--month must be YYYY-MM from 1970-01 on, e.g. 2026-11.");
      }
      await withContext(async (ctx) => {
        const org = await resolveOrganization(ctx.db, opts.org);
        if (!org) throw new UsageError(`No organisation ${opts.org}.`);
        const periods = [opts.month ?? ctx.clock.now().toISOString().slice(0, 7)];
        // One snapshot: a flush committing between the two would show in one and not the other.
        const [[usage], [ledger]] = await inSnapshot(ctx.db, async (tx) => {
          const at = { ...ctx, db: tx };
          return [
            await usageSummaries(at, { orgId: org.id, periods }),
            await ledgerSummaries(at, { orgId: org.id, periods }),
          ] as const;
        });
        if (opts.csv) {
          process.stdout.write(csvLine(USAGE_SUMMARY_CSV_COLUMNS));
          for (const row of usageSummaryCsvRows(usage!)) process.stdout.write(csvLine(row));
        } else if (opts.json) out(JSON.stringify({ usage, ledger }));
        else for (const line of reportText(org, usage!, ledger!)) out(line);
      });
    });

  return program;
}

class UsageError extends Error {}

/**
 * One line for a failure of the surroundings — the database, the port, the data directory — which
 * the operator fixes without a stack trace. Null for anything else (a fault of Tally's own).
 */
/** A `--name`, as the API takes names: 1–200 characters once trimmed. */
function nameOption(raw: string): string {
  const name = raw.trim();
  if (name.length === 0 || name.length > 200) {
    throw new UsageError("--name must be 1–200 characters.");
  }
  return name;
}

function environmentProblem(error: unknown): string | null {
  const e = error as {
    code?: unknown;
    syscall?: unknown;
    path?: unknown;
    address?: unknown;
    port?: unknown;
    message?: unknown;
    errors?: { message?: unknown }[];
  } | null;
  if (!e || typeof e !== "object") return null;
  const message =
    (typeof e.message === "string" && e.message) ||
    (Array.isArray(e.errors) && typeof e.errors[0]?.message === "string" && e.errors[0].message) ||
    String(e.code ?? "unknown error");
  if (e.syscall === "listen") {
    const where = e.port === undefined ? `${e.address}` : `${e.address}:${e.port}`;
    return e.code === "EADDRINUSE"
      ? `Cannot listen on ${where}: the port is already in use (set PORT).`
      : `Cannot listen on ${where}: ${message} (check HOST and PORT).`;
  }
  if (
    typeof e.path === "string" &&
    ["EEXIST", "ENOTDIR", "EACCES", "EPERM", "EROFS"].includes(String(e.code))
  ) {
    return `Cannot use the file system: ${message} (check TALLY_DATA_DIR).`;
  }
  if (e.code === "3D000" || e.code === "28P01" || e.code === "28000") {
    return `The database refused the connection: ${message} (check DATABASE_URL).`;
  }
  // Kysely's words for a migration the database has and this version does not know.
  const newer = /previously executed migration (\S+) is missing/.exec(message);
  if (newer) {
    return `The database was migrated by a newer version of Tally (it has migration ${newer[1]}, which this version does not know): run that version, or restore a backup taken before the upgrade.`;
  }
  // TLS set up in DATABASE_URL (sslmode, sslrootcert, …) that cannot work.
  if (
    /\bSSL\b|certificate|self[- ]signed|TLS/i.test(message) ||
    (typeof e.code === "string" && /CERT|SSL|TLS/.test(e.code)) ||
    (e.code === "ENOENT" && typeof e.path === "string" && /\.(pem|crt|key)$|ssl|cert/i.test(e.path))
  ) {
    return `Cannot set up TLS to the database: ${message} (check the sslmode, sslrootcert, sslcert and sslkey parameters of DATABASE_URL).`;
  }
  if (isDatabaseUnavailable(error)) {
    return `Cannot reach the database: ${message} (check DATABASE_URL and that PostgreSQL is running).`;
  }
  return null;
}

export async function runCli(argv: string[]): Promise<number> {
  try {
    await buildCli().parseAsync(argv);
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Already printed by commander. Help keeps commander's code (0 when asked for, 1 when
      // shown for a missing command); a bad argument is a usage error like Tally's own.
      return ["commander.helpDisplayed", "commander.help", "commander.version"].includes(error.code)
        ? error.exitCode
        : 2;
    }
    if (
      error instanceof ConfigError ||
      error instanceof UsageError ||
      error instanceof DataDirLockedError
    ) {
      process.stderr.write(`${error.message}\n`);
      return 2;
    }
    const problem = environmentProblem(error);
    if (problem) {
      process.stderr.write(`${problem}\n`);
      return 1;
    }
    throw error;
  }
}

// `tally report … | head`: a closed pipe ends the output, not the process with a trace.
process.stdout.on("error", (error: NodeJS.ErrnoException) => {
  if (error.code === "EPIPE") process.exit(0);
  throw error;
});
const code = await runCli(process.argv);
if (code !== 0) process.exit(code);
