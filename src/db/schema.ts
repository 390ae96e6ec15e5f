import type { AlertTables } from "../modules/alerts/alerts.tables.js";
import type { BillingTables } from "../modules/billing/billing.tables.js";
import type { LedgerTables } from "../modules/ledger/ledger.tables.js";
import type { NotifyTables } from "../modules/notify/notify.tables.js";
import type { OrgTables } from "../modules/orgs/orgs.tables.js";
import type { PricingTables } from "../modules/pricing/pricing.tables.js";
import type { TopupTables } from "../modules/topup/topup.tables.js";
import type { UsageTables } from "../modules/usage/usage.tables.js";
import type { WebTables } from "../modules/web/web.tables.js";

/** The database as Kysely sees it: each module declares its own tables. */
export interface DB
  extends OrgTables,
    LedgerTables,
    BillingTables,
    NotifyTables,
    PricingTables,
    UsageTables,
    WebTables,
    AlertTables,
    TopupTables {}
