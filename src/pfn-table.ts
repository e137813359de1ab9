/**
 * A pfn → non-negative integer map for the receiver's apply loop: open
 * addressing with linear probing over typed arrays, so that a lookup, an
 * insert or a delete allocates nothing (pfns go up to 2^48, past V8's small
 * integers: a Map<number, number> boxes every such key it stores) and hashes
 * a pfn with a few integer multiplies. The *Parts methods take a pfn as its
 * two int32 halves (pfnLow, pfnHigh), which V8 passes between functions
 * unboxed (a pfn of 2^31 or more passed as a number is a heap object).
 * Deletes shift the entries behind them back (no tombstones); clear() is
 * O(1): an entry is live only while its stamp is the table's current one.
 * The table doubles when it is half full; that is the only allocation, and
 * it is amortised.
 */

const MIN_CAPACITY = 16;
const TWO_POW_32 = 4294967296;
/** The largest stamp before the stamps are wiped and restart at 1 (0 marks a free entry). */
const MAX_STAMP = 0xffff_fffe;

/** Bits 0..31 of a pfn, as an int32 (the hot path passes pfns as two int32 halves: small integers are never boxed). */
export function pfnLow(pfn: number): number {
  return pfn | 0;
}

/** Bits 32..47 of a pfn (pfn below 2^48). */
export function pfnHigh(pfn: number): number {
  return (pfn - (pfn >>> 0)) / TWO_POW_32;
}

/** The pfn of two halves. */
export function pfnOf(low: number, high: number): number {
  return high * TWO_POW_32 + (low >>> 0);
}

function hashParts(low: number, high: number): number {
  let h = Math.imul(low, 0x9e3779b1) ^ Math.imul(high ^ 0x7f4a7c15, 0x85ebca6b);
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d);
  return h ^ (h >>> 12);
}

export class PfnTable {
  private lows: Int32Array;
  private highs: Int32Array;
  private values: Int32Array;
  private stamps: Uint32Array;
  private stamp = 1;
  private mask: number;
  private live = 0;

  /** Room for `expected` entries before the first growth. */
  constructor(expected = 0) {
    let capacity = MIN_CAPACITY;
    while (capacity < expected * 2) capacity *= 2;
    this.lows = new Int32Array(capacity);
    this.highs = new Int32Array(capacity);
    this.values = new Int32Array(capacity);
    this.stamps = new Uint32Array(capacity);
    this.mask = capacity - 1;
  }

  get size(): number {
    return this.live;
  }

  /** The entry holding the pfn of halves (low, high), or -1. */
  private find(low: number, high: number): number {
    const { lows, highs, stamps, mask, stamp } = this;
    for (let i = hashParts(low, high) & mask; ; i = (i + 1) & mask) {
      if (stamps[i] !== stamp) return -1;
      if (lows[i] === low && highs[i] === high) return i;
    }
  }

  /** pfn's value, or -1 when the table lacks it. */
  get(pfn: number): number {
    return this.getParts(pfnLow(pfn), pfnHigh(pfn));
  }

  /** get() of the pfn pfnOf(low, high); low as pfnLow gives it (an int32). */
  getParts(low: number, high: number): number {
    const i = this.find(low, high);
    return i < 0 ? -1 : this.values[i];
  }

  has(pfn: number): boolean {
    return this.find(pfnLow(pfn), pfnHigh(pfn)) >= 0;
  }

  hasParts(low: number, high: number): boolean {
    return this.find(low, high) >= 0;
  }

  /** Set pfn's value (a non-negative 32-bit integer). */
  set(pfn: number, value: number): void {
    this.setParts(pfnLow(pfn), pfnHigh(pfn), value);
  }

  setParts(low: number, high: number, value: number): void {
    if ((this.live + 1) * 2 > this.stamps.length) this.grow();
    const { lows, highs, stamps, mask, stamp } = this;
    let i = hashParts(low, high) & mask;
    while (stamps[i] === stamp) {
      if (lows[i] === low && highs[i] === high) {
        this.values[i] = value;
        return;
      }
      i = (i + 1) & mask;
    }
    stamps[i] = stamp;
    lows[i] = low;
    highs[i] = high;
    this.values[i] = value;
    this.live++;
  }

  delete(pfn: number): boolean {
    return this.deleteParts(pfnLow(pfn), pfnHigh(pfn));
  }

  deleteParts(low: number, high: number): boolean {
    let hole = this.find(low, high);
    if (hole < 0) return false;
    const { lows, highs, values, stamps, mask, stamp } = this;
    // Shift back every entry of the probe run that could not be found past the hole.
    for (let j = (hole + 1) & mask; stamps[j] === stamp; j = (j + 1) & mask) {
      const home = hashParts(lows[j], highs[j]) & mask;
      const stays = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (!stays) {
        lows[hole] = lows[j];
        highs[hole] = highs[j];
        values[hole] = values[j];
        hole = j;
      }
    }
    stamps[hole] = 0;
    this.live--;
    return true;
  }

  clear(): void {
    this.live = 0;
    if (this.stamp === MAX_STAMP) {
      this.stamps.fill(0);
      this.stamp = 1;
    } else {
      this.stamp++;
    }
  }

  /** The pfns held, in no particular order. */
  pfns(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.stamps.length; i++) if (this.stamps[i] === this.stamp) out.push(pfnOf(this.lows[i], this.highs[i]));
    return out;
  }

  private grow(): void {
    const { lows, highs, values, stamps, stamp } = this;
    const capacity = stamps.length * 2;
    this.lows = new Int32Array(capacity);
    this.highs = new Int32Array(capacity);
    this.values = new Int32Array(capacity);
    this.stamps = new Uint32Array(capacity);
    this.mask = capacity - 1;
    this.stamp = 1;
    this.live = 0;
    for (let i = 0; i < stamps.length; i++) if (stamps[i] === stamp) this.setParts(lows[i], highs[i], values[i]);
  }
}
