import { exerciseCachePartitions } from '../workers/cache-partition.js';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import type { FrameSink } from '../src/merge.js';
import { MemoryImage, Receiver } from '../src/receiver.js';
import { Sender } from '../src/sender.js';
import { encodeEpochRecord } from '../src/trace.js';
import { CACHE_POLICIES, FrequencySketch, LruSlots, TinyLfuSlots, createSlotPolicy, type CachePolicyName, type SlotPolicy } from '../workers/cache-policy.js';
import { xorshift32 } from '../src/xorshift.js';
import { createOraclePolicy } from './cache-policy-oracle.js';

type Op = { kind: 'use'; pfn: number } | { kind: 'remove'; pfn: number };

/**
 * Drive a policy the way the encoder does (lookup, insert on a miss) and
 * check the invariants the stream relies on after every step: a slot has one
 * owner, slots stay below slotCount, size never passes slotCount, a hit
 * returns the slot the page was given, and a page leaves only by eviction
 * or remove.
 */
function drive(policy: SlotPolicy, slotCount: number, ops: Op[]): { hits: number } {
  const slotOf = new Map<number, number>();
  const owner = new Map<number, number>();
  let hits = 0;
  for (const op of ops) {
    if (op.kind === 'remove') {
      policy.remove(op.pfn);
      const slot = slotOf.get(op.pfn);
      if (slot !== undefined) owner.delete(slot);
      slotOf.delete(op.pfn);
    } else {
      const slot = policy.lookup(op.pfn);
      if (slot >= 0) {
        hits++;
        expect(slotOf.get(op.pfn)).toBe(slot);
      } else {
        expect(slotOf.has(op.pfn), `pfn ${op.pfn} was cached but lookup missed`).toBe(false);
        const given = policy.insert(op.pfn);
        if (slotCount === 0) {
          expect(given).toBe(-1);
          continue;
        }
        expect(given).toBeGreaterThanOrEqual(0);
        expect(given).toBeLessThan(slotCount);
        // Whoever held the slot was evicted.
        const previous = owner.get(given);
        if (previous !== undefined) slotOf.delete(previous);
        owner.set(given, op.pfn);
        slotOf.set(op.pfn, given);
      }
    }
    expect(policy.size).toBeLessThanOrEqual(slotCount);
  }
  // Every page the model holds is still there, in its slot (lookups count as uses, so check last).
  for (const [pfn, slot] of slotOf) expect(policy.lookup(pfn)).toBe(slot);
  return { hits };
}

const opArb = (pfns: number) =>
  fc.oneof(
    { weight: 9, arbitrary: fc.integer({ min: 0, max: pfns - 1 }).map((pfn): Op => ({ kind: 'use', pfn })) },
    { weight: 1, arbitrary: fc.integer({ min: 0, max: pfns - 1 }).map((pfn): Op => ({ kind: 'remove', pfn })) },
  );

describe('slot policies', () => {
  for (const name of CACHE_POLICIES) {
    it(`${name}: one owner per slot, slots in range, hits in the slot given, under random use and removal`, () => {
      fc.assert(
        fc.property(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 1, max: 120 }), fc.array(opArb(120), { maxLength: 600 }), (slots, pfns, ops) => {
          const bounded = ops.map((op) => ({ ...op, pfn: op.pfn % pfns }));
          drive(createSlotPolicy(name, slots), slots, bounded);
        }),
        { numRuns: 300 },
      );
    });

    it(`${name}: pfns above 2^32 are told apart`, () => {
      const policy = createSlotPolicy(name, 4);
      const a = 2 ** 40 + 5;
      const b = 5;
      const sa = policy.insert(a);
      const sb = policy.insert(b);
      expect(sa).not.toBe(sb);
      expect(policy.lookup(a)).toBe(sa);
      expect(policy.lookup(b)).toBe(sb);
    });
  }

  it('lru: evicts exactly the least recently used page', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 16 }), fc.array(fc.integer({ min: 0, max: 40 }), { maxLength: 400 }), (slots, uses) => {
        const policy = new LruSlots(slots);
        const model: number[] = []; // most recent last
        for (const pfn of uses) {
          const hit = policy.lookup(pfn) >= 0;
          const at = model.indexOf(pfn);
          expect(hit).toBe(at >= 0);
          if (at >= 0) model.splice(at, 1);
          else {
            policy.insert(pfn);
            if (model.length === slots) model.shift();
          }
          model.push(pfn);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('tinylfu keeps pages dirtied again and again through a scan of once-seen pages; lru loses them', () => {
    // 64 slots; 48 hot pages dirtied every round, then 200 pages seen once (a
    // whole-image epoch, a scan). LRU flushes the hot set each round.
    const rounds = 20;
    const ops: Op[] = [];
    let cold = 1_000;
    for (let r = 0; r < rounds; r++) {
      for (let h = 0; h < 48; h++) ops.push({ kind: 'use', pfn: h });
      for (let c = 0; c < 200; c++) ops.push({ kind: 'use', pfn: cold++ });
    }
    const hotHits = (policy: SlotPolicy): number => {
      let hits = 0;
      for (const op of ops) {
        const slot = policy.lookup(op.pfn);
        if (slot >= 0) {
          if (op.pfn < 48) hits++;
        } else {
          policy.insert(op.pfn);
        }
      }
      return hits / (48 * rounds);
    };
    const lru = hotHits(new LruSlots(64));
    const tiny = hotHits(new TinyLfuSlots(64));
    expect(lru).toBe(0);
    expect(tiny).toBeGreaterThan(0.8);
  });

  it('tinylfu with one slot: the window alone, every new page replaces the last', () => {
    const policy = new TinyLfuSlots(1);
    expect(policy.insert(7)).toBe(0);
    expect(policy.lookup(7)).toBe(0);
    expect(policy.insert(8)).toBe(0);
    expect(policy.lookup(7)).toBe(-1);
    expect(policy.size).toBe(1);
  });
});

