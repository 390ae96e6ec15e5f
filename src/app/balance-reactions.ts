import { q } from "../db/bulk.js";
import type { Db } from "../db/index.js";
import * as alerts from "../modules/alerts/alerts.service.js";
import type { BalanceFlags } from "../modules/ledger/ledger.service.js";
import type { BalanceChange, BalanceObserver } from "../modules/ledger/posting.js";
import * as topup from "../modules/topup/topup.service.js";
import * as usage from "../modules/usage/usage.service.js";
import type { AppContext } from "./context.js";

type Watched = { org_id: string; module: string };

/**
 * What happens when balances change, composed here because it runs in the ingest hot path:
 * ONE indexed lookup, prefetched in the statement that writes the ledgers, finds which of the
 * changed organisations have alert thresholds or auto-topup enabled (each module contributes its
 * half of the query over its own table). Organisations with neither cost nothing more, except
 * the rare `balance.depleted` / `balance.recovered` event, which every organisation gets — so
 * their changes are idle otherwise, and may be written optimistically (see `saveLedgers`).
 */
export const balanceReactions: BalanceObserver = {
  prefetch: (orgIds) =>
    q`${alerts.configuredOrgsQuery(orgIds)} union all ${topup.enabledOrgsQuery(orgIds)}`,
  observe: (tx, ctx, changes, prefetched) => react(tx, ctx, changes, prefetched as Watched[]),
  idle: (change) => !alerts.crossesZero(change),
};

async function react(
  tx: Db,
  ctx: AppContext,
  changes: BalanceChange[],
  watched: readonly Watched[],
): Promise<void> {
  const withAlerts = new Set<string>();
  const withTopup = new Set<string>();
  for (const row of watched) (row.module === "alerts" ? withAlerts : withTopup).add(row.org_id);

  await alerts.onBalanceChanges(tx, ctx, changes, withAlerts);
  if (withTopup.size > 0) {
    await topup.onBalanceChanges(
      tx,
      ctx,
      changes.filter((c) => withTopup.has(c.orgId)),
    );
  }
}

/** The `low_balance`, `auto_topup` and `reserved` fields of `GET …/balance`. */
export const balanceFlags: BalanceFlags = {
  inAlert: alerts.inAlertExpression,
  autoTopup: topup.autoTopupExpression,
  overdueHolds: usage.overdueHoldsExpression,
};
