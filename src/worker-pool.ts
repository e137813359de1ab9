import { existsSync } from 'node:fs';
import { Piscina } from 'piscina';
import { ENCODER_WORKER_FILE } from './package-root.js';
import type { EncodeResult, WorkerData, WorkerTask } from '../workers/protocol.js';

/** Tasks a worker holds at once: the one it runs and the next. */
const TASKS_AHEAD = 2;

export interface WorkerPoolOptions {
  /** Worker threads, each owning the cache partitions mapped to it. */
  workers: number;
  /** Let tests make a worker exit in the middle of a task (see armCrash). */
  allowFaults?: boolean;
}

/**
 * A fixed set of encoding workers with explicit affinity.
 *
 * Partition ownership is the central invariant: every task of a partition
 * must reach the one worker that holds it, in submission order. Piscina's
 * shared queue sends a task to any idle worker, and a custom loadBalancer
 * neither sees the task nor can refuse without piscina queueing it at the
 * tail or spawning a worker that owns nothing. So each worker is its own
 * single-thread pool (minThreads = maxThreads = 1): the pool's FIFO queue is
 * the partition's order, and when the thread dies piscina starts a new one in
 * its place, whose partitions are empty (costing compression, never
 * correctness: empty partitions only miss).
 */
export class WorkerPool {
  readonly size: number;
  private readonly pools: Piscina[];
  private readonly allowFaults: boolean;
  private readonly crashes: ({ afterPages: number; skipTasks: number } | undefined)[];
  /** Fault injection, per worker: the last task run, and the turn the next task waits for while a crash task is held back. */
  private readonly lastTasks: (Promise<unknown> | undefined)[];
  private readonly turns: (Promise<unknown> | undefined)[];
  /** Tasks that failed (a worker died under them, or they threw) and idle workers that died. */
  failures = 0;
  /** Per worker: nanoseconds spent in encode tasks (as the worker measured them), for metrics. */
  readonly busyNs: number[];
  /** Per worker: tasks that completed (any op), for metrics. */
  readonly tasksCompleted: number[];

  constructor(options: WorkerPoolOptions) {
    if (!existsSync(ENCODER_WORKER_FILE)) {
      throw new Error(`encoder worker not built: ${ENCODER_WORKER_FILE} is missing (run npm run build)`);
    }
    this.size = options.workers;
    this.allowFaults = options.allowFaults ?? false;
    this.crashes = new Array(options.workers).fill(undefined);
    this.lastTasks = new Array(options.workers).fill(undefined);
    this.turns = new Array(options.workers).fill(undefined);
    this.busyNs = new Array<number>(options.workers).fill(0);
    this.tasksCompleted = new Array<number>(options.workers).fill(0);
    const workerData: WorkerData = { allowFaults: options.allowFaults ?? false };
    this.pools = [];
    for (let i = 0; i < options.workers; i++) {
      const pool = new Piscina({
        filename: ENCODER_WORKER_FILE,
        minThreads: 1,
        maxThreads: 1,
        idleTimeout: Infinity,
        // The next task is posted while the previous one runs, so the worker
        // starts it as soon as it is done instead of waiting for the main
        // thread to take the result and post again (0.2-0.7 ms a task here).
        // Tasks are synchronous: the one thread still runs them one at a
        // time, in the order they were posted.
        concurrentTasksPerWorker: TASKS_AHEAD,
        workerData,
      });
      // An idle worker that dies is reported as an 'error' event rather than
      // a rejected task; piscina has already replaced it. Without a listener
      // the event would crash the service.
      pool.on('error', () => {
        this.failures++;
      });
      this.pools.push(pool);
    }
  }

  run(worker: number, task: WorkerTask): Promise<EncodeResult | null> {
    return this.allowFaults ? this.runWithFaults(worker, task) : this.post(worker, task);
  }

  private post(worker: number, task: WorkerTask): Promise<EncodeResult | null> {
    return this.pools[worker].run(task).then(
      (result: EncodeResult | null) => {
        this.tasksCompleted[worker]++;
        if (result !== null) this.busyNs[worker] += result.busyNs;
        return result;
      },
      (err: unknown) => {
        this.failures++;
        throw err;
      },
    );
  }

  /**
   * The task that carries an armed crash is posted only once the worker's
   * earlier tasks have settled, and the tasks after it wait their turn behind
   * it. A worker posts each result on piscina's port but its exit comes as
   * the Worker's event, in no set order: a crash a few pages into the next
   * task could otherwise fail a task whose result was already on its way, so
   * "the crash comes in task N" would depend on the scheduler.
   */
  private runWithFaults(worker: number, task: WorkerTask): Promise<EncodeResult | null> {
    let before = this.turns[worker];
    const crash = this.crashes[worker];
    if (crash !== undefined && task.op === 'encode') {
      if (crash.skipTasks > 0) crash.skipTasks--;
      else {
        task.crashAfterPages = crash.afterPages;
        this.crashes[worker] = undefined;
        before = Promise.allSettled([before, this.lastTasks[worker]]);
      }
    }
    let result: Promise<EncodeResult | null>;
    if (before === undefined) result = this.post(worker, task);
    else {
      const turn = before.then(() => undefined, () => undefined);
      this.turns[worker] = turn;
      void turn.then(() => {
        if (this.turns[worker] === turn) this.turns[worker] = undefined;
      });
      result = turn.then(() => this.post(worker, task));
    }
    this.lastTasks[worker] = result;
    return result;
  }

  /**
   * Fault injection (tests only): worker `worker` exits after encoding
   * `afterPages` pages of its encode task number `skipTasks + 1` from now,
   * once the tasks before that one have settled.
   */
  armCrash(worker: number, afterPages: number, skipTasks = 0): void {
    if (!this.allowFaults) throw new Error('fault injection is disabled for this pool');
    this.crashes[worker] = { afterPages, skipTasks };
  }

  /** Queue depth per worker: tasks waiting in its pool (not counting the running one and the one posted ahead of it). */
  queueDepths(): number[] {
    return this.pools.map((p) => p.queueSize);
  }

  /** Wall time the workers have spent in tasks, from piscina's utilization figure. */
  utilization(): number[] {
    return this.pools.map((p) => p.utilization);
  }

  async close(): Promise<void> {
    await Promise.all(this.pools.map((p) => p.destroy()));
  }
}
