import { SlotLists } from './slot-lists.js';
import { SlotMap } from './slot-map.js';

/**
 * Which cached page gives up its slot: the bookkeeping half of a cache
 * partition (pfn -> slot number), apart from the page bytes. Both policies
 * hand out slots 0..slotCount-1 from a free stack, so a miss never allocates
 * page memory, and both keep the invariant the stream relies on: a slot
 * changes owner only inside insert(), whose caller then fills it.
 *
 * Both run on flat typed arrays sized once for slotCount (a SlotMap from pfn
 * to slot, SlotLists for recency, the free stack, the sketch), so a lookup,
 * an insert or a remove allocates nothing: on lru-cache (a Map keyed by pfn,
 * most pfns past V8's small integers) the bookkeeping took a fifth of the
 * wasm encode path's time. Their decisions are exactly those of the
 * lru-cache versions, kept in test/cache-policy-oracle.ts and compared op by
 * op in test/cache-policy.test.ts: every hit, slot number, eviction and size
 * (the wire sizes of issue #7 were measured with them).
 */
export interface SlotPolicy {
  readonly size: number;
  /** The slot holding `pfn` (counted as a use), or -1. */
  lookup(pfn: number): number;
  /**
   * Give the uncached `pfn` a slot, evicting if full; -1 when the budget
   * holds no page at all. Precondition: `pfn` is not cached (the caller
   * inserts after a lookup missed).
   */
  insert(pfn: number): number;
  /** Forget `pfn`: its next record will be FULL. */
  remove(pfn: number): void;
}

export const CACHE_POLICIES = ['tinylfu', 'lru'] as const;
export type CachePolicyName = (typeof CACHE_POLICIES)[number];

export function isCachePolicyName(value: unknown): value is CachePolicyName {
  return (CACHE_POLICIES as readonly unknown[]).includes(value);
}

export function createSlotPolicy(name: CachePolicyName, slotCount: number): SlotPolicy {
  return name === 'lru' ? new LruSlots(slotCount) : new TinyLfuSlots(slotCount);
}

/** A stack of free slot numbers, all free at first, slot 0 on top. */
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

/** LruSlots' one list. */
const LRU = 0;

/** The seed's policy: least recently used out. */
export class LruSlots implements SlotPolicy {
  private readonly slotCount: number;
  private readonly slots: SlotMap;
  private readonly order: SlotLists;
  private readonly free: FreeSlots;

  constructor(slotCount: number) {
    this.slotCount = slotCount;
    this.slots = new SlotMap(slotCount);
    this.order = new SlotLists(slotCount, 1);
    this.free = new FreeSlots(slotCount);
  }

  get size(): number {
    return this.slots.size;
  }

  lookup(pfn: number): number {
    const slot = this.slots.get(pfn);
    if (slot >= 0) this.order.touch(LRU, slot);
    return slot;
  }

  insert(pfn: number): number {
    // A zero budget simply means every page misses.
    if (this.slotCount === 0) return -1;
    let slot: number;
    if (this.free.available > 0) {
      slot = this.free.take();
    } else {
      // Full: the least recent page gives up its slot.
      slot = this.order.oldest(LRU);
      this.order.unlink(slot);
      this.slots.deleteSlot(slot);
    }
    this.slots.add(pfn, slot);
    this.order.pushNewest(LRU, slot);
    return slot;
  }

  remove(pfn: number): void {
    const slot = this.slots.delete(pfn);
    if (slot < 0) return;
    this.order.unlink(slot);
    this.free.give(slot);
  }
}

/** Share of the slots in the admission window (Caffeine's default, and the best of 1% and 20% on the redis trace at 8 MiB). */
const WINDOW_SHARE = 0.01;
/** TinyLfuSlots' two lists, also what `segment` records of a slot. */
const WINDOW = 0;
const MAIN = 1;

/**
 * W-TinyLFU (Einziger, Friedman, Manes 2017): new pages enter a small LRU
 * window; a page leaving the window enters the main LRU only if it has been
 * dirtied more often, recently, than the page the main LRU would evict
 * (counts kept in a FrequencySketch, which only lookups feed). Why: a
 * checkpoint stream starts with the whole image (epoch 0), and under plain
 * LRU those once-seen pages push out pages that are dirtied again and again
 * whenever the dirty set outgrows the cache. Measured on the redis trace
 * (dirty epochs' hit rate): 8 MiB 0.863 -> 0.892, 32 MiB 0.887 -> 0.992;
 * python unchanged (0.998).
 *
 * A main victim that wins against the candidate goes back in as most
 * recent, not where it was: the lru-cache version could not look at its
 * least recent entry without removing it, and the decisions must stay its
 * own (the same hit rates in simulation anyway, to the third decimal on
 * redis). One slot: the window alone; two: a window of one and a main of one.
 */
