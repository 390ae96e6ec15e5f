export type UsageType = "ai_tokens" | "compute" | "storage" | "bandwidth" | "data_ops";

export interface UsageEventsTable {
  org_id: string;
  id: string;
  type: UsageType;
  timestamp: Date;
  timestamp_defaulted: boolean;
  user_id: string | null;
  operation: string | null;
  model: string | null;
  meter: string | null;
  resource: string | null;
  quantity: string | null;
  billed_quantity: string | null;
  input_tokens: string | null;
  cached_input_tokens: string | null;
  cache_write_tokens: string | null;
  output_tokens: string | null;
  provider_usage: unknown;
  metadata: unknown;
  cost: string;
  price_version: number | null;
  transaction_id: string;
  reservation_id: string | null;
  payload_hash: string;
  received_at: Date;
}

export interface StorageGaugesTable {
  org_id: string;
  meter: string;
  resource: string;
  last_timestamp: Date;
  last_quantity: string;
}

export interface UsageRollupsTable {
  org_id: string;
  period: string;
  type: string;
  model: string;
  operation: string;
  user_id: string;
  resource: string;
  meter: string;
  unit: string;
  quantity: string;
  input_tokens: string;
  cached_input_tokens: string;
  cache_write_tokens: string;
  output_tokens: string;
  cost: string;
  events: string;
}

export interface UsageDailyTable {
  org_id: string;
  day: string;
  type: string;
  cost: string;
  events: string;
}

export interface ReservationsTable {
  org_id: string;
  id: string;
  amount: string;
  status: "held" | "settled" | "released" | "expired";
  description: string | null;
  expires_at: Date;
  actor_type: string;
  actor_id: string;
  user_id: string | null;
  settled_cost: string | null;
  created_at: Date;
  closed_at: Date | null;
}

export interface UsageTables {
  usage_events: UsageEventsTable;
  storage_gauges: StorageGaugesTable;
  usage_rollups: UsageRollupsTable;
  usage_daily: UsageDailyTable;
  reservations: ReservationsTable;
}
