import { isIP } from "node:net";
import { isCurrency } from "../modules/ledger/money.js";
import { PLAN_NAME_PATTERN } from "./ids.js";

/**
 * A host name: dot-separated labels of letters, digits and inner hyphens — or underscores, which
 * container names (`tally_api`) carry and resolvers accept.
 */
const HOSTNAME =
  /^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*$/;

/**
 * The only reader of `process.env`. The environment is parsed once; every problem is collected and
 * reported together, and the result is frozen.
 */
export interface Config {
  readonly port: number;
  readonly host: string;
  readonly databaseUrl: string | null;
  readonly dataDir: string;
  readonly adminKey: string | null;
  readonly publicUrl: string;
  readonly paymentProvider: "sandbox" | "stripe";
  readonly stripe: {
    readonly secretKey: string | null;
    readonly webhookSecret: string | null;
    readonly apiBase: string | null;
  };
  readonly currency: string;
  readonly creditPlans: readonly string[];
  readonly usageBackdateDays: number;
  readonly allowPrivateWebhookUrls: boolean;
  readonly smtpUrl: string | null;
  readonly emailFrom: string;
  /** null = decide at start (true on an empty embedded database). */
  readonly demo: boolean | null;
  readonly logLevel: string;
  /** Per-instance request budgets; 0 turns a budget off. */
  readonly rateLimit: {
    /** Requests per second for one API key, averaged over the window. */
    readonly perKeyPerSecond: number;
    /** Requests per second for one client address, for requests without an API key. */
    readonly anonymousPerSecond: number;
    readonly windowSeconds: number;
  };
}

/**
 * A URL as an error message may quote it: its password and query string (which can carry one)
 * are blanked, and so is a user name given without a password (a token used as one). Text that
 * is not such a URL (a libpq `key=value` string, a JDBC URL, a `.pgpass` line, `host:port?pass=…`)
 * is quoted only up to its first `@`, `?`, `=`, `;`, `:` or space.
 */