export class TinyLfuSlots implements SlotPolicy {
  private readonly windowMax: number;
  private readonly mainMax: number;
  private windowSize = 0;
  private mainSize = 0;
  private readonly slots: SlotMap;
  private readonly lists: SlotLists;
  /** WINDOW or MAIN: the list each cached slot is in. */
  private readonly segment: Uint8Array;
  private readonly free: FreeSlots;
  private readonly sketch: FrequencySketch;

  constructor(slotCount: number) {
    this.windowMax = slotCount > 0 ? Math.max(1, Math.floor(slotCount * WINDOW_SHARE)) : 0;
    this.mainMax = slotCount - this.windowMax;
    this.slots = new SlotMap(slotCount);
    this.lists = new SlotLists(slotCount, 2);
    this.segment = new Uint8Array(slotCount);
    this.free = new FreeSlots(slotCount);
    this.sketch = new FrequencySketch(slotCount);
  }

  get size(): number {
    return this.windowSize + this.mainSize;
  }

  lookup(pfn: number): number {
    // No budget, no counting (nothing is ever admitted).
    if (this.windowMax === 0) return -1;
    this.sketch.increment(pfn);
    const slot = this.slots.get(pfn);
    if (slot >= 0) this.lists.touch(this.segment[slot], slot);
    return slot;
  }

  insert(pfn: number): number {
    if (this.windowMax === 0) return -1;
    if (this.windowSize === this.windowMax) {
      const candidate = this.lists.oldest(WINDOW);
      this.lists.unlink(candidate);
      this.windowSize--;
      this.admitOrDrop(candidate);
    }
    // Free: the window had room, or admitOrDrop freed one, or main had room.
    const slot = this.free.take();
    this.slots.add(pfn, slot);
    this.enter(WINDOW, slot);
    return slot;
  }

  /** The window's least recent page, in `slot` and out of the window, moves to main or gives up its slot. */
  private admitOrDrop(slot: number): void {
    if (this.mainMax === 0) {
      this.drop(slot);
      return;
    }
    if (this.mainSize < this.mainMax) {
      this.enter(MAIN, slot);
      return;
    }
    const victim = this.lists.oldest(MAIN);
    if (this.sketch.frequency(this.slots.pfnOf(slot)) > this.sketch.frequency(this.slots.pfnOf(victim))) {
      this.lists.unlink(victim);
      this.mainSize--;
      this.drop(victim);
      this.enter(MAIN, slot);
    } else {
      this.lists.touch(MAIN, victim);
      this.drop(slot);
    }
  }

  /** Append `slot`, cached and in no list, as the most recent of `list`. */
  private enter(list: number, slot: number): void {
    this.lists.pushNewest(list, slot);
    this.segment[slot] = list;
    if (list === WINDOW) this.windowSize++;
    else this.mainSize++;
  }

  /** Uncache the page of `slot`, already out of its list, and free the slot. */
  private drop(slot: number): void {
    this.slots.deleteSlot(slot);
    this.free.give(slot);
  }

  remove(pfn: number): void {
    const slot = this.slots.delete(pfn);
    if (slot < 0) return;
    this.lists.unlink(slot);
    if (this.segment[slot] === WINDOW) this.windowSize--;
    else this.mainSize--;
    this.free.give(slot);
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
/** Clears, in a word shifted right by one, the bit each byte took from the byte above it. */
const HALVE_MASK = 0x7f7f7f7f;

/**
 * How often each pfn was used lately, approximately, in a fixed Uint8Array:
 * a count-min sketch of 4 rows of nextPow2(16 x slots) counters, halved
 * every 10 x slots increments.
 */
export class FrequencySketch {
  private readonly counters: Uint8Array;
  /** The counters four at a time, for age(). */
  private readonly counterWords: Uint32Array;
  private readonly mask: number;
  private readonly width: number;
  private readonly sampleSize: number;
  private additions = 0;

  constructor(slotCount: number) {
    this.width = 2 ** Math.max(4, Math.ceil(Math.log2(Math.max(slotCount * COUNTERS_PER_SLOT, 1))));
    this.mask = this.width - 1;
    this.counters = new Uint8Array(this.width * SKETCH_ROWS);
    this.counterWords = new Uint32Array(this.counters.buffer);
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

  // Every byte halved, a word at a time: the bit a byte shifts into its
  // neighbour is masked off (a quarter of the iterations of a byte loop, on
  // 512 KiB for a 32 MiB cache).
  private age(): void {
    const words = this.counterWords;
    for (let i = 0; i < words.length; i++) words[i] = (words[i] >>> 1) & HALVE_MASK;
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
