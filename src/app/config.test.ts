import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "./config.js";

const ADMIN_KEY = "a-platform-key-of-at-least-24-chars";

/** The problems a bad environment produces (fails the test when it loads instead). */
function problemsOf(env: Record<string, string>): string[] {
  try {
    loadConfig(env);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).problems;
  }
  throw new Error(`loadConfig accepted ${JSON.stringify(env)}`);
}

describe("loadConfig", () => {
  it("has the documented defaults for an empty environment", () => {
    const config = loadConfig({});
    expect(config).toEqual({
      port: 8080,
      host: "127.0.0.1",
      databaseUrl: null,
      dataDir: "./.tally",
      adminKey: null,
      publicUrl: "http://127.0.0.1:8080",
      paymentProvider: "sandbox",
      stripe: { secretKey: null, webhookSecret: null, apiBase: null },
      currency: "USD",
      creditPlans: ["professional", "enterprise"],
      usageBackdateDays: 35,
      allowPrivateWebhookUrls: false,
      smtpUrl: null,
      emailFrom: expect.any(String),
      demo: null,
      logLevel: "info",
      rateLimit: { perKeyPerSecond: 25_000, anonymousPerSecond: 1_000, windowSeconds: 10 },
    });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it("reads every variable", () => {
    const config = loadConfig({
      PORT: "9000",
      HOST: "0.0.0.0",
      DATABASE_URL: "postgres://u:p@db.internal:5432/tally",
      TALLY_DATA_DIR: "/var/lib/tally",
      TALLY_ADMIN_KEY: ADMIN_KEY,
      TALLY_PUBLIC_URL: "https://billing.example.com/",
      TALLY_PAYMENT_PROVIDER: "stripe",
      STRIPE_SECRET_KEY: "sk_test_123",
      STRIPE_WEBHOOK_SECRET: "whsec_123",
      STRIPE_API_BASE: "http://127.0.0.1:12111",
      TALLY_CURRENCY: "eur",
      TALLY_CREDIT_PLANS: " team , enterprise ,",
      TALLY_USAGE_BACKDATE_DAYS: "7",
      TALLY_ALLOW_PRIVATE_WEBHOOK_URLS: "true",
      TALLY_SMTP_URL: "smtp://mail.example.com:587",
      TALLY_EMAIL_FROM: "Billing <billing@example.com>",
      TALLY_DEMO: "false",
      LOG_LEVEL: "debug",
      TALLY_RATE_LIMIT_PER_SECOND: "0",
      TALLY_RATE_LIMIT_ANONYMOUS_PER_SECOND: "50",
      TALLY_RATE_LIMIT_WINDOW_SECONDS: "60",
    });
    expect(config).toEqual({
      port: 9000,
      host: "0.0.0.0",
      databaseUrl: "postgres://u:p@db.internal:5432/tally",
      dataDir: "/var/lib/tally",
      adminKey: ADMIN_KEY,
      // A trailing slash would double up in joined links.
      publicUrl: "https://billing.example.com",
      paymentProvider: "stripe",
      stripe: {
        secretKey: "sk_test_123",
        webhookSecret: "whsec_123",
        apiBase: "http://127.0.0.1:12111",
      },
      currency: "EUR",
      creditPlans: ["team", "enterprise"],
      usageBackdateDays: 7,
      allowPrivateWebhookUrls: true,
      smtpUrl: "smtp://mail.example.com:587",
      emailFrom: "Billing <billing@example.com>",
      demo: false,
      logLevel: "debug",
      rateLimit: { perKeyPerSecond: 0, anonymousPerSecond: 50, windowSeconds: 60 },
    });
  });

  it("takes IP addresses and host names as HOST", () => {
    for (const host of [
      "0.0.0.0",
      "::",
      "::1",
      "localhost",
      "tally.internal",
      "api-1.example.com",
      "tally_api",
    ]) {
      expect(loadConfig({ HOST: host }).host).toBe(host);
    }
    for (const host of ["bad host!", "-x.example", "a..b", "http://x"]) {
      expect(problemsOf({ HOST: host }), host).toHaveLength(1);
    }
  });

  it("derives the public URL from HOST and PORT", () => {
    expect(loadConfig({ HOST: "tally.local", PORT: "3000" }).publicUrl).toBe(
      "http://tally.local:3000",
    );
    expect(loadConfig({ HOST: "::1", PORT: "3000" }).publicUrl).toBe("http://[::1]:3000");
  });

  it("normalises TALLY_PUBLIC_URL: scheme and host in lower case, no trailing slash", () => {
    // Secure cookies and HSTS are decided by its scheme.
    expect(loadConfig({ TALLY_PUBLIC_URL: "HTTPS://Billing.Example.COM/tally/" }).publicUrl).toBe(
      "https://billing.example.com/tally",
    );
  });

  it("picks stripe when STRIPE_SECRET_KEY is set and sandbox otherwise", () => {
    expect(
      loadConfig({ STRIPE_SECRET_KEY: "sk_test_1", STRIPE_WEBHOOK_SECRET: "whsec_1" })
        .paymentProvider,
    ).toBe("stripe");
    expect(
      loadConfig({ TALLY_PAYMENT_PROVIDER: "sandbox", STRIPE_SECRET_KEY: "sk_1" }),
    ).toMatchObject({ paymentProvider: "sandbox" });
  });

  it("accepts the boolean spellings and treats blank values as unset", () => {
    expect(loadConfig({ TALLY_DEMO: "yes" }).demo).toBe(true);
    expect(loadConfig({ TALLY_DEMO: "1" }).demo).toBe(true);
    expect(loadConfig({ TALLY_DEMO: "NO" }).demo).toBe(false);
    expect(loadConfig({ TALLY_DEMO: "0" }).demo).toBe(false);
    expect(loadConfig({ PORT: "  ", DATABASE_URL: "" })).toMatchObject({
      port: 8080,
      databaseUrl: null,
    });
    expect(loadConfig({ PORT: "0" }).port).toBe(0);
    expect(loadConfig({ DATABASE_URL: "postgresql://localhost/x" }).databaseUrl).toBe(
      "postgresql://localhost/x",
    );
  });

  it("lists every problem of a bad environment at once", () => {
    const problems = problemsOf({
      PORT: "abc",
      HOST: "bad host!",
      DATABASE_URL: "mysql://localhost/tally",
      TALLY_ADMIN_KEY: "short",
      TALLY_PUBLIC_URL: "ftp://example.com",
      TALLY_PAYMENT_PROVIDER: "paypal",
      STRIPE_API_BASE: "not a url",
      TALLY_CURRENCY: "XYZ",
      TALLY_CREDIT_PLANS: " , ",
      TALLY_USAGE_BACKDATE_DAYS: "-1",
      TALLY_ALLOW_PRIVATE_WEBHOOK_URLS: "maybe",
      TALLY_SMTP_URL: "http://mail.example.com",
      TALLY_DEMO: "sure",
      LOG_LEVEL: "loud",
      TALLY_RATE_LIMIT_PER_SECOND: "-5",
      TALLY_RATE_LIMIT_ANONYMOUS_PER_SECOND: "lots",
      TALLY_RATE_LIMIT_WINDOW_SECONDS: "0",
    });
    const expected = [
      "PORT",
      "HOST",
      "DATABASE_URL",
      "TALLY_ADMIN_KEY",
      "TALLY_PUBLIC_URL",
      "TALLY_PAYMENT_PROVIDER",
      "STRIPE_API_BASE",
      "TALLY_CURRENCY",
      "TALLY_CREDIT_PLANS",
      "TALLY_USAGE_BACKDATE_DAYS",
      "TALLY_ALLOW_PRIVATE_WEBHOOK_URLS",
      "TALLY_SMTP_URL",
      "TALLY_DEMO",
      "LOG_LEVEL",
      "TALLY_RATE_LIMIT_PER_SECOND",
      "TALLY_RATE_LIMIT_ANONYMOUS_PER_SECOND",
      "TALLY_RATE_LIMIT_WINDOW_SECONDS",
    ];
    for (const name of expected) {
      expect(
        problems.some((p) => p.startsWith(`${name} `)),
        `${name} in ${problems}`,
      ).toBe(true);
    }
    expect(problems).toHaveLength(expected.length);
  });

  it("puts every problem in the error message", () => {
    let message = "";
    try {
      loadConfig({ PORT: "70000", LOG_LEVEL: "loud" });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toContain("Invalid configuration");
    expect(message).toContain('PORT must be an integer between 0 and 65535 (got "70000")');
    expect(message).toContain("LOG_LEVEL must be one of");
  });

  it("never quotes a password or query string of a URL it refuses", () => {
    let message = "";
    try {
      loadConfig({
        DATABASE_URL: "postgress://app:db-Secret1@db:5432/tally?password=q-Secret2",
        TALLY_SMTP_URL: "smpt://mailer:smtp-Secret3@mail.example.com:587",
      });
    } catch (error) {
      message = (error as ConfigError).message;
    }
    expect(message).toContain(
      'DATABASE_URL must be a postgres: or postgresql: URL (got "postgress://app:***@db:5432/tally?***")',
    );
    expect(message).toContain('(got "smpt://mailer:***@mail.example.com:587")');
    for (const secret of ["db-Secret1", "q-Secret2", "smtp-Secret3"]) {
      expect(message).not.toContain(secret);
    }
  });

  it("refuses a TALLY_ADMIN_KEY shorter than 24 characters", () => {
    expect(problemsOf({ TALLY_ADMIN_KEY: "x".repeat(23) })).toEqual([
      "TALLY_ADMIN_KEY must be at least 24 characters",
    ]);
    expect(loadConfig({ TALLY_ADMIN_KEY: "x".repeat(24) }).adminKey).toBe("x".repeat(24));
  });

  it("refuses a TALLY_ADMIN_KEY that cannot be sent as a bearer token", () => {
    for (const key of ["correct horse battery staple 42", `${"x".repeat(24)}é`]) {
      expect(problemsOf({ TALLY_ADMIN_KEY: key }), key).toEqual([
        "TALLY_ADMIN_KEY must be visible ASCII characters only (no spaces): it is sent as a bearer token",
      ]);
    }
  });

  it("refuses TALLY_CREDIT_PLANS naming plans no organisation can have", () => {
    expect(problemsOf({ TALLY_CREDIT_PLANS: "professional;enterprise, pro plan,team" })).toEqual([
      'TALLY_CREDIT_PLANS: "professional;enterprise" is not a plan name (1–64 letters, digits, ".", "_" or "-"; plans are separated by commas)',
      'TALLY_CREDIT_PLANS: "pro plan" is not a plan name (1–64 letters, digits, ".", "_" or "-"; plans are separated by commas)',
    ]);
  });

  it("refuses the stripe provider without its secret key; the webhook secret may come later", () => {
    expect(problemsOf({ TALLY_PAYMENT_PROVIDER: "stripe" })).toEqual([
      "STRIPE_SECRET_KEY is required for the stripe provider",
    ]);
    expect(loadConfig({ STRIPE_SECRET_KEY: "sk_test_1" }).stripe).toMatchObject({
      secretKey: "sk_test_1",
      webhookSecret: null,
    });
  });

  it("refuses integers with trailing junk or out of range", () => {
    for (const value of ["12abc", "1.5", "1e3", "65536"]) {
      expect(problemsOf({ PORT: value }), value).toHaveLength(1);
    }
    expect(problemsOf({ TALLY_USAGE_BACKDATE_DAYS: "3651" })).toHaveLength(1);
  });
});

describe("config errors never echo a password", () => {
  const cases: [string, string][] = [
    ["DATABASE_URL", "host=db user=tally password=S3cretPw dbname=tally"], // libpq keyword DSN
    ["DATABASE_URL", "jdbc:postgresql://db:5432/tally?user=tally&password=S3cretPw"], // JDBC
    ["DATABASE_URL", "db:5432:tally:tally:S3cretPw"], // .pgpass line
    ["TALLY_SMTP_URL", "smtp.example.com:587?user=a&pass=S3cretPw"],
    ["STRIPE_API_BASE", "ftp://sk_live_S3cretPw@stripe.example"], // user-only credential
  ];
  for (const [name, value] of cases) {
    it(`${name}=${value.slice(0, 24)}…`, () => {
      let message = "";
      try {
        loadConfig({ [name]: value });
      } catch (e) {
        message = (e as ConfigError).message;
      }
      expect(message).toContain(name);
      expect(message).not.toContain("S3cretPw");
    });
  }
});
