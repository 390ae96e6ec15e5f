import type { Logger } from "pino";
import type { Db } from "../db/index.js";
import type { PaymentProvider } from "../modules/billing/providers/provider.js";
import type { BalanceObserver } from "../modules/ledger/posting.js";
import type { RequestLookups } from "../modules/orgs/lookups.js";
import type { Config } from "./config.js";
import type { IdGenerator } from "./ids.js";
import type { Metrics } from "./metrics.js";

export interface Clock {
  now(): Date;
}

export const systemClock: Clock = { now: () => new Date() };

/** Everything a use-case needs from the outside world; tests inject their own clock and ids. */
export interface AppContext {
  readonly config: Config;
  readonly db: Db;
  /** The ingest engine's autocommit flushes only (`Database.flushDb`). */
  readonly flushDb: Db;
  readonly dbKind: "postgres" | "pglite";
  readonly clock: Clock;
  readonly ids: IdGenerator;
  readonly logger: Logger;
  readonly metrics: Metrics;
  /** The payment processor (Stripe or the built-in sandbox); tests inject their own. */
  readonly payments: PaymentProvider;
  /** Reactions to balance changes, run inside the changing transaction (alerts, auto-topup). */
  readonly balanceObservers: BalanceObserver[];
  /** API keys and organisations as the request path reads them (cached per instance). */
  readonly lookups: RequestLookups;
}
