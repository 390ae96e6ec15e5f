/** Alerts: low-balance thresholds of an organisation and the state of each. */

export interface AlertSettingsTable {
  org_id: string;
  /** JSON array of email addresses that receive alert emails. */
  emails: string[] | string;
  created_at: Date;
  updated_at: Date;
}

export interface AlertThresholdsTable {
  org_id: string;
  /** numeric(38,12), ≥ 0 */
  threshold: string;
  /** true from the balance going below the threshold until it is back at or above it. */
  in_alert: boolean;
  changed_at: Date;
}

export interface AlertTables {
  alert_settings: AlertSettingsTable;
  alert_thresholds: AlertThresholdsTable;
}
