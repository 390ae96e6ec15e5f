export type JobStatus = "pending" | "running" | "done" | "dead";

export interface JobsTable {
  id: string;
  queue: string;
  org_id: string | null;
  dedupe_key: string | null;
  /** JSON written with JSON.stringify; read back parsed. */
  payload: unknown;
  status: JobStatus;
  attempts: number;
  run_at: Date;
  locked_until: Date | null;
  /** The runner holding the lease: only it may finish the job while the lease lasts. */
  locked_by: string | null;
  last_error: string | null;
  /** Jobs with one key run at most the queue's `concurrency` at once per runner. */
  concurrency_key: string | null;
  created_at: Date;
  updated_at: Date;
}

export interface EventsTable {
  org_id: string;
  id: string;
  type: string;
  data: unknown;
  created_at: Date;
}

export interface WebhookEndpointsTable {
  id: string;
  org_id: string | null;
  url: string;
  /** JSON array of event types; empty = every type. */
  events: string[] | string;
  secret: string;
  created_at: Date;
  updated_at: Date;
  /** First failed attempt since the last success (null while healthy). */
  failing_since: Date | null;
  consecutive_failures: number;
  disabled_at: Date | null;
  disabled_reason: string | null;
}

export interface WebhookDeliveriesTable {
  org_id: string;
  id: string;
  endpoint_id: string;
  event_id: string;
  event_type: string;
  attempt: number;
  status_code: number | null;
  error: string | null;
  duration_ms: number;
  succeeded: boolean;
  created_at: Date;
}

export interface NotifyTables {
  jobs: JobsTable;
  events: EventsTable;
  webhook_endpoints: WebhookEndpointsTable;
  webhook_deliveries: WebhookDeliveriesTable;
}
