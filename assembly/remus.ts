/**
 * WebAssembly SIMD kernel for the seed's page encoding (src/codec/remus.ts),
 * byte for byte, written in AssemblyScript. Built by `npm run build:wasm`
 * (asc, assembly/asconfig.json) into dist/wasm/remus.wasm; loaded and bound
 * by src/codec/remus-wasm.ts, which is the only caller and checks arguments.
 *
 * The module owns no memory: it imports `env.memory`, a shared memory that
 * the caller also keeps its input slab, record regions and cache slabs in,
 * and every pointer below is a byte offset in it. It has no data segments
 * and no runtime (nothing allocates), so instantiating it in another thread
 * over the same memory writes nothing.
 *
 * Words are 32-bit little-endian, as wasm loads them. Pages are a whole
 * number of words (callers check); any byte alignment works (v128 loads and
 * stores are unaligned-safe).
 */

/** Unchanged page: one byte. */
const EMPTY_PAGE: u8 = 0x00;
/** Whole page follows. */
const FULL_PAGE: u8 = 0x80;
/** Run header bit 7: skip run (unchanged words). */
const SKIP_FLAG: u32 = 0x80;
/** Longest run, in words, and in bytes. */
const MAX_RUN_WORDS: u32 = 127;
const MAX_RUN_BYTES: u32 = MAX_RUN_WORDS << 2;
/** SKIP_FLAG | 127. */
const FULL_SKIP_HEADER: u8 = 0xff;

/** decodePage error returns (as i32; the wrapper maps them to CodecError codes). */
const ERR_TRUNCATED: i32 = -1;
const ERR_ZERO_RUN: i32 = -2;
const ERR_RUN_PAST_END: i32 = -3;

/** Which check failed (errorInfo(0)), for the wrapper's messages. */
const WHERE_RECORD_HEADER: u32 = 1;
const WHERE_FULL_PAGE: u32 = 2;
const WHERE_RUN_HEADER: u32 = 3;
const WHERE_COPY_RUN: u32 = 4;
const WHERE_ZERO_RUN: u32 = 5;
const WHERE_RUN_PAST_END: u32 = 6;

// Details of the last decode error: globals of this instance (one per
// thread), not memory, so threads never see each other's.
let errWhere: u32 = 0;
let errOffset: usize = 0;
let errWord: u32 = 0;
let errA: u32 = 0;
let errB: u32 = 0;

/** Lanes (bits 0..3) of the 4-word vectors whose words differ. */
// @ts-ignore: decorator
@inline function differMask(a: v128, b: v128): i32 {
  return ~i32x4.bitmask(i32x4.eq(a, b)) & 0xf;
}

/**
 * The bits of the words copied by a `track` entry point, OR-ed together
 * (zeroed on entry): not zero proves the page is not all zero without
 * reading it again. A global so that the inlined copies can add to it.
 */
let copiedBits: v128 = i32x4(0, 0, 0, 0);

/**
 * First byte offset j >= i (a multiple of 4) below n where the words of
 * cur and cached differ, or n. 64 bytes per test (four v128 XORs OR-ed
 * together); the lane is located only in a block that differs.
 */
// @ts-ignore: decorator
@inline function nextChanged(cur: usize, cached: usize, i: u32, n: u32): u32 {
  while (i + 64 <= n) {
    const c = cur + i;
    const k = cached + i;
    const a0 = v128.load(c);
    const b0 = v128.load(k);
    const a1 = v128.load(c, 16);
    const b1 = v128.load(k, 16);
    const a2 = v128.load(c, 32);
    const b2 = v128.load(k, 32);
    const a3 = v128.load(c, 48);
    const b3 = v128.load(k, 48);
    const x = v128.or(v128.or(v128.xor(a0, b0), v128.xor(a1, b1)), v128.or(v128.xor(a2, b2), v128.xor(a3, b3)));
    if (v128.any_true(x)) {
      let m = differMask(a0, b0);
      if (m != 0) return i + (<u32>ctz(m) << 2);
      m = differMask(a1, b1);
      if (m != 0) return i + 16 + (<u32>ctz(m) << 2);
      m = differMask(a2, b2);
      if (m != 0) return i + 32 + (<u32>ctz(m) << 2);
      return i + 48 + (<u32>ctz(differMask(a3, b3)) << 2);
    }
    i += 64;
  }
  while (i + 16 <= n) {
    const m = differMask(v128.load(cur + i), v128.load(cached + i));
    if (m != 0) return i + (<u32>ctz(m) << 2);
    i += 16;
  }
  while (i < n) {
    if (load<u32>(cur + i) != load<u32>(cached + i)) return i;
    i += 4;
  }
  return n;
}

