import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { Loading } from "./components/ui";
import { Dashboard } from "./dashboard/Dashboard";
import { useLocation } from "./lib/router";
import { SessionProvider, useSession } from "./lib/session";
import { Portal } from "./portal/Portal";
import "./app.css";

function App() {
  const { path } = useLocation();
  const { features } = useSession();
  // Optional features are known before any view decides what to show.
  if (features === null) return <Loading />;
  return path === "/portal" || path.startsWith("/portal/") ? <Portal /> : <Dashboard />;
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <SessionProvider>
      <App />
    </SessionProvider>
  </StrictMode>,
);