/**
 * The typed-array policies against the lru-cache ones they replaced
 * (test/cache-policy-oracle.ts): the same answer to every call and the same
 * size after it. `access` is the encoder's sequence (lookup, insert on a
 * miss); `lookup` and `insert` also come alone. An insert is of an uncached
 * pfn only (SlotPolicy's precondition, which every caller keeps), so the
 * test follows which pfns are cached from the answers: an insert returning
 * slot s evicts s's previous page and no other.
 */
type DiffOp = { kind: 'access' | 'lookup' | 'insert' | 'remove'; pfn: number };
interface DiffStats { hits: number; evictions: number; removals: number }

function compareWithOracle(name: CachePolicyName, slotCount: number, ops: Iterable<DiffOp>): DiffStats {
  const ours = createSlotPolicy(name, slotCount);
  const oracle = createOraclePolicy(name, slotCount);
  const slotOf = new Map<number, number>();
  const owner = new Map<number, number>();
  const stats: DiffStats = { hits: 0, evictions: 0, removals: 0 };
  let step = 0;
  const same = (what: string, got: number, expected: number): void => {
    // Plain compares: expect() on every one of 10^6 answers would dominate the run.
    if (got !== expected) expect.fail(`${name}, ${slotCount} slots, op ${step} (${what}): ${got}, the oracle ${expected}`);
  };
  const lookup = (pfn: number): number => {
    const slot = ours.lookup(pfn);
    same(`lookup ${pfn}`, slot, oracle.lookup(pfn));
    if (slot >= 0) stats.hits++;
    return slot;
  };
  const insert = (pfn: number): void => {
    const slot = ours.insert(pfn);
    same(`insert ${pfn}`, slot, oracle.insert(pfn));
    if (slot < 0) return;
    const evicted = owner.get(slot);
    if (evicted !== undefined) {
      slotOf.delete(evicted);
      stats.evictions++;
    }
    owner.set(slot, pfn);
    slotOf.set(pfn, slot);
  };
  for (const op of ops) {
    if (op.kind === 'remove') {
      ours.remove(op.pfn);
      oracle.remove(op.pfn);
      const slot = slotOf.get(op.pfn);
      if (slot !== undefined) {
        owner.delete(slot);
        slotOf.delete(op.pfn);
        stats.removals++;
      }
    } else if (op.kind === 'lookup') {
      lookup(op.pfn);
    } else if (op.kind === 'insert') {
      if (!slotOf.has(op.pfn)) insert(op.pfn);
    } else if (lookup(op.pfn) < 0) {
      insert(op.pfn);
    }
    same('size', ours.size, oracle.size);
    same('size of the pages followed', ours.size, slotOf.size);
    step++;
  }
  // What both hold at the end, looked up (and so reordered) in one order.
  for (const pfn of [...slotOf.keys()]) lookup(pfn);
  return stats;
}

const PFN_MAX = 2 ** 48 - 1;
/** Pfns where a hash or a split into 32-bit halves could go wrong. */
const EDGE_PFNS = [0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 40 + 5, 5 * 2 ** 32 + 5, PFN_MAX, PFN_MAX - 1];

