/**
 * Nanoseconds per page of the cache policies' bookkeeping on real traces:
 * the lru-cache originals (test/cache-policy-oracle.ts, "old") against the
 * typed-array policies the workers run (workers/cache-policy.ts, "new").
 * Every page of every epoch goes through one partition of the budget in the
 * order and with the calls the worker makes (workers/encoder.ts, encode):
 * a raw page is removed; any other is looked up, and inserted on a miss.
 *
 *   npm run build && node dist/bench/cache-ops.js --trace T [--trace T2 ...] [--mib 32] [--runs 2] [--pages 2000000]
 *
 * Each run is a fresh worker thread (its own isolate, so a call site sees one
 * policy class, as in a sender worker): one untimed warm-up replay, then
 * timed replays, each on a new policy, as many as make `--pages` pages (a
 * trace's dirty epochs are 6-25 thousand pages: one replay takes a few
 * milliseconds, too short to time alone). Runs alternate old and new
 * (old first, then new first, ...), so a change in the machine's load falls
 * on both. Figures are the best and the median of all timed replays; every
 * replay's answers (hit or slot of every page) must hash the same under old
 * and new, or the bench fails.
 */
import { parseArgs } from 'node:util';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { KIND_RAW } from '../src/epoch-record.js';
import { openTrace } from '../src/trace.js';
import { createOraclePolicy } from '../test/cache-policy-oracle.js';
import { CACHE_POLICIES, createSlotPolicy, type CachePolicyName, type SlotPolicy } from '../workers/cache-policy.js';
import { median } from './stats.js';

/** old: the lru-cache originals; new: the typed-array policies. */
type Impl = 'old' | 'new';

/** One trace's page operations, in shared memory for the runs' threads. */
interface Ops {
  pfns: Float64Array;
  kinds: Uint8Array;
  /** Index of the first page of epoch 1: before it, epoch 0 (the whole image). */
  dirtyStart: number;
}

interface RunRequest {
  impl: Impl;
  policy: CachePolicyName;
  slotCount: number;
  passes: number;
  pfns: SharedArrayBuffer;
  kinds: SharedArrayBuffer;
  dirtyStart: number;
}

interface RunResult {
  /** ns per page over all epochs, and over the dirty epochs, one of each per timed pass. */
  all: number[];
  dirty: number[];
  hits: number;
  answers: number;
}

/** The worker's calls for pages [from, to); returns [hits, a hash of every answer]. */
function replay(policy: SlotPolicy, ops: Ops, from: number, to: number, hash: number): [number, number] {
  const { pfns, kinds } = ops;
  let hits = 0;
  for (let i = from; i < to; i++) {
    const pfn = pfns[i];
    if (kinds[i] === KIND_RAW) {
      policy.remove(pfn);
      continue;
    }
    let slot = policy.lookup(pfn);
    if (slot >= 0) hits++;
    else slot = policy.insert(pfn);
    hash = Math.imul(hash ^ slot, 0x01000193);
  }
  return [hits, hash];
}

function runPasses(req: RunRequest): RunResult {
  const ops: Ops = { pfns: new Float64Array(req.pfns), kinds: new Uint8Array(req.kinds), dirtyStart: req.dirtyStart };
  const create = req.impl === 'old' ? createOraclePolicy : createSlotPolicy;
  const result: RunResult = { all: [], dirty: [], hits: 0, answers: 0 };
  const pages = ops.pfns.length;
  for (let pass = 0; pass <= req.passes; pass++) {
    const policy = create(req.policy, req.slotCount);
    const started = process.hrtime.bigint();
    const [, imageHash] = replay(policy, ops, 0, ops.dirtyStart, 0x811c9dc5);
    const dirtyStarted = process.hrtime.bigint();
    const [hits, hash] = replay(policy, ops, ops.dirtyStart, pages, imageHash);
    const ended = process.hrtime.bigint();
    // Pass 0 warms the JIT up.
    if (pass === 0) continue;
    result.all.push(Number(ended - started) / pages);
    result.dirty.push(Number(ended - dirtyStarted) / (pages - ops.dirtyStart));
    result.hits = hits;
    result.answers = hash;
  }
  return result;
}

