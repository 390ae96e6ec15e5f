import { q, type Sql } from "../../db/bulk.js";
import type { Db } from "../../db/index.js";
import { type Credits, creditsFromDb, creditsToDb } from "../ledger/credits.js";

export interface ThresholdState {
  threshold: Credits;
  inAlert: boolean;
  changedAt: Date;
}

export interface AlertConfig {
  orgId: string;
  emails: string[];
  /** Highest first. */
  thresholds: ThresholdState[];
  createdAt: Date;
  updatedAt: Date;
}

/** `org_id`s among `orgIds` that have an alert configuration (one indexed lookup). */
/** Which of `orgIds` have alert settings: rows `{ org_id, module: 'alerts' }` (hot path SQL). */
export function configuredOrgsQuery(orgIds: readonly string[]): Sql {
  return q`select org_id, 'alerts' as module from alert_settings where org_id = any(${[...orgIds]}::text[])`;
}

function parseEmails(value: string[] | string): string[] {
  return typeof value === "string" ? JSON.parse(value) : value;
}

/** The configurations of `orgIds` (those that have one), thresholds highest first. */
export async function loadConfigs(db: Db, orgIds: readonly string[]) {
  const configs = new Map<string, AlertConfig>();
  if (orgIds.length === 0) return configs;
  const rows = await db
    .selectFrom("alert_settings as s")
    .leftJoin("alert_thresholds as t", "t.org_id", "s.org_id")
    .select([
      "s.org_id",
      "s.emails",
      "s.created_at",
      "s.updated_at",
      "t.threshold",
      "t.in_alert",
      "t.changed_at",
    ])
    .where("s.org_id", "in", orgIds)
    .execute();
  for (const r of rows) {
    let config = configs.get(r.org_id);
    if (!config) {
      config = {
        orgId: r.org_id,
        emails: parseEmails(r.emails),
        thresholds: [],
        createdAt: r.created_at,
        updatedAt: r.updated_at,
      };
      configs.set(r.org_id, config);
    }
    if (r.threshold !== null) {
      config.thresholds.push({
        threshold: creditsFromDb(r.threshold),
        inAlert: r.in_alert!,
        changedAt: r.changed_at!,
      });
    }
  }
  for (const c of configs.values()) {
    c.thresholds.sort((a, b) =>
      a.threshold > b.threshold ? -1 : a.threshold < b.threshold ? 1 : 0,
    );
  }
  return configs;
}

export async function setInAlert(
  db: Db,
  orgId: string,
  thresholds: readonly Credits[],
  inAlert: boolean,
  now: Date,
): Promise<void> {
  if (thresholds.length === 0) return;
  await db
    .updateTable("alert_thresholds")
    .set({ in_alert: inAlert, changed_at: now })
    .where("org_id", "=", orgId)
    .where(
      "threshold",
      "in",
      thresholds.map((t) => creditsToDb(t)),
    )
    .execute();
}

export async function upsertSettings(db: Db, orgId: string, emails: string[], now: Date) {
  await db
    .insertInto("alert_settings")
    .values({ org_id: orgId, emails: JSON.stringify(emails), created_at: now, updated_at: now })
    .onConflict((oc) =>
      oc.column("org_id").doUpdateSet({ emails: JSON.stringify(emails), updated_at: now }),
    )
    .execute();
}

export async function deleteThresholds(db: Db, orgId: string, keep: readonly Credits[]) {
  let q = db.deleteFrom("alert_thresholds").where("org_id", "=", orgId);
  if (keep.length > 0) {
    q = q.where(
      "threshold",
      "not in",
      keep.map((t) => creditsToDb(t)),
    );
  }
  await q.execute();
}

export async function insertThresholds(
  db: Db,
  orgId: string,
  rows: readonly { threshold: Credits; inAlert: boolean }[],
  now: Date,
) {
  if (rows.length === 0) return;
  await db
    .insertInto("alert_thresholds")
    .values(
      rows.map((r) => ({
        org_id: orgId,
        threshold: creditsToDb(r.threshold),
        in_alert: r.inAlert,
        changed_at: now,
      })),
    )
    .execute();
}

/** Boolean SQL: one of the organisation's thresholds is crossed (for the balance's statement). */
export function inAlertExpression(orgId: string): Sql {
  return q`exists (select 1 from alert_thresholds where org_id = ${orgId} and in_alert)`;
}

export async function findEmails(db: Db, orgId: string): Promise<string[]> {
  const row = await db
    .selectFrom("alert_settings")
    .select("emails")
    .where("org_id", "=", orgId)
    .executeTakeFirst();
  return row ? parseEmails(row.emails) : [];
}
