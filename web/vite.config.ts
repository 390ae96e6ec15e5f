import { fileURLToPath } from "node:url";
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

const root = fileURLToPath(new URL(".", import.meta.url));
const api = process.env.TALLY_DEV_API ?? "http://127.0.0.1:8080";

/**
 * The dashboard and the portal are one single-page app, served by Tally from `web/dist` at
 * `/dashboard/*` and `/portal/*` (assets under `/assets/`). `npm run dev:web` serves it with hot
 * reload and forwards the API to a running Tally.
 */
export default defineConfig({
  root,
  base: "/",
  plugins: [react()],
  build: {
    outDir: process.env.TALLY_WEB_OUT_DIR ?? "dist",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    chunkSizeWarningLimit: 800,
  },
  server: {
    proxy: Object.fromEntries(
      ["/v1", "/web", "/portal/enter", "/sandbox", "/openapi.json"].map((p) => [p, api]),
    ),
  },
});
