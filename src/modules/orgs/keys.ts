import { hash, randomBytes } from "node:crypto";

/** API key secrets: `tally_` + 40 random base62-ish characters; stored only as SHA-256. */
export function generateSecret(kind: "key" | "portal" | "session" = "key"): string {
  const prefix = kind === "key" ? "tally_" : kind === "portal" ? "tps_" : "tss_";
  return prefix + randomBytes(30).toString("base64url");
}

export function hashSecret(secret: string): string {
  return hash("sha256", secret, "hex");
}

const BEARER = /^Bearer\s+(\S+)\s*$/i;

/** The secret of a well-formed `Authorization: Bearer <secret>` header, else null. */
export function bearerSecret(header: string | undefined): string | null {
  return (header && BEARER.exec(header)?.[1]) || null;
}

const presentedHashes = new WeakMap<object, string | null>();

/**
 * `hashSecret` of the request's bearer secret (null without one), computed once per request:
 * the rate limit and authentication both key on it.
 */
export function presentedKeyHash(request: { headers: { authorization?: string } }): string | null {
  let hash = presentedHashes.get(request);
  if (hash === undefined) {
    const secret = bearerSecret(request.headers.authorization);
    hash = secret === null ? null : hashSecret(secret);
    presentedHashes.set(request, hash);
  }
  return hash;
}

/**
 * What a list shows to identify a key without revealing it: 12 characters of a generated key
 * (`tally_` and 6 of its 40 random ones), never more than a quarter of a chosen one
 * (`TALLY_ADMIN_KEY`, 24 characters or more).
 */
export function keyPrefix(secret: string): string {
  return secret.slice(0, Math.min(12, Math.ceil(secret.length / 4)));
}
