import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { createTestApp, waitFor } from "../../../test/support/app.js";
import {
  backoffDelay,
  DEFAULT_BACKOFF,
  enqueueJob,
  findJob,
  type Job,
  JobRunner,
  PermanentJobError,
  purgeFinishedJobs,
} from "./jobs.js";

describe("job queue", async () => {
  const app = await createTestApp();
  const ctx = app.runtime.ctx;
  let n = 0;

  /** A runner serving one fresh queue with `handler`. */
  function runnerFor(handler: (job: Job<{ n: number }>) => Promise<void>, maxAgeMs?: number) {
    const queue = `test.${++n}`;
    const runner = new JobRunner({ ctx, random: () => 0.5 }).register(queue, handler, {
      maxAgeMs,
      backoff: { baseMs: 1000, maxMs: 8000, jitter: 0.25 },
    });
    return { queue, runner };
  }

  /** A promise and the function that resolves it: handlers wait on it until the test opens it. */
  function latch(): [Promise<void>, () => void] {
    let open!: () => void;
    const promise = new Promise<void>((r) => {
      open = r;
    });
    return [promise, open];
  }

  /** Ends a job's lease now, as the database's clock would once it passed. */
  async function expireLease(id: string) {
    await sql`update jobs set locked_until = now() - interval '1 second' where id = ${id}`.execute(
      ctx.db,
    );
  }

  it("backoff doubles, is capped and jittered within bounds", () => {
    const policy = { baseMs: 1000, maxMs: 8000, jitter: 0.25 };
    expect([1, 2, 3, 4, 5, 6].map((a) => backoffDelay(policy, a, () => 0.5))).toEqual([
      1000, 2000, 4000, 8000, 8000, 8000,
    ]);
    expect(backoffDelay(policy, 1, () => 0)).toBe(750);
    expect(backoffDelay(policy, 1, () => 0.999999)).toBe(1250);
    for (let a = 1; a < 60; a++) {
      const d = backoffDelay(DEFAULT_BACKOFF, a);
      expect(d).toBeGreaterThan(0);
      expect(d).toBeLessThanOrEqual(DEFAULT_BACKOFF.maxMs * 1.25);
    }
  });

  it("a job enqueued in a rolled-back transaction never runs; a committed one runs once", async () => {
    const seen: number[] = [];
    const { queue, runner } = runnerFor(async (job) => {
      seen.push(job.payload.n);
    });
    await ctx.db
      .transaction()
      .execute(async (trx) => {
        await enqueueJob(trx, ctx, { queue, payload: { n: 1 } });
        throw new Error("roll back");
      })
      .catch(() => {});
    await ctx.db.transaction().execute((trx) => enqueueJob(trx, ctx, { queue, payload: { n: 2 } }));
    expect(await runner.runDueJobs()).toBe(1);
    expect(await runner.runDueJobs()).toBe(0);
    expect(seen).toEqual([2]);
  });

  it("a duplicate dedupe key is a no-op", async () => {
    const seen: number[] = [];
    const { queue, runner } = runnerFor(async (job) => {
      seen.push(job.payload.n);
    });
    const first = await enqueueJob(ctx.db, ctx, { queue, payload: { n: 1 }, dedupeKey: `k${n}` });
    const second = await enqueueJob(ctx.db, ctx, { queue, payload: { n: 2 }, dedupeKey: `k${n}` });
    expect(first.enqueued).toBe(true);
    expect(second).toEqual({ id: first.id, enqueued: false });
    await runner.runDueJobs();
    expect(seen).toEqual([1]);
  });

  it("runs a job only from its run_at, and only jobs of registered queues", async () => {
    const seen: number[] = [];
    const { queue, runner } = runnerFor(async (job) => {
      seen.push(job.payload.n);
    });
    await enqueueJob(ctx.db, ctx, {
      queue,
      payload: { n: 1 },
      runAt: new Date(app.clock.now().getTime() + 60_000),
    });
    const other = await enqueueJob(ctx.db, ctx, { queue: "nobody.serves.this", payload: {} });
    expect(await runner.runDueJobs()).toBe(0);
    app.clock.advance(60_000);
    expect(await runner.runDueJobs()).toBe(1);
    expect(seen).toEqual([1]);
    expect((await findJob(ctx.db, other.id))?.status).toBe("pending");
  });

  it("retries failures with backoff and marks the job dead after its max age, error kept", async () => {
    let calls = 0;
    const { queue, runner } = runnerFor(async () => {
      calls++;
      throw new Error(`boom ${calls}`);
    }, 10_000);
    const { id } = await enqueueJob(ctx.db, ctx, { queue, payload: { n: 1 } });
    await runner.runDueJobs();
    expect(await findJob(ctx.db, id)).toMatchObject({
      status: "pending",
      attempts: 1,
      last_error: "boom 1",
      locked_until: null,
      run_at: new Date(app.clock.now().getTime() + 1000),
    });
    app.clock.advance(999);
    expect(await runner.runDueJobs()).toBe(0);
    app.clock.advance(1);
    expect(await runner.runDueJobs()).toBe(1); // attempt 2, next in 2 s
    app.clock.advance(2000);
    await runner.runDueJobs(); // attempt 3, next in 4 s (7 s after creation)
    app.clock.advance(4000);
    await runner.runDueJobs(); // attempt 4: the next try (8 s later) would pass 10 s → dead
    expect(calls).toBe(4);
    expect(await findJob(ctx.db, id)).toMatchObject({
      status: "dead",
      attempts: 4,
      last_error: "boom 4",
    });
    app.clock.advance(3600_000);
    expect(await runner.runDueJobs()).toBe(0);
  });

  it("a PermanentJobError makes the job dead at once and calls onDead", async () => {
    const dead: string[] = [];
    const queue = `test.${++n}`;
    const runner = new JobRunner({ ctx }).register(
      queue,
      async () => {
        throw new PermanentJobError("cannot ever work");
      },
      {
        onDead: async (job, error) => {
          dead.push(`${job.id}:${error}`);
        },
      },
    );
    const { id } = await enqueueJob(ctx.db, ctx, { queue, payload: null });
    await runner.runDueJobs();
    expect((await findJob(ctx.db, id))?.status).toBe("dead");
    expect(dead).toEqual([`${id}:cannot ever work`]);
  });

  it("a job whose runner died is taken over, but past its max age it goes dead without running", async () => {
    const dead: string[] = [];
    const calls: number[] = [];
    const queue = `test.${++n}`;
    const runner = new JobRunner({ ctx }).register(
      queue,
      async (job) => {
        calls.push(job.attempts);
      },
      {
        maxAgeMs: 10_000,
        onDead: async (job, error) => {
          dead.push(`${job.id}:${error}`);
        },
      },
    );
    // Each claim below stands for a runner that took the job and then died with it.
    const first = await enqueueJob(ctx.db, ctx, { queue, payload: null });
    expect((await runner.claimDueJobs(10)).map((j) => [j.id, j.reclaimed])).toEqual([
      [first.id, false],
    ]);
    await expireLease(first.id);
    app.clock.advance(10_000); // at the age limit, not past it: taken over and run
    expect(await runner.runDueJobs()).toBe(1);
    expect(calls).toEqual([2]);
    expect(await findJob(ctx.db, first.id)).toMatchObject({ status: "done", attempts: 2 });

    const second = await enqueueJob(ctx.db, ctx, { queue, payload: null });
    await runner.claimDueJobs(10);
    await expireLease(second.id);
    app.clock.advance(10_001);
    expect(await runner.runDueJobs()).toBe(1);
    expect(calls).toEqual([2]); // not run again
    const row = await findJob(ctx.db, second.id);
    expect(row).toMatchObject({ status: "dead", attempts: 2, locked_by: null });
    expect(row?.last_error).toMatch(/lease ran out/);
    expect(dead).toEqual([`${second.id}:${row?.last_error}`]);
    app.clock.advance(3600_000);
    expect(await runner.runDueJobs()).toBe(0);
  });

  it("a running handler's lease is renewed, so a slow job is not taken over and run twice at once; a hung one is, after maxRunMs", async () => {
    const queue = `test.${++n}`;
    const [gate, release] = latch();
    const runs: number[] = [];
    // Renewed every 300 ms: a busy machine may delay a renewal by up to 600 ms safely.
    const slow = new JobRunner({ ctx, leaseMs: 900, maxRunMs: 60_000 }).register(
      queue,
      async (job) => {
        runs.push(job.attempts);
        await gate;
      },
    );
    const other = new JobRunner({ ctx, leaseMs: 900 }).register(queue, async (job) => {
      runs.push(job.attempts);
    });
    const { id } = await enqueueJob(ctx.db, ctx, { queue, payload: null });
    const running = slow.runDueJobs();
    await waitFor(async () => runs.length === 1);
    // Three leases' time: without renewal the other runner would have taken it over.
    for (let i = 0; i < 8; i++) {
      await new Promise((r) => setTimeout(r, 400));
      expect(await other.runDueJobs()).toBe(0);
    }
    release();
    await running;
    expect(runs).toEqual([1]);
    expect(await findJob(ctx.db, id)).toMatchObject({ status: "done", attempts: 1 });

    // Renewed for at most maxRunMs: then it counts as hung, and another runner takes it over.
    const [hang, unhang] = latch();
    const hung = new JobRunner({ ctx, leaseMs: 900, maxRunMs: 1200 }).register(queue, async () => {
      await hang;
    });
    const stuck = await enqueueJob(ctx.db, ctx, { queue, payload: null });
    const hanging = hung.runDueJobs();
    await waitFor(async () => (await findJob(ctx.db, stuck.id))?.status === "running");
    await waitFor(async () => (await other.runDueJobs()) === 1);
    expect(await findJob(ctx.db, stuck.id)).toMatchObject({ status: "done", attempts: 2 });
    unhang();
    await hanging;
  });

  it("a runner whose lease was taken over cannot overwrite the new owner's result", async () => {
    const [gate, release] = latch();
    const queue = `test.${++n}`;
    // A long lease, expired by hand below: a slow machine cannot expire it first.
    const slow = new JobRunner({ ctx, leaseMs: 60_000 }).register(queue, async () => {
      await gate;
      throw new Error("late failure");
    });
    const fast = new JobRunner({ ctx, leaseMs: 1000 }).register(queue, async () => {});
    const { id } = await enqueueJob(ctx.db, ctx, { queue, payload: null });
    const running = slow.runDueJobs();
    await waitFor(async () => (await findJob(ctx.db, id))?.status === "running");
    await expireLease(id);
    expect(await fast.runDueJobs()).toBe(1);
    release();
    await running;
    expect(await findJob(ctx.db, id)).toMatchObject({ status: "done", attempts: 2 });
  });

  it("leases run on the database's clock: a runner whose clock is an hour ahead does not take over a live lease", async () => {
    const [gate, release] = latch();
    const queue = `test.${++n}`;
    let runs = 0;
    const handler = async () => {
      runs++;
      await gate;
    };
    const owner = new JobRunner({ ctx, leaseMs: 60_000 }).register(queue, handler);
    const aheadCtx = {
      ...ctx,
      clock: { now: () => new Date(ctx.clock.now().getTime() + 3600_000) },
    };
    const ahead = new JobRunner({ ctx: aheadCtx, leaseMs: 60_000 }).register(queue, handler);
    const { id } = await enqueueJob(ctx.db, ctx, { queue, payload: null });
    const running = owner.runDueJobs();
    try {
      await waitFor(async () => (await findJob(ctx.db, id))?.status === "running");
      const { rows } = await sql<{ seconds: number }>`
        select extract(epoch from locked_until - now())::float8 as seconds
        from jobs where id = ${id}`.execute(ctx.db);
      expect(rows[0]!.seconds).toBeGreaterThan(50);
      expect(rows[0]!.seconds).toBeLessThanOrEqual(60);
      expect(await ahead.runDueJobs()).toBe(0);
      expect(runs).toBe(1);
    } finally {
      release();
      await running;
    }
    expect(await findJob(ctx.db, id)).toMatchObject({ status: "done", attempts: 1 });
  });

  it("a polling round does not wait for a slow job: the jobs after it run while it hangs", async () => {
    const [gate, release] = latch();
    const queue = `test.${++n}`;
    const ran: number[] = [];
    const runner = new JobRunner({ ctx, batchSize: 4, pollIntervalMs: 20 }).register(
      queue,
      async (job: Job<{ n: number }>) => {
        if (job.payload.n === 0) await gate;
        ran.push(job.payload.n);
      },
    );
    // More jobs than one round used to claim (ten batches) before it waited for every job.
    for (let i = 0; i < 60; i++) await enqueueJob(ctx.db, ctx, { queue, payload: { n: i } });
    try {
      expect(await runner.tick()).toBe(60);
      await waitFor(() => ran.length === 59, { timeoutMs: 5000 });
      expect(ran).not.toContain(0);
      // The hanging job keeps its slot across rounds; the next round claims into the others.
      await enqueueJob(ctx.db, ctx, { queue, payload: { n: 60 } });
      expect(await runner.tick()).toBe(1);
      await waitFor(() => ran.includes(60), { timeoutMs: 2000 });
    } finally {
      release();
      await runner.shutdown();
    }
    expect(ran).toContain(0);
  });

  it("jobs of one concurrency key run at most the queue's limit at once; the others wait unclaimed, other keys go on", async () => {
    const [gate, release] = latch();
    const queue = `test.${++n}`;
    const ran: string[] = [];
    const runner = new JobRunner({ ctx, batchSize: 6, pollIntervalMs: 20 }).register(
      queue,
      async (job: Job<{ key: string }>) => {
        if (job.payload.key === "busy") await gate;
        ran.push(job.payload.key);
      },
      { concurrency: (key) => (key === "busy" ? 2 : 100) },
    );
    for (let i = 0; i < 6; i++) {
      await enqueueJob(ctx.db, ctx, { queue, payload: { key: "busy" }, concurrencyKey: "busy" });
    }
    for (const key of ["a", "a", "b"]) {
      await enqueueJob(ctx.db, ctx, { queue, payload: { key }, concurrencyKey: key });
    }
    await enqueueJob(ctx.db, ctx, { queue, payload: { key: "none" } });
    const jobs = () =>
      ctx.db
        .selectFrom("jobs")
        .select(["concurrency_key", "status", "attempts"])
        .where("queue", "=", queue)
        .execute();
    try {
      await runner.tick();
      await waitFor(() => ran.length === 4);
      expect(ran.sort()).toEqual(["a", "a", "b", "none"]);
      const busy = (await jobs()).filter((j) => j.concurrency_key === "busy");
      expect(busy.filter((j) => j.status === "running")).toHaveLength(2);
      expect(busy.filter((j) => j.status === "pending")).toEqual(
        Array(4).fill({ concurrency_key: "busy", status: "pending", attempts: 0 }),
      );
      // Further rounds do not claim them while two run.
      await runner.tick();
      expect((await jobs()).filter((j) => j.status === "running")).toHaveLength(2);
    } finally {
      release();
      await runner.shutdown();
    }
    await new JobRunner({ ctx, batchSize: 6 })
      .register(queue, async () => {}, { concurrency: () => 2 })
      .runDueJobs();
    expect((await jobs()).every((j) => j.status === "done" && j.attempts === 1)).toBe(true);
  });

  it("a key below its limit is claimed only up to it: a burst of one key is not claimed and handed back over and over", async () => {
    const queue = `test.${++n}`;
    let running = 0;
    let most = 0;
    // The round ends once a whole poll interval passes with no job ending and nothing claimed:
    // long enough that a busy machine does not end it while the burst is still due.
    const runner = new JobRunner({ ctx, batchSize: 6, pollIntervalMs: 500 }).register(
      queue,
      async () => {
        most = Math.max(most, ++running);
        await new Promise((r) => setTimeout(r, 5));
        running--;
      },
      { concurrency: () => 2 },
    );
    for (let i = 0; i < 30; i++) {
      await enqueueJob(ctx.db, ctx, { queue, payload: null, concurrencyKey: "burst" });
    }
    const claim = runner.claimDueJobs.bind(runner);
    let rows = 0;
    runner.claimDueJobs = async (limit) => {
      const claimed = await claim(limit);
      rows += claimed.length;
      return claimed;
    };
    expect(await runner.runDueJobs()).toBe(30);
    expect(most).toBe(2);
    // Only the first batch, before the key ran, held more than its limit (6 claimed, 4 back).
    expect(rows).toBeLessThanOrEqual(34);
    const jobs = await ctx.db
      .selectFrom("jobs")
      .select(["status", "attempts"])
      .where("queue", "=", queue)
      .execute();
    expect(jobs).toEqual(Array(30).fill({ status: "done", attempts: 1 }));
  });

  it("perOrganisation: one organisation's backlog of slow jobs leaves the other slots to the rest", async () => {
    const queue = `test.${++n}`;
    const [noisy, quiet] = [await app.createOrg(), await app.createOrg()];
    const [gate, release] = latch();
    const running = new Map<string, number>();
    const most = new Map<string, number>();
    const done: string[] = [];
    const runner = new JobRunner({ ctx, batchSize: 6, pollIntervalMs: 500 }).register(
      queue,
      async (job) => {
        const org = job.orgId!;
        running.set(org, (running.get(org) ?? 0) + 1);
        most.set(org, Math.max(most.get(org) ?? 0, running.get(org)!));
        if (org === noisy) await gate;
        running.set(org, running.get(org)! - 1);
        done.push(org);
      },
      { perOrganisation: (slots) => slots / 3 },
    );
    for (let i = 0; i < 12; i++)
      await enqueueJob(ctx.db, ctx, { queue, orgId: noisy, payload: null });
    for (let i = 0; i < 3; i++)
      await enqueueJob(ctx.db, ctx, { queue, orgId: quiet, payload: null });
    const round = runner.runDueJobs();
    // The noisy organisation's jobs hang; the quiet one's, enqueued after them, all run.
    await waitFor(async () => done.filter((o) => o === quiet).length === 3);
    expect(running.get(noisy)).toBe(2);
    release();
    // A round ends after a poll interval with nothing it may claim: later rounds take the rest.
    let claimed = await round;
    await waitFor(async () => {
      claimed += await runner.runDueJobs();
      return done.length === 15;
    });
    expect(claimed).toBe(15);
    expect(most.get(noisy)).toBe(2);
    const jobs = await ctx.db
      .selectFrom("jobs")
      .select(["status", "attempts"])
      .where("queue", "=", queue)
      .execute();
    expect(jobs).toEqual(Array(15).fill({ status: "done", attempts: 1 }));
  });

  it("shutdown during a round's claim waits for the jobs that claim starts", async () => {
    const queue = `test.${++n}`;
    let started = 0;
    let finished = 0;
    const runner = new JobRunner({ ctx, batchSize: 4 }).register(queue, async () => {
      started++;
      await new Promise((r) => setTimeout(r, 100));
      finished++;
    });
    for (let i = 0; i < 3; i++) await enqueueJob(ctx.db, ctx, { queue, payload: null });
    // The process is told to stop while the round's claim is on its way to the database.
    const claim = runner.claimDueJobs.bind(runner);
    let stopped: Promise<void> | undefined;
    runner.claimDueJobs = (limit) => {
      const rows = claim(limit);
      stopped ??= runner.shutdown();
      return rows;
    };
    const round = runner.tick();
    await waitFor(() => stopped !== undefined);
    await stopped;
    expect(started).toBe(3);
    expect(finished).toBe(3);
    expect(await round).toBe(3);
  });

  it("two rounds of one runner at once never run more jobs than its slots", async () => {
    const [gate, release] = latch();
    const queue = `test.${++n}`;
    let running = 0;
    let most = 0;
    const runner = new JobRunner({ ctx, batchSize: 3, pollIntervalMs: 20 }).register(
      queue,
      async () => {
        most = Math.max(most, ++running);
        await gate;
        running--;
      },
    );
    for (let i = 0; i < 8; i++) await enqueueJob(ctx.db, ctx, { queue, payload: null });
    const rounds = Promise.all([runner.runDueJobs(), runner.runDueJobs()]);
    await waitFor(() => running === 3);
    await new Promise((r) => setTimeout(r, 100));
    expect(most).toBe(3);
    release();
    const [a, b] = await rounds;
    expect(a + b).toBe(8);
    expect(most).toBe(3);
  });

  it("slow jobs holding most slots do not stop the free ones from claiming at the poll interval", async () => {
    const [gate, release] = latch();
    const queue = `test.${++n}`;
    const ran: number[] = [];
    // 4 slots, refilled in halves: 3 hanging jobs leave 1 free, below the half.
    const runner = new JobRunner({ ctx, batchSize: 4, pollIntervalMs: 20 }).register(
      queue,
      async (job: Job<{ n: number }>) => {
        if (job.payload.n < 3) await gate;
        ran.push(job.payload.n);
      },
    );
    for (let i = 0; i < 3; i++) await enqueueJob(ctx.db, ctx, { queue, payload: { n: i } });
    const round = runner.runDueJobs();
    try {
      await waitFor(
        async () =>
          (
            await ctx.db
              .selectFrom("jobs")
              .select("id")
              .where("queue", "=", queue)
              .where("status", "=", "running")
              .execute()
          ).length === 3,
      );
      // Enqueued while the three hang: claimed by the free slot, not after they end.
      await enqueueJob(ctx.db, ctx, { queue, payload: { n: 3 } });
      await waitFor(() => ran.includes(3), { timeoutMs: 2000 });
      expect(ran).toEqual([3]);
    } finally {
      release();
      await round;
    }
    expect(ran.sort()).toEqual([0, 1, 2, 3]);
  });

  it("after shutdown a round claims nothing more and ends with its running jobs", async () => {
    const [gate, release] = latch();
    const queue = `test.${++n}`;
    const runner = new JobRunner({ ctx, batchSize: 1, pollIntervalMs: 20 }).register(
      queue,
      async () => {
        await gate;
      },
    );
    const first = await enqueueJob(ctx.db, ctx, { queue, payload: null });
    const second = await enqueueJob(ctx.db, ctx, { queue, payload: null });
    const round = runner.runDueJobs();
    await waitFor(async () => (await findJob(ctx.db, first.id))?.status === "running");
    runner.shutdown();
    release();
    expect(await round).toBe(1);
    expect((await findJob(ctx.db, first.id))?.status).toBe("done");
    expect((await findJob(ctx.db, second.id))?.status).toBe("pending");
    expect(await runner.tick()).toBe(0);
  });

  it("runDueJobs respects its limit; purge deletes old finished jobs only", async () => {
    const { queue, runner } = runnerFor(async () => {});
    for (let i = 0; i < 5; i++) await enqueueJob(ctx.db, ctx, { queue, payload: { n: i } });
    expect(await runner.runDueJobs({ limit: 3 })).toBe(3);
    expect(await runner.runDueJobs()).toBe(2);
    const pending = await enqueueJob(ctx.db, ctx, {
      queue,
      payload: { n: 9 },
      runAt: new Date(app.clock.now().getTime() + 3600_000),
    });
    app.clock.advance(1000);
    const deleted = await purgeFinishedJobs(ctx.db, app.clock.now());
    expect(deleted).toBeGreaterThanOrEqual(5);
    expect(await findJob(ctx.db, pending.id)).toBeDefined();
  });
});
