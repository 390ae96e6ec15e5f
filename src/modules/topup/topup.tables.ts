/** Auto-topup: per-organisation settings and the attempts they started. */

export interface TopupSettingsTable {
  org_id: string;
  enabled: boolean;
  /** numeric(38,12): an attempt starts when a write leaves the balance at or below it. */
  threshold: string;
  package_id: string;
  /** Currency of the package (and of the monthly limit). */
  currency: string;
  /** Money per calendar month (UTC) in minor units, bigint as text; null = no limit. */
  monthly_limit_minor: string | null;
  max_failures: number;
  /** Declined attempts since the last success or (re-)enabling. */
  failure_count: number;
  disabled_reason: string | null;
  armed: boolean;
  rearm_month: string | null;
  created_at: Date;
  updated_at: Date;
}

export type TopupAttemptStatus =
  | "in_flight"
  | "succeeded"
  | "failed"
  | "action_required"
  | "skipped_limit";

export interface TopupAttemptsTable {
  org_id: string;
  id: string;
  status: TopupAttemptStatus;
  package_id: string;
  purchase_id: string | null;
  /** Price of the package at the attempt, minor units (bigint as text). */
  amount_minor: string;
  currency: string;
  /** The processor's payment id once charged. */
  payment_id: string | null;
  /** Where the customer completes an authentication (action_required). */
  action_url: string | null;
  error: string | null;
  /** The balance (numeric(38,12)) left by the write that started the attempt. */
  balance: string;
  created_at: Date;
  updated_at: Date;
}

export interface TopupTables {
  topup_settings: TopupSettingsTable;
  topup_attempts: TopupAttemptsTable;
}
