import { createContext, type ReactNode, useCallback, useContext, useEffect, useState } from "react";
import { ApiError, api, loadFeatures, onUnauthenticated, type Session, setCsrfToken } from "./api";

interface SessionState {
  /** undefined while loading; null when there is no session. */
  session: Session | null | undefined;
  /** The session ended while the page was open. */
  ended: boolean;
  error: Error | null;
  /** Optional routes this server has; null until known. */
  features: Set<string> | null;
  setSession(session: Session | null): void;
  signOut(): Promise<void>;
  refresh(): Promise<void>;
}

const SessionContext = createContext<SessionState | null>(null);

export function SessionProvider({ children }: { children: ReactNode }) {
  const [session, setSessionState] = useState<Session | null | undefined>(undefined);
  const [ended, setEnded] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const [features, setFeatures] = useState<Set<string> | null>(null);

  const setSession = useCallback((s: Session | null) => {
    setCsrfToken(s?.csrf_token ?? null);
    setSessionState(s);
    if (s) setEnded(false);
  }, []);

  const refresh = useCallback(async () => {
    try {
      // 204 (no body): no session.
      setSession((await api.get<Session | undefined>("/web/session")) ?? null);
      setError(null);
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) setSession(null);
      else setError(e as Error);
    }
  }, [setSession]);

  useEffect(() => {
    void refresh();
    void loadFeatures().then(setFeatures);
    return onUnauthenticated(() => {
      setSession(null);
      setEnded(true);
    });
  }, [refresh, setSession]);

  const signOut = useCallback(async () => {
    try {
      await api.post("/web/logout");
    } finally {
      setSession(null);
    }
  }, [setSession]);

  return (
    <SessionContext.Provider
      value={{ session, ended, error, features, setSession, signOut, refresh }}
    >
      {children}
    </SessionContext.Provider>
  );
}

export function useSession(): SessionState {
  const ctx = useContext(SessionContext);
  if (!ctx) throw new Error("useSession outside SessionProvider");
  return ctx;
}

/** The signed-in session (views below the sign-in gate). */
export function useCurrentSession(): Session {
  const { session } = useSession();
  if (!session) throw new Error("no session");
  return session;
}

export function useFeature(name: string): boolean {
  return useSession().features?.has(name) ?? false;
}