/** First byte offset j >= i (a multiple of 4) below n where the words are equal, or n. */
// @ts-ignore: decorator
@inline function nextEqual(cur: usize, cached: usize, i: u32, n: u32): u32 {
  while (i + 16 <= n) {
    const m = i32x4.bitmask(i32x4.eq(v128.load(cur + i), v128.load(cached + i)));
    if (m != 0) return i + (<u32>ctz(m) << 2);
    i += 16;
  }
  while (i < n) {
    if (load<u32>(cur + i) == load<u32>(cached + i)) return i;
    i += 4;
  }
  return n;
}

/**
 * Copy `bytes` (a multiple of 4) from src to both out and cache: each
 * vector loaded once, stored twice. With `track`, notes them in copiedBits.
 */
// @ts-ignore: decorator
@inline function copyTwice(src: usize, out: usize, cache: usize, bytes: u32, track: bool): void {
  let bits = i32x4(0, 0, 0, 0);
  let j: u32 = 0;
  while (j + 16 <= bytes) {
    const v = v128.load(src + j);
    if (track) bits = v128.or(bits, v);
    v128.store(out + j, v);
    v128.store(cache + j, v);
    j += 16;
  }
  if (track) copiedBits = v128.or(copiedBits, bits);
  while (j < bytes) {
    const w = load<u32>(src + j);
    if (track) copiedBits = v128.or(copiedBits, i32x4.splat(w));
    store<u32>(out + j, w);
    store<u32>(cache + j, w);
    j += 4;
  }
}

/** Skip headers for `words` unchanged words (may be 0) at pos; returns the end. */
// @ts-ignore: decorator
@inline function writeSkipRuns(pos: usize, words: u32): usize {
  while (words > MAX_RUN_WORDS) {
    store<u8>(pos++, FULL_SKIP_HEADER);
    words -= MAX_RUN_WORDS;
  }
  if (words != 0) store<u8>(pos++, <u8>(SKIP_FLAG | words));
  return pos;
}

/** Whether the `bytes` bytes at `off` are all zero. */
// @ts-ignore: decorator
@inline function allZero(off: usize, bytes: u32): bool {
  let i: u32 = 0;
  while (i + 64 <= bytes) {
    const p = off + i;
    const x = v128.or(v128.or(v128.load(p), v128.load(p, 16)), v128.or(v128.load(p, 32), v128.load(p, 48)));
    if (v128.any_true(x)) return false;
    i += 64;
  }
  while (i < bytes) {
    if (load<u8>(off + i) != 0) return false;
    i++;
  }
  return true;
}

/**
 * encodeRemusDelta: encode the page at `cur` (pageSize bytes, a multiple of
 * 4) against its cached copy at `cached`, writing EMPTY if identical, else the
 * run sequence (copy runs split 127, 127, ..., rest; trailing skip runs
 * emitted), at `out`; returns the end. Copies every changed word into the
 * cached copy, so afterwards cached equals cur. Writes out only up to the
 * returned end (at most remusMaxEncodedBytes(pageSize) bytes). With `track`,
 * the changed words are noted in copiedBits.
 */
// @ts-ignore: decorator
@inline function deltaInto(cur: usize, cached: usize, pageSize: u32, out: usize, track: bool): usize {
  const n = pageSize;
  let i = nextChanged(cur, cached, 0, n);
  if (i == n) {
    store<u8>(out, EMPTY_PAGE);
    return out + 1;
  }
  let pos = writeSkipRuns(out, i >> 2);
  while (true) {
    // Words [i, e) are changed: copy runs of at most 127 words.
    const e = nextEqual(cur, cached, i + 4, n);
    do {
      let len = e - i;
      if (len > MAX_RUN_BYTES) len = MAX_RUN_BYTES;
      store<u8>(pos, <u8>(len >> 2));
      copyTwice(cur + i, pos + 1, cached + i, len, track);
      pos += 1 + len;
      i += len;
    } while (i < e);
    if (i == n) return pos;
    // Word i is unchanged: the skip run ends at the next changed word.
    const s = nextChanged(cur, cached, i + 4, n);
    pos = writeSkipRuns(pos, (s - i) >> 2);
    if (s == n) return pos;
    i = s;
  }
}

/** encodeRemusDelta (deltaInto); returns the end. */
export function encodeDelta(cur: usize, cached: usize, pageSize: u32, out: usize): usize {
  return deltaInto(cur, cached, pageSize, out, false);
}

/**
 * A cache hit in one pass over the page: encodeDelta, except that when the
 * page is all zero it returns 0 (never an end: out + 1 > 0) and the bytes
 * at out are not a record; the cached copy equals the page either way.
 */
export function encodeDeltaOrZero(cur: usize, cached: usize, pageSize: u32, out: usize): usize {
  copiedBits = i32x4(0, 0, 0, 0);
  const end = deltaInto(cur, cached, pageSize, out, true);
  // A changed word that is not zero (most changed pages: it is in the first
  // run) settles it; else the page is read once more, as isZeroPage would.
  return v128.any_true(copiedBits) || !allZero(cur, pageSize) ? end : 0;
}

