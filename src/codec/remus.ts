/**
 * The seed's page encoding (Remus, Xen 2011), bit for bit. See
 * docs/FORMAT.md "Page records" and shared DESIGN.md "The seed's page encoding".
 *
 * A record is one of:
 *   EMPTY_PAGE                      the page is unchanged;
 *   FULL_PAGE, pageSize bytes       the whole new page;
 *   run, run, ...                   runs covering the page exactly, in 32-bit
 *                                   words: header bit 7 set = skip (unchanged
 *                                   words), clear = copy (changed words, whose
 *                                   4 x length new bytes follow the header);
 *                                   low 7 bits = length, 1..127.
 * The first byte is unambiguous: 0x00 and 0x80 would be zero-length runs.
 *
 * This is the product's inner loop. Nothing here allocates on the success
 * path: no subarray, no per-call typed-array views or DataViews, no
 * closures. Words are little-endian (Uint32Array over the page bytes on an LE
 * machine) and are written into `out` LE through a DataView kept across calls,
 * because `out` may be at any byte alignment (a Uint32Array view of it would
 * need an aligned offset).
 */
import { CodecError } from '../errors.js';

/** Unchanged page: one byte. */
export const EMPTY_PAGE = 0x00;
/** Whole page follows: one byte, then pageSize bytes. */
export const FULL_PAGE = 0x80;
/** Run header bit 7: set = skip (unchanged words); clear = copy (changed words). */
export const SKIP_FLAG = 0x80;
/** Run header low 7 bits: run length in words. */
export const RUN_LENGTH_MASK = 0x7f;
/** Longest run one header can describe; longer runs are split greedily (127, 127, ..., rest). */
export const MAX_RUN_WORDS = 127;

const BYTES_PER_WORD = 4;
/** log2(BYTES_PER_WORD), to turn word counts into byte counts with a shift. */
const WORD_SHIFT = 2;
const HEADER_BYTES = 1;
/** A full skip run header (SKIP_FLAG | MAX_RUN_WORDS), emitted for every 127 unchanged words. */
const FULL_SKIP_HEADER = SKIP_FLAG | MAX_RUN_WORDS;

/** Worst-case encoded bytes for a page of `words` words (FULL or all-changed runs). */
function maxEncodedBytesForWords(words: number): number {
  const pageBytes = words * BYTES_PER_WORD;
  return Math.max(HEADER_BYTES + pageBytes, pageBytes + Math.ceil(words / MAX_RUN_WORDS));
}

/** Worst-case bytes of one encoded page: max(1 + pageSize, pageSize + ceil(words / 127)) — 4105 for 4096. */
export function remusMaxEncodedBytes(pageSize: number): number {
  return maxEncodedBytesForWords(pageSize >>> WORD_SHIFT);
}

/** Words OR-ed together per test in isZeroPage. */
const ZERO_SCAN_WORDS = 4;

/** True when words [wordOffset, wordOffset + words) are all zero. */
export function isZeroPage(page: Uint32Array, wordOffset: number, words: number): boolean {
  const end = wordOffset + words;
  let i = wordOffset;
  // Four words per test: OR-ing them costs less than four branches, and still
  // leaves early on the first non-zero group (most pages are not zero).
  const groupEnd = end - (ZERO_SCAN_WORDS - 1);
  while (i < groupEnd) {
    if ((page[i] | page[i + 1] | page[i + 2] | page[i + 3]) !== 0) return false;
    i += ZERO_SCAN_WORDS;
  }
  while (i < end) {
    if (page[i] !== 0) return false;
    i++;
  }
  return true;
}

/*
 * DataViews over the last arrays written and read, kept between calls: one
 * 32-bit access per word instead of four byte accesses, at any byte alignment
 * (measured ~1.5x on fully changed pages, more on FULL copies). A view is
 * created only when the caller switches arrays (the workers and the receiver
 * reuse preallocated slabs and decode many pages per frame), never per page.
 * out.set(src.subarray(...)) would allocate a view per call, and so does
 * Node 20's Buffer#copy internally. The cache keeps the last arrays reachable.
 */
