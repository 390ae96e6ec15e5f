export interface OrgBalancesTable {
  org_id: string;
  balance: string;
  reserved: string;
  debt: string;
  last_sequence: string;
  head_hash: string;
  /** Writes of this ledger so far (see migration 0013). */
  version: string;
  updated_at: Date;
}

export type BlockSource = "purchase" | "bonus" | "adjustment" | "promotional";
export type BlockStatus = "active" | "pending_payment" | "depleted" | "expired" | "voided";

export interface CreditBlocksTable {
  org_id: string;
  id: string;
  source: BlockSource;
  original: string;
  remaining: string;
  unit_cost: string;
  priority: number;
  effective_at: Date;
  expires_at: Date | null;
  status: BlockStatus;
  purchase_id: string | null;
  created_at: Date;
  updated_at: Date;
}

export type EntryType = "purchase" | "bonus" | "usage" | "refund" | "adjustment" | "expiry";

export interface LedgerEntriesTable {
  org_id: string;
  sequence: string;
  id: string;
  type: EntryType;
  amount: string;
  balance_after: string;
  debt_change: string;
  allocations: { block_id: string; amount: string }[] | string;
  actor_type: "api_key" | "user" | "system";
  actor_id: string;
  user_id: string | null;
  reason: string | null;
  description: string | null;
  reference_type: string | null;
  reference_id: string | null;
  created_at: Date;
  prev_hash: string;
  hash: string;
}

export interface LedgerTables {
  org_balances: OrgBalancesTable;
  credit_blocks: CreditBlocksTable;
  ledger_entries: LedgerEntriesTable;
}
