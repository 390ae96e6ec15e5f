import { type FormEvent, useState } from "react";
import { Amount, Empty, ErrorState, Field, Loading, Section, TableWrap } from "../components/ui";
import { api, type LedgerEntry, orgPath, type Page, withQuery } from "../lib/api";
import { formatDateTime } from "../lib/format";
import { useLoad } from "../lib/hooks";

const TYPES = ["purchase", "bonus", "usage", "refund", "adjustment", "expiry"] as const;

interface Filters {
  type: string;
  user_id: string;
  from: string;
  to: string;
}

const EMPTY: Filters = { type: "", user_id: "", from: "", to: "" };

function nextDay(date: string): string {
  return new Date(Date.parse(`${date}T00:00:00Z`) + 86_400_000).toISOString().slice(0, 10);
}

/** The API's filters: `from` is inclusive, `to` exclusive, both timestamps (UTC days here). */
function query(f: Filters) {
  return {
    type: f.type,
    user_id: f.user_id.trim(),
    from: f.from ? `${f.from}T00:00:00Z` : "",
    to: f.to ? `${nextDay(f.to)}T00:00:00Z` : "",
  };
}

function who(e: LedgerEntry): string {
  const actor =
    e.actor.type === "user"
      ? `user ${e.actor.id}`
      : e.actor.type === "api_key"
        ? `key ${e.actor.id.slice(0, 12)}…`
        : "system";
  return e.user_id && e.actor.type !== "user" ? `${actor} for ${e.user_id}` : actor;
}

export function Transactions({
  orgId,
  userFilter = true,
  refreshKey = 0,
}: {
  orgId: string;
  userFilter?: boolean;
  /** Changing it reloads the list (after an adjustment or a purchase). */
  refreshKey?: number;
}) {
  const [draft, setDraft] = useState<Filters>(EMPTY);
  const [applied, setApplied] = useState<Filters>(EMPTY);
  const [more, setMore] = useState<{ rows: LedgerEntry[]; cursor: string | null }>({
    rows: [],
    cursor: null,
  });
  const [loadingMore, setLoadingMore] = useState(false);
  const [moreError, setMoreError] = useState<Error | null>(null);

  const page = useLoad(
    async (signal) => {
      const p = await api.get<Page<LedgerEntry>>(
        orgPath(orgId, "/transactions"),
        { ...query(applied), limit: 25 },
        signal,
      );
      setMore({ rows: [], cursor: p.next_cursor });
      return p;
    },
    [orgId, applied, refreshKey],
  );

  function apply(e: FormEvent) {
    e.preventDefault();
    setApplied({ ...draft });
  }

  function reset() {
    setDraft(EMPTY);
    setApplied(EMPTY);
  }

  async function loadMore() {
    if (!more.cursor) return;
    setLoadingMore(true);
    setMoreError(null);
    try {
      const p = await api.get<Page<LedgerEntry>>(orgPath(orgId, "/transactions"), {
        ...query(applied),
        limit: 25,
        cursor: more.cursor,
      });
      setMore((m) => ({ rows: [...m.rows, ...p.data], cursor: p.next_cursor }));
    } catch (error) {
      setMoreError(error as Error);
    } finally {
      setLoadingMore(false);
    }
  }

  const csv = withQuery(orgPath(orgId, "/transactions.csv"), query(applied));
  const rows = page.state === "ready" ? [...page.data.data, ...more.rows] : [];

  return (
    <Section
      title="Transaction history"
      actions={
        <a className="button secondary" href={csv} download data-testid="csv-download">
          Download CSV
        </a>
      }
    >
      <form className="filters" onSubmit={apply} aria-label="Filter transactions">
        <Field label="Type">
          {(p) => (
            <select
              {...p}
              value={draft.type}
              onChange={(e) => setDraft({ ...draft, type: e.target.value })}
            >
              <option value="">All types</option>
              {TYPES.map((t) => (
                <option key={t} value={t}>
                  {t}
                </option>
              ))}
            </select>
          )}
        </Field>
        {userFilter ? (
          <Field label="User">
            {(p) => (
              <input
                {...p}
                value={draft.user_id}
                maxLength={128}
                placeholder="user id"
                onChange={(e) => setDraft({ ...draft, user_id: e.target.value })}
              />
            )}
          </Field>
        ) : null}
        <Field label="From (UTC)">
          {(p) => (
            <input
              {...p}
              type="date"
              value={draft.from}
              onChange={(e) => setDraft({ ...draft, from: e.target.value })}
            />
          )}
        </Field>
        <Field label="To (UTC, inclusive)">
          {(p) => (
            <input
              {...p}
              type="date"
              value={draft.to}
              onChange={(e) => setDraft({ ...draft, to: e.target.value })}
            />
          )}
        </Field>
        <div className="filter-actions">
          <button type="submit">Apply</button>
          <button type="button" className="secondary" onClick={reset}>
            Reset
          </button>
        </div>
      </form>

      {page.state === "loading" ? <Loading label="Loading transactions…" /> : null}
      {page.state === "error" ? <ErrorState error={page.error} retry={page.reload} /> : null}
      {page.state === "ready" && rows.length === 0 ? (
        <Empty>
          No transactions{Object.values(applied).some(Boolean) ? " match these filters" : " yet"}.
        </Empty>
      ) : null}
      {rows.length > 0 ? (
        <TableWrap label="Transactions">
          <table className="transactions">
            <thead>
              <tr>
                <th scope="col">Date (UTC)</th>
                <th scope="col">Type</th>
                <th scope="col" className="num-col">
                  Amount
                </th>
                <th scope="col" className="num-col">
                  Balance after
                </th>
                <th scope="col">By</th>
                <th scope="col">Reason / description</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((e) => (
                <tr key={e.id} data-type={e.type}>
                  <td>{formatDateTime(e.created_at)}</td>
                  <td>
                    <span className={`type type-${e.type}`}>{e.type}</span>
                  </td>
                  <td className="num-col">
                    <Amount value={e.amount} signed />
                  </td>
                  <td className="num-col">
                    <Amount value={e.balance_after} />
                  </td>
                  <td>{who(e)}</td>
                  <td className="reason">{e.reason ?? e.description ?? "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </TableWrap>
      ) : null}
      {moreError ? <ErrorState error={moreError} retry={loadMore} /> : null}
      {more.cursor ? (
        <button type="button" className="secondary" onClick={loadMore} disabled={loadingMore}>
          {loadingMore ? "Loading…" : "Load more"}
        </button>
      ) : null}
    </Section>
  );
}
