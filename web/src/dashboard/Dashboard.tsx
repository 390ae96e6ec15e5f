import { type FormEvent, type ReactNode, useState } from "react";
import { describeError, ErrorState, Field, Loading, Notice } from "../components/ui";
import { ApiError, api, type Session } from "../lib/api";
import { Link, match, useLocation, useTitle } from "../lib/router";
import { useSession } from "../lib/session";
import { OrgList } from "./OrgList";
import { OrgPage } from "./OrgPage";
import { PackagesPage } from "./PackagesPage";
import { PricesPage } from "./PricesPage";

export function Dashboard() {
  const { session, error, refresh } = useSession();
  if (session === undefined) {
    return error ? <ErrorState error={error} retry={refresh} /> : <Loading />;
  }
  if (session?.kind !== "operator") return <SignIn portal={session?.kind === "portal"} />;
  return <Console />;
}

function SignIn({ portal }: { portal: boolean }) {
  const { setSession, ended } = useSession();
  const [key, setKey] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  useTitle("Sign in");

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const session = await api.post<Session>("/web/login", { api_key: key.trim() });
      setKey("");
      setSession(session);
    } catch (err) {
      setError(
        err instanceof ApiError && err.status === 401
          ? "That key is unknown or revoked."
          : describeError(err as Error),
      );
    } finally {
      setBusy(false);
    }
  }

  return (
    <main className="narrow signin" id="main">
      <div className="brand big-brand">
        <span className="logo" aria-hidden="true">
          T
        </span>
        <span>Tally operator console</span>
      </div>
      <form className="card" onSubmit={submit} aria-labelledby="signin-title">
        <h1 id="signin-title">Sign in</h1>
        {ended ? <Notice kind="warning">Your session has ended. Sign in again.</Notice> : null}
        {portal ? (
          <Notice>
            You are signed in to a customer portal. Signing in here ends that portal session.
          </Notice>
        ) : null}
        <Field
          label="Platform API key"
          hint="The key is exchanged for a session cookie once; it is not stored in the browser."
          error={error}
        >
          {(p) => (
            <input
              {...p}
              type="password"
              autoComplete="off"
              spellCheck={false}
              required
              value={key}
              onChange={(e) => setKey(e.target.value)}
            />
          )}
        </Field>
        <button type="submit" disabled={busy || key.trim() === ""}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
    </main>
  );
}

function Console() {
  const { path } = useLocation();
  const { signOut, session } = useSession();
  const nav: [string, string, boolean][] = [
    ["/dashboard", "Organisations", path === "/dashboard" || path.startsWith("/dashboard/orgs")],
    ["/dashboard/packages", "Packages", path.startsWith("/dashboard/packages")],
    ["/dashboard/prices", "Prices", path.startsWith("/dashboard/prices")],
  ];
  const org = match("/dashboard/orgs/:id/:tab?", path);
  let page: ReactNode;
  if (org) {
    page = <OrgPage orgId={org.id!} tab={org.tab ?? "overview"} />;
  } else if (match("/dashboard/packages", path)) {
    page = <PackagesPage />;
  } else if (match("/dashboard/prices", path)) {
    page = <PricesPage />;
  } else if (match("/dashboard", path)) {
    page = <OrgList />;
  } else {
    page = (
      <Notice kind="warning">
        No such page. <Link href="/dashboard">Go to the organisations.</Link>
      </Notice>
    );
  }
  return (
    <>
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <div className="brand">
          <span className="logo" aria-hidden="true">
            T
          </span>
          <span>Tally</span>
        </div>
        <nav aria-label="Main" className="mainnav">
          {nav.map(([href, label, current]) => (
            <Link key={href} href={href} aria-current={current ? "page" : undefined}>
              {label}
            </Link>
          ))}
        </nav>
        <div className="account">
          <span className="muted small" title={`Session until ${session?.expires_at}`}>
            Operator
          </span>
          <button type="button" className="secondary" onClick={() => void signOut()}>
            Sign out
          </button>
        </div>
      </header>
      <main id="main" className="page">
        {page}
      </main>
    </>
  );
}
