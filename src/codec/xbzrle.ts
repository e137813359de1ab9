/**
 * QEMU's XBZRLE page delta (migration/xbzrle.c, docs/devel/migration/xbzrle.rst),
 * byte for byte, and the record body that carries it in codec 2 frames
 * (docs/FORMAT.md "Codec 2: xbzrle").
 *
 * The encoding of a page against its old copy is a sequence of
 *   zrun  = ULEB128 length              bytes where old == new (skipped)
 *   nzrun = ULEB128 length, then bytes  bytes where old != new: the NEW bytes
 * pairs, alternating and maximal, starting with a zero run (length 0 when the
 * first byte changed). Only the first zero run may be empty; a non-zero run
 * never is. There is no trailing zero run: the encoding stops after the last
 * non-zero run. An unchanged page encodes to nothing (length 0).
 *
 * Lengths are ULEB128. QEMU's coder handles 14-bit values (two bytes), which
 * covers every run of a page up to 16 KiB; for 32 and 64 KiB pages a run may
 * need a third byte, written as plain ULEB128.
 *
 * Encoding is QEMU's xbzrle_encode_buffer(old, new, pageSize, dst, limit),
 * including its overflow rule: before each length it needs 2 bytes of room
 * (`d + 2 > limit` gives -1), and a non-zero run whose bytes do not fit gives
 * -1. The encoder never writes `old`: like QEMU's save_xbzrle_page, the caller
 * copies the new page into its cache whenever the page changed (delta or
 * overflow), so the cache holds exactly what the receiver will hold.
 *
 * Style as remus.ts: no allocation per page, typed-array views kept between
 * calls, argument checks once per page, every decoded length checked before
 * a byte is written.
 */
import { CodecError } from '../errors.js';
import { decodeRemusPage, encodeRemusFull, FULL_PAGE } from './remus.js';

/** Record body kind: the page is unchanged (one byte). */
export const XBZRLE_UNCHANGED = 0x00;
/** Record body kind: an XBZRLE delta follows (ULEB128 length, then the delta bytes). */
export const XBZRLE_DELTA = 0x01;
/** Record body kind: the whole page follows (pageSize bytes); the same byte, and body, as a Remus FULL page. */
export const XBZRLE_FULL = FULL_PAGE;

/** QEMU's room check: a length byte pair must fit before each run. */
const RUN_ROOM_BYTES = 2;
const KIND_BYTES = 1;
const ULEB_PAYLOAD_MASK = 0x7f;
const ULEB_CONTINUE = 0x80;
const ULEB_SHIFT = 7;
const BYTES_PER_WORD = 4;
const WORD_MASK = BYTES_PER_WORD - 1;
/** Words compared per step of the unchanged-bytes scan. */
const SCAN_BLOCK_WORDS = 8;
/** log2(BYTES_PER_WORD). */
const WORD_SHIFT = 2;
/** For the has-a-zero-byte test on a 32-bit XOR: (x - LOW) & ~x & HIGH is non-zero iff a byte of x is 0. */
const BYTE_LOW_BITS = 0x01010101;
const BYTE_HIGH_BITS = 0x80808080;

/** ULEB128 bytes of `value` (a non-negative integer below 2^31). */
export function xbzrleLengthBytes(value: number): number {
  let n = 1;
  while (value >= ULEB_CONTINUE) {
    value >>>= ULEB_SHIFT;
    n++;
  }
  return n;
}

function writeLength(out: Uint8Array, pos: number, value: number): number {
  while (value >= ULEB_CONTINUE) {
    out[pos++] = (value & ULEB_PAYLOAD_MASK) | ULEB_CONTINUE;
    value >>>= ULEB_SHIFT;
  }
  out[pos++] = value;
  return pos;
}

/**
 * The longest delta the sender sends in a record: the largest length L with
 * 1 + ULEB128(L) + L < 1 + pageSize, so a DELTA body is always smaller than a
 * FULL one (4093 for 4096-byte pages). Longer encodings are overflows.
 */
export function xbzrleDeltaLimit(pageSize: number): number {
  let limit = Math.max(0, pageSize - 1 - xbzrleLengthBytes(pageSize - 1));
  while (limit + 1 + xbzrleLengthBytes(limit + 1) < pageSize) limit++;
  return limit;
}

/** Worst-case bytes of one record body: a FULL page (the encoder falls back to it rather than send a longer delta). */
export function xbzrleMaxEncodedBytes(pageSize: number): number {
  return KIND_BYTES + pageSize;
}

