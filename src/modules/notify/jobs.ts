import { randomBytes } from "node:crypto";
import { sql } from "kysely";
import type { AppContext } from "../../app/context.js";
import type { Db } from "../../db/index.js";
import type { JobsTable } from "./notify.tables.js";

/**
 * The transactional outbox. A job row is written in the caller's transaction, so it exists
 * exactly when the change that caused it committed; a `JobRunner` performs it afterwards, at
 * least once, with retries. Handlers must therefore be idempotent (or carry an idempotency key
 * to whoever they call).
 */

export type JobRow = JobsTable;

/** A claimed job; `reclaimed` when it was taken over from a runner whose lease ran out. */
export type ClaimedJob = JobRow & { reclaimed: boolean };

export interface Job<P = unknown> {
  id: string;
  queue: string;
  orgId: string | null;
  payload: P;
  /** 1 on the first run; a run whose lease expired (crash) counts too. */
  attempts: number;
  createdAt: Date;
  runAt: Date;
}

export type JobHandler<P = unknown> = (job: Job<P>, ctx: AppContext) => Promise<void>;

export interface BackoffPolicy {
  /** Delay after the first failure. */
  baseMs: number;
  /** The delay doubles per failure up to this. */
  maxMs: number;
  /** ± fraction applied at random so that retries of many jobs spread out (0.25 = ±25 %). */
  jitter: number;
}