/** encodeRemusFull: FULL_PAGE then the page at `src`; returns the end. */
export function encodeFull(src: usize, pageSize: u32, out: usize): usize {
  store<u8>(out, FULL_PAGE);
  memory.copy(out + 1, src, pageSize);
  return out + 1 + pageSize;
}

/**
 * A cache miss in one pass over the page: FULL_PAGE then the page at `src`
 * written at `out`, the page copied into its new cache slot at `cache`;
 * returns the end, or 0 when the page is all zero (the slot then holds the
 * zeros; the bytes at out are not a record).
 */
export function encodeFullOrZero(src: usize, pageSize: u32, out: usize, cache: usize): usize {
  copiedBits = i32x4(0, 0, 0, 0);
  store<u8>(out, FULL_PAGE);
  copyTwice(src, out + 1, cache, pageSize, true);
  return v128.any_true(copiedBits) ? out + 1 + pageSize : 0;
}

/** 1 when the `bytes` bytes at `off` are all zero, else 0. */
export function isZeroPage(off: usize, bytes: u32): i32 {
  return allZero(off, bytes) ? 1 : 0;
}

/** memmove of n bytes (a FULL page into a cache slot, say). */
export function copyBytes(dst: usize, src: usize, n: u32): void {
  memory.copy(dst, src, n);
}

/** n bytes at dst set to `value` (zeroing a cache slot, say). */
export function fillBytes(dst: usize, value: u32, n: u32): void {
  memory.fill(dst, <u8>value, n);
}

// @ts-ignore: decorator
@inline function fail(code: i32, where: u32, offset: usize, word: u32, a: u32, b: u32): i32 {
  errWhere = where;
  errOffset = offset;
  errWord = word;
  errA = a;
  errB = b;
  return code;
}

/**
 * decodeRemusPage: apply the record at [pos, end) to the page at `page`
 * (pageSize bytes, a multiple of 4); returns the offset after the record, or
 * ERR_TRUNCATED / ERR_ZERO_RUN / ERR_RUN_PAST_END (details in errorInfo),
 * in the order decodeRemusPage checks them. Each run is checked whole
 * before any byte of it is written; nothing outside the page is written.
 */
export function decodePage(pos: usize, end: usize, page: usize, pageSize: u32): i32 {
  if (pos >= end) return fail(ERR_TRUNCATED, WHERE_RECORD_HEADER, pos, 0, 1, 0);
  const first = load<u8>(pos);
  if (first == EMPTY_PAGE) return <i32>(pos + 1);
  if (first == FULL_PAGE) {
    const start = pos + 1;
    if (end - start < pageSize) return fail(ERR_TRUNCATED, WHERE_FULL_PAGE, start, 0, pageSize, <u32>(end - start));
    memory.copy(page, start, pageSize);
    return <i32>(start + pageSize);
  }
  const words = pageSize >> 2;
  let word: u32 = 0;
  while (word < words) {
    if (pos >= end) return fail(ERR_TRUNCATED, WHERE_RUN_HEADER, pos, word, 1, 0);
    const header = <u32>load<u8>(pos);
    const len = header & MAX_RUN_WORDS;
    if (len == 0) return fail(ERR_ZERO_RUN, WHERE_ZERO_RUN, pos, word, header, 0);
    if (word + len > words) return fail(ERR_RUN_PAST_END, WHERE_RUN_PAST_END, pos, word, len, words);
    pos++;
    if ((header & SKIP_FLAG) == 0) {
      const bytes = len << 2;
      if (end - pos < bytes) return fail(ERR_TRUNCATED, WHERE_COPY_RUN, pos, word, len, <u32>(end - pos));
      const dst = page + (word << 2);
      // Short runs (most of them) word by word; long ones by vectors.
      let j: u32 = 0;
      while (j + 16 <= bytes) {
        v128.store(dst + j, v128.load(pos + j));
        j += 16;
      }
      while (j < bytes) {
        store<u32>(dst + j, load<u32>(pos + j));
        j += 4;
      }
      pos += bytes;
    }
    word += len;
  }
  return <i32>pos;
}

/**
 * Details of this instance's last decodePage error: 0 where (1 record
 * header, 2 FULL page, 3 run header, 4 copy run, 5 zero-length run, 6 run
 * past the page end), 1 byte offset, 2 word, 3 and 4 figures of the check
 * (need/have bytes; the run header; run length/page words).
 */
export function errorInfo(field: i32): u32 {
  switch (field) {
    case 0: return errWhere;
    case 1: return <u32>errOffset;
    case 2: return errWord;
    case 3: return errA;
    case 4: return errB;
    default: return 0;
  }
}
