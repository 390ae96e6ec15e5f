import { type FormEvent, useState } from "react";
import {
  Amount,
  describeError,
  Empty,
  ErrorState,
  Field,
  Loading,
  Money,
  Notice,
  Section,
  StatusBadge,
  TableWrap,
} from "../components/ui";
import { api, type CreditPackage, type Page } from "../lib/api";
import { formatPercent } from "../lib/format";
import { useLoad } from "../lib/hooks";
import { useTitle } from "../lib/router";

export function PackagesPage() {
  useTitle("Credit packages");
  const packages = useLoad(
    (signal) => api.get<Page<CreditPackage>>("/v1/credit-packages", { limit: 200 }, signal),
    [],
  );
  const [error, setError] = useState<string | null>(null);

  async function toggle(p: CreditPackage) {
    setError(null);
    try {
      await api.patch(`/v1/credit-packages/${encodeURIComponent(p.id)}`, { active: !p.active });
      packages.reload();
    } catch (err) {
      setError(describeError(err as Error));
    }
  }

  return (
    <>
      <h1>Credit packages</h1>
      <Section title="Packages">
        {error ? <Notice kind="error">{error}</Notice> : null}
        {packages.state === "loading" ? <Loading /> : null}
        {packages.state === "error" ? (
          <ErrorState error={packages.error} retry={packages.reload} />
        ) : null}
        {packages.state === "ready" && packages.data.data.length === 0 ? (
          <Empty>No packages yet: create the first one below.</Empty>
        ) : null}
        {packages.state === "ready" && packages.data.data.length > 0 ? (
          <TableWrap label="Credit packages">
            <table>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col" className="num-col">
                    Credits
                  </th>
                  <th scope="col" className="num-col">
                    Bonus
                  </th>
                  <th scope="col" className="num-col">
                    Price
                  </th>
                  <th scope="col" className="num-col">
                    Per credit
                  </th>
                  <th scope="col" className="num-col">
                    Savings
                  </th>
                  <th scope="col">Status</th>
                  <th scope="col">
                    <span className="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {packages.data.data.map((p) => (
                  <tr key={p.id}>
                    <th scope="row">
                      {p.name}
                      <div className="muted small mono">{p.id}</div>
                    </th>
                    <td className="num-col">
                      <Amount value={p.credits} />
                    </td>
                    <td className="num-col">
                      <Amount value={p.bonus_credits} />{" "}
                      <span className="muted">({formatPercent(p.bonus_percent)})</span>
                    </td>
                    <td className="num-col">
                      <Money amount={p.price} currency={p.currency} />
                    </td>
                    <td className="num-col">
                      <Money amount={p.effective_price_per_credit} currency={p.currency} />
                    </td>
                    <td className="num-col">{formatPercent(p.savings_percent)}</td>
                    <td>
                      <StatusBadge status={p.active ? "active" : "off"} />
                    </td>
                    <td>
                      <button
                        type="button"
                        className="secondary small"
                        onClick={() => void toggle(p)}
                        aria-label={`${p.active ? "Withdraw" : "Offer"} ${p.name}`}
                      >
                        {p.active ? "Withdraw" : "Offer again"}
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </TableWrap>
        ) : null}
      </Section>
      <CreatePackage onCreated={packages.reload} />
    </>
  );
}

function CreatePackage({ onCreated }: { onCreated: () => void }) {
  const empty = { name: "", credits: "", bonus_credits: "", price: "", bonus_expires_in_days: "" };
  const [form, setForm] = useState(empty);
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<{ ok: boolean; text: string } | null>(null);

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setResult(null);
    try {
      const created = await api.post<CreditPackage>("/v1/credit-packages", {
        name: form.name.trim(),
        credits: form.credits.trim(),
        price: form.price.trim(),
        ...(form.bonus_credits.trim() ? { bonus_credits: form.bonus_credits.trim() } : {}),
        ...(form.bonus_expires_in_days.trim()
          ? { bonus_expires_in_days: Number.parseInt(form.bonus_expires_in_days, 10) }
          : {}),
      });
      setResult({ ok: true, text: `Package “${created.name}” created.` });
      setForm(empty);
      onCreated();
    } catch (err) {
      setResult({ ok: false, text: describeError(err as Error) });
    } finally {
      setBusy(false);
    }
  }

  const input = (key: keyof typeof empty, label: string, hint?: string, numeric = true) => (
    <Field label={label} hint={hint}>
      {(p) => (
        <input
          {...p}
          inputMode={numeric ? "decimal" : undefined}
          required={key === "name" || key === "credits" || key === "price"}
          value={form[key]}
          onChange={(e) => setForm({ ...form, [key]: e.target.value })}
        />
      )}
    </Field>
  );

  return (
    <Section title="Create a package">
      <form className="settings-form inline" onSubmit={submit} aria-label="Create a package">
        {input("name", "Name", undefined, false)}
        {input("credits", "Credits")}
        {input("bonus_credits", "Bonus credits (optional)")}
        {input("price", "Price", "In the default currency, e.g. 49.00.")}
        {input("bonus_expires_in_days", "Bonus expires after (days, optional)")}
        <div className="filter-actions">
          <button type="submit" disabled={busy}>
            {busy ? "Creating…" : "Create package"}
          </button>
        </div>
      </form>
      {result ? <Notice kind={result.ok ? "success" : "error"}>{result.text}</Notice> : null}
    </Section>
  );
}
