import type { FastifyInstance } from "fastify";

/**
 * A baseline server's start and stop: listens on PORT and HOST (as `bench/lib/servers.ts` sets
 * them, else `port`), and on SIGINT or SIGTERM closes, runs `release` (its database pool), exits.
 */
export async function serve(
  app: FastifyInstance,
  port: number,
  release: () => Promise<unknown> = async () => {},
): Promise<void> {
  await app.listen({
    port: Number(process.env.PORT ?? port),
    host: process.env.HOST ?? "127.0.0.1",
  });
  const stop = () =>
    void app
      .close()
      .then(release)
      .then(() => process.exit(0));
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
}