/*
 * Uint32Array views over the last `cur` and `old` arrays, kept between calls
 * (remade only when the caller switches arrays), for comparing 4 bytes at a
 * time. Used only when both pages start on a 4-byte boundary of their buffers;
 * run boundaries are always found byte by byte, so the output is the same.
 */
let curSource: Uint8Array | null = null;
let curLength = 0;
let curWords: Uint32Array<ArrayBufferLike> = new Uint32Array(0);
let oldSource: Uint8Array | null = null;
let oldLength = 0;
let oldWords = curWords;

function wordsOfCur(a: Uint8Array): Uint32Array<ArrayBufferLike> {
  if (a !== curSource || a.byteLength !== curLength) {
    curWords = new Uint32Array(a.buffer, a.byteOffset, a.byteLength >>> 2);
    curSource = a;
    curLength = a.byteLength;
  }
  return curWords;
}

function wordsOfOld(a: Uint8Array): Uint32Array<ArrayBufferLike> {
  if (a !== oldSource || a.byteLength !== oldLength) {
    oldWords = new Uint32Array(a.buffer, a.byteOffset, a.byteLength >>> 2);
    oldSource = a;
    oldLength = a.byteLength;
  }
  return oldWords;
}

/** First index in [i, end) where cur[k] != old[k + delta], or end. */
function equalRunEnd(cur: Uint8Array, old: Uint8Array, delta: number, i: number, end: number, words: boolean): number {
  if (words) {
    while (i < end && (i & WORD_MASK) !== 0) {
      if (cur[i] !== old[i + delta]) return i;
      i++;
    }
    const c32 = curWords;
    const o32 = oldWords;
    // Shifts, not division, so V8 keeps the indices small integers (offsets
    // are below 2^31: typed arrays of the slabs).
    const wordDelta = delta >> WORD_SHIFT;
    const wordEnd = end >>> WORD_SHIFT;
    let w = i >>> WORD_SHIFT;
    // 8 words per test while they fit (unchanged stretches are long), then one at a time.
    const blockEnd = wordEnd - (SCAN_BLOCK_WORDS - 1);
    while (w < blockEnd &&
      c32[w] === o32[w + wordDelta] && c32[w + 1] === o32[w + 1 + wordDelta] &&
      c32[w + 2] === o32[w + 2 + wordDelta] && c32[w + 3] === o32[w + 3 + wordDelta] &&
      c32[w + 4] === o32[w + 4 + wordDelta] && c32[w + 5] === o32[w + 5 + wordDelta] &&
      c32[w + 6] === o32[w + 6 + wordDelta] && c32[w + 7] === o32[w + 7 + wordDelta]) {
      w += SCAN_BLOCK_WORDS;
    }
    while (w < wordEnd && c32[w] === o32[w + wordDelta]) w++;
    i = w * BYTES_PER_WORD;
  }
  while (i < end && cur[i] === old[i + delta]) i++;
  return i;
}

/** First index in [i, end) where cur[k] == old[k + delta], or end. */
function changedRunEnd(cur: Uint8Array, old: Uint8Array, delta: number, i: number, end: number, words: boolean): number {
  if (words) {
    while (i < end && (i & WORD_MASK) !== 0) {
      if (cur[i] === old[i + delta]) return i;
      i++;
    }
    const c32 = curWords;
    const o32 = oldWords;
    // Shifts, not division, so V8 keeps the indices small integers (offsets
    // are below 2^31: typed arrays of the slabs).
    const wordDelta = delta >> WORD_SHIFT;
    const wordEnd = end >>> WORD_SHIFT;
    let w = i >>> WORD_SHIFT;
    // Skip whole words whose 4 bytes all differ (their XOR has no zero byte).
    for (; w < wordEnd; w++) {
      const x = c32[w] ^ o32[w + wordDelta];
      if (((x - BYTE_LOW_BITS) & ~x & BYTE_HIGH_BITS) !== 0) break;
    }
    i = w * BYTES_PER_WORD;
  }
  while (i < end && cur[i] !== old[i + delta]) i++;
  return i;
}

/**
 * QEMU's xbzrle_encode_buffer: encode page cur[curOffset, +pageSize) against
 * old[oldOffset, +pageSize) into out[outPos, outPos + limit). Returns the end
 * position (outPos itself when the page is unchanged), or -1 when the
 * encoding does not fit `limit` bytes (QEMU's overflow; out may then hold
 * partial bytes within the limit). Never writes `old`, never writes out past
 * outPos + limit.
 */
