import { Readable } from "node:stream";

/**
 * RFC 4180 CSV. Text that a spreadsheet would run as a formula (=, +, -, @, tab, CR at the start)
 * is prefixed with a single quote — except plain numbers, which stay exact and machine-readable.
 */
export function csvCell(value: string | number | bigint | boolean | null | undefined): string {
  if (value === null || value === undefined) return "";
  let s = String(value);
  if (/^[=+\-@\t\r]/.test(s) && !/^[+-]?\d+(\.\d+)?$/.test(s)) s = `'${s}`;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function csvLine(
  cells: readonly (string | number | bigint | boolean | null | undefined)[],
): string {
  return `${cells.map(csvCell).join(",")}\r\n`;
}

/** Streams a header row and then the rows of each page until `next` returns no more. */
export function csvStream<T>(
  header: readonly string[],
  pages: () => AsyncGenerator<T[]>,
  row: (item: T) => readonly (string | number | bigint | boolean | null | undefined)[],
): Readable {
  async function* lines() {
    yield csvLine(header);
    for await (const page of pages()) {
      yield page.map((item) => csvLine(row(item))).join("");
    }
  }
  return Readable.from(lines());
}
