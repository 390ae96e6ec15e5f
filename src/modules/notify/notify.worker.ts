import type { AppContext } from "../../app/context.js";
import type { PeriodicTask } from "../../app/workers.js";
import {
  createEmailHandler,
  EMAIL_QUEUE,
  EMAIL_QUEUE_OPTIONS,
  type EmailMessage,
} from "./email.js";
import { DELIVER_QUEUE, type DeliverPayload, FANOUT_QUEUE, fanOutEvent } from "./events.js";
import { JobRunner, type JobRunnerOptions } from "./jobs.js";
import { purgeOlderThan } from "./notify.repo.js";
import {
  createDeliverHandler,
  EndpointPacing,
  onDeliveryDead,
  WEBHOOK_QUEUE_OPTIONS,
} from "./webhooks.service.js";

export interface NotifyJobOptions {
  /** Webhook request deadline (default 10 s). */
  webhookTimeoutMs?: number;
  /** An endpoint is slow while a delivery to it runs, or once one took, this long (default 1 s). */
  webhookSlowAfterMs?: number;
}

/** Registers the notify queues (webhook fan-out and delivery, email) on a runner. */
export function registerNotifyJobs(runner: JobRunner, options: NotifyJobOptions = {}): JobRunner {
  runner.register(FANOUT_QUEUE, fanOutEvent);
  const pacing = new EndpointPacing(options.webhookSlowAfterMs);
  runner.register<DeliverPayload>(
    DELIVER_QUEUE,
    createDeliverHandler({ timeoutMs: options.webhookTimeoutMs, pacing }),
    {
      ...WEBHOOK_QUEUE_OPTIONS,
      onDead: onDeliveryDead,
      concurrency: pacing.concurrency,
      // One organisation's deliveries (its slow endpoints, or many) leave half the slots to
      // the others, and to emails and auto-topup charges.
      perOrganisation: (slots) => Math.ceil(slots / 2),
    },
  );
  runner.register<EmailMessage>(EMAIL_QUEUE, createEmailHandler().handle, EMAIL_QUEUE_OPTIONS);
  return runner;
}

/** A new runner with the notify queues registered (tests build several to race them). */
export function createJobRunner(
  ctx: AppContext,
  options: Omit<JobRunnerOptions, "ctx"> & NotifyJobOptions = {},
): JobRunner {
  return registerNotifyJobs(new JobRunner({ ...options, ctx }), options);
}

const runners = new WeakMap<AppContext, JobRunner>();

/**
 * The job runner of an application context, created on first use with the notify queues.
 * Other modules add their queues to it (`jobRunnerFor(ctx).register("topup.charge", …)`) when
 * they are wired up, so every queue of the process is served by the one runner.
 */
export function jobRunnerFor(ctx: AppContext): JobRunner {
  let runner = runners.get(ctx);
  if (!runner) {
    runner = createJobRunner(ctx);
    runners.set(ctx, runner);
  }
  return runner;
}

/** Runs every due job of the context's runner until none is due (tests: no timers needed). */
export function runDueJobs(ctx: AppContext, options: { limit?: number } = {}): Promise<number> {
  return jobRunnerFor(ctx).runDueJobs(options);
}

/**
 * The background task that drives the context's job runner: add it to the runtime's Workers
 * (`workers.add(createNotifyWorker(ctx))`). Each tick starts what is due, then sleeps a second;
 * jobs still running go on across ticks, and stopping waits for them.
 */
export function createNotifyWorker(ctx: AppContext): PeriodicTask {
  const runner = jobRunnerFor(ctx);
  return { name: "jobs", everyMs: 1000, run: () => runner.tick(), stop: () => runner.shutdown() };
}

/** Outbox events and webhook delivery logs are kept this long (a retry gives up after 3 days). */
export const NOTIFY_RETENTION_DAYS = 30;

/** Purges outbox events and delivery logs past `NOTIFY_RETENTION_DAYS`, in batches. */
export async function purgeOldNotifications(ctx: AppContext, batch = 5_000): Promise<number> {
  const before = new Date(ctx.clock.now().getTime() - NOTIFY_RETENTION_DAYS * 86_400_000);
  let purged = 0;
  for (const table of ["webhook_deliveries", "events"] as const) {
    for (let n = batch; n === batch; purged += n) {
      n = await purgeOlderThan(ctx.db, table, before, batch);
    }
  }
  return purged;
}

export const notifyRetentionTask: PeriodicTask = {
  name: "notify-retention",
  everyMs: 10 * 60_000,
  run: (ctx) => purgeOldNotifications(ctx),
};