async function loadOps(path: string): Promise<{ ops: Ops; pageSize: number }> {
  const trace = await openTrace(path);
  const pfnChunks: Float64Array[] = [];
  const kindChunks: Uint8Array[] = [];
  let pages = 0;
  let dirtyStart = -1;
  try {
    for await (const epoch of trace.epochs()) {
      if (pfnChunks.length === 1) dirtyStart = pages;
      pfnChunks.push(epoch.pfns.slice());
      kindChunks.push(epoch.kinds.slice());
      pages += epoch.count;
    }
  } finally {
    await trace.close();
  }
  if (dirtyStart < 0) throw new Error(`${path}: no dirty epochs`);
  const pfns = new Float64Array(new SharedArrayBuffer(pages * 8));
  const kinds = new Uint8Array(new SharedArrayBuffer(pages));
  for (let c = 0, at = 0; c < pfnChunks.length; at += pfnChunks[c].length, c++) {
    pfns.set(pfnChunks[c], at);
    kinds.set(kindChunks[c], at);
  }
  return { ops: { pfns, kinds, dirtyStart }, pageSize: trace.pageSize };
}

function inThread(req: RunRequest): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL(import.meta.url), { workerData: req });
    worker.once('message', resolve);
    worker.once('error', reject);
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      trace: { type: 'string', multiple: true },
      mib: { type: 'string', default: '32' },
      runs: { type: 'string', default: '2' },
      pages: { type: 'string', default: '2000000' },
    },
  });
  const mib = Number(values.mib);
  const runs = Number(values.runs);
  const pagesPerRun = Number(values.pages);
  console.log(`${mib} MiB, one partition; ${runs} runs per implementation of ${pagesPerRun} pages each; ns per page, best (median) of the replays`);
  console.log('| trace | policy | pages (dirty) | dirty hit rate | old all | new all | old dirty | new dirty | speed-up (dirty, medians) |');
  console.log('|---|---|--:|--:|--:|--:|--:|--:|--:|');
  for (const path of values.trace ?? []) {
    const { ops, pageSize } = await loadOps(path);
    const slotCount = Math.floor((mib * 1024 * 1024) / pageSize);
    const pages = ops.pfns.length;
    const passes = Math.ceil(pagesPerRun / pages);
    for (const policy of CACHE_POLICIES) {
      const results: Record<Impl, RunResult[]> = { old: [], new: [] };
      for (let run = 0; run < runs; run++) {
        const order: Impl[] = run % 2 === 0 ? ['old', 'new'] : ['new', 'old'];
        for (const impl of order) {
          const req: RunRequest = {
            impl, policy, slotCount, passes, pfns: ops.pfns.buffer as SharedArrayBuffer, kinds: ops.kinds.buffer as SharedArrayBuffer, dirtyStart: ops.dirtyStart,
          };
          results[impl].push(await inThread(req));
        }
      }
      const answers = new Set([...results.old, ...results.new].map((r) => r.answers));
      if (answers.size !== 1) throw new Error(`${path} ${policy}: old and new answered differently`);
      const all = (impl: Impl): number[] => results[impl].flatMap((r) => r.all);
      const dirty = (impl: Impl): number[] => results[impl].flatMap((r) => r.dirty);
      const cell = (xs: number[]): string => `${Math.min(...xs).toFixed(0)} (${median(xs).toFixed(0)})`;
      let dirtyLookups = 0;
      for (let i = ops.dirtyStart; i < pages; i++) if (ops.kinds[i] !== KIND_RAW) dirtyLookups++;
      const hitRate = results.new[0].hits / dirtyLookups;
      console.log(
        `| ${path} | ${policy} | ${pages} (${pages - ops.dirtyStart}) | ${hitRate.toFixed(3)} | ${cell(all('old'))} | ${cell(all('new'))} | ` +
          `${cell(dirty('old'))} | ${cell(dirty('new'))} | ${(median(dirty('old')) / median(dirty('new'))).toFixed(1)}x |`,
      );
    }
  }
}

if (isMainThread) {
  await main();
} else {
  parentPort?.postMessage(runPasses(workerData as RunRequest));
}
