import { InvalidArgumentError } from "commander";

/** Plain-text output helpers for the CLI (tables a person reads; `--json` is for scripts). */

/** Control characters other than newline and tab, shown as `\xNN` (C0, DEL and C1). */
export function visible(text: string): string {
  return text.replace(
    // biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point
    /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g,
    (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
  );
}

/** A table cell on one line: line breaks and tabs escaped too, so no text can forge a row. */
function cell(text: string): string {
  return visible(text).replace(/[\n\r\t]/g, (c) =>
    c === "\n" ? "\\n" : c === "\r" ? "\\r" : "\\t",
  );
}

/** Left-aligned columns separated by two spaces; `null`/`undefined` cells print as "-". */
export function table(
  header: readonly string[],
  rows: readonly (readonly (string | number | null | undefined)[])[],
): string[] {
  const cells = [header, ...rows].map((row) => row.map((c) => (c == null ? "-" : cell(String(c)))));
  const widths = header.map((_, i) => Math.max(...cells.map((row) => row[i]?.length ?? 0)));
  return cells.map((row) =>
    row
      .map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join("  ")
      .trimEnd(),
  );
}

/** `key: value` lines with the keys aligned. */
export function fields(entries: readonly (readonly [string, string | number | null])[]): string[] {
  const width = Math.max(...entries.map(([k]) => k.length)) + 1;
  return entries.map(([k, v]) => `${`${k}:`.padEnd(width)} ${v == null ? "-" : cell(String(v))}`);
}

/** An integer option within bounds, for commander's argument parser. */
export function intOption(name: string, min: number, max: number) {
  return (raw: string): number => {
    if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
      throw new InvalidArgumentError(`${name} must be an integer between ${min} and ${max}.`);
    }
    return Number(raw);
  };
}
