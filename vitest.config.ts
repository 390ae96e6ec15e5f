import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["src/**/*.test.ts", "test/**/*.test.ts", "bench/**/*.test.ts"],
    globalSetup: ["test/support/global-setup.ts", "test/support/web-build.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // expect.poll waits for a page or a background job: 1 s (the default) is tight on two
    // shared cores with a browser, a server and a database on them.
    expect: { poll: { timeout: 10_000 } },
    pool: "forks",
    // Two cores: PGlite instances are CPU-bound; more workers only thrash.
    maxWorkers: 2,
    reporters: ["default"],
  },
});