export interface QueueOptions {
  backoff?: BackoffPolicy;
  /**
   * After this age (from the job's creation) a failing job is not retried but marked dead; so
   * is one whose lease ran out unfinished (its runner died) when it is taken over.
   */
  maxAgeMs?: number;
  /** Called once when a job goes dead (its last error kept on the row). */
  onDead?: (job: Job, error: string, ctx: AppContext) => Promise<void>;
  /**
   * How many jobs of one `concurrencyKey` a runner runs at once (default: no limit), given how
   * long the oldest of them has been running and the runner's slots. Jobs of a key at its limit
   * are not claimed: they wait, their attempts not counted, while other keys' jobs go on.
   */
  concurrency?: (key: string, load: { oldestRunningMs: number; slots: number }) => number;
  /**
   * How many of this queue's jobs of one organisation a runner runs at once, given its slots
   * (default: no limit): one tenant's backlog (say, its slow webhook endpoints) leaves the
   * other slots to everyone else. Jobs of an organisation at its limit wait, unclaimed.
   */
  perOrganisation?: (slots: number) => number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = { baseMs: 5_000, maxMs: 60 * 60_000, jitter: 0.25 };
export const DEFAULT_MAX_AGE_MS = 24 * 60 * 60_000;

/** Thrown by a handler for a failure that no retry can fix: the job goes dead at once. */
export class PermanentJobError extends Error {}

export interface EnqueueJobInput<P = unknown> {
  queue: string;
  orgId?: string | null;
  payload: P;
  /** Unique across all jobs still stored: enqueueing the same key again does nothing. */
  dedupeKey?: string;
  /** Not before this time (default now). */
  runAt?: Date;
  /** Groups jobs for the queue's `concurrency` limit (webhook deliveries: their endpoint). */
  concurrencyKey?: string;
}

/**
 * Writes a job in the caller's transaction (pass the transaction as `db`). A duplicate
 * `dedupeKey` is a no-op: `enqueued` is then false and `id` is the existing job's id.
 */
export async function enqueueJob<P>(
  db: Db,
  ctx: AppContext,
  input: EnqueueJobInput<P>,
): Promise<{ id: string; enqueued: boolean }> {
  const now = ctx.clock.now();
  const id = ctx.ids.newId("job");
  const inserted = await db
    .insertInto("jobs")
    .values({
      id,
      queue: input.queue,
      org_id: input.orgId ?? null,
      dedupe_key: input.dedupeKey ?? null,
      payload: JSON.stringify(input.payload ?? null),
      status: "pending",
      attempts: 0,
      run_at: input.runAt ?? now,
      locked_until: null,
      locked_by: null,
      last_error: null,
      concurrency_key: input.concurrencyKey ?? null,
      created_at: now,
      updated_at: now,
    })
    .onConflict((oc) => oc.column("dedupe_key").doNothing())
    .returning("id")
    .executeTakeFirst();
  if (inserted) return { id, enqueued: true };
  const existing = await db
    .selectFrom("jobs")
    .select("id")
    .where("dedupe_key", "=", input.dedupeKey ?? "")
    .executeTakeFirst();
  return { id: existing?.id ?? id, enqueued: false };
}

/** The delay before retry number `attempts` (1 = after the first failure), jittered. */
export function backoffDelay(
  policy: BackoffPolicy,
  attempts: number,
  random: () => number = Math.random,
): number {
  const exponent = Math.min(Math.max(attempts - 1, 0), 40);
  const plain = Math.min(policy.maxMs, policy.baseMs * 2 ** exponent);
  return Math.max(1, Math.round(plain * (1 - policy.jitter + 2 * policy.jitter * random())));
}

export interface JobRunnerOptions {
  ctx: AppContext;
  /** Identifies this runner's leases (default: random). */
  workerId?: string;
  /** Jobs claimed per round trip (default 20). */
  batchSize?: number;
  /**
   * How long a claimed job is reserved. A runner that crashes loses its jobs to the next
   * runner once the lease has passed; while a handler runs, its lease is renewed (every third
   * of it), up to `maxRunMs` (default 2 min).
   */
  leaseMs?: number;
  /**
   * How long a handler may keep its lease renewed (default 15 min). A handler still running
   * then is taken for hung: its lease runs out and another runner may take the job over.
   */
  maxRunMs?: number;
  /** `start()` polls this often when nothing is due (default 1 s). */
  pollIntervalMs?: number;
  /** Finished (done/dead) jobs are deleted after this long; their dedupe keys with them (default 14 days). */
  retentionMs?: number;
  /** Jitter source (tests may fix it). */
  random?: () => number;
}

interface QueueDefinition {
  handler: JobHandler<unknown>;
  backoff: BackoffPolicy;
  maxAgeMs: number;
  onDead?: QueueOptions["onDead"];
  concurrency?: QueueOptions["concurrency"];
  perOrganisation?: number;
}

const PURGE_EVERY_MS = 10 * 60_000;
const MAX_ERROR_LENGTH = 2000;

/**
 * Claims due jobs with `FOR UPDATE SKIP LOCKED` (several runners, in one process or many, never
 * claim the same job at once), marks them running under a lease, commits, then runs their
 * handlers. Success marks a job done; failure reschedules it with exponential backoff and
 * jitter until its queue's maximum age, then marks it dead with the error kept. A job whose
 * runner died stays `running` until its lease passes and is then claimed again: delivery is at
 * least once. Leases run on the database's clock (instances' clocks may differ by more than a
 * lease); when a job is due comes from `ctx.clock`, so tests move that by hand.
 */
export class JobRunner {
  readonly workerId: string;
  private readonly ctx: AppContext;
  private readonly queues = new Map<string, QueueDefinition>();
  private readonly batchSize: number;
  private readonly leaseMs: number;
  private readonly maxRunMs: number;
  private readonly pollIntervalMs: number;
  private readonly retentionMs: number;
  private readonly random: () => number;
  private timer: NodeJS.Timeout | null = null;
  private loop: Promise<void> | null = null;
  private stopping = false;
  private lastPurge = 0;
  /** The jobs this runner is running, whichever round started them. */
  private readonly running = new Set<Promise<void>>();
  /** Slots a round is claiming for (its claim not back yet): no other round may fill them. */
  private reserved = 0;
  /** Rounds under way (`shutdown` waits for them: a claim in flight starts jobs). */
  private readonly rounds = new Set<Promise<number>>();
  /** When each running job with a concurrency key started, per key (oldest first). */
  private readonly keyed = new Map<string, { queue: string; starts: number[] }>();
  /** Running jobs of queues with a `perOrganisation` limit, per `queue org_id`, and the limit. */
  private readonly perOrg = new Map<string, { running: number; limit: number }>();

  constructor(options: JobRunnerOptions) {
    this.ctx = options.ctx;
    this.workerId = options.workerId ?? `w_${randomBytes(6).toString("hex")}`;
    this.batchSize = options.batchSize ?? 20;
    this.leaseMs = options.leaseMs ?? 120_000;
    this.maxRunMs = options.maxRunMs ?? 15 * 60_000;
    this.pollIntervalMs = options.pollIntervalMs ?? 1000;
    this.retentionMs = options.retentionMs ?? 14 * 24 * 60 * 60_000;
    this.random = options.random ?? Math.random;
  }

