/**
 * JSON with every object's keys sorted (by UTF-16 code units), `undefined` written as `null`;
 * the top level's `omit` keys left out. Stored payload hashes depend on this exact text.
 */
export function stableJson(value: unknown, omit?: ReadonlySet<string>): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value) ?? "null";
  if (Array.isArray(value)) {
    let out = "[";
    for (let i = 0; i < value.length; i++) {
      if (i > 0) out += ",";
      out += stableJson(value[i]);
    }
    return `${out}]`;
  }
  const keys = Object.keys(value).sort();
  let out = "{";
  for (const k of keys) {
    if (omit?.has(k)) continue;
    if (out.length > 1) out += ",";
    out += `${JSON.stringify(k)}:${stableJson((value as Record<string, unknown>)[k])}`;
  }
  return `${out}}`;
}
