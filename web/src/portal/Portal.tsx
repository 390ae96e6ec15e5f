import { useEffect, useRef, useState } from "react";
import {
  Amount,
  describeError,
  Empty,
  ErrorState,
  Loading,
  Money,
  Notice,
  Section,
} from "../components/ui";
import {
  api,
  type Balance,
  type CreditPackage,
  orgPath,
  type Page,
  type Purchase,
  type Session,
} from "../lib/api";
import { divideDecimals, formatDecimal, formatPercent, isPositive } from "../lib/format";
import { useLoad } from "../lib/hooks";
import { navigate, useLocation, useTitle } from "../lib/router";
import { useSession } from "../lib/session";
import { BalanceFigures, LowBalanceBanner } from "../shared/Balance";
import { AlertSettings, AutoTopupSettings } from "../shared/Settings";
import { Transactions } from "../shared/Transactions";
import { UsageSection } from "../shared/Usage";

export function Portal() {
  const { session, ended, error, refresh } = useSession();
  const { query } = useLocation();
  useTitle("Billing");
  if (session === undefined) {
    return error ? <ErrorState error={error} retry={refresh} /> : <Loading />;
  }
  if (session?.kind !== "portal") {
    return (
      <main className="narrow" id="main">
        <h1>Billing portal</h1>
        {query.get("link") === "invalid" ? (
          <Notice kind="error">
            This portal link has expired or was already used. Links work once, for 15 minutes: open
            the billing page from your application again.
          </Notice>
        ) : query.get("link") === "operator" ? (
          <Notice kind="warning">
            This browser is signed in to the operator console, so the portal link was not used. Sign
            out of the console, or open the link in a private window.
          </Notice>
        ) : ended ? (
          <Notice kind="warning">
            Your session has ended. Open the billing page from your application again.
          </Notice>
        ) : (
          <Notice>
            Open the billing portal from your application: it gives you a personal link.
          </Notice>
        )}
      </main>
    );
  }
  return <PortalHome session={session} />;
}

function PortalHome({ session }: { session: Session }) {
  const { signOut } = useSession();
  const { query } = useLocation();
  const orgId = session.org!.id;
  const canBuy = session.user_role === "admin" || session.user_role === "billing";
  const [refreshKey, setRefreshKey] = useState(0);
  const balance = useLoad(
    (signal) => api.get<Balance>(orgPath(orgId, "/balance"), {}, signal),
    [orgId, refreshKey],
  );

  return (
    <>
      <header className="topbar portal">
        <div className="brand">
          <span className="logo" aria-hidden="true">
            T
          </span>
          <span>
            <strong>{session.org!.name}</strong>
            <span className="muted"> · Billing</span>
          </span>
        </div>
        <nav aria-label="Account" className="account">
          <span className="who">
            {session.user?.name ?? session.user?.email}{" "}
            <span className="badge muted">{session.user_role}</span>
          </span>
          {session.return_url ? (
            <a className="button secondary" href={session.return_url}>
              Back to the application
            </a>
          ) : null}
          <button type="button" className="secondary" onClick={() => void signOut()}>
            Sign out
          </button>
        </nav>
      </header>
      <main id="main" className="page">
        {query.get("link") === "signed-in" ? (
          <Notice kind="warning">
            A portal link for another account was opened in this browser. It was not used: you are
            still signed in to {session.org!.name}. To use it, sign out and open the link again.
          </Notice>
        ) : null}
        <CheckoutReturn orgId={orgId} onSettled={() => setRefreshKey((k) => k + 1)} />
        <section className="card hero" aria-label="Balance">
          {balance.state === "loading" ? <Loading label="Loading balance…" /> : null}
          {balance.state === "error" ? (
            <ErrorState error={balance.error} retry={balance.reload} />
          ) : null}
          {balance.state === "ready" ? (
            <>
              <LowBalanceBanner balance={balance.data} />
              <BalanceFigures balance={balance.data} big />
            </>
          ) : null}
        </section>
        <Packages orgId={orgId} canBuy={canBuy} />
        <UsageSection orgId={orgId} today={session.server_time.slice(0, 10)} />
        <Transactions orgId={orgId} refreshKey={refreshKey} />
        <div className="two-col">
          <AutoTopupSettings
            orgId={orgId}
            canEdit={canBuy}
            onSaved={() => setRefreshKey((k) => k + 1)}
          />
          <AlertSettings orgId={orgId} canEdit={canBuy} />
        </div>
        {!canBuy ? (
          <p className="muted center">
            You have read-only access. Ask an administrator of your organisation to buy credits or
            change settings.
          </p>
        ) : null}
      </main>
    </>
  );
}