export function xbzrleEncode(
  cur: Uint8Array,
  curOffset: number,
  old: Uint8Array,
  oldOffset: number,
  pageSize: number,
  out: Uint8Array,
  outPos: number,
  limit: number,
): number {
  if (pageSize < 0 || curOffset < 0 || curOffset + pageSize > cur.length || oldOffset < 0 || oldOffset + pageSize > old.length) {
    throw new RangeError(`xbzrleEncode: ${pageSize}-byte page at ${curOffset} / ${oldOffset} outside page arrays`);
  }
  if (limit < 0 || outPos < 0 || outPos + limit > out.length) {
    throw new RangeError(`xbzrleEncode: ${limit} output bytes at ${outPos} do not fit output of ${out.length} bytes`);
  }
  const words =
    (((cur.byteOffset + curOffset) | (old.byteOffset + oldOffset) | pageSize | cur.byteOffset | old.byteOffset) & WORD_MASK) === 0;
  if (words) {
    wordsOfCur(cur);
    wordsOfOld(old);
  }
  const delta = oldOffset - curOffset;
  const end = curOffset + pageSize;
  const outEnd = outPos + limit;
  let d = outPos;
  let i = curOffset;
  while (i < end) {
    if (d + RUN_ROOM_BYTES > outEnd) return -1;
    const zrunStart = i;
    i = equalRunEnd(cur, old, delta, i, end, words);
    const zrun = i - zrunStart;
    if (zrun === pageSize) return outPos;
    // No trailing zero run.
    if (i === end) return d;
    // (A third length byte exists only for pages over 16 KiB, beyond QEMU's 14-bit lengths.)
    if (d + xbzrleLengthBytes(zrun) > outEnd) return -1;
    d = writeLength(out, d, zrun);

    if (d + RUN_ROOM_BYTES > outEnd) return -1;
    const nzrunStart = i;
    i = changedRunEnd(cur, old, delta, i, end, words);
    const nzrun = i - nzrunStart;
    if (d + xbzrleLengthBytes(nzrun) > outEnd) return -1;
    d = writeLength(out, d, nzrun);
    if (d + nzrun > outEnd) return -1;
    for (let k = nzrunStart; k < i; k++) out[d++] = cur[k];
  }
  return d;
}

/**
 * QEMU's xbzrle_decode_buffer: apply the encoding input[pos, end) to
 * page[pageOffset, +pageSize) (which holds the old page); returns `end`.
 * Throws CodecError XBZRLE_TRUNCATED (the input ends inside a length or a
 * non-zero run, or after a zero run), XBZRLE_BAD_LENGTH (a length over the
 * page size, a length of more ULEB128 bytes than the page size needs, a
 * zero-length run other than the first zero run), XBZRLE_RUN_PAST_END (a run
 * goes past the page end). Never writes outside the page; each non-zero run
 * is checked whole before any of it is written, but runs before a bad one
 * have been applied (callers decode into a staging page).
 */
