import { ensureWebBuilt } from "../../web/scripts/ensure-built.js";

/** Browser tests and the web routes' tests need the built app: build it when missing or stale. */
export default function setup() {
  if (!ensureWebBuilt()) throw new Error("The web app could not be built (is Vite installed?).");
}