let writeTarget: Uint8Array | null = null;
let writeLength = 0;
let writeView: DataView<ArrayBufferLike> = new DataView(new ArrayBuffer(0));
let readTarget: Uint8Array | null = null;
let readLength = 0;
let readView: DataView<ArrayBufferLike> = writeView;

// The length is compared too: a length-tracking array over a resizable buffer
// may have grown since its view was made.
function viewForWrite(a: Uint8Array): DataView<ArrayBufferLike> {
  if (a !== writeTarget || a.byteLength !== writeLength) {
    writeView = new DataView(a.buffer, a.byteOffset, a.byteLength);
    writeTarget = a;
    writeLength = a.byteLength;
  }
  return writeView;
}

function viewForRead(a: Uint8Array): DataView<ArrayBufferLike> {
  if (a !== readTarget || a.byteLength !== readLength) {
    readView = new DataView(a.buffer, a.byteOffset, a.byteLength);
    readTarget = a;
    readLength = a.byteLength;
  }
  return readView;
}

/**
 * Copy src[srcPos, srcPos+n) to dst[dstPos..]; callers have checked both
 * ranges. Views of one buffer copy natively with copyWithin (a memmove, no
 * allocation): the service keeps a stream's input and its records in one
 * SharedArrayBuffer for this. Otherwise a word at a time through DataViews.
 */
function copyBytes(src: Uint8Array, srcPos: number, dst: Uint8Array, dstPos: number, n: number): void {
  if (src.buffer === dst.buffer) {
    const from = src.byteOffset + srcPos - dst.byteOffset;
    if (from >= 0 && from + n <= dst.length) {
      dst.copyWithin(dstPos, from, from + n);
      return;
    }
  }
  const sv = viewForRead(src);
  const dv = viewForWrite(dst);
  const wordBytes = n - (n & (BYTES_PER_WORD - 1));
  let k = 0;
  // LE read then LE write: a byte-exact copy whatever the machine's order.
  for (; k < wordBytes; k += BYTES_PER_WORD) dv.setUint32(dstPos + k, sv.getUint32(srcPos + k, true), true);
  for (; k < n; k++) dst[dstPos + k] = src[srcPos + k];
}

/** Write FULL_PAGE then the page's bytes; returns the position after. `src` page = src[srcOffset .. srcOffset+pageSize). */
export function encodeRemusFull(
  src: Uint8Array,
  srcOffset: number,
  pageSize: number,
  out: Uint8Array,
  outPos: number,
): number {
  if (srcOffset < 0 || srcOffset + pageSize > src.length || pageSize < 0) {
    throw new RangeError(`encodeRemusFull: source page [${srcOffset}, ${srcOffset + pageSize}) outside source of ${src.length} bytes`);
  }
  if (outPos < 0 || outPos + HEADER_BYTES + pageSize > out.length) {
    throw new RangeError(`encodeRemusFull: ${HEADER_BYTES + pageSize} bytes at ${outPos} do not fit output of ${out.length} bytes`);
  }
  out[outPos] = FULL_PAGE;
  copyBytes(src, srcOffset, out, outPos + HEADER_BYTES, pageSize);
  return outPos + HEADER_BYTES + pageSize;
}

/** Words compared per step of the fast equal-words scan. */
const SCAN_BLOCK_WORDS = 16;

/** Write the skip headers for `skip` unchanged words (may be 0) at out[pos]; returns the end. */
function writeSkipRuns(out: Uint8Array, pos: number, skip: number): number {
  while (skip > MAX_RUN_WORDS) {
    out[pos++] = FULL_SKIP_HEADER;
    skip -= MAX_RUN_WORDS;
  }
  if (skip > 0) out[pos++] = SKIP_FLAG | skip;
  return pos;
}

/**
 * Encode page `cur` (words curWord..curWord+words) against its cached copy
 * `cached` (cachedWord..), writing EMPTY_PAGE if identical, else the run
 * sequence, at out[outPos..]; returns the end position. Copies every changed
 * word into `cached`, so afterwards cached equals cur. Caller guarantees out
 * has remusMaxEncodedBytes(pageSize) bytes free (checked: a RangeError
 * otherwise, never a silently cut record). It always emits runs when changed,
 * even when that is longer than FULL (worst case 4105 bytes for 4096: 8 copy
 * runs of 127 words + 1 of 8, 9 headers) — that is the seed's behaviour.
 */
