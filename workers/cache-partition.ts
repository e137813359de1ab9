import { createSlotPolicy, type CachePolicyName, type SlotPolicy } from './cache-policy.js';

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
