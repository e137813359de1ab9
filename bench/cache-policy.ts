/**
 * Hit rates of the cache policies on a trace's dirty epochs: the pfns of
 * every epoch through one slot policy (workers/cache-policy.ts, the code the
 * workers run), as one partition of the given budget would see them.
 *
 *   npm run build && node dist/bench/cache-policy.js --trace T [--trace T2 ...] [--mib 8,32,128]
 *
 * Then the cost of each policy's bookkeeping: a lookup that hits, and a
 * lookup that misses followed by its insert (evicting), with 4096 pages
 * cached; the best of 3 rounds of 2M hits and 200k misses.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { parseTrace } from '../src/trace.js';
import { CACHE_POLICIES, createSlotPolicy } from '../workers/cache-policy.js';

const { values } = parseArgs({ options: { trace: { type: 'string', multiple: true }, mib: { type: 'string', default: '8,32,128' } } });
const mibs = values.mib.split(',').map(Number);
console.log(`| trace | ${mibs.flatMap((m) => CACHE_POLICIES.map((p) => `${p} ${m} MiB`)).join(' | ')} |`);
console.log(`|---|${mibs.flatMap(() => CACHE_POLICIES.map(() => '--:')).join('|')}|`);
for (const path of values.trace ?? []) {
  const { pageSize, epochs } = parseTrace(readFileSync(path));
  const cells: string[] = [];
  for (const mib of mibs) {
    for (const name of CACHE_POLICIES) {
      const policy = createSlotPolicy(name, Math.floor((mib * 1024 * 1024) / pageSize));
      let hits = 0;
      let lookups = 0;
      for (const [e, epoch] of epochs.entries()) {
        for (const pfn of epoch.pfns) {
          const hit = policy.lookup(pfn) >= 0;
          if (!hit) policy.insert(pfn);
          if (e === 0) continue;
          lookups++;
          if (hit) hits++;
        }
      }
      cells.push((hits / lookups).toFixed(3));
    }
  }
  console.log(`| ${path} | ${cells.join(' | ')} |`);
}

const SLOTS = 4096;
for (const name of CACHE_POLICIES) {
  let bestHit = Infinity;
  let bestMiss = Infinity;
  for (let round = 0; round < 3; round++) {
    const policy = createSlotPolicy(name, SLOTS);
    for (let i = 0; i < SLOTS; i++) policy.insert(i * 7);
    let sink = 0;
    const hits = 2_000_000;
    let started = process.hrtime.bigint();
    // A multiplicative hash walks the cached pfns in no particular order.
    for (let i = 0; i < hits; i++) sink += policy.lookup((Math.imul(i, 0x9e3779b1) >>> 0) % SLOTS * 7);
    bestHit = Math.min(bestHit, Number(process.hrtime.bigint() - started) / hits);
    const misses = 200_000;
    started = process.hrtime.bigint();
    for (let i = 0; i < misses; i++) {
      const pfn = 1_000_000 + round * misses + i;
      if (policy.lookup(pfn) < 0) sink += policy.insert(pfn);
    }
    bestMiss = Math.min(bestMiss, Number(process.hrtime.bigint() - started) / misses);
    if (sink === -1) console.log('');
  }
  console.log(`${name}: hit ${bestHit.toFixed(0)} ns, miss and insert ${bestMiss.toFixed(0)} ns`);
}
