import type { AppContext } from "../../app/context.js";
import type { Db } from "../../db/index.js";
import { type Credits, formatCredits } from "../ledger/credits.js";
import { openLedgers } from "../ledger/ledger.service.js";
import type { BalanceChange } from "../ledger/posting.js";
import {
  depletedEmail,
  type EmailContent,
  emitEvent,
  enqueueEmail,
  lowBalanceEmail,
} from "../notify/notify.service.js";
import { resolveOrganization } from "../orgs/orgs.service.js";
import * as repo from "./alerts.repo.js";

/**
 * Low-balance alerts. Per threshold T a state machine: armed (balance ≥ T) → in alert when a
 * write leaves the balance below T, which raises `balance.low` — one notice per write, for the
 * lowest threshold it crossed — and back to armed, silently, once the balance is ≥ T again.
 * Independently, `balance.depleted` (> 0 → ≤ 0) and `balance.recovered` (≤ 0 → > 0) for every
 * organisation, configured or not.
 *
 * Evaluation runs inside the transaction that changed the balance, which holds the
 * organisation's balance row lock, so the state rows change in lockstep with the balance:
 * exactly one notice per crossing however many writers and instances there are, and a rolled
 * back write notifies nobody.
 */

export type AlertConfig = repo.AlertConfig;
export const configuredOrgsQuery = repo.configuredOrgsQuery;

/**
 * Whether a change crosses zero, which every organisation hears of (`balance.depleted` or
 * `balance.recovered`), thresholds or not.
 */
export function crossesZero(change: { before: Credits; after: Credits }): boolean {
  return change.before > 0n !== change.after > 0n;
}

export async function onBalanceChanges(
  tx: Db,
  ctx: AppContext,
  changes: readonly BalanceChange[],
  configured: ReadonlySet<string>,
): Promise<void> {
  const configs = configured.size > 0 ? await repo.loadConfigs(tx, [...configured]) : new Map();
  const now = ctx.clock.now();
  for (const change of changes) {
    const { orgId, before, after } = change;
    const config: AlertConfig | undefined = configs.get(orgId);
    const emails: EmailContent[] = [];
    const names = new OrgNames(tx, orgId);

    if (config) {
      const crossed: Credits[] = [];
      const rearmed: Credits[] = [];
      for (const t of config.thresholds) {
        if (!t.inAlert && after < t.threshold) crossed.push(t.threshold);
        else if (t.inAlert && after >= t.threshold) rearmed.push(t.threshold);
      }
      await repo.setInAlert(tx, orgId, crossed, true, now);
      await repo.setInAlert(tx, orgId, rearmed, false, now);
      for (const t of config.thresholds) {
        if (crossed.includes(t.threshold)) t.inAlert = true;
        if (rearmed.includes(t.threshold)) t.inAlert = false;
      }
      if (crossed.length > 0) {
        const lowest = crossed[crossed.length - 1]!; // thresholds are highest first
        await emitEvent(tx, ctx, {
          type: "balance.low",
          orgId,
          data: {
            threshold: formatCredits(lowest),
            crossed_thresholds: crossed.map(formatCredits),
            balance: formatCredits(after),
            previous_balance: formatCredits(before),
            available: formatCredits(after - change.reserved),
          },
        });
        if (config.emails.length > 0) {
          emails.push(
            lowBalanceEmail({
              orgName: await names.get(),
              balance: formatCredits(after),
              threshold: formatCredits(lowest),
            }),
          );
        }
      }
    }

    if (before > 0n && after <= 0n) {
      await emitEvent(tx, ctx, {
        type: "balance.depleted",
        orgId,
        data: { balance: formatCredits(after), previous_balance: formatCredits(before) },
      });
      if (config && config.emails.length > 0) {
        emails.push(depletedEmail({ orgName: await names.get(), balance: formatCredits(after) }));
      }
    } else if (before <= 0n && after > 0n) {
      await emitEvent(tx, ctx, {
        type: "balance.recovered",
        orgId,
        data: { balance: formatCredits(after), previous_balance: formatCredits(before) },
      });
    }

    for (const content of emails) {
      await enqueueEmail(tx, ctx, { to: config!.emails, orgId, ...content });
    }
  }
}

/** The organisation's display name, read at most once and only when an email needs it. */
class OrgNames {
  private name: string | null = null;
  constructor(
    private readonly db: Db,
    private readonly orgId: string,
  ) {}
  async get(): Promise<string> {
    this.name ??= (await resolveOrganization(this.db, this.orgId))?.name ?? this.orgId;
    return this.name;
  }
}

export interface AlertSettingsView {
  thresholds: Credits[];
  emails: string[];
  state: { threshold: Credits; inAlert: boolean; changedAt: Date }[];
  updatedAt: Date | null;
}

function view(config: AlertConfig | undefined): AlertSettingsView {
  if (!config) return { thresholds: [], emails: [], state: [], updatedAt: null };
  return {
    thresholds: config.thresholds.map((t) => t.threshold),
    emails: config.emails,
    state: config.thresholds,
    updatedAt: config.updatedAt,
  };
}

export async function getAlertSettings(ctx: AppContext, orgId: string): Promise<AlertSettingsView> {
  return view((await repo.loadConfigs(ctx.db, [orgId])).get(orgId));
}

/**
 * Replaces the thresholds and addresses. Runs under the organisation's balance lock, so it is
 * ordered with every balance change. Thresholds kept from before keep their state; new ones
 * start from the current balance — in alert when it is already below them — without an event
 * (the balance crossed nothing: the first notice comes from the next downward crossing after
 * the balance has been at or above the threshold).
 */
export async function putAlertSettings(
  ctx: AppContext,
  orgId: string,
  input: { thresholds: readonly Credits[]; emails: readonly string[] },
): Promise<AlertSettingsView> {
  const emails = [...new Set(input.emails.map((e) => e.trim()))];
  return ctx.db.transaction().execute(async (tx) => {
    const ledger = (await openLedgers(tx, ctx, [orgId], { blocks: false })).get(orgId)!;
    const now = ctx.clock.now();
    const existing = (await repo.loadConfigs(tx, [orgId])).get(orgId);
    const kept = new Set((existing?.thresholds ?? []).map((t) => t.threshold));
    await repo.upsertSettings(tx, orgId, emails, now);
    await repo.deleteThresholds(tx, orgId, input.thresholds);
    await repo.insertThresholds(
      tx,
      orgId,
      input.thresholds
        .filter((t) => !kept.has(t))
        .map((threshold) => ({ threshold, inAlert: ledger.balance < threshold })),
      now,
    );
    return view((await repo.loadConfigs(tx, [orgId])).get(orgId));
  });
}

/** The addresses alert and auto-topup emails go to (empty when none are configured). */
export function alertEmails(db: Db, orgId: string): Promise<string[]> {
  return repo.findEmails(db, orgId);
}

/** For the balance view: one of the thresholds is crossed (`low_balance` is also set at ≤ 0). */
export const inAlertExpression = repo.inAlertExpression;
