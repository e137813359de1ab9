/**
 * Dispatch cost of the two ways to run N workers with piscina: N single-thread
 * pools (explicit affinity, what src/worker-pool.ts does) against one shared
 * pool of N threads (piscina's default balancing, no affinity). Each round
 * sends one small task to each worker and waits for both.
 *
 *   npm run build && node dist/bench/pool-affinity.js [rounds]
 */
import { Piscina } from 'piscina';
import { fileURLToPath } from 'node:url';

const WORKERS = 2;
const SPIN = 2000;
const rounds = Number(process.argv[2] ?? 20000);
const filename = fileURLToPath(new URL('./fixtures/spin-worker.js', import.meta.url));

async function measure(label: string, run: (worker: number) => Promise<unknown>): Promise<void> {
  const round = (): Promise<unknown[]> => Promise.all(Array.from({ length: WORKERS }, (_, k) => run(k)));
  for (let i = 0; i < rounds / 10; i++) await round(); // warm up
  const started = process.hrtime.bigint();
  for (let i = 0; i < rounds; i++) await round();
  const micros = Number(process.hrtime.bigint() - started) / 1e3 / rounds;
  console.log(`${label}: ${micros.toFixed(1)} us per round of ${WORKERS} tasks`);
}

const singles = Array.from({ length: WORKERS }, () => new Piscina({ filename, minThreads: 1, maxThreads: 1, idleTimeout: Infinity }));
await measure('single-thread pools (affinity)', (k) => singles[k].run({ spin: SPIN }));
await Promise.all(singles.map((p) => p.destroy()));

const shared = new Piscina({ filename, minThreads: WORKERS, maxThreads: WORKERS, idleTimeout: Infinity });
await measure('one shared pool (no affinity)', () => shared.run({ spin: SPIN }));
await shared.destroy();
