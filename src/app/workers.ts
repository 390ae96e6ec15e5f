import { isDatabaseUnavailable } from "../db/index.js";
import { expireDueBlocks } from "../modules/ledger/ledger.service.js";
import { expireReservations } from "../modules/usage/usage.service.js";
import type { AppContext } from "./context.js";
import { purgeExpiredIdempotencyKeys } from "./idempotency.js";

export interface PeriodicTask {
  name: string;
  everyMs: number;
  run(ctx: AppContext): Promise<unknown>;
  /**
   * Told when the workers stop: a long run should wind down instead of starting new work. The
   * promise (if any) ends when the work the task still has in flight has ended.
   */
  stop?(): void | Promise<void>;
}

/**
 * Background work of this process: periodic tasks, each run one at a time, errors logged and
 * retried next period. Tasks are safe to run in several instances at once (they claim rows in
 * the database), so no leader election is needed.
 */
export class Workers {
  private readonly tasks: PeriodicTask[] = [
    {
      name: "idempotency-cleanup",
      everyMs: 10 * 60_000,
      run: (ctx) => purgeExpiredIdempotencyKeys(ctx.db, ctx.clock.now()),
    },
    { name: "block-expiry", everyMs: 30_000, run: (ctx) => expireDueBlocks(ctx) },
    { name: "reservation-expiry", everyMs: 5_000, run: (ctx) => expireReservations(ctx) },
  ];
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private running = new Set<Promise<unknown>>();
  private stopped = true;

  constructor(private readonly ctx: AppContext) {}

  add(task: PeriodicTask): void {
    this.tasks.push(task);
  }

  start(): void {
    this.stopped = false;
    for (const task of this.tasks) {
      const tick = () => {
        if (this.stopped) return;
        const p = task
          .run(this.ctx)
          .catch((err) =>
            // The database restarting is not a fault of the task: it simply runs again next time.
            isDatabaseUnavailable(err)
              ? this.ctx.logger.warn(
                  { err, task: task.name },
                  "background task: database unavailable",
                )
              : this.ctx.logger.error({ err, task: task.name }, "background task failed"),
          )
          .finally(() => {
            this.running.delete(p);
            if (!this.stopped) this.timers.set(task.name, setTimeout(tick, task.everyMs).unref());
          });
        this.running.add(p);
      };
      this.timers.set(task.name, setTimeout(tick, Math.min(task.everyMs, 1000)).unref());
    }
  }

  /** Runs every task once now (tests, CLI); the jobs task starts due jobs and waits for quick ones. */
  async runAllOnce(): Promise<void> {
    for (const task of this.tasks) await task.run(this.ctx);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const winding = this.tasks.map((task) => task.stop?.());
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    await Promise.allSettled([...this.running, ...winding]);
  }
}