/** After the processor's checkout: wait for the purchase to settle and say what happened. */
function CheckoutReturn({ orgId, onSettled }: { orgId: string; onSettled: () => void }) {
  const { query } = useLocation();
  // Read once: the query is removed from the address as soon as it is handled.
  const [{ purchaseId, outcome }] = useState(() => ({
    purchaseId: query.get("purchase"),
    outcome: query.get("checkout"),
  }));
  const settled = useRef(onSettled);
  settled.current = onSettled;
  const [notice, setNotice] = useState<{
    kind: "info" | "success" | "warning" | "error";
    text: string;
  } | null>(null);

  useEffect(() => {
    if (!purchaseId || !outcome) return;
    // The query is consumed: a reload should not announce the payment again.
    navigate("/portal", { replace: true });
    if (outcome === "cancel") {
      setNotice({ kind: "info", text: "Checkout cancelled — nothing was charged." });
      return;
    }
    let stopped = false;
    setNotice({ kind: "info", text: "Confirming your payment…" });
    (async () => {
      for (let attempt = 0; attempt < 20 && !stopped; attempt++) {
        try {
          const p = await api.get<Purchase>(
            orgPath(orgId, `/purchases/${encodeURIComponent(purchaseId)}`),
          );
          if (stopped) return;
          if (p.status === "paid" || p.status === "refunded" || p.status === "partially_refunded") {
            const bonus = isPositive(p.bonus_credits);
            setNotice({
              kind: "success",
              text: `Payment received: ${formatDecimal(p.credits)} credits${bonus ? ` + ${formatDecimal(p.bonus_credits)} bonus` : ""} added.`,
            });
            settled.current();
            return;
          }
          if (p.status === "failed" || p.status === "expired") {
            setNotice({
              kind: "error",
              text: "The payment did not go through. Nothing was added.",
            });
            return;
          }
        } catch (error) {
          setNotice({ kind: "error", text: describeError(error as Error) });
          return;
        }
        await new Promise((r) => setTimeout(r, Math.min(500 * (attempt + 1), 3000)));
      }
      if (!stopped) {
        setNotice({
          kind: "warning",
          text: "Your payment is still being confirmed; the credits appear as soon as it is.",
        });
      }
    })();
    return () => {
      stopped = true;
    };
  }, [purchaseId, outcome, orgId]);

  if (!notice) return null;
  return (
    <div data-testid="checkout-notice">
      <Notice kind={notice.kind}>{notice.text}</Notice>
    </div>
  );
}

function Packages({ orgId, canBuy }: { orgId: string; canBuy: boolean }) {
  const packages = useLoad(
    (signal) =>
      api.get<Page<CreditPackage>>("/v1/credit-packages", { active: true, limit: 100 }, signal),
    [],
  );
  const [buying, setBuying] = useState<string | null>(null);
  const [error, setError] = useState<Error | null>(null);

  async function buy(pkg: CreditPackage) {
    setBuying(pkg.id);
    setError(null);
    try {
      const purchase = await api.post<Purchase>(orgPath(orgId, "/purchases"), {
        package_id: pkg.id,
      });
      if (!purchase.checkout_url) throw new Error("The payment processor gave no checkout page.");
      window.location.assign(purchase.checkout_url);
    } catch (e) {
      setError(e as Error);
      setBuying(null);
    }
  }

  return (
    <Section title="Buy credits">
      {packages.state === "loading" ? <Loading label="Loading packages…" /> : null}
      {packages.state === "error" ? (
        <ErrorState error={packages.error} retry={packages.reload} />
      ) : null}
      {packages.state === "ready" && packages.data.data.length === 0 ? (
        <Empty>No credit packages are on sale.</Empty>
      ) : null}
      {error ? <ErrorState error={error} /> : null}
      {packages.state === "ready" && packages.data.data.length > 0 ? (
        <ul className="packages">
          {packages.data.data.map((pkg) => {
            const hasBonus = isPositive(pkg.bonus_credits);
            const saves = isPositive(pkg.savings_percent);
            return (
              <li key={pkg.id} className="package" data-testid="package">
                <h3>{pkg.name}</h3>
                <p className="package-credits">
                  <Amount value={pkg.total_credits} /> <span className="muted">credits</span>
                </p>
                {hasBonus ? (
                  <p className="bonus">
                    includes <Amount value={pkg.bonus_credits} /> bonus (+
                    {formatPercent(pkg.bonus_percent)})
                    {pkg.bonus_expires_in_days ? (
                      <span className="muted">
                        {" "}
                        · bonus expires after {pkg.bonus_expires_in_days} days
                      </span>
                    ) : null}
                  </p>
                ) : null}
                <p className="price">
                  <Money amount={pkg.price} currency={pkg.currency} />
                </p>
                <dl className="facts small">
                  <div>
                    <dt>Effective price per credit{hasBonus ? " (with bonus)" : ""}</dt>
                    <dd>
                      <Money amount={pkg.effective_price_per_credit} currency={pkg.currency} />
                    </dd>
                  </div>
                  {hasBonus ? (
                    <div>
                      <dt>Price per paid credit</dt>
                      <dd>
                        <Money
                          amount={divideDecimals(pkg.price, pkg.credits, 6)}
                          currency={pkg.currency}
                        />
                      </dd>
                    </div>
                  ) : null}
                  {saves ? (
                    <div>
                      <dt>You save</dt>
                      <dd>{formatPercent(pkg.savings_percent)}</dd>
                    </div>
                  ) : null}
                </dl>
                {pkg.description ? <p className="muted">{pkg.description}</p> : null}
                {canBuy ? (
                  <button
                    type="button"
                    onClick={() => void buy(pkg)}
                    disabled={buying !== null}
                    aria-label={`Buy ${pkg.name}`}
                  >
                    {buying === pkg.id ? "Opening checkout…" : "Buy"}
                  </button>
                ) : null}
              </li>
            );
          })}
        </ul>
      ) : null}
    </Section>
  );
}
