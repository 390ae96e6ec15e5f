export interface WebSessionsTable {
  id: string;
  token_hash: string;
  kind: "operator" | "portal";
  org_id: string | null;
  user_id: string | null;
  /** operator: `platform`; portal: the user's role when the session began (admin|billing|viewer). */
  role: string;
  api_key_id: string | null;
  csrf_token_hash: string;
  /** Portal: where "back to the application" leads (from the portal link). */
  return_url: string | null;
  created_at: Date;
  expires_at: Date;
  revoked_at: Date | null;
}

export interface WebTables {
  web_sessions: WebSessionsTable;
}