export function encodeRemusDelta(
  cur: Uint32Array,
  curWord: number,
  cached: Uint32Array,
  cachedWord: number,
  words: number,
  out: Uint8Array,
  outPos: number,
): number {
  // One check per page: reading past a typed array yields undefined, which
  // would silently turn into wrong records rather than an error.
  if (curWord < 0 || curWord + words > cur.length || cachedWord < 0 || cachedWord + words > cached.length) {
    throw new RangeError(`encodeRemusDelta: ${words} words at ${curWord} / ${cachedWord} outside page arrays`);
  }
  if (outPos < 0 || outPos + maxEncodedBytesForWords(words) > out.length) {
    throw new RangeError(
      `encodeRemusDelta: output needs ${maxEncodedBytesForWords(words)} bytes free at ${outPos}, has ${out.length - outPos}`,
    );
  }

  const end = curWord + words;
  // cached[i + delta] is the cached copy of cur[i]: one index per word.
  const delta = cachedWord - curWord;

  // Last index where a whole scan block still fits in the page.
  const blockEnd = end - (SCAN_BLOCK_WORDS - 1);

  // Find the first changed word. Blocks of 16 words compared with one && chain
  // cut the loop overhead per word (measured on Node 20, sparse 4 KiB pages:
  // 1.6x a plain word loop, 1.2x 4-word blocks); the word loop then locates
  // the difference inside the block. Written out here and below rather than
  // as a helper: V8 did not inline the helper, which cost ~8%.
  let i = curWord;
  while (i < blockEnd &&
    cur[i] === cached[i + delta] && cur[i + 1] === cached[i + 1 + delta] &&
    cur[i + 2] === cached[i + 2 + delta] && cur[i + 3] === cached[i + 3 + delta] &&
    cur[i + 4] === cached[i + 4 + delta] && cur[i + 5] === cached[i + 5 + delta] &&
    cur[i + 6] === cached[i + 6 + delta] && cur[i + 7] === cached[i + 7 + delta] &&
    cur[i + 8] === cached[i + 8 + delta] && cur[i + 9] === cached[i + 9 + delta] &&
    cur[i + 10] === cached[i + 10 + delta] && cur[i + 11] === cached[i + 11 + delta] &&
    cur[i + 12] === cached[i + 12 + delta] && cur[i + 13] === cached[i + 13 + delta] &&
    cur[i + 14] === cached[i + 14 + delta] && cur[i + 15] === cached[i + 15 + delta]) {
    i += SCAN_BLOCK_WORDS;
  }
  while (i < end && cur[i] === cached[i + delta]) i++;
  if (i === end) {
    out[outPos] = EMPTY_PAGE;
    return outPos + HEADER_BYTES;
  }

  const dv = viewForWrite(out);

  // Leading unchanged words.
  let pos = writeSkipRuns(out, outPos, i - curWord);
  for (;;) {
    // Here cur[i] is changed. Emit copy runs of at most 127 words, writing
    // each word as it is scanned so the run is read once; the header slot is
    // reserved first and filled when the length is known.
    for (;;) {
      const header = pos++;
      const runStart = i;
      const chunkEnd = end - i > MAX_RUN_WORDS ? i + MAX_RUN_WORDS : end;
      let w = cur[i];
      for (;;) {
        cached[i + delta] = w;
        dv.setUint32(pos, w, true);
        pos += BYTES_PER_WORD;
        i++;
        if (i === chunkEnd) break;
        w = cur[i];
        if (w === cached[i + delta]) break;
      }
      out[header] = i - runStart;
      // Another copy run only when this one stopped at 127 words with the next
      // word changed too (the seed's split: 127, 127, ..., rest).
      if (i !== chunkEnd || i === end || cur[i] === cached[i + delta]) break;
    }
    if (i === end) return pos;

    // cur[i] is unchanged: find the end of the skip run.
    const skipStart = i;
    i++;
    while (i < blockEnd &&
      cur[i] === cached[i + delta] && cur[i + 1] === cached[i + 1 + delta] &&
      cur[i + 2] === cached[i + 2 + delta] && cur[i + 3] === cached[i + 3 + delta] &&
      cur[i + 4] === cached[i + 4 + delta] && cur[i + 5] === cached[i + 5 + delta] &&
      cur[i + 6] === cached[i + 6 + delta] && cur[i + 7] === cached[i + 7 + delta] &&
      cur[i + 8] === cached[i + 8 + delta] && cur[i + 9] === cached[i + 9 + delta] &&
      cur[i + 10] === cached[i + 10 + delta] && cur[i + 11] === cached[i + 11 + delta] &&
      cur[i + 12] === cached[i + 12 + delta] && cur[i + 13] === cached[i + 13 + delta] &&
      cur[i + 14] === cached[i + 14 + delta] && cur[i + 15] === cached[i + 15 + delta]) {
      i += SCAN_BLOCK_WORDS;
    }
    while (i < end && cur[i] === cached[i + delta]) i++;
    // Trailing skip runs are emitted too: runs cover the page exactly.
    pos = writeSkipRuns(out, pos, i - skipStart);
    if (i === end) return pos;
  }
}

