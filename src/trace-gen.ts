/**
 * Seeded synthetic RMTR traces for tests and benchmarks. They imitate what
 * the Remus cache sees in real memory: scattered pfn regions (some above
 * 2^32), a hot set small enough for a small cache, a large cold set such a
 * cache evicts, sparse word edits, whole-page rewrites, pages zeroed and
 * reused, and raw (page-table) pages. Same options, same bytes (pages are
 * written through a Uint32Array, so that holds between little-endian hosts).
 */
import { KIND_NORMAL, KIND_RAW } from './epoch-record.js';
import { TraceWriter, encodeEpochRecord, encodeTraceHeader, isValidPageSize } from './trace.js';

export type TraceProfile = 'sparse' | 'mixed' | 'rewrite' | 'zeros';

export interface GenerateOptions {
  seed: number;
  epochs: number;
  /** Image size in pages. */
  pages: number;
  /** Default 4096. */
  pageSize?: number;
  /** Default 'mixed'. */
  profile?: TraceProfile;
  /** Share of the image dirtied per later epoch (each epoch varies by +-25%); default 0.1. */
  dirtyFraction?: number;
  /** Share of the image that is raw (page-table) pages; default 0.01, at least one page when non-zero. */
  rawFraction?: number;
}

export interface GeneratedEpoch {
  pfns: Float64Array;
  kinds: Uint8Array;
  pages: Uint8Array;
}

/**
 * How a profile dirties pages. The four mutation weights sum to 1: `edit`
 * changes a few words, `rewrite` the whole page, `zero` clears it, `touch`
 * leaves it as it was (dirty logging reports writes of the same value too).
 * Epoch 0 pages are zero, random, or structured (the rest).
 */
interface ProfileShape {
  edit: number;
  rewrite: number;
  zero: number;
  touch: number;
  initialZero: number;
  initialRandom: number;
}

const PROFILES: Record<TraceProfile, ProfileShape> = {
  mixed: { edit: 0.68, rewrite: 0.14, zero: 0.1, touch: 0.08, initialZero: 0.25, initialRandom: 0.2 },
  sparse: { edit: 0.92, rewrite: 0.02, zero: 0.02, touch: 0.04, initialZero: 0.2, initialRandom: 0.1 },
  rewrite: { edit: 0.1, rewrite: 0.84, zero: 0.02, touch: 0.04, initialZero: 0.1, initialRandom: 0.5 },
  zeros: { edit: 0.25, rewrite: 0.1, zero: 0.6, touch: 0.05, initialZero: 0.6, initialRandom: 0.1 },
};

/** Share of the non-raw image that is hot: a cache of 1/16 of the image holds it. */
const HOT_SHARE = 0.05;
/** Share of the non-raw image that is cold: visited in rotation, so each page comes back only after many epochs. */
const COLD_SHARE = 0.45;
/** Shares of an epoch's dirty pages taken from the hot and cold sets; warm pages make up the rest. */
const HOT_DIRTY_SHARE = 0.45;
const COLD_DIRTY_SHARE = 0.1;
/** Page tables are written about three times as often as the average page. */
const RAW_DIRTY_RATE = 3;
/** Most edits of a page land near the same spot (its counters and list heads), in 64-bit slots. */
const HOTSPOT_SLOTS = 32;
const HOTSPOT_CHANCE = 0.75;
const TWO_32 = 2 ** 32;

