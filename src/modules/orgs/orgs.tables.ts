import type { Generated } from "kysely";

export interface OrganizationsTable {
  id: string;
  name: string;
  external_id: string | null;
  plan: string;
  overdraft_limit: string;
  metadata: Record<string, string> | string;
  created_at: Date;
  updated_at: Date;
}

export interface UsersTable {
  org_id: string;
  id: string;
  email: string;
  name: string | null;
  role: string;
  created_at: Date;
  updated_at: Date;
}

export interface ApiKeysTable {
  id: string;
  org_id: string | null;
  name: string;
  role: string;
  key_hash: string;
  key_prefix: string;
  created_at: Date;
  last_used_at: Date | null;
  revoked_at: Date | null;
}

export interface PortalSessionsTable {
  org_id: string;
  id: string;
  user_id: string;
  token_hash: string;
  return_url: string | null;
  created_at: Date;
  expires_at: Date;
  used_at: Date | null;
}

export interface IdempotencyKeysTable {
  scope: string;
  key: string;
  request_hash: string;
  status: "in_progress" | "done";
  response_status: number | null;
  response_body: string | null;
  response_type: string | null;
  created_at: Date;
  locked_until: Date;
  expires_at: Date;
  /** Set before COMMIT by every transaction of the request: something of it is durable. */
  effect_committed: Generated<boolean>;
  /** The current claim's random token (null for claims older than tokens). */
  claim_token: string | null;
}

export interface OrgTables {
  organizations: OrganizationsTable;
  users: UsersTable;
  api_keys: ApiKeysTable;
  portal_sessions: PortalSessionsTable;
  idempotency_keys: IdempotencyKeysTable;
}
