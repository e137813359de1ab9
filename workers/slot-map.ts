/**
 * A cache partition's pfn -> slot map, sized once for its slotCount slots so
 * that no operation allocates. Open addressing with linear probing over one
 * Int32Array of buckets that hold slot numbers; the pfn of each slot is kept
 * by slot (a Float64Array: pfns reach 2^48, and a double compares in one
 * instruction where a Map boxes such a key), which the policies also need to
 * name the page an eviction drops. A slot holds one page, so the map never
 * holds more than slotCount entries and needs no growth: the buckets are at
 * least LOAD_INVERSE times that. Deletes shift the entries behind them back
 * (no tombstones, which a cache's constant churn would pile up).
 *
 * Unlike src/pfn-table.ts (the receiver's map, which grows and clears in
 * O(1) with stamps and keeps keys and values in four arrays indexed by
 * entry), a probe here reads one 4-byte bucket, and the key only of a slot
 * whose bucket matches.
 */
import { pfnHigh, pfnLow } from '../src/pfn-table.js';

const EMPTY = -1;
/** Buckets per slot, at least: at a load of 1/4 or less, probe runs stay short, and so do the shifts of a delete (1/2 cost LRU a third more time a page on the postgres trace). */
const LOAD_INVERSE = 4;
/** Fewest bucket bits: the home of a pfn is its hash's top bits, and a shift of 32 would shift by 0. */
const MIN_BITS = 3;
/** Fibonacci hashing: 2^32 / golden ratio; sequential pfns land far apart. */
const FIBONACCI = 0x9e3779b9 | 0;
/** Folds a pfn's bits 32..47 into the low word before the multiply. */
const HIGH_MIX = 0x85ebca6b | 0;

export class SlotMap {
  private readonly buckets: Int32Array;
  private readonly pfns: Float64Array;
  private readonly mask: number;
  private readonly shift: number;
  private count = 0;

  constructor(slotCount: number) {
    let bits = MIN_BITS;
    while (2 ** bits < slotCount * LOAD_INVERSE) bits++;
    this.buckets = new Int32Array(2 ** bits).fill(EMPTY);
    this.mask = 2 ** bits - 1;
    this.shift = 32 - bits;
    this.pfns = new Float64Array(slotCount);
  }

  get size(): number {
    return this.count;
  }

  /** The slot holding `pfn`, or -1. */
  get(pfn: number): number {
    const { buckets, pfns, mask } = this;
    for (let i = this.home(pfn); ; i = (i + 1) & mask) {
      const slot = buckets[i];
      if (slot === EMPTY || pfns[slot] === pfn) return slot;
    }
  }

  /** The pfn `slot` holds; only meaningful while it is mapped. */
  pfnOf(slot: number): number {
    return this.pfns[slot];
  }

  /** Map `pfn`, which the map lacks, to `slot`, which no pfn maps to. */
  add(pfn: number, slot: number): void {
    const { buckets, mask } = this;
    let i = this.home(pfn);
    while (buckets[i] !== EMPTY) i = (i + 1) & mask;
    buckets[i] = slot;
    this.pfns[slot] = pfn;
    this.count++;
  }

  /** Unmap `pfn`; returns the slot it held, or -1 when the map lacks it. */
  delete(pfn: number): number {
    const { buckets, pfns, mask } = this;
    for (let i = this.home(pfn); ; i = (i + 1) & mask) {
      const slot = buckets[i];
      if (slot === EMPTY) return EMPTY;
      if (pfns[slot] === pfn) {
        this.vacate(i);
        return slot;
      }
    }
  }

  /** Unmap whichever pfn `slot` holds (it must hold one): an eviction. */
  deleteSlot(slot: number): void {
    const { buckets, mask } = this;
    let i = this.home(this.pfns[slot]);
    while (buckets[i] !== slot) i = (i + 1) & mask;
    this.vacate(i);
  }

  /** Empty bucket `hole`, moving back every later entry of its probe run that could not be found past the hole. */
  private vacate(hole: number): void {
    const { buckets, pfns, mask } = this;
    for (let j = (hole + 1) & mask; buckets[j] !== EMPTY; j = (j + 1) & mask) {
      const home = this.home(pfns[buckets[j]]);
      // The entry at j stays when its home lies cyclically in (hole, j].
      const stays = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (!stays) {
        buckets[hole] = buckets[j];
        hole = j;
      }
    }
    buckets[hole] = EMPTY;
    this.count--;
  }

  /** The bucket a probe for `pfn` starts at: the top bits of a multiplicative hash of its two 32-bit halves. */
  private home(pfn: number): number {
    return Math.imul(pfnLow(pfn) ^ Math.imul(pfnHigh(pfn), HIGH_MIX), FIBONACCI) >>> this.shift;
  }
}