  /** Handles `queue`. Only queues with a handler are claimed by this runner. */
  register<P>(queue: string, handler: JobHandler<P>, options: QueueOptions = {}): this {
    if (this.queues.has(queue)) throw new Error(`queue ${queue} is already registered`);
    this.queues.set(queue, {
      handler: handler as JobHandler<unknown>,
      backoff: options.backoff ?? DEFAULT_BACKOFF,
      maxAgeMs: options.maxAgeMs ?? DEFAULT_MAX_AGE_MS,
      onDead: options.onDead,
      concurrency: options.concurrency,
      perOrganisation: options.perOrganisation
        ? Math.max(1, Math.floor(options.perOrganisation(this.batchSize)))
        : undefined,
    });
    return this;
  }

  get registeredQueues(): string[] {
    return [...this.queues.keys()];
  }

  /** Polls in the background until `stop()` (the runtime drives `tick()` from its workers). */
  start(): void {
    if (this.loop || this.timer) return;
    this.stopping = false;
    const tick = () => {
      this.timer = null;
      this.loop = this.tick()
        .then(() => undefined)
        .catch((err) => this.ctx.logger.error({ err }, "job runner tick failed"))
        .finally(() => {
          this.loop = null;
          if (!this.stopping) this.timer = setTimeout(tick, this.pollIntervalMs).unref();
        });
    };
    this.timer = setTimeout(tick, 0).unref();
  }

  /**
   * Stops claiming for good (the process is shutting down): a round in progress claims nothing
   * more. Resolves once the handlers still running have ended.
   */
  async shutdown(): Promise<void> {
    this.stopping = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    await this.loop;
    await Promise.allSettled([...this.rounds]);
    while (this.running.size > 0) await Promise.allSettled([...this.running]);
  }

  /** Stops claiming; waits for the handlers already running. */
  async stop(): Promise<void> {
    await this.shutdown();
    this.stopping = false;
  }

  /**
   * One polling round: claims and starts due jobs until none is due, and now and then purges
   * old finished jobs. It does not wait for slow jobs: one (a webhook endpoint that hangs until
   * its timeout) keeps its slot across rounds while the others go on.
   */
  async tick(): Promise<number> {
    if (this.stopping) return 0;
    return this.runDueJobs({ wait: false });
  }

  private async purgeIfDue(): Promise<void> {
    if (Date.now() - this.lastPurge <= PURGE_EVERY_MS) return;
    this.lastPurge = Date.now();
    await purgeFinishedJobs(
      this.ctx.db,
      new Date(this.ctx.clock.now().getTime() - this.retentionMs),
    );
  }

  /**
   * Claims and runs due jobs until none is due (or `limit` jobs were claimed), at most
   * `batchSize` at once (the slots are shared by every round of this runner). With `wait` (the
   * default) it returns once every job of the runner has ended, so jobs those handlers enqueue
   * for now run in the same call; without, it returns once a poll interval passed with a free
   * slot and nothing due, leaving slow jobs running. Returns how many jobs it started.
   *
   * A slot is refilled as soon as its job ends, not when the whole batch has: a slow handler (a
   * webhook endpoint that hangs until its timeout, a processor that does not answer) holds one
   * slot, and the other jobs — later ones included — go on around it. New jobs are claimed once
   * half the slots are free (so quick jobs still cost one claim round trip per batch), and every
   * `pollIntervalMs` while only slow jobs are running.
   */
  runDueJobs(options: { limit?: number; wait?: boolean } = {}): Promise<number> {
    const round = this.round(options.wait ?? true, options.limit);
    this.rounds.add(round);
    return round.finally(() => this.rounds.delete(round));
  }

