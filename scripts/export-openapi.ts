/**
 * Writes the service's OpenAPI document to sdk/openapi.json without listening on a port: the
 * runtime is composed exactly as `tally start` composes it, on a throw-away in-memory database,
 * with no background workers, and asked for the document it would serve at `GET /openapi.json`.
 *
 *   npx tsx scripts/export-openapi.ts [output path]      (npm run sdk:generate also regenerates
 *                                                         sdk/src/schema.d.ts from it)
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { loadConfig } from "../src/app/config.js";
import { createLogger, createRuntime } from "../src/app/runtime.js";
import { openDatabase } from "../src/db/index.js";

export const OPENAPI_PATH = join(import.meta.dirname, "..", "sdk", "openapi.json");

/** The OpenAPI document exactly as `GET /openapi.json` serves it, as formatted JSON text. */
export async function exportOpenApi(): Promise<string> {
  const runtime = await createRuntime(
    // Defaults only, so the document does not depend on the environment of whoever runs this.
    loadConfig({ LOG_LEVEL: "silent", TALLY_DEMO: "false" }),
    {
      database: await openDatabase({ url: null }),
      logger: createLogger("silent"),
      workers: false,
    },
  );
  try {
    const response = await runtime.app.inject({ method: "GET", url: "/openapi.json" });
    if (response.statusCode !== 200) {
      throw new Error(`GET /openapi.json answered ${response.statusCode}: ${response.body}`);
    }
    return `${JSON.stringify(response.json(), null, 2)}\n`;
  } finally {
    await runtime.close();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const target = process.argv[2] ?? OPENAPI_PATH;
  writeFileSync(target, await exportOpenApi());
  process.stdout.write(`Wrote ${target}\n`);
}
