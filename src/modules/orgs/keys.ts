import { createHash, randomBytes } from "node:crypto";

/** API key secrets: `tally_` + 40 random base62-ish characters; stored only as SHA-256. */
export function generateSecret(kind: "key" | "portal" | "session" = "key"): string {
  const prefix = kind === "key" ? "tally_" : kind === "portal" ? "tps_" : "tss_";
  return prefix + randomBytes(30).toString("base64url");
}

export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret).digest("hex");
}

/** What a list shows to identify a key without revealing it. */
export function keyPrefix(secret: string): string {
  return secret.slice(0, 12);
}