export function xbzrleDecode(input: Uint8Array, pos: number, end: number, page: Uint8Array, pageOffset: number, pageSize: number): number {
  if (pos < 0 || end > input.length || pos > end) {
    throw new RangeError(`xbzrleDecode: input range [${pos}, ${end}) outside input of ${input.length} bytes`);
  }
  if (pageSize < 1 || pageOffset < 0 || pageOffset + pageSize > page.length) {
    throw new RangeError(`xbzrleDecode: page [${pageOffset}, ${pageOffset + pageSize}) invalid for target of ${page.length} bytes`);
  }
  const maxLengthBytes = xbzrleLengthBytes(pageSize);
  let d = 0;
  while (pos < end) {
    // Zero run.
    let at = pos;
    let value = 0;
    let shift = 0;
    for (let n = 1; ; n++) {
      if (pos >= end) throw truncated(`the zero-run length at page byte ${d}`, at);
      const b = input[pos++];
      value += (b & ULEB_PAYLOAD_MASK) * 2 ** shift;
      if ((b & ULEB_CONTINUE) === 0) break;
      if (n === maxLengthBytes) throw tooLong(at, maxLengthBytes, pageSize);
      shift += ULEB_SHIFT;
    }
    if (value > pageSize) throw badLength('zero', value, d, at, pageSize);
    if (value === 0 && d !== 0) {
      throw new CodecError('XBZRLE_BAD_LENGTH', `zero-length zero run at page byte ${d}: only the first zero run may be empty`, at);
    }
    if (d + value > pageSize) {
      throw new CodecError('XBZRLE_RUN_PAST_END', `zero run of ${value} bytes at page byte ${d} passes the page end (${pageSize} bytes)`, at);
    }
    d += value;

    // Non-zero run: it must follow (the encoding has no trailing zero run).
    at = pos;
    if (pos >= end) {
      throw new CodecError('XBZRLE_TRUNCATED', `input ends after a zero run at page byte ${d}: a non-zero run must follow`, at);
    }
    value = 0;
    shift = 0;
    for (let n = 1; ; n++) {
      if (pos >= end) throw truncated(`the non-zero-run length at page byte ${d}`, at);
      const b = input[pos++];
      value += (b & ULEB_PAYLOAD_MASK) * 2 ** shift;
      if ((b & ULEB_CONTINUE) === 0) break;
      if (n === maxLengthBytes) throw tooLong(at, maxLengthBytes, pageSize);
      shift += ULEB_SHIFT;
    }
    if (value > pageSize) throw badLength('non-zero', value, d, at, pageSize);
    if (value === 0) throw new CodecError('XBZRLE_BAD_LENGTH', `zero-length non-zero run at page byte ${d}`, at);
    if (d + value > pageSize) {
      throw new CodecError('XBZRLE_RUN_PAST_END', `non-zero run of ${value} bytes at page byte ${d} passes the page end (${pageSize} bytes)`, at);
    }
    if (end - pos < value) {
      throw new CodecError('XBZRLE_TRUNCATED', `input ends inside a non-zero run of ${value} bytes at page byte ${d}: ${end - pos} left`, pos);
    }
    const target = pageOffset + d - pos;
    const runEnd = pos + value;
    for (; pos < runEnd; pos++) page[pos + target] = input[pos];
    d += value;
  }
  return pos;
}

/**
 * Encode one codec-2 record body (docs/FORMAT.md "Codec 2: xbzrle") at
 * out[outPos..]: UNCHANGED, DELTA + ULEB128 length + delta when the delta is
 * at most xbzrleDeltaLimit(pageSize) bytes, else FULL + the page. Returns the
 * end; the kind is out[outPos]. `old` is not written: when the kind is not
 * UNCHANGED the caller copies the new page into its cache. Caller guarantees
 * out has xbzrleMaxEncodedBytes(pageSize) bytes free (checked).
 */
export function encodeXbzrleBody(
  cur: Uint8Array,
  curOffset: number,
  old: Uint8Array,
  oldOffset: number,
  pageSize: number,
  out: Uint8Array,
  outPos: number,
): number {
  if (outPos < 0 || outPos + xbzrleMaxEncodedBytes(pageSize) > out.length) {
    throw new RangeError(`encodeXbzrleBody: output needs ${xbzrleMaxEncodedBytes(pageSize)} bytes free at ${outPos}, has ${out.length - outPos}`);
  }
  const limit = xbzrleDeltaLimit(pageSize);
  const reserved = xbzrleLengthBytes(limit);
  const deltaStart = outPos + KIND_BYTES + reserved;
  const deltaEnd = xbzrleEncode(cur, curOffset, old, oldOffset, pageSize, out, deltaStart, limit);
  if (deltaEnd === deltaStart) {
    out[outPos] = XBZRLE_UNCHANGED;
    return outPos + KIND_BYTES;
  }
  if (deltaEnd < 0) return encodeXbzrleFull(cur, curOffset, pageSize, out, outPos);
  const length = deltaEnd - deltaStart;
  out[outPos] = XBZRLE_DELTA;
  const lengthEnd = writeLength(out, outPos + KIND_BYTES, length);
  // The length took fewer bytes than reserved: close the gap (copyWithin allocates nothing).
  if (lengthEnd !== deltaStart) out.copyWithin(lengthEnd, deltaStart, deltaEnd);
  return lengthEnd + length;
}

