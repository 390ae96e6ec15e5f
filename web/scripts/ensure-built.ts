/**
 * Builds the web app into web/dist when it is missing or older than its sources, so that
 * `npm start` and `npm test` work on a fresh clone (nothing built is committed). The build goes
 * to a temporary directory first and is moved into place whole: a server or a parallel run never
 * sees half a build.
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, renameSync, rmSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const WEB = fileURLToPath(new URL("..", import.meta.url));
const ROOT = resolve(WEB, "..");
const DIST = join(WEB, "dist");
const VITE = join(ROOT, "node_modules", "vite", "bin", "vite.js");

function newestMtime(path: string): number {
  const stat = statSync(path);
  if (!stat.isDirectory()) return stat.mtimeMs;
  let newest = 0;
  for (const entry of readdirSync(path)) newest = Math.max(newest, newestMtime(join(path, entry)));
  return newest;
}

export function webBuildIsCurrent(): boolean {
  const index = join(DIST, "index.html");
  if (!existsSync(index)) return false;
  const sources = [
    join(WEB, "src"),
    join(WEB, "index.html"),
    join(WEB, "vite.config.ts"),
    join(ROOT, "package-lock.json"),
  ].filter(existsSync);
  const built = statSync(index).mtimeMs;
  return sources.every((s) => newestMtime(s) <= built);
}

/** Returns false (and says why) when the build tools are not installed. */
export function ensureWebBuilt(log: (line: string) => void = console.log): boolean {
  if (webBuildIsCurrent()) return true;
  if (!existsSync(VITE)) {
    log(
      "The web app is not built and Vite is not installed (npm install, then npm run build:web).",
    );
    return false;
  }
  log("Building the web app (web/dist)…");
  const tmp = `dist.tmp-${process.pid}`;
  const result = spawnSync(
    process.execPath,
    [VITE, "build", "--config", join(WEB, "vite.config.ts"), "--logLevel", "warn"],
    {
      cwd: ROOT,
      stdio: "inherit",
      env: { ...process.env, NODE_ENV: "production", TALLY_WEB_OUT_DIR: tmp },
    },
  );
  const built = join(WEB, tmp);
  if (result.status !== 0) {
    rmSync(built, { recursive: true, force: true });
    throw new Error(`The web app build failed (exit ${result.status ?? result.signal}).`);
  }
  rmSync(DIST, { recursive: true, force: true });
  try {
    renameSync(built, DIST);
  } catch {
    // Another process moved its build into place first: it is the same build.
    rmSync(built, { recursive: true, force: true });
  }
  return true;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    ensureWebBuilt();
  } catch (error) {
    console.error((error as Error).message);
    process.exit(1);
  }
}