/** xoshiro128** seeded through splitmix32: 32-bit integer arithmetic only, so it is fast and exact in JS. */
class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    let s = seed % TWO_32 | 0;
    const next = (): number => {
      s = (s + 0x9e3779b9) | 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return z ^ (z >>> 16);
    };
    // splitmix32 is a bijection of its counter, so at most one word is zero
    // and the state is never all zero; the high half keeps seeds >= 2^32 apart.
    this.a = next() ^ Math.floor(seed / TWO_32);
    this.b = next();
    this.c = next();
    this.d = next();
  }

  u32(): number {
    const result = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return result;
  }

  /** An integer in 0..n-1 (n <= 2^32). */
  below(n: number): number {
    return Math.floor((this.u32() / TWO_32) * n);
  }

  chance(p: number): boolean {
    return this.u32() < p * TWO_32;
  }

  /** Whole pages of noise cost one xorshift step a word instead of a full generator call. */
  fill(words: Uint32Array): void {
    let x = this.u32() | 1;
    for (let i = 0; i < words.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x;
    }
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

interface Resolved {
  seed: number;
  epochs: number;
  pages: number;
  pageSize: number;
  shape: ProfileShape;
  dirtyFraction: number;
  rawFraction: number;
}

function resolveOptions(opts: GenerateOptions): Resolved {
  const { seed, epochs, pages } = opts;
  const pageSize = opts.pageSize ?? 4096;
  const profile = opts.profile ?? 'mixed';
  const dirtyFraction = opts.dirtyFraction ?? 0.1;
  const rawFraction = opts.rawFraction ?? 0.01;
  if (!Number.isSafeInteger(seed)) throw new RangeError(`seed ${seed} is not a safe integer`);
  if (!Number.isSafeInteger(epochs) || epochs < 0) throw new RangeError(`epochs ${epochs} is not a non-negative integer`);
  if (!Number.isSafeInteger(pages) || pages < 0) throw new RangeError(`pages ${pages} is not a non-negative integer`);
  if (!isValidPageSize(pageSize)) throw new RangeError(`page size ${pageSize} is not a power of two in 512..65536`);
  if (!Object.hasOwn(PROFILES, profile)) throw new RangeError(`unknown profile ${JSON.stringify(profile)}`);
  if (!(dirtyFraction >= 0 && dirtyFraction <= 1)) throw new RangeError(`dirtyFraction ${dirtyFraction} is not in 0..1`);
  if (!(rawFraction >= 0 && rawFraction <= 1)) throw new RangeError(`rawFraction ${rawFraction} is not in 0..1`);
  return { seed, epochs, pages, pageSize, shape: PROFILES[profile], dirtyFraction, rawFraction };
}

/**
 * Ascending pfns in four regions with holes, like guest physical memory:
 * low memory, two regions above MMIO gaps, and a tenth of the image above
 * 2^32 so that pfns need all 64 bits of their field.
 */
function layoutPfns(rng: Rng, pages: number): Float64Array {
  const pfns = new Float64Array(pages);
  if (pages === 0) return pfns;
  const high = Math.max(1, Math.round(pages * 0.1));
  const rest = pages - high;
  const second = Math.round(rest * 0.35);
  const third = Math.round(rest * 0.25);
  const sizes = [rest - second - third, second, third, high];
  let pfn = 0x100 + rng.below(0x100);
  let i = 0;
  for (let region = 0; region < sizes.length; region++) {
    if (region === sizes.length - 1) pfn = Math.max(pfn, TWO_32 + rng.below(1 << 20));
    for (let k = 0; k < sizes[region]; k++) {
      if (rng.below(32) === 0) pfn += 1 + rng.below(16);
      pfns[i++] = pfn++;
    }
    pfn += 0x800 + rng.below(0x40000);
  }
  return pfns;
}

/** Heap-like contents in 64-bit slots: zeros, small integers, pointers sharing their high half, some noise. */
function fillStructured(rng: Rng, page: Uint32Array, pointerHigh: number): void {
  for (let w = 0; w < page.length; w += 2) {
    const r = rng.u32();
    const sel = r & 7;
    if (sel < 3) {
      page[w] = 0;
      page[w + 1] = 0;
    } else if (sel < 5) {
      page[w] = r >>> 24;
      page[w + 1] = 0;
    } else if (sel < 7) {
      page[w] = rng.u32() & ~7;
      page[w + 1] = pointerHigh;
    } else {
      page[w] = rng.u32();
      page[w + 1] = rng.u32();
    }
  }
}

function pageTableEntry(rng: Rng, page: Uint32Array, slot: number): void {
  if (rng.chance(0.4)) {
    const r = rng.u32();
    page[2 * slot] = (((r & 0xfffff) << 12) | 0x67) >>> 0;
    page[2 * slot + 1] = r >>> 28;
  } else {
    page[2 * slot] = 0;
    page[2 * slot + 1] = 0;
  }
}

/** A few counters bumped, pointers rewritten, or a small struct rewritten: at most 64 of the page's words. */
function editWords(rng: Rng, page: Uint32Array, hotspot: number, pointerHigh: number): void {
  const slots = page.length >>> 1;
  const ops = 1 + rng.below(4);
  for (let op = 0; op < ops; op++) {
    const slot = rng.chance(HOTSPOT_CHANCE) ? (hotspot + rng.below(HOTSPOT_SLOTS)) % slots : rng.below(slots);
    const w = 2 * slot;
    switch (rng.below(3)) {
      case 0:
        page[w] = page[w] + 1 + rng.below(3);
        break;
      case 1:
        page[w] = rng.u32() & ~7;
        page[w + 1] = pointerHigh;
        break;
      default: {
        const end = Math.min(page.length, w + 2 + rng.below(15));
        for (let i = w; i < end; i++) page[i] = rng.u32();
      }
    }
  }
}

function shuffle(rng: Rng, list: Int32Array): void {
  for (let j = list.length - 1; j > 0; j--) {
    const pick = rng.below(j + 1);
    const idx = list[pick];
    list[pick] = list[j];
    list[j] = idx;
  }
}

/** Move k random entries of `list` to its front (a partial Fisher-Yates) and take them. */
function takeRandom(rng: Rng, list: Int32Array, k: number, out: number[], marked: Uint8Array): void {
  for (let j = 0; j < k; j++) {
    const pick = j + rng.below(list.length - j);
    const idx = list[pick];
    list[pick] = list[j];
    list[j] = idx;
    out.push(idx);
    marked[idx] = 1;
  }
}

/** Yields epoch 0 as the full image (every pfn, ascending), then each later epoch's dirty pages. */
export function* generateEpochs(opts: GenerateOptions): Generator<GeneratedEpoch, void, void> {
  const { seed, epochs, pages, pageSize, shape, dirtyFraction, rawFraction } = resolveOptions(opts);
  const rng = new Rng(seed);
  const pfnOf = layoutPfns(rng, pages);
  const wordsPerPage = pageSize >>> 2;
  // The sender's image, so that edits change real previous contents; index i holds pfnOf[i].
  const image = new Uint32Array(pages * wordsPerPage);
  const imageBytes = new Uint8Array(image.buffer);
  const pageWords = (idx: number): Uint32Array => image.subarray(idx * wordsPerPage, (idx + 1) * wordsPerPage);
  const pointerHigh = 0x7f00 + rng.below(0x100);

  const ascending = new Int32Array(pages);
  for (let i = 0; i < pages; i++) ascending[i] = i;
  const order = ascending.slice();
  shuffle(rng, order);
  const rawCount = rawFraction > 0 && pages > 0 ? Math.max(1, Math.round(pages * rawFraction)) : 0;
  const rest = pages - rawCount;
  const hotCount = rest > 0 ? Math.max(1, Math.round(rest * HOT_SHARE)) : 0;
  const coldCount = Math.round(rest * COLD_SHARE);
  const raw = order.slice(0, rawCount);
  const hot = order.slice(rawCount, rawCount + hotCount);
  const cold = order.slice(rawCount + hotCount, rawCount + hotCount + coldCount);
  const warm = order.slice(rawCount + hotCount + coldCount);
  const kindOf = new Uint8Array(pages).fill(KIND_NORMAL);
  for (const idx of raw) kindOf[idx] = KIND_RAW;
  const isZero = new Uint8Array(pages);
  const rawDirtyShare = pages > 0 ? (RAW_DIRTY_RATE * rawCount) / pages : 0;
  let coldCursor = 0;

  const emit = (chosen: ArrayLike<number>): GeneratedEpoch => {
    const count = chosen.length;
    const out: GeneratedEpoch = { pfns: new Float64Array(count), kinds: new Uint8Array(count), pages: new Uint8Array(count * pageSize) };
    for (let j = 0; j < count; j++) {
      const idx = chosen[j];
      out.pfns[j] = pfnOf[idx];
      out.kinds[j] = kindOf[idx];
      out.pages.set(imageBytes.subarray(idx * pageSize, (idx + 1) * pageSize), j * pageSize);
    }
    return out;
  };

  if (epochs === 0) return;
  for (let idx = 0; idx < pages; idx++) {
    const page = pageWords(idx);
    if (kindOf[idx] === KIND_RAW) {
      for (let slot = 0; slot < wordsPerPage >>> 1; slot++) pageTableEntry(rng, page, slot);
    } else if (rng.chance(shape.initialZero)) {
      isZero[idx] = 1;
    } else if (rng.chance(shape.initialRandom)) {
      rng.fill(page);
    } else {
      fillStructured(rng, page, pointerHigh);
    }
  }
  yield emit(ascending);

  const marked = new Uint8Array(pages);
  for (let epoch = 1; epoch < epochs; epoch++) {
    const target = Math.min(pages, Math.round(pages * dirtyFraction * (0.75 + 0.5 * (rng.u32() / TWO_32))));
    const chosen: number[] = [];
    takeRandom(rng, raw, Math.min(raw.length, Math.round(target * rawDirtyShare)), chosen, marked);
    takeRandom(rng, hot, Math.min(hot.length, Math.round(target * HOT_DIRTY_SHARE), target - chosen.length), chosen, marked);
    const coldTake = Math.min(cold.length, Math.round(target * COLD_DIRTY_SHARE), target - chosen.length);
    for (let j = 0; j < coldTake; j++) {
      const idx = cold[coldCursor];
      coldCursor = (coldCursor + 1) % cold.length;
      chosen.push(idx);
      marked[idx] = 1;
    }
    takeRandom(rng, warm, Math.min(warm.length, target - chosen.length), chosen, marked);
    // Small images can leave the per-set quotas short of the target.
    for (let idx = rng.below(pages), seen = 0; chosen.length < target && seen < pages; seen++, idx = (idx + 1) % pages) {
      if (!marked[idx]) {
        chosen.push(idx);
        marked[idx] = 1;
      }
    }

    for (const idx of chosen) {
      marked[idx] = 0;
      const page = pageWords(idx);
      if (kindOf[idx] === KIND_RAW) {
        for (let n = 1 + rng.below(4); n > 0; n--) pageTableEntry(rng, page, rng.below(wordsPerPage >>> 1));
        continue;
      }
      const roll = rng.u32() / TWO_32;
      if (roll < shape.edit) {
        if (isZero[idx]) {
          // A freed page handed out again: filled from scratch, not edited.
          fillStructured(rng, page, pointerHigh);
        } else {
          editWords(rng, page, (Math.imul(idx, 0x9e3779b1) >>> 0) % (wordsPerPage >>> 1), pointerHigh);
        }
        isZero[idx] = 0;
      } else if (roll < shape.edit + shape.rewrite) {
        rng.fill(page);
        isZero[idx] = 0;
      } else if (roll < shape.edit + shape.rewrite + shape.zero) {
        page.fill(0);
        isZero[idx] = 1;
      }
    }
    // A dirty-bitmap scan reports pages in pfn order; other controllers do not.
    if (rng.chance(0.5)) chosen.sort((x, y) => x - y);
    yield emit(chosen);
  }
}

/** The whole trace in memory. */
export function generateTrace(opts: GenerateOptions): Buffer {
  const pageSize = opts.pageSize ?? 4096;
  const parts: Buffer[] = [encodeTraceHeader(pageSize)];
  let epoch = 0;
  for (const e of generateEpochs(opts)) parts.push(encodeEpochRecord(epoch++, e.pfns, e.kinds, e.pages, pageSize));
  return Buffer.concat(parts);
}

export async function generateTraceFile(path: string, opts: GenerateOptions): Promise<void> {
  const writer = await TraceWriter.create(path, opts.pageSize ?? 4096);
  try {
    for (const e of generateEpochs(opts)) await writer.writeEpoch(e.pfns, e.kinds, e.pages);
  } finally {
    await writer.close();
  }
}