/** Write a FULL record body (kind, then the page) at out[outPos..]; returns the end. */
export function encodeXbzrleFull(src: Uint8Array, srcOffset: number, pageSize: number, out: Uint8Array, outPos: number): number {
  if (srcOffset < 0 || pageSize < 0 || srcOffset + pageSize > src.length) {
    throw new RangeError(`encodeXbzrleFull: source page [${srcOffset}, ${srcOffset + pageSize}) outside source of ${src.length} bytes`);
  }
  if (outPos < 0 || outPos + KIND_BYTES + pageSize > out.length) {
    throw new RangeError(`encodeXbzrleFull: ${KIND_BYTES + pageSize} bytes at ${outPos} do not fit output of ${out.length} bytes`);
  }
  // The same bytes as a Remus FULL body: use its word-at-a-time copy.
  if ((pageSize & WORD_MASK) === 0 && pageSize > 0) return encodeRemusFull(src, srcOffset, pageSize, out, outPos);
  out[outPos] = XBZRLE_FULL;
  const delta = outPos + KIND_BYTES - srcOffset;
  const end = srcOffset + pageSize;
  for (let k = srcOffset; k < end; k++) out[k + delta] = src[k];
  return outPos + KIND_BYTES + pageSize;
}

/**
 * Apply one codec-2 record body at input[pos..end) to page[pageOffset, +pageSize)
 * (which must hold the old page unless the kind is FULL); returns the position
 * after the body. Throws CodecError XBZRLE_TRUNCATED, XBZRLE_BAD_KIND,
 * XBZRLE_BAD_LENGTH (delta length 0, over the page size, or of too many
 * bytes), or any error of xbzrleDecode; a delta must decode using exactly its
 * stated length.
 */
export function decodeXbzrleBody(input: Uint8Array, pos: number, end: number, page: Uint8Array, pageOffset: number, pageSize: number): number {
  if (pos < 0 || end > input.length) {
    throw new RangeError(`decodeXbzrleBody: input range [${pos}, ${end}) outside input of ${input.length} bytes`);
  }
  if (pageSize < 1 || pageOffset < 0 || pageOffset + pageSize > page.length) {
    throw new RangeError(`decodeXbzrleBody: page [${pageOffset}, ${pageOffset + pageSize}) invalid for target of ${page.length} bytes`);
  }
  if (pos >= end) throw truncated('the record kind', pos);
  const kind = input[pos];
  if (kind === XBZRLE_UNCHANGED) return pos + KIND_BYTES;
  if (kind === XBZRLE_FULL) {
    const start = pos + KIND_BYTES;
    if (end - start < pageSize) {
      throw new CodecError('XBZRLE_TRUNCATED', `input ends inside a FULL page: needs ${pageSize} bytes, ${end - start} left`, start);
    }
    // The same bytes as a Remus FULL body (checked whole above): use its word-at-a-time copy.
    if ((pageSize & WORD_MASK) === 0) return decodeRemusPage(input, pos, end, page, pageOffset, pageSize);
    const delta = pageOffset - start;
    for (let k = start; k < start + pageSize; k++) page[k + delta] = input[k];
    return start + pageSize;
  }
  if (kind !== XBZRLE_DELTA) {
    throw new CodecError('XBZRLE_BAD_KIND', `record kind 0x${kind.toString(16)}: expected 0x00 (unchanged), 0x01 (delta) or 0x80 (FULL)`, pos);
  }
  const at = pos + KIND_BYTES;
  let p = at;
  const maxLengthBytes = xbzrleLengthBytes(pageSize);
  let length = 0;
  let shift = 0;
  for (let n = 1; ; n++) {
    if (p >= end) throw truncated('the delta length', at);
    const b = input[p++];
    length += (b & ULEB_PAYLOAD_MASK) * 2 ** shift;
    if ((b & ULEB_CONTINUE) === 0) break;
    if (n === maxLengthBytes) throw tooLong(at, maxLengthBytes, pageSize);
    shift += ULEB_SHIFT;
  }
  if (length === 0 || length > pageSize) {
    throw new CodecError('XBZRLE_BAD_LENGTH', `delta length ${length}: must be from 1 to the page size ${pageSize}`, at);
  }
  if (end - p < length) {
    throw new CodecError('XBZRLE_TRUNCATED', `input ends inside a ${length}-byte delta: ${end - p} left`, p);
  }
  return xbzrleDecode(input, p, p + length, page, pageOffset, pageSize);
}

function truncated(what: string, offset: number): CodecError {
  return new CodecError('XBZRLE_TRUNCATED', `input ends inside ${what}`, offset);
}

function tooLong(offset: number, maxBytes: number, pageSize: number): CodecError {
  return new CodecError('XBZRLE_BAD_LENGTH', `ULEB128 length longer than ${maxBytes} bytes, more than a ${pageSize}-byte page needs`, offset);
}

function badLength(run: string, value: number, d: number, offset: number, pageSize: number): CodecError {
  return new CodecError('XBZRLE_BAD_LENGTH', `${run} run length ${value} at page byte ${d} is over the page size ${pageSize}`, offset);
}