export function withoutSecrets(raw: string): string {
  const scheme = /^([a-z][a-z0-9+.-]*:\/\/)([^/?#]*)([^?#]*)([?#].*)?$/i.exec(raw);
  if (!scheme) {
    const cut = raw.search(/[@?=;:\s]/);
    return cut < 0 ? raw : `${raw.slice(0, cut)}…`;
  }
  const [, prefix, authority, path, rest] = scheme;
  const at = authority!.lastIndexOf("@");
  const user = authority!.slice(0, Math.max(at, 0));
  const hostPart =
    at < 0
      ? authority
      : `${user.includes(":") ? user.replace(/:.*/, ":***") : "***"}@${authority!.slice(at + 1)}`;
  return `${prefix}${hostPart}${path}${rest ? `${rest[0]}***` : ""}`;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`Invalid configuration:\n${problems.map((p) => `  - ${p}`).join("\n")}`);
  }
}

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const problems: string[] = [];
  const str = (name: string): string | null => {
    const v = env[name];
    return v === undefined || v.trim() === "" ? null : v.trim();
  };
  const int = (name: string, fallback: number, min: number, max: number): number => {
    const raw = str(name);
    if (raw === null) return fallback;
    if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
      problems.push(`${name} must be an integer between ${min} and ${max} (got "${raw}")`);
      return fallback;
    }
    return Number(raw);
  };
  const bool = (name: string): boolean | null => {
    const raw = str(name);
    if (raw === null) return null;
    if (/^(true|1|yes)$/i.test(raw)) return true;
    if (/^(false|0|no)$/i.test(raw)) return false;
    problems.push(`${name} must be true or false (got "${raw}")`);
    return null;
  };
  const url = (name: string, protocols: string[]): string | null => {
    const raw = str(name);
    if (raw === null) return null;
    try {
      const u = new URL(raw);
      if (!protocols.includes(u.protocol)) throw new Error();
      return raw;
    } catch {
      problems.push(
        `${name} must be a ${protocols.join(" or ")} URL (got "${withoutSecrets(raw)}")`,
      );
      return null;
    }
  };

  const port = int("PORT", 8080, 0, 65535);
  const host = str("HOST") ?? "127.0.0.1";
  if (!isIP(host) && !HOSTNAME.test(host)) {
    problems.push(`HOST must be an IP address or a host name (got "${host}")`);
  }
  const databaseUrl = url("DATABASE_URL", ["postgres:", "postgresql:"]);
  const adminKey = str("TALLY_ADMIN_KEY");
  if (adminKey !== null && adminKey.length < 24) {
    problems.push("TALLY_ADMIN_KEY must be at least 24 characters");
  }
  // A bearer token is one run of visible ASCII: a key with a space or a non-ASCII character
  // would be registered and never authenticate.
  if (adminKey !== null && !/^[\x21-\x7e]+$/.test(adminKey)) {
    problems.push(
      "TALLY_ADMIN_KEY must be visible ASCII characters only (no spaces): it is sent as a bearer token",
    );
  }
  // Normalised (`HTTPS://Billing.Example/` → `https://billing.example`): cookies, HSTS and links
  // test its scheme by prefix.
  const givenPublicUrl = url("TALLY_PUBLIC_URL", ["http:", "https:"]);
  const publicUrl = (
    givenPublicUrl === null
      ? `http://${host.includes(":") ? `[${host}]` : host}:${port}`
      : new URL(givenPublicUrl).href
  ).replace(/\/+$/, "");

  const stripeSecret = str("STRIPE_SECRET_KEY");
  const providerRaw = str("TALLY_PAYMENT_PROVIDER") ?? (stripeSecret ? "stripe" : "sandbox");
  let paymentProvider: Config["paymentProvider"] = "sandbox";
  if (providerRaw === "sandbox" || providerRaw === "stripe") paymentProvider = providerRaw;
  else problems.push(`TALLY_PAYMENT_PROVIDER must be sandbox or stripe (got "${providerRaw}")`);
  const stripeWebhookSecret = str("STRIPE_WEBHOOK_SECRET");
  // Without STRIPE_WEBHOOK_SECRET checkouts still open, but Stripe's notifications cannot be
  // verified: the start logs a warning and the webhook route answers 503 (Stripe retries).
  if (paymentProvider === "stripe" && !stripeSecret) {
    problems.push("STRIPE_SECRET_KEY is required for the stripe provider");
  }

  const currency = (str("TALLY_CURRENCY") ?? "USD").toUpperCase();
  if (!isCurrency(currency))
    problems.push(`TALLY_CURRENCY must be an ISO 4217 code (got "${currency}")`);

  const plans = (str("TALLY_CREDIT_PLANS") ?? "professional,enterprise")
    .split(",")
    .map((p) => p.trim())
    .filter(Boolean);
  if (plans.length === 0) problems.push("TALLY_CREDIT_PLANS must name at least one plan");
  for (const plan of plans) {
    // The plan names an organisation can have (POST /v1/organizations): a typo such as
    // "professional;enterprise" would otherwise silently turn credits billing off for everyone.
    if (!new RegExp(PLAN_NAME_PATTERN).test(plan)) {
      problems.push(
        `TALLY_CREDIT_PLANS: "${plan}" is not a plan name (1–64 letters, digits, ".", "_" or "-"; plans are separated by commas)`,
      );
    }
  }

  const logLevel = str("LOG_LEVEL") ?? "info";
  if (!LOG_LEVELS.includes(logLevel)) {
    problems.push(`LOG_LEVEL must be one of ${LOG_LEVELS.join(", ")} (got "${logLevel}")`);
  }

  const config: Config = {
    port,
    host,
    databaseUrl,
    dataDir: str("TALLY_DATA_DIR") ?? "./.tally",
    adminKey,
    publicUrl,
    paymentProvider,
    stripe: {
      secretKey: stripeSecret,
      webhookSecret: stripeWebhookSecret,
      apiBase: url("STRIPE_API_BASE", ["http:", "https:"]),
    },
    currency,
    creditPlans: plans,
    usageBackdateDays: int("TALLY_USAGE_BACKDATE_DAYS", 35, 0, 3650),
    allowPrivateWebhookUrls: bool("TALLY_ALLOW_PRIVATE_WEBHOOK_URLS") ?? false,
    smtpUrl: url("TALLY_SMTP_URL", ["smtp:", "smtps:"]),
    emailFrom: str("TALLY_EMAIL_FROM") ?? "Tally <tally@localhost>",
    demo: bool("TALLY_DEMO"),
    logLevel,
    rateLimit: {
      // Far above what one instance serves on the usage hot path (64 connections of one key
      // pushing single events), so only a runaway client meets it.
      perKeyPerSecond: int("TALLY_RATE_LIMIT_PER_SECOND", 25_000, 0, 10_000_000),
      anonymousPerSecond: int("TALLY_RATE_LIMIT_ANONYMOUS_PER_SECOND", 1_000, 0, 10_000_000),
      windowSeconds: int("TALLY_RATE_LIMIT_WINDOW_SECONDS", 10, 1, 3600),
    },
  };
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}
