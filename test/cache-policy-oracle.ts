import { LRUCache } from 'lru-cache';
import type { CachePolicyName, SlotPolicy } from '../workers/cache-policy.js';

/**
 * The slot policies as they were before workers/cache-policy.ts moved to
 * typed arrays, kept verbatim (on lru-cache, with their own copy of the
 * frequency sketch) as the oracle the rewrite must equal decision for
 * decision: the wire-size figures of issue #7 were measured with these.
 * test/cache-policy.test.ts compares the two op by op; bench/cache-ops.ts
 * times them. Test and bench code only: nothing in src/ or workers/ imports it.
 */

export function createOraclePolicy(name: CachePolicyName, slotCount: number): SlotPolicy {
  return name === 'lru' ? new OracleLruSlots(slotCount) : new OracleTinyLfuSlots(slotCount);
}

/** A stack of free slot numbers, all free at first. */
class FreeSlots {
  private readonly stack: Int32Array;
  private count: number;

  constructor(slotCount: number) {
    this.stack = new Int32Array(slotCount);
    for (let i = 0; i < slotCount; i++) this.stack[i] = slotCount - 1 - i;
    this.count = slotCount;
  }

  get available(): number {
    return this.count;
  }

  take(): number {
    return this.stack[--this.count];
  }

  give(slot: number): void {
    this.stack[this.count++] = slot;
  }
}

/** The seed's policy: least recently used out. */
export class OracleLruSlots implements SlotPolicy {
  private readonly lru: LRUCache<number, number> | null;
  private readonly free: FreeSlots;

  constructor(slotCount: number) {
    // lru-cache refuses max 0; a zero budget simply means every page misses.
    this.lru = slotCount > 0 ? new LRUCache<number, number>({ max: slotCount }) : null;
    this.free = new FreeSlots(slotCount);
  }

  get size(): number {
    return this.lru === null ? 0 : this.lru.size;
  }

  lookup(pfn: number): number {
    if (this.lru === null) return -1;
    const slot = this.lru.get(pfn);
    return slot === undefined ? -1 : slot;
  }

  insert(pfn: number): number {
    if (this.lru === null) return -1;
    // pop() evicts the LRU entry and hands back its slot for reuse.
    const slot = this.free.available > 0 ? this.free.take() : (this.lru.pop() as number);
    this.lru.set(pfn, slot);
    return slot;
  }

  remove(pfn: number): void {
    if (this.lru === null) return;
    const slot = this.lru.peek(pfn);
    if (slot === undefined) return;
    this.lru.delete(pfn);
    this.free.give(slot);
  }
}

/** Share of the slots in the admission window (Caffeine's default, and the best of 1% and 20% on the redis trace at 8 MiB). */
const WINDOW_SHARE = 0.01;

/**
 * W-TinyLFU (Einziger, Friedman, Manes 2017): new pages enter a small LRU
 * window; a page leaving the window enters the main LRU only if it has been
 * dirtied more often, recently, than the page the main LRU would evict
 * (counts kept in a FrequencySketch). Why: a checkpoint stream starts with
 * the whole image (epoch 0), and under plain LRU those once-seen pages push
 * out pages that are dirtied again and again whenever the dirty set
 * outgrows the cache. Measured on the redis trace (dirty epochs' hit rate):
 * 8 MiB 0.863 -> 0.892, 32 MiB 0.887 -> 0.992; python unchanged (0.998).
 *
 * lru-cache cannot look at its least recent entry without removing it, so a
 * main victim that wins against the candidate goes back in as most recent:
 * the same hit rates in simulation (to the third decimal on redis).
 */
export class OracleTinyLfuSlots implements SlotPolicy {
  private readonly window: LRUCache<number, number> | null;
  private readonly main: LRUCache<number, number> | null;
  private readonly windowMax: number;
  private readonly mainMax: number;
  private readonly free: FreeSlots;
  /** The pfn each slot holds, to name the entry lru-cache's pop() returns the slot of. */
  private readonly slotPfn: Float64Array;
  private readonly sketch: FrequencySketch;

  constructor(slotCount: number) {
    this.windowMax = slotCount > 0 ? Math.max(1, Math.floor(slotCount * WINDOW_SHARE)) : 0;
    this.mainMax = slotCount - this.windowMax;
    this.window = this.windowMax > 0 ? new LRUCache<number, number>({ max: this.windowMax }) : null;
    this.main = this.mainMax > 0 ? new LRUCache<number, number>({ max: this.mainMax }) : null;
    this.free = new FreeSlots(slotCount);
    this.slotPfn = new Float64Array(slotCount);
    this.sketch = new FrequencySketch(slotCount);
  }

  get size(): number {
    return (this.window?.size ?? 0) + (this.main?.size ?? 0);
  }

