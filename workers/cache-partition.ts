import { CACHE_POLICIES, createSlotPolicy, type CachePolicyName, type SlotPolicy } from './cache-policy.js';
import { xorshift32 } from '../src/xorshift.js';

/**
 * One worker's share of a stream's delta cache: the last sent copy of up to
 * `slotCount` pages. Page bytes live in one preallocated slab (in the
 * service, a region of the stream's arena); a SlotPolicy (W-TinyLFU or the
 * seed's LRU, workers/cache-policy.ts) maps pfn -> slot number and decides
 * what to evict, so a miss never allocates page memory.
 */
export class CachePartition {
  readonly slotCount: number;
  readonly wordsPerPage: number;
  /** slotCount pages back to back, as 32-bit words. */
  readonly slab: Uint32Array;
  /** Byte offset of the slab in the stream's arena (a shared wasm memory), or -1 when the partition owns its slab. */
  readonly cacheOffset: number;
  readonly policy: CachePolicyName;
  private readonly slots: SlotPolicy;

  /**
   * `slab`, when given, is where the page bytes live (a view of the stream's
   * arena, slotCount pages); otherwise the partition allocates its own.
   */
  constructor(pageSize: number, slotCount: number, policy: CachePolicyName, slab?: Uint32Array, cacheOffset = -1) {
    this.slotCount = slotCount;
    this.cacheOffset = cacheOffset;
    this.wordsPerPage = pageSize / 4;
    if (slab !== undefined && slab.length !== slotCount * this.wordsPerPage) {
      throw new RangeError(`CachePartition: slab of ${slab.length} words for ${slotCount} pages of ${pageSize} bytes`);
    }
    this.slab = slab ?? new Uint32Array(slotCount * this.wordsPerPage);
    this.policy = policy;
    this.slots = createSlotPolicy(policy, slotCount);
  }

  get size(): number {
    return this.slots.size;
  }

  /** The slot holding `pfn` (counted as a use), or -1. */
  lookup(pfn: number): number {
    return this.slots.lookup(pfn);
  }

  /**
   * Give `pfn` a slot, evicting a page when full; the caller fills it.
   * Returns -1 when the budget holds no page at all. Precondition: `pfn` is
   * not cached.
   */
  insert(pfn: number): number {
    return this.slots.insert(pfn);
  }

  /** Forget `pfn`: its next record will be FULL. */
  remove(pfn: number): void {
    this.slots.remove(pfn);
  }
}

/** What exerciseCachePartitions did, per policy: each kind of operation, so a test can see that every path ran. */
export interface PartitionExercise {
  hits: number;
  misses: number;
  evictions: number;
  removes: number;
}

/** Operations per policy: enough for V8 to see every path of the bookkeeping several times before it optimizes it. */
const EXERCISE_OPS = 10_000;
/** Pages and slots of the exercise: more pages than slots, so that inserts evict. */
const EXERCISE_PFNS = 256;
const EXERCISE_SLOTS = 64;

/**
 * Run a throwaway partition of each policy through every path of its
 * bookkeeping (hits, misses, inserts that evict, removes, pfns past 2^32, a
 * zero-slot budget), once, when a worker starts. Why: V8 optimizes a
 * worker's encode loop, these calls inlined, after the first few thousand
 * pages, and compiles a branch it has not seen run yet as a bail-out. The
 * first epoch of a stream is all misses, so the first hits, the first
 * evictions and the slot map's collision path each threw the loop back to
 * the interpreter and had it recompiled, on V8's helper threads, which
 * share the cores with the workers (six recompiles in the first twelve 32
 * MiB epochs of the pipeline bench; docs/PERFORMANCE.md, Scaling). The
 * partitions here are garbage once this returns; nothing else is touched.
 */
export function exerciseCachePartitions(): Record<CachePolicyName, PartitionExercise> {
  // Both policies in one loop, step by step, so that every call site sees
  // both classes before V8 optimizes it (one after the other, the second
  // would find code specialised to the first and throw it away).
  const runs = CACHE_POLICIES.map((policy) => ({
    policy,
    part: new CachePartition(4, EXERCISE_SLOTS, policy, new Uint32Array(EXERCISE_SLOTS)),
    empty: new CachePartition(4, 0, policy, new Uint32Array(0)),
    counts: { hits: 0, misses: 0, evictions: 0, removes: 0 } as PartitionExercise,
  }));
  // A fixed sequence, the same in every worker.
  const next = xorshift32(0x9e3779b9);
  for (let n = 0; n < EXERCISE_OPS; n++) {
    const r = next();
    // Half the pages above 2^32, where a pfn is two halves.
    const index = r % EXERCISE_PFNS;
    const pfn = index % 2 === 0 ? index : 2 ** 40 + index;
    for (const { part, empty, counts } of runs) {
      if (r % 20 === 1) {
        part.remove(pfn);
        counts.removes++;
      } else if (part.lookup(pfn) >= 0) {
        counts.hits++;
      } else {
        if (part.size === EXERCISE_SLOTS) counts.evictions++;
        part.insert(pfn);
        counts.misses++;
      }
      // A zero-slot budget: nothing is ever cached.
      if (r % 64 === 0 && empty.lookup(pfn) < 0) empty.insert(pfn);
    }
  }
  const result = {} as Record<CachePolicyName, PartitionExercise>;
  for (const { policy, counts } of runs) result[policy] = counts;
  return result;
}
