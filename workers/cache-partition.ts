import { LRUCache } from 'lru-cache';

/**
 * One worker's share of a stream's delta cache: the last sent copy of up to
 * `slotCount` pages. Page bytes live in one preallocated slab (in the
 * service, a region of the stream's arena); the
 * `lru-cache` maps pfn -> slot number and decides what to evict. Freed slots
 * go on a stack, so a miss never allocates page memory.
 */
export class CachePartition {
  readonly slotCount: number;
  readonly wordsPerPage: number;
  /** slotCount pages back to back, as 32-bit words. */
  readonly slab: Uint32Array;
  /** Byte offset of the slab in the stream's arena (a shared wasm memory), or -1 when the partition owns its slab. */
  readonly cacheOffset: number;
  private readonly lru: LRUCache<number, number> | null;
  private readonly freeSlots: Int32Array;
  private freeCount: number;

  /**
   * `slab`, when given, is where the page bytes live (a view of the stream's
   * arena, slotCount pages); otherwise the partition allocates its own.
   */
  constructor(pageSize: number, slotCount: number, slab?: Uint32Array, cacheOffset = -1) {
    this.slotCount = slotCount;
    this.cacheOffset = cacheOffset;
    this.wordsPerPage = pageSize / 4;
    if (slab !== undefined && slab.length !== slotCount * this.wordsPerPage) {
      throw new RangeError(`CachePartition: slab of ${slab.length} words for ${slotCount} pages of ${pageSize} bytes`);
    }
    this.slab = slab ?? new Uint32Array(slotCount * this.wordsPerPage);
    // lru-cache refuses max 0; a zero budget simply means every page misses.
    this.lru = slotCount > 0 ? new LRUCache<number, number>({ max: slotCount }) : null;
    this.freeSlots = new Int32Array(slotCount);
    for (let i = 0; i < slotCount; i++) this.freeSlots[i] = slotCount - 1 - i;
    this.freeCount = slotCount;
  }

  get size(): number {
    return this.lru === null ? 0 : this.lru.size;
  }

  /** The slot holding `pfn` (now most recently used), or -1. */
  lookup(pfn: number): number {
    if (this.lru === null) return -1;
    const slot = this.lru.get(pfn);
    return slot === undefined ? -1 : slot;
  }

  /**
   * Give `pfn` a slot, evicting the least recently used page when full; the
   * caller fills it. Returns -1 when the budget holds no page at all.
   * Precondition: `pfn` is not cached.
   */
  insert(pfn: number): number {
    if (this.lru === null) return -1;
    let slot: number;
    if (this.freeCount > 0) {
      slot = this.freeSlots[--this.freeCount];
    } else {
      // pop() evicts the LRU entry and hands back its slot for reuse.
      slot = this.lru.pop() as number;
    }
    this.lru.set(pfn, slot);
    return slot;
  }

  /** Forget `pfn`: its next record will be FULL. */
  remove(pfn: number): void {
    if (this.lru === null) return;
    const slot = this.lru.peek(pfn);
    if (slot === undefined) return;
    this.lru.delete(pfn);
    this.freeSlots[this.freeCount++] = slot;
  }
}