  lookup(pfn: number): number {
    if (this.window === null) return -1;
    this.sketch.increment(pfn);
    // Main first: it holds 99% of the pages, so most hits take one lookup.
    const inMain = this.main?.get(pfn);
    if (inMain !== undefined) return inMain;
    const inWindow = this.window.get(pfn);
    return inWindow === undefined ? -1 : inWindow;
  }

  insert(pfn: number): number {
    const window = this.window;
    if (window === null) return -1;
    if (window.size === this.windowMax) this.admitOrDrop(window.pop() as number);
    const slot = this.free.take();
    this.slotPfn[slot] = pfn;
    window.set(pfn, slot);
    return slot;
  }

  /** The window's least recent page `slot` moves to main, or gives up its slot. */
  private admitOrDrop(slot: number): void {
    const main = this.main;
    if (main === null) {
      this.free.give(slot);
      return;
    }
    const candidate = this.slotPfn[slot];
    if (main.size < this.mainMax) {
      main.set(candidate, slot);
      return;
    }
    const victimSlot = main.pop() as number;
    const victim = this.slotPfn[victimSlot];
    if (this.sketch.frequency(candidate) > this.sketch.frequency(victim)) {
      main.set(candidate, slot);
      this.free.give(victimSlot);
    } else {
      main.set(victim, victimSlot);
      this.free.give(slot);
    }
  }

  remove(pfn: number): void {
    if (!this.removeFrom(this.window, pfn)) this.removeFrom(this.main, pfn);
  }

  private removeFrom(segment: LRUCache<number, number> | null, pfn: number): boolean {
    const slot = segment?.peek(pfn);
    if (slot === undefined) return false;
    (segment as LRUCache<number, number>).delete(pfn);
    this.free.give(slot);
    return true;
  }
}

/** Rows of the count-min sketch: four independent counters per page, the least of them read. */
const SKETCH_ROWS = 4;
/**
 * Counters per row for each cache slot. The sketch counts every page dirtied,
 * and a stream's image is often several times its cache: with one counter a
 * slot, collisions inflated every count and the redis trace at 8 MiB fell
 * to 0.686 hit rate (LRU 0.863); 4 gave 0.769, 16 gave 0.880. 16 costs 64
 * bytes a slot, 1.6% of a 4 KiB page.
 */
const COUNTERS_PER_SLOT = 16;
/** Counters saturate here (Caffeine's 4-bit counters). */
const COUNTER_MAX = 15;
/** After this many increments per cached page the counts halve, so old popularity fades. */
const SAMPLE_FACTOR = 10;

/**
 * How often each pfn was used lately, approximately, in a fixed Uint8Array:
 * a count-min sketch of 4 rows of nextPow2(16 x slots) counters, halved
 * every 10 x slots increments.
 */
class FrequencySketch {
  private readonly counters: Uint8Array;
  private readonly mask: number;
  private readonly width: number;
  private readonly sampleSize: number;
  private additions = 0;

  constructor(slotCount: number) {
    this.width = 2 ** Math.max(4, Math.ceil(Math.log2(Math.max(slotCount * COUNTERS_PER_SLOT, 1))));
    this.mask = this.width - 1;
    this.counters = new Uint8Array(this.width * SKETCH_ROWS);
    this.sampleSize = Math.max(SAMPLE_FACTOR * slotCount, 16);
  }

  // Row r's counter is at (h1 + r * h2) & mask in that row: one hash, four
  // indices (Kirsch-Mitzenmacher double hashing), no call per row.
  increment(pfn: number): void {
    const h1 = mixPfn(pfn);
    const h2 = (h1 >>> 17) | 1;
    const counters = this.counters;
    for (let row = 0, base = 0; row < SKETCH_ROWS; row++, base += this.width) {
      const i = base + ((h1 + row * h2) & this.mask);
      if (counters[i] < COUNTER_MAX) counters[i]++;
    }
    if (++this.additions >= this.sampleSize) this.age();
  }

  frequency(pfn: number): number {
    const h1 = mixPfn(pfn);
    const h2 = (h1 >>> 17) | 1;
    let least = COUNTER_MAX;
    for (let row = 0, base = 0; row < SKETCH_ROWS; row++, base += this.width) {
      const c = this.counters[base + ((h1 + row * h2) & this.mask)];
      if (c < least) least = c;
    }
    return least;
  }

  private age(): void {
    for (let i = 0; i < this.counters.length; i++) this.counters[i] >>>= 1;
    this.additions = 0;
  }
}

/** A 32-bit hash of a pfn below 2^48 (murmur3's finaliser; the high 16 bits folded in). */
function mixPfn(pfn: number): number {
  const high = pfn > 0xffffffff ? Math.floor(pfn / 0x100000000) : 0;
  let h = (pfn >>> 0) ^ Math.imul(high, 0x9e3779b1);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
