import { existsSync } from 'node:fs';
import { Piscina } from 'piscina';
import { ENCODER_WORKER_FILE } from './package-root.js';
import type { EncodeResult, WorkerData, WorkerTask } from '../workers/protocol.js';

export interface WorkerPoolOptions {
  /** Worker threads, each owning the cache partitions mapped to it. */
  workers: number;
  /** Let tests make a worker exit (the 'crash' task). */
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
  /** Tasks that failed (a worker died under them, or they threw) and idle workers that died. */
  failures = 0;

  constructor(options: WorkerPoolOptions) {
    if (!existsSync(ENCODER_WORKER_FILE)) {
      throw new Error(`encoder worker not built: ${ENCODER_WORKER_FILE} is missing (run npm run build)`);
    }
    this.size = options.workers;
    const workerData: WorkerData = { allowFaults: options.allowFaults ?? false };
    this.pools = [];
    for (let i = 0; i < options.workers; i++) {
      const pool = new Piscina({
        filename: ENCODER_WORKER_FILE,
        minThreads: 1,
        maxThreads: 1,
        idleTimeout: Infinity,
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
    return this.pools[worker].run(task).catch((err: unknown) => {
      this.failures++;
      throw err;
    });
  }

  /** Queue depth per worker: tasks waiting behind the running one. */
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