/**
 * Apply one encoded page record starting at input[pos] (EMPTY, FULL+page, or
 * runs) to page[pageOffset .. pageOffset+pageSize); returns the position
 * after the record. `end` is the exclusive end of readable input. Throws
 * CodecError 'REMUS_TRUNCATED' (input ends early), 'REMUS_ZERO_RUN' (a run of
 * length 0 inside a run sequence), 'REMUS_RUN_PAST_END' (a run goes past the
 * page end); the message names what and the offset. Never writes outside the
 * target page. Each run is checked whole before any of its bytes is written,
 * but runs before a bad one have been applied: callers that need all-or-
 * nothing decode into a staging page. Runs must cover the page exactly: a run
 * sequence simply ends when the page is covered.
 */
export function decodeRemusPage(
  input: Uint8Array,
  pos: number,
  end: number,
  page: Uint8Array,
  pageOffset: number,
  pageSize: number,
): number {
  // Argument checks (caller bugs, not bad data), once per page.
  if (pos < 0 || end > input.length) {
    throw new RangeError(`decodeRemusPage: input range [${pos}, ${end}) outside input of ${input.length} bytes`);
  }
  if (pageOffset < 0 || pageOffset + pageSize > page.length || pageSize < BYTES_PER_WORD || (pageSize & (BYTES_PER_WORD - 1)) !== 0) {
    throw new RangeError(`decodeRemusPage: page [${pageOffset}, ${pageOffset + pageSize}) invalid for target of ${page.length} bytes`);
  }

  if (pos >= end) throw truncated('record header', pos, 1, 0);
  const first = input[pos];
  if (first === EMPTY_PAGE) return pos + HEADER_BYTES;
  if (first === FULL_PAGE) {
    const start = pos + HEADER_BYTES;
    if (end - start < pageSize) throw truncated('FULL page', start, pageSize, end - start);
    copyBytes(input, start, page, pageOffset, pageSize);
    return start + pageSize;
  }

  const words = pageSize >>> WORD_SHIFT;
  let word = 0;
  while (word < words) {
    if (pos >= end) throw truncated(`run header at word ${word}`, pos, 1, 0);
    const header = input[pos];
    const len = header & RUN_LENGTH_MASK;
    if (len === 0) {
      throw new CodecError('REMUS_ZERO_RUN', `zero-length ${(header & SKIP_FLAG) !== 0 ? 'skip' : 'copy'} run at word ${word}`, pos);
    }
    if (word + len > words) {
      throw new CodecError('REMUS_RUN_PAST_END', `run of ${len} words at word ${word} passes the page end (${words} words)`, pos);
    }
    pos++;
    if ((header & SKIP_FLAG) === 0) {
      const bytes = len << WORD_SHIFT;
      if (end - pos < bytes) throw truncated(`copy run of ${len} words at word ${word}`, pos, bytes, end - pos);
      copyBytes(input, pos, page, pageOffset + (word << WORD_SHIFT), bytes);
      pos += bytes;
    }
    word += len;
  }
  return pos;
}

function truncated(what: string, offset: number, need: number, have: number): CodecError {
  return new CodecError(
    'REMUS_TRUNCATED',
    `input ends inside ${what}: needs ${need} byte${need === 1 ? '' : 's'}, ${have} left`,
    offset,
  );
}
