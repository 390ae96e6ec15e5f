import type { Migration } from "kysely/migration";
import * as m0001 from "./0001_foundation.js";
import * as m0002 from "./0002_ledger.js";
import * as m0003 from "./0003_pricing.js";
import * as m0004 from "./0004_billing.js";
import * as m0005 from "./0005_notify.js";
import * as m0006 from "./0006_usage.js";
import * as m0008 from "./0008_alerts_topup.js";
import * as m0009 from "./0009_reports.js";
import * as m0010 from "./0010_web.js";
import * as m0011 from "./0011_hot_path.js";
import * as m0012 from "./0012_idempotency_effects.js";
import * as m0013 from "./0013_ledger_versions.js";
import * as m0014 from "./0014_price_notifications.js";
import * as m0015 from "./0015_overdue_holds.js";
import * as m0016 from "./0016_refund_notices.js";
import * as m0017 from "./0017_notify_retention.js";
import * as m0018 from "./0018_idempotency_claim_tokens.js";
import * as m0019 from "./0019_job_concurrency_keys.js";
import * as m0020 from "./0020_rollup_units.js";
import * as m0021 from "./0021_ledger_usage_indexes.js";

/** Every migration, in order. Never edit one that has shipped: add the next. */
export const migrations: Record<string, Migration> = {
  "0001_foundation": m0001,
  "0002_ledger": m0002,
  "0003_pricing": m0003,
  "0004_billing": m0004,
  "0005_notify": m0005,
  "0006_usage": m0006,
  "0008_alerts_topup": m0008,
  "0009_reports": m0009,
  "0010_web": m0010,
  "0011_hot_path": m0011,
  "0012_idempotency_effects": m0012,
  "0013_ledger_versions": m0013,
  "0014_price_notifications": m0014,
  "0015_overdue_holds": m0015,
  "0016_refund_notices": m0016,
  "0017_notify_retention": m0017,
  "0018_idempotency_claim_tokens": m0018,
  "0019_job_concurrency_keys": m0019,
  "0020_rollup_units": m0020,
  "0021_ledger_usage_indexes": m0021,
};