  private async round(wait: boolean, limitOption: number | undefined): Promise<number> {
    const limit = limitOption ?? (wait ? 1000 : Number.POSITIVE_INFINITY);
    const refillAt = Math.max(1, Math.ceil(this.batchSize / 2));
    let claimed = 0;
    let polled = false;
    while (!this.stopping) {
      if (!wait) await this.purgeIfDue();
      if (this.stopping) break;
      const free = Math.min(this.batchSize - this.running.size - this.reserved, limit - claimed);
      let drained = false;
      if (free > 0 && (this.running.size === 0 || free >= refillAt || polled)) {
        this.reserved += free;
        let jobs: ClaimedJob[];
        try {
          jobs = await this.claimDueJobs(free);
        } finally {
          this.reserved -= free;
        }
        drained = jobs.length < free;
        claimed += await this.launch(jobs);
      }
      if (this.running.size === 0) break;
      // Without `wait`, a round ends once a whole poll interval brought nothing due: the jobs
      // still running then are slow ones, which go on without holding the next round back.
      if (!wait && ((drained && polled) || claimed >= limit)) break;
      let timer: NodeJS.Timeout | undefined;
      // Woken by a job ending, or by the poll interval: then any free slot claims (only slow
      // jobs hold the others).
      polled = await Promise.race([
        ...[...this.running].map((r) => r.then(() => false)),
        new Promise<boolean>((resolve) => {
          timer = setTimeout(() => resolve(true), this.pollIntervalMs);
        }),
      ]);
      clearTimeout(timer);
    }
    if (wait) while (this.running.size > 0) await Promise.allSettled([...this.running]);
    return claimed;
  }

  /**
   * Starts claimed jobs; one whose concurrency key is at its limit (a batch may hold several of
   * one key) goes back to pending, its attempt not counted. Returns how many started.
   */
  private async launch(jobs: ClaimedJob[]): Promise<number> {
    const back: string[] = [];
    for (const job of jobs) {
      const key = job.concurrency_key;
      const startedAt = performance.now();
      const limit = this.queues.get(job.queue)?.perOrganisation;
      const org = limit !== undefined && job.org_id !== null ? `${job.queue} ${job.org_id}` : null;
      const orgEntry =
        org === null ? null : (this.perOrg.get(org) ?? { running: 0, limit: limit! });
      if (orgEntry && orgEntry.running >= orgEntry.limit) {
        back.push(job.id);
        continue;
      }
      if (key !== null) {
        const entry = this.keyed.get(key) ?? { queue: job.queue, starts: [] };
        if (entry.starts.length >= this.limitOf(key, entry, startedAt)) {
          back.push(job.id);
          continue;
        }
        entry.starts.push(startedAt);
        this.keyed.set(key, entry);
      }
      if (orgEntry) {
        orgEntry.running++;
        this.perOrg.set(org!, orgEntry);
      }
      const run: Promise<void> = this.execute(job)
        .catch((err) => this.ctx.logger.error({ err, job: job.id }, "job execution failed"))
        .finally(() => {
          this.running.delete(run);
          if (orgEntry && --orgEntry.running === 0) this.perOrg.delete(org!);
          const entry = key === null ? undefined : this.keyed.get(key);
          if (!entry) return;
          entry.starts.splice(entry.starts.indexOf(startedAt), 1);
          if (entry.starts.length === 0) this.keyed.delete(key!);
        });
      this.running.add(run);
    }
    if (back.length > 0) {
      await this.ctx.db
        .updateTable("jobs")
        .set((eb) => ({
          status: "pending",
          attempts: eb("attempts", "-", 1),
          locked_until: null,
          locked_by: null,
          updated_at: this.ctx.clock.now(),
        }))
        .where("id", "in", back)
        .where("status", "=", "running")
        .where("locked_by", "=", this.workerId)
        .execute()
        .catch((err) => this.ctx.logger.error({ err }, "could not hand back jobs over a limit"));
    }
    return jobs.length - back.length;
  }

  private limitOf(key: string, entry: { queue: string; starts: number[] }, now: number): number {
    const concurrency = this.queues.get(entry.queue)?.concurrency;
    if (!concurrency) return Number.POSITIVE_INFINITY;
    const oldestRunningMs = entry.starts.length > 0 ? now - entry.starts[0]! : 0;
    const limit = concurrency(key, { oldestRunningMs, slots: this.batchSize });
    return Number.isNaN(limit) ? 1 : Math.max(1, limit); // a key always gets to run
  }

  /** A queue's limit for a key this runner does not run yet (no limit: a million). */
  private freshKeyLimit(queue: string): number {
    if (!this.queues.get(queue)?.concurrency) return 1_000_000;
    return Math.min(1_000_000, Math.floor(this.limitOf("", { queue, starts: [] }, 0)));
  }

  /** For each key this runner runs, how many more of its jobs may start (0: at its limit). */
  private keyCapacity(): Map<string, number> {
    const now = performance.now();
    const room = new Map<string, number>();
    for (const [key, entry] of this.keyed) {
      const left = this.limitOf(key, entry, now) - entry.starts.length;
      room.set(key, Number.isFinite(left) ? Math.max(0, Math.floor(left)) : 1_000_000);
    }
    return room;
  }

