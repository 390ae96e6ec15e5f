import { type FormEvent, useState } from "react";
import {
  Amount,
  Empty,
  ErrorState,
  Field,
  Loading,
  Section,
  StatusBadge,
  TableWrap,
} from "../components/ui";
import { ApiError, api, type Balance, type Organization, orgPath, type Page } from "../lib/api";
import { useLoad } from "../lib/hooks";
import { Link, useTitle } from "../lib/router";

export function OrgList() {
  useTitle("Organisations");
  const [draft, setDraft] = useState("");
  const [search, setSearch] = useState("");
  const [extra, setExtra] = useState<{ rows: Organization[]; cursor: string | null }>({
    rows: [],
    cursor: null,
  });
  const [loadingMore, setLoadingMore] = useState(false);
  const orgs = useLoad(
    async (signal) => {
      const page = await api.get<Page<Organization>>(
        "/v1/organizations",
        { search, limit: 50 },
        signal,
      );
      setExtra({ rows: [], cursor: page.next_cursor });
      return page;
    },
    [search],
  );

  function submit(e: FormEvent) {
    e.preventDefault();
    setSearch(draft.trim());
  }

  async function more() {
    if (!extra.cursor) return;
    setLoadingMore(true);
    try {
      const page = await api.get<Page<Organization>>("/v1/organizations", {
        search,
        limit: 50,
        cursor: extra.cursor,
      });
      setExtra((x) => ({ rows: [...x.rows, ...page.data], cursor: page.next_cursor }));
    } finally {
      setLoadingMore(false);
    }
  }

  const rows = orgs.state === "ready" ? [...orgs.data.data, ...extra.rows] : [];
  return (
    <>
      <h1>Organisations</h1>
      <Section title="All organisations">
        <search>
          <form className="filters" onSubmit={submit} aria-label="Search organisations">
            <Field label="Search" hint="Name, external id or org id.">
              {(p) => (
                <input
                  {...p}
                  type="search"
                  value={draft}
                  maxLength={200}
                  onChange={(e) => setDraft(e.target.value)}
                />
              )}
            </Field>
            <div className="filter-actions">
              <button type="submit">Search</button>
              {search ? (
                <button
                  type="button"
                  className="secondary"
                  onClick={() => {
                    setDraft("");
                    setSearch("");
                  }}
                >
                  Clear
                </button>
              ) : null}
            </div>
          </form>
        </search>
        {orgs.state === "loading" ? <Loading label="Loading organisations…" /> : null}
        {orgs.state === "error" ? <ErrorState error={orgs.error} retry={orgs.reload} /> : null}
        {orgs.state === "ready" && rows.length === 0 ? (
          <Empty>{search ? `No organisation matches “${search}”.` : "No organisations yet."}</Empty>
        ) : null}
        {rows.length > 0 ? (
          <TableWrap label="Organisations">
            <table className="orgs">
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">External id</th>
                  <th scope="col">Plan</th>
                  <th scope="col" className="num-col">
                    Available credits
                  </th>
                  <th scope="col">Low balance</th>
                  <th scope="col">Auto-topup</th>
                </tr>
              </thead>
              <tbody>
                {rows.map((o) => (
                  <OrgRow key={o.id} org={o} />
                ))}
              </tbody>
            </table>
          </TableWrap>
        ) : null}
        {extra.cursor ? (
          <button type="button" className="secondary" disabled={loadingMore} onClick={more}>
            {loadingMore ? "Loading…" : "Load more"}
          </button>
        ) : null}
      </Section>
    </>
  );
}

function OrgRow({ org }: { org: Organization }) {
  const balance = useLoad(
    (signal) =>
      api.get<Balance>(orgPath(org.id, "/balance"), {}, signal).catch((e: unknown) => {
        if (e instanceof ApiError && e.code === "plan_not_eligible") return null;
        throw e;
      }),
    [org.id],
  );
  return (
    <tr data-org={org.id}>
      <th scope="row">
        <Link href={`/dashboard/orgs/${encodeURIComponent(org.id)}`}>{org.name}</Link>
        <div className="muted small mono">{org.id}</div>
      </th>
      <td>{org.external_id ?? "—"}</td>
      <td>{org.plan}</td>
      {balance.state === "ready" && balance.data ? (
        <>
          <td className="num-col">
            <Amount value={balance.data.available} maxFraction={4} />
          </td>
          <td>{balance.data.low_balance ? <StatusBadge status="low" /> : "—"}</td>
          <td>
            <StatusBadge status={balance.data.auto_topup} />
          </td>
        </>
      ) : (
        <td colSpan={3} className="muted">
          {balance.state === "loading"
            ? "…"
            : balance.state === "error"
              ? "balance unavailable"
              : "no credits plan"}
        </td>
      )}
    </tr>
  );
}
