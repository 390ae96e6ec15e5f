let lastMs = Number.NaN;
let lastText = "";

/**
 * `date.toISOString()`, remembering the last instant formatted: a flush formats the same few
 * instants (its `now`, a defaulted event timestamp) once per row and column, thousands of times.
 */
export function isoString(date: Date): string {
  const ms = date.getTime();
  if (ms !== lastMs) {
    lastText = date.toISOString();
    lastMs = ms;
  }
  return lastText;
}