  /**
   * Claims up to `limit` due jobs of the registered queues and commits the claim. Public so that
   * tests can simulate a runner that claims and then dies.
   */
  async claimDueJobs(limit: number): Promise<ClaimedJob[]> {
    const queues = this.registeredQueues;
    if (queues.length === 0 || limit <= 0) return [];
    const now = this.ctx.clock.now();
    // Leases are set and compared on the database's clock, the one clock every instance shares:
    // an instance whose clock runs ahead must not take over a lease that is still running.
    // Keys this runner runs: none beyond its limit (a key at it is left out). Other keys: each
    // queue's limit for a key it does not run yet; `launch` hands back what still exceeds one.
    const capped = this.keyCapacity();
    const saturated = [...capped].filter(([, room]) => room <= 0).map(([key]) => key);
    // Organisations at a queue's perOrganisation limit in this runner: their jobs of that queue
    // stay pending, unclaimed (else a burst of one tenant is claimed and handed back for ever).
    const fullOrgs = [...this.perOrg]
      .filter(([, { running, limit }]) => running >= limit)
      .map(([slot]) => slot);
    const room = [...capped].filter(([, n]) => n > 0);
    const fresh = queues.map((q) => this.freshKeyLimit(q));
    // Candidates are locked as they are read (SKIP LOCKED: runners at once take different
    // rows, and a row another runner claimed meanwhile is re-checked); the rest of this
    // statement drops those beyond their key's limit, which stay pending, unclaimed (and are
    // unlocked when the statement ends). A batch may so come back short while more is due:
    // the next claim, with that key at its limit, takes others.
    const { rows } = await sql<ClaimedJob>`
      with candidates as (
        select id, queue, run_at, concurrency_key, status = 'running' as reclaimed from jobs
        where queue in (${sql.join(queues)})
          and ((status = 'pending' and run_at <= ${now})
            or (status = 'running' and locked_until <= now()))
          and (concurrency_key is null or concurrency_key <> all(${saturated}::text[]))
          and (org_id is null or queue || ' ' || org_id <> all(${fullOrgs}::text[]))
        order by run_at, id
        limit ${limit}
        for update skip locked
      ), due as (
        select c.id, c.reclaimed from (
          select id, queue, run_at, concurrency_key, reclaimed,
            row_number() over (partition by concurrency_key order by run_at, id) as rank
          from candidates
        ) c
        left join unnest(${room.map(([key]) => key)}::text[], ${room.map(([, n]) => n)}::int[])
          as k(key, room) on k.key = c.concurrency_key
        join unnest(${queues}::text[], ${fresh}::int[]) as q(queue, fresh) on q.queue = c.queue
        where c.concurrency_key is null or c.rank <= coalesce(k.room, q.fresh)
        order by c.run_at, c.id
        limit ${limit}
      )
      update jobs set
        status = 'running',
        attempts = jobs.attempts + 1,
        locked_until = now() + ${this.leaseMs}::float8 * interval '1 millisecond',
        locked_by = ${this.workerId},
        updated_at = ${now}
      from due
      where jobs.id = due.id
      returning jobs.*, due.reclaimed`.execute(this.ctx.db);
    return rows.sort((a, b) => a.run_at.getTime() - b.run_at.getTime() || (a.id < b.id ? -1 : 1));
  }

  private async execute(row: ClaimedJob): Promise<void> {
    const definition = this.queues.get(row.queue);
    const job = toJob(row);
    if (!definition) return; // claimed only for registered queues
    // A job whose runs never end (each one takes its runner down, say) would otherwise be
    // taken over after every lease, for ever: past the queue's age limit it goes dead instead.
    if (
      row.reclaimed &&
      this.ctx.clock.now().getTime() - row.created_at.getTime() > definition.maxAgeMs
    ) {
      const error = new PermanentJobError(
        "its lease ran out with the job unfinished, past the queue's age limit",
      );
      await this.fail(row, job, definition, error);
      return;
    }
    const renewal = this.renewLease(row);
    try {
      await definition.handler(job, this.ctx);
    } catch (error) {
      await this.fail(row, job, definition, error);
      return;
    } finally {
      clearInterval(renewal);
    }
    const finished = await this.ctx.db
      .updateTable("jobs")
      .set({
        status: "done",
        locked_until: null,
        locked_by: null,
        last_error: null,
        updated_at: this.ctx.clock.now(),
      })
      .where("id", "=", row.id)
      .where("locked_by", "=", this.workerId)
      .where("attempts", "=", row.attempts)
      .executeTakeFirst()
      .catch((err) => {
        this.ctx.logger.error({ err, job: row.id }, "could not mark job done; it will run again");
        return null;
      });
    if (finished && finished.numUpdatedRows === 0n) {
      this.ctx.logger.warn(
        { job: row.id, queue: row.queue },
        "job finished after its lease was taken over; it may have run twice",
      );
    }
  }