const diffPfnArb = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0, max: 63 }) },
  { weight: 2, arbitrary: fc.constantFrom(...EDGE_PFNS) },
  // Equal low halves, different high ones.
  { weight: 2, arbitrary: fc.tuple(fc.integer({ min: 0, max: 7 }), fc.integer({ min: 0, max: 3 })).map(([low, high]) => high * 2 ** 32 + low) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: PFN_MAX }) },
);
const diffOpArb = fc.record({ kind: fc.constantFrom<DiffOp['kind']>('access', 'access', 'access', 'lookup', 'insert', 'remove'), pfn: diffPfnArb });

/**
 * A long stream for a large cache, as a checkpoint stream makes it: a
 * working set of `span` pfns at 1..4 bases (0, across 2^32, 2^45, near 2^48),
 * a hot share used most of the time, scans of fresh pfns (an epoch 0, new
 * buffers), and now and then a raw page's remove or a lone lookup or insert.
 */
function* longStream(seed: number, slotCount: number, spanFactor: number, length: number): Generator<DiffOp> {
  const next = xorshift32(seed);
  const span = Math.max(1, Math.round(slotCount * spanFactor));
  const hot = Math.max(1, span >>> 3);
  const bases = [0, 2 ** 32 - (span >>> 1), 2 ** 45 + 12_345, PFN_MAX - span].slice(0, 1 + (seed & 3));
  let fresh = 2 ** 47;
  for (let n = 0; n < length; ) {
    const roll = next() % 100;
    if (roll < 2) {
      // A scan: up to a tenth of the cache of pfns never seen before.
      const scan = 1 + (next() % Math.max(1, slotCount >>> 3));
      for (let i = 0; i < scan && n < length; i++, n++) yield { kind: 'access', pfn: fresh++ };
      continue;
    }
    const base = bases[next() % bases.length];
    const pfn = base + (roll < 60 ? next() % hot : next() % span);
    const kind: DiffOp['kind'] = roll < 93 ? 'access' : roll < 96 ? 'remove' : roll < 98 ? 'lookup' : 'insert';
    yield { kind, pfn };
    n++;
  }
}

describe('slot policies equal their lru-cache originals, call for call', () => {
  for (const name of CACHE_POLICIES) {
    it(`${name}: no budget, tiny and small caches, random pfns up to 2^48`, () => {
      const slotsArb = fc.oneof(fc.constantFrom(0, 1, 2, 3), fc.integer({ min: 4, max: 40 }), fc.integer({ min: 41, max: 300 }));
      fc.assert(
        // size 'max': fast-check's default size would keep arrays near 10 ops.
        fc.property(slotsArb, fc.array(diffOpArb, { maxLength: 3_000, size: 'max' }), (slots, ops) => {
          compareWithOracle(name, slots, ops);
        }),
        { numRuns: 400 },
      );
    });

    it(`${name}: 1000+ slots, long streams with scans, removes and sketch ageing`, () => {
      const slotsArb = fc.oneof(fc.constantFrom(1000, 1024, 4096), fc.integer({ min: 1000, max: 6000 }));
      fc.assert(
        fc.property(slotsArb, fc.integer({ min: 1, max: 0x7fff_ffff }), fc.double({ min: 0.5, max: 4, noNaN: true }), (slots, seed, spanFactor) => {
          // 30 x slots ops: the sketch ages every 10 x slots lookups.
          const stats = compareWithOracle(name, slots, longStream(seed, slots, spanFactor, 30 * slots));
          expect(stats.hits).toBeGreaterThan(0);
          expect(stats.evictions).toBeGreaterThan(0);
          expect(stats.removals).toBeGreaterThan(0);
        }),
        { numRuns: 12 },
      );
    });
  }
});

describe('FrequencySketch', () => {
  it('never counts less than the true count (up to 15) before it ages', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 2 ** 48 - 1 }), { minLength: 1, maxLength: 30 }), fc.array(fc.nat(200), { maxLength: 150 }), (pfns, picks) => {
        // 100 slots: ages after 1000 increments, more than this test makes.
        const sketch = new FrequencySketch(100);
        const truth = new Map<number, number>();
        for (const p of picks) {
          const pfn = pfns[p % pfns.length];
          sketch.increment(pfn);
          truth.set(pfn, (truth.get(pfn) ?? 0) + 1);
        }
        for (const [pfn, n] of truth) expect(sketch.frequency(pfn)).toBeGreaterThanOrEqual(Math.min(n, 15));
      }),
      { numRuns: 200 },
    );
  });

  it('halves every count after 10 increments a slot, so old popularity fades', () => {
    const sketch = new FrequencySketch(2); // ages every 20 increments
    for (let i = 0; i < 12; i++) sketch.increment(42);
    expect(sketch.frequency(42)).toBe(12);
    for (let i = 0; i < 8; i++) sketch.increment(1_000_000 + i);
    expect(sketch.frequency(42)).toBe(6);
  });
});