  /**
   * Renews a running job's lease every third of it, so a slow handler (an SMTP server that
   * answers slowly but within its timeouts) is not taken over and run twice at once — until
   * `maxRunMs`, after which the lease is left to run out.
   */
  private renewLease(row: ClaimedJob): NodeJS.Timeout {
    const started = performance.now();
    const renewal = setInterval(
      () => {
        if (performance.now() - started + this.leaseMs > this.maxRunMs) {
          clearInterval(renewal);
          this.ctx.logger.warn(
            { job: row.id, queue: row.queue, max_run_ms: this.maxRunMs },
            "job still running; its lease is no longer renewed and may be taken over",
          );
          return;
        }
        sql`update jobs set locked_until = now() + ${this.leaseMs}::float8 * interval '1 millisecond'
            where id = ${row.id} and status = 'running' and locked_by = ${this.workerId}
              and attempts = ${row.attempts}`
          .execute(this.ctx.db)
          .catch((err) =>
            this.ctx.logger.warn({ err, job: row.id }, "could not renew a job lease"),
          );
      },
      Math.max(1, Math.floor(this.leaseMs / 3)),
    );
    renewal.unref();
    return renewal;
  }

  private async fail(
    row: JobRow,
    job: Job,
    definition: QueueDefinition,
    error: unknown,
  ): Promise<void> {
    const message = errorMessage(error);
    const now = this.ctx.clock.now();
    const nextRun = new Date(
      now.getTime() + backoffDelay(definition.backoff, row.attempts, this.random),
    );
    const dead =
      error instanceof PermanentJobError ||
      nextRun.getTime() - row.created_at.getTime() > definition.maxAgeMs;
    try {
      const result = await this.ctx.db
        .updateTable("jobs")
        .set({
          status: dead ? "dead" : "pending",
          run_at: dead ? row.run_at : nextRun,
          locked_until: null,
          locked_by: null,
          last_error: message,
          updated_at: now,
        })
        .where("id", "=", row.id)
        .where("locked_by", "=", this.workerId)
        .where("attempts", "=", row.attempts)
        .executeTakeFirst();
      if (result.numUpdatedRows === 0n) return; // another runner owns it now
    } catch (err) {
      this.ctx.logger.error({ err, job: row.id }, "could not record job failure");
      return;
    }
    const log = { job: row.id, queue: row.queue, attempts: row.attempts, error: message };
    if (!dead) {
      this.ctx.logger.info(
        { ...log, next_run_at: nextRun.toISOString() },
        "job failed; will retry",
      );
      return;
    }
    this.ctx.logger.warn(log, "job failed for good (dead)");
    try {
      await definition.onDead?.(job, message, this.ctx);
    } catch (err) {
      this.ctx.logger.error({ err, job: row.id }, "onDead hook failed");
    }
  }
}

function toJob(row: JobRow): Job {
  return {
    id: row.id,
    queue: row.queue,
    orgId: row.org_id,
    payload: typeof row.payload === "string" ? JSON.parse(row.payload) : row.payload,
    attempts: row.attempts,
    createdAt: row.created_at,
    runAt: row.run_at,
  };
}

function errorMessage(error: unknown): string {
  const message =
    error instanceof Error ? error.message || error.name : String(error ?? "unknown error");
  return message.length > MAX_ERROR_LENGTH ? `${message.slice(0, MAX_ERROR_LENGTH)}…` : message;
}

/** Deletes done and dead jobs last touched before `before`. */
export async function purgeFinishedJobs(db: Db, before: Date): Promise<number> {
  const result = await db
    .deleteFrom("jobs")
    .where("status", "in", ["done", "dead"])
    .where("updated_at", "<", before)
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}

export async function findJob(db: Db, id: string): Promise<JobRow | undefined> {
  return db.selectFrom("jobs").selectAll().where("id", "=", id).executeTakeFirst();
}