describe('cache policies in a stream', () => {
  // An image of 1024 pages (epoch 0), a 256-page cache over 2 partitions,
  // then 10 epochs that each rewrite a word of the same 150 hot pages and
  // write 300 pages never seen before (a scan: fresh buffers). Under LRU the
  // scan pushes the hot pages out every epoch; W-TinyLFU keeps them.
  const PAGE = 4096;
  const HOT = 150;
  const SCAN = 300;
  function page(seed: number): Uint8Array {
    const p = new Uint8Array(PAGE);
    for (let i = 0; i < PAGE; i += 4) p[i] = (seed * 31 + i) & 0xff;
    p[0] = seed & 0xff;
    p[1] = (seed >> 8) & 0xff;
    return p;
  }
  function epochRecord(epoch: number, pfns: number[], pages: Uint8Array[]): Buffer {
    const all = new Uint8Array(pages.length * PAGE);
    pages.forEach((p, i) => all.set(p, i * PAGE));
    return encodeEpochRecord(epoch, pfns, new Array<number>(pfns.length).fill(0), all, PAGE);
  }
  const records: Buffer[] = [];
  const oracle = new Map<number, Uint8Array>();
  {
    const pfns = Array.from({ length: 1024 }, (_, i) => i);
    const pages = pfns.map((pfn) => page(pfn));
    pfns.forEach((pfn, i) => oracle.set(pfn, pages[i]));
    records.push(epochRecord(0, pfns, pages));
    let fresh = 10_000;
    for (let e = 1; e <= 10; e++) {
      const hot = Array.from({ length: HOT }, (_, i) => i * 3);
      const scan = Array.from({ length: SCAN }, () => fresh++);
      const pfns = [...hot, ...scan];
      const pages = pfns.map((pfn) => {
        const p = Uint8Array.from(oracle.get(pfn) ?? page(pfn));
        p[100] = e; // one changed word
        return p;
      });
      pfns.forEach((pfn, i) => oracle.set(pfn, pages[i]));
      records.push(epochRecord(e, pfns, pages));
    }
  }

  async function* once(record: Uint8Array): AsyncGenerator<Uint8Array> {
    yield record;
  }

  async function run(cachePolicy: CachePolicyName): Promise<{ hits: number; bytesOut: number }> {
    const sender = new Sender({ workers: 2 });
    try {
      const stream = sender.create({ workers: 2, cacheBytes: 256 * PAGE, cachePolicy, codec: 'remus' });
      const rx = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE) });
      for (const record of records) {
        const sink: FrameSink = {
          begin() {},
          write(frame, release) {
            // Released even when the receiver refuses the frame, so that the epoch fails at once.
            try {
              rx.applyFrame(Buffer.from(frame));
            } finally {
              release(null);
            }
          },
        };
        await stream.runEpoch(once(record), record.length, sink);
      }
      expect(rx.committedEpoch).toBe(10);
      for (const [pfn, expected] of oracle) {
        const got = new Uint8Array(PAGE);
        expect(rx.readPage(pfn, got), `pfn ${pfn} held`).toBe(true);
        if (!Buffer.from(got).equals(Buffer.from(expected))) expect.fail(`${cachePolicy}: pfn ${pfn} differs from the sender's page`);
      }
      // Counters cover every epoch; epoch 0 is all misses under both policies.
      return { hits: stream.stats.cacheHits, bytesOut: stream.stats.bytesOut };
    } finally {
      await sender.close();
    }
  }

  it('both policies give the exact image; tinylfu keeps the hot pages lru loses to the scan', async () => {
    const lru = await run('lru');
    const tiny = await run('tinylfu');
    expect(lru.hits).toBe(0);
    expect(tiny.hits).toBeGreaterThan(0.8 * HOT * 9);
    expect(tiny.bytesOut).toBeLessThan(lru.bytesOut);
  });
});

describe('exerciseCachePartitions (run once by every worker before its first task)', () => {
  it('takes both policies through hits, misses, evictions and removes, the same way every time', () => {
    const first = exerciseCachePartitions();
    for (const policy of CACHE_POLICIES) {
      const c = first[policy];
      expect(c.hits, policy).toBeGreaterThan(0);
      expect(c.misses, policy).toBeGreaterThan(0);
      expect(c.evictions, policy).toBeGreaterThan(0);
      expect(c.removes, policy).toBeGreaterThan(0);
    }
    expect(exerciseCachePartitions()).toEqual(first);
  });
});
