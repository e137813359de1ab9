import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  EMPTY_PAGE,
  FULL_PAGE,
  MAX_RUN_WORDS,
  RUN_LENGTH_MASK,
  SKIP_FLAG,
  decodeRemusPage,
  encodeRemusDelta,
  encodeRemusFull,
  isZeroPage,
  remusMaxEncodedBytes,
} from '../src/codec/remus.js';
import { CodecError } from '../src/errors.js';

const PAGE = 4096;
const WORDS = PAGE / 4;
const SENTINEL = 0xa5;

/** Deterministic page contents (xorshift32), never all zero. */
function fillRandom(words: Uint32Array, seed: number, from = 0, to = words.length): void {
  let x = (seed | 0) || 0x9e3779b9;
  for (let i = from; i < to; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
}

function randomPage(seed: number, words = WORDS): Uint32Array {
  const p = new Uint32Array(words);
  fillRandom(p, seed);
  return p;
}

function leBytes(w: number): number[] {
  return [w & 0xff, (w >>> 8) & 0xff, (w >>> 16) & 0xff, w >>> 24];
}

function bytesOf(words: Uint32Array, from = 0, to = words.length): number[] {
  const r: number[] = [];
  for (let i = from; i < to; i++) r.push(...leBytes(words[i]));
  return r;
}

function skipRun(n: number): number[] {
  const r: number[] = [];
  while (n > 127) {
    r.push(0xff);
    n -= 127;
  }
  if (n > 0) r.push(0x80 | n);
  return r;
}

/**
 * Independent reference for the seed's encoding: maximal runs of changed /
 * unchanged words, each split greedily into pieces of at most 127 words.
 */
function referenceEncode(oldW: Uint32Array, newW: Uint32Array): number[] {
  const n = oldW.length;
  let same = true;
  for (let i = 0; i < n; i++) if (oldW[i] !== newW[i]) same = false;
  if (same) return [0x00];
  const out: number[] = [];
  let i = 0;
  while (i < n) {
    const changed = oldW[i] !== newW[i];
    let j = i;
    while (j < n && (oldW[j] !== newW[j]) === changed) j++;
    for (let s = i; s < j; s += 127) {
      const len = Math.min(127, j - s);
      out.push((changed ? 0x00 : 0x80) | len);
      if (changed) out.push(...bytesOf(newW, s, s + len));
    }
    i = j;
  }
  return out;
}

/** Encode at offset 0 into a fresh buffer; returns the record bytes. Mutates `cached`. */
function encode(cur: Uint32Array, cached: Uint32Array): number[] {
  const out = new Uint8Array(remusMaxEncodedBytes(cur.length * 4));
  const end = encodeRemusDelta(cur, 0, cached, 0, cur.length, out, 0);
  return Array.from(out.subarray(0, end));
}

function pageBytes(words: Uint32Array): Uint8Array {
  return new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
}

function expectCodecError(fn: () => unknown, code: string, offset?: number): CodecError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(CodecError);
  const err = caught as CodecError;
  expect(err.code).toBe(code);
  if (offset !== undefined) {
    expect(err.offset).toBe(offset);
    expect(err.message).toContain(`at byte ${offset}`);
  }
  return err;
}

/**
 * A target page surrounded by sentinel bytes. The array itself may start at
 * an odd byte offset of its buffer, which may be shared memory (the slabs are).
 */
function guardedPage(pageSize: number, guard = 64, viewOffset = 0, shared = false): { buf: Uint8Array; offset: number } {
  const length = guard + pageSize + guard;
  const backing = shared ? new SharedArrayBuffer(viewOffset + length) : new ArrayBuffer(viewOffset + length);
  const buf = new Uint8Array(backing, viewOffset, length).fill(SENTINEL);
  return { buf, offset: guard };
}

function expectGuardsIntact(buf: Uint8Array, offset: number, pageSize: number): void {
  for (let i = 0; i < offset; i++) if (buf[i] !== SENTINEL) expect.fail(`byte ${i} before the page was written`);
  for (let i = offset + pageSize; i < buf.length; i++) {
    if (buf[i] !== SENTINEL) expect.fail(`byte ${i} after the page was written`);
  }
}

describe('constants', () => {
  it('match the seed', () => {
    expect([EMPTY_PAGE, FULL_PAGE, SKIP_FLAG, RUN_LENGTH_MASK, MAX_RUN_WORDS]).toEqual([0x00, 0x80, 0x80, 0x7f, 127]);
  });

  it('worst-case size', () => {
    expect(remusMaxEncodedBytes(4096)).toBe(4105);
    expect(remusMaxEncodedBytes(512)).toBe(514); // 128 words: 127 + 1, two headers
    expect(remusMaxEncodedBytes(65536)).toBe(65536 + Math.ceil(16384 / 127));
  });
});

describe('encodeRemusDelta: hand-built vectors (4096)', () => {
  it('unchanged page is one EMPTY byte and leaves the cache alone', () => {
    const cur = randomPage(1);
    const cached = cur.slice();
    const out = new Uint8Array(5000).fill(0xee);
    expect(encodeRemusDelta(cur, 0, cached, 0, WORDS, out, 3)).toBe(4);
    expect(out[3]).toBe(0x00);
    expect(out[2]).toBe(0xee);
    expect(out[4]).toBe(0xee);
    expect(cached).toEqual(cur);
  });

  it('one changed word at the start', () => {
    const cached = randomPage(2);
    const cur = cached.slice();
    cur[0] = 0x11223344;
    const rec = encode(cur, cached);
    expect(rec).toEqual([0x01, 0x44, 0x33, 0x22, 0x11, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x87]);
    expect(cached).toEqual(cur);
  });

  it('one changed word at the end', () => {
    const cached = randomPage(3);
    const cur = cached.slice();
    cur[WORDS - 1] = 0xdeadbeef;
    const rec = encode(cur, cached);
    expect(rec).toEqual([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x87, 0x01, 0xef, 0xbe, 0xad, 0xde]);
    expect(cached).toEqual(cur);
  });

  it('a word changed to zero, and a zero word changed, both count', () => {
    const cached = new Uint32Array(WORDS);
    cached[5] = 7;
    const cur = new Uint32Array(WORDS);
    cur[6] = 0x01000000;
    const rec = encode(cur, cached);
    expect(rec).toEqual([0x85, 0x02, 0, 0, 0, 0, 0, 0, 0, 1, ...skipRun(WORDS - 7)]);
    expect(cached).toEqual(cur);
  });

  it('a changed run of exactly 127 words is one copy run', () => {
    const cached = randomPage(4);
    const cur = cached.slice();
    for (let i = 10; i < 137; i++) cur[i] = ~cur[i] >>> 0;
    const rec = encode(cur, cached);
    expect(rec[0]).toBe(0x8a); // skip 10
    expect(rec[1]).toBe(0x7f); // copy 127
    expect(rec.slice(2, 2 + 508)).toEqual(bytesOf(cur, 10, 137));
    // 1024 - 137 = 887 = 6 x 127 + 125
    expect(rec.slice(510)).toEqual([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfd]);
    expect(rec.length).toBe(517);
    expect(cached).toEqual(cur);
  });

  it('a changed run of 128 words is split 127 + 1', () => {
    const cached = randomPage(5);
    const cur = cached.slice();
    for (let i = 0; i < 128; i++) cur[i] = (cur[i] + 1) >>> 0;
    const rec = encode(cur, cached);
    expect(rec[0]).toBe(0x7f);
    expect(rec.slice(1, 509)).toEqual(bytesOf(cur, 0, 127));
    expect(rec[509]).toBe(0x01);
    expect(rec.slice(510, 514)).toEqual(bytesOf(cur, 127, 128));
    // 1024 - 128 = 896 = 7 x 127 + 7
    expect(rec.slice(514)).toEqual([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x87]);
    expect(rec.length).toBe(522);
  });

  it('a run of 254 changed words ends exactly on a split (no empty copy run)', () => {
    const cached = randomPage(6);
    const cur = cached.slice();
    for (let i = 0; i < 254; i++) cur[i] = (cur[i] ^ 0x80000000) >>> 0;
    const rec = encode(cur, cached);
    expect(rec[0]).toBe(0x7f);
    expect(rec[509]).toBe(0x7f);
    expect(rec.slice(1018)).toEqual(skipRun(WORDS - 254));
    expect(rec).toEqual(referenceEncode(randomPage(6), cur));
  });

  it('a fully changed page is 4105 bytes: 8 copy runs of 127 and one of 8', () => {
    const cached = randomPage(7);
    const cur = randomPage(8);
    const rec = encode(cur, cached);
    expect(rec.length).toBe(4105);
    for (let r = 0; r < 8; r++) {
      const at = r * (1 + 127 * 4);
      expect(rec[at]).toBe(0x7f);
      expect(rec.slice(at + 1, at + 1 + 508)).toEqual(bytesOf(cur, r * 127, (r + 1) * 127));
    }
    expect(rec[8 * 509]).toBe(0x08);
    expect(rec.slice(8 * 509 + 1)).toEqual(bytesOf(cur, 1016, 1024));
    expect(cached).toEqual(cur);
  });

  it('alternating changed / unchanged words', () => {
    const old = randomPage(9);
    const cur = old.slice();
    for (let i = 0; i < WORDS; i += 2) cur[i] = (cur[i] + 3) >>> 0;
    const rec = encode(cur, old.slice());
    expect(rec.length).toBe(512 * 5 + 512);
    expect(rec.slice(0, 7)).toEqual([0x01, ...leBytes(cur[0]), 0x81, 0x01]);
    expect(rec).toEqual(referenceEncode(old, cur));
  });

  it('works at word offsets and an unaligned output position, touching nothing else', () => {
    const old = randomPage(10);
    const next = old.slice();
    next[0] = 1;
    next[500] = 2;
    next[1023] = 3;
    const cur = new Uint32Array(WORDS + 7).fill(0x77777777);
    cur.set(next, 3);
    const cached = new Uint32Array(WORDS + 9).fill(0x66666666);
    cached.set(old, 5);
    const out = new Uint8Array(5000).fill(0xee);
    const end = encodeRemusDelta(cur, 3, cached, 5, WORDS, out, 13);
    const expected = referenceEncode(old, next);
    expect(Array.from(out.subarray(13, end))).toEqual(expected);
    expect(out.subarray(0, 13).every((b) => b === 0xee)).toBe(true);
    expect(out.subarray(end).every((b) => b === 0xee)).toBe(true);
    expect(cached.subarray(5, 5 + WORDS)).toEqual(next);
    expect(Array.from(cached.subarray(0, 5))).toEqual(new Array(5).fill(0x66666666));
    expect(Array.from(cached.subarray(5 + WORDS))).toEqual(new Array(4).fill(0x66666666));
  });

  it('refuses an output without worst-case room, or a page outside its arrays', () => {
    const page = randomPage(11);
    expect(() => encodeRemusDelta(page, 0, page.slice(), 0, WORDS, new Uint8Array(4104), 0)).toThrow(RangeError);
    expect(() => encodeRemusDelta(page, 0, page.slice(), 0, WORDS, new Uint8Array(4105), 1)).toThrow(RangeError);
    expect(() => encodeRemusDelta(page, 1, page.slice(), 0, WORDS, new Uint8Array(4105), 0)).toThrow(RangeError);
    expect(() => encodeRemusDelta(page, 0, page.slice(), 1, WORDS, new Uint8Array(4105), 0)).toThrow(RangeError);
  });
});

describe('output and input arrays at any alignment', () => {
  it('encodes into unaligned views, switching between output arrays, and decodes from them', () => {
    const old = randomPage(20);
    const next = old.slice();
    for (let i = 300; i < 450; i++) next[i] = (next[i] * 3 + 1) >>> 0;
    next[1000] = 0;
    const expected = referenceEncode(old, next);
    const outs = [
      new Uint8Array(new ArrayBuffer(5000), 1, 4200),
      new Uint8Array(new SharedArrayBuffer(5000), 2, 4300),
      new Uint8Array(new ArrayBuffer(5000), 3, 4400),
    ];
    for (const out of outs) out.fill(0xee);
    // Alternate so that any state kept between calls must follow the array.
    for (let round = 0; round < 2; round++) {
      for (let k = 0; k < outs.length; k++) {
        const out = outs[k];
        const cached = old.slice();
        const at = k + round;
        const end = encodeRemusDelta(next, 0, cached, 0, WORDS, out, at);
        expect(Array.from(out.subarray(at, end))).toEqual(expected);
        expect(cached).toEqual(next);
        const { buf, offset } = guardedPage(PAGE, 8, k, k === 1);
        buf.set(pageBytes(old), offset);
        expect(decodeRemusPage(out, at, end, buf, offset, PAGE)).toBe(end);
        expect(buf.subarray(offset, offset + PAGE)).toEqual(pageBytes(next));
        expectGuardsIntact(buf, offset, PAGE);
      }
    }
    // Nothing before the views (in their buffers) was touched.
    expect(new Uint8Array(outs[0].buffer, 0, 1)[0]).toBe(0);
    expect(new Uint8Array(outs[2].buffer, 0, 3).every((b) => b === 0)).toBe(true);
  });

  it('FULL pages copy between unaligned views, both ways', () => {
    const page = pageBytes(randomPage(21));
    const src = new Uint8Array(new ArrayBuffer(PAGE + 8), 3, PAGE + 5);
    src.set(page, 1);
    const out = new Uint8Array(new SharedArrayBuffer(PAGE + 16), 1, PAGE + 10).fill(0xee);
    expect(encodeRemusFull(src, 1, PAGE, out, 2)).toBe(2 + 4097);
    expect(out[2]).toBe(FULL_PAGE);
    expect(out.subarray(3, 3 + PAGE)).toEqual(page);
    expect(out[1]).toBe(0xee);
    expect(out[3 + PAGE]).toBe(0xee);
    const { buf, offset } = guardedPage(PAGE, 5, 1);
    expect(decodeRemusPage(out, 2, out.length, buf, offset, PAGE)).toBe(2 + 4097);
    expect(buf.subarray(offset, offset + PAGE)).toEqual(page);
    expectGuardsIntact(buf, offset, PAGE);
  });
});

describe('encodeRemusFull', () => {
  it('writes 0x80 then the page, 4097 bytes', () => {
    const page = pageBytes(randomPage(12));
    const src = new Uint8Array(PAGE + 10);
    src.set(page, 5);
    const out = new Uint8Array(PAGE + 20).fill(0xee);
    expect(encodeRemusFull(src, 5, PAGE, out, 7)).toBe(7 + 4097);
    expect(out[7]).toBe(0x80);
    expect(out.subarray(8, 8 + PAGE)).toEqual(page);
    expect(out[6]).toBe(0xee);
    expect(out[8 + PAGE]).toBe(0xee);
  });

  it('decodes back to the page', () => {
    const page = pageBytes(randomPage(13));
    const out = new Uint8Array(remusMaxEncodedBytes(PAGE));
    const end = encodeRemusFull(page, 0, PAGE, out, 0);
    const { buf, offset } = guardedPage(PAGE);
    expect(decodeRemusPage(out, 0, end, buf, offset, PAGE)).toBe(4097);
    expect(buf.subarray(offset, offset + PAGE)).toEqual(page);
    expectGuardsIntact(buf, offset, PAGE);
  });

  it('copies the same bytes when source and output view one buffer (the native copyWithin path)', () => {
    fc.assert(
      fc.property(fc.nat({ max: 64 }), fc.nat({ max: 64 }), fc.nat({ max: 64 }), fc.integer({ min: 1, max: 2 ** 31 }), (srcView, outView, gap, seed) => {
        // One shared buffer: [srcView pad | page | gap | output region], viewed through two arrays with different byteOffsets.
        const page = pageBytes(randomPage(seed));
        const buffer = new SharedArrayBuffer(srcView + PAGE + gap + outView + PAGE + 1 + 16);
        const src = new Uint8Array(buffer, srcView);
        src.set(page, 0);
        const out = new Uint8Array(buffer, srcView + PAGE + gap);
        const end = encodeRemusFull(src, 0, PAGE, out, outView);
        expect(end).toBe(outView + 1 + PAGE);
        expect(out[outView]).toBe(0x80);
        expect(Buffer.from(out.subarray(outView + 1, end)).equals(Buffer.from(page))).toBe(true);
        expect(Buffer.from(src.subarray(0, PAGE)).equals(Buffer.from(page))).toBe(true);
      }),
      { numRuns: 50 },
    );
  });

  it('refuses ranges outside its arrays', () => {
    expect(() => encodeRemusFull(new Uint8Array(PAGE), 1, PAGE, new Uint8Array(5000), 0)).toThrow(RangeError);
    expect(() => encodeRemusFull(new Uint8Array(PAGE), 0, PAGE, new Uint8Array(4097), 1)).toThrow(RangeError);
  });
});

describe('isZeroPage', () => {
  it('detects zero pages and any single non-zero word', () => {
    const p = new Uint32Array(WORDS);
    expect(isZeroPage(p, 0, WORDS)).toBe(true);
    for (const at of [0, 1, 2, 3, 4, 511, 1020, 1021, 1022, 1023]) {
      p[at] = 0x100;
      expect(isZeroPage(p, 0, WORDS)).toBe(false);
      p[at] = 0;
    }
    expect(isZeroPage(p, 0, WORDS)).toBe(true);
  });

  it('looks only at its window, including windows not a multiple of four words', () => {
    const p = new Uint32Array(20).fill(1);
    p.fill(0, 3, 10); // words 3..9 zero
    expect(isZeroPage(p, 3, 7)).toBe(true);
    expect(isZeroPage(p, 3, 8)).toBe(false);
    expect(isZeroPage(p, 2, 7)).toBe(false);
    expect(isZeroPage(p, 4, 5)).toBe(true);
    expect(isZeroPage(p, 3, 0)).toBe(true);
  });

  it('agrees with a naive check (property)', () => {
    fc.assert(
      fc.property(fc.uint32Array({ maxLength: 64 }), fc.nat(64), fc.nat(64), (arr, a, b) => {
        const off = Math.min(a, arr.length);
        const n = Math.min(b, arr.length - off);
        const naive = Array.from(arr.subarray(off, off + n)).every((w) => w === 0);
        return isZeroPage(arr, off, n) === naive;
      }),
    );
  });
});

describe('decodeRemusPage', () => {
  it('applies EMPTY, runs, and returns the position after the record', () => {
    const old = randomPage(14);
    const cur = old.slice();
    cur[0] = 0x11223344;
    cur[700] = 0;
    const rec = referenceEncode(old, cur);
    const input = Uint8Array.from([0x00, ...rec, 0x42]);
    const { buf, offset } = guardedPage(PAGE);
    buf.set(pageBytes(old), offset);
    expect(decodeRemusPage(input, 0, input.length, buf, offset, PAGE)).toBe(1);
    expect(buf.subarray(offset, offset + PAGE)).toEqual(pageBytes(old));
    expect(decodeRemusPage(input, 1, input.length, buf, offset, PAGE)).toBe(1 + rec.length);
    expect(buf.subarray(offset, offset + PAGE)).toEqual(pageBytes(cur));
    expectGuardsIntact(buf, offset, PAGE);
  });

  it('rejects input that ends in the record header', () => {
    const { buf, offset } = guardedPage(PAGE);
    expectCodecError(() => decodeRemusPage(new Uint8Array(4), 4, 4, buf, offset, PAGE), 'REMUS_TRUNCATED', 4);
    // `end` before the array's end is honoured
    expectCodecError(() => decodeRemusPage(new Uint8Array([0x00]), 0, 0, buf, offset, PAGE), 'REMUS_TRUNCATED', 0);
  });

  it('rejects input that ends between run headers', () => {
    const { buf, offset } = guardedPage(PAGE);
    const input = Uint8Array.from([...skipRun(1000), 0x00]);
    const err = expectCodecError(
      () => decodeRemusPage(input, 0, input.length - 1, buf, offset, PAGE),
      'REMUS_TRUNCATED',
      input.length - 1,
    );
    expect(err.message).toContain('run header');
    expectGuardsIntact(buf, offset, PAGE);
  });

  it('rejects input that ends inside copy bytes, writing none of that run', () => {
    const { buf, offset } = guardedPage(PAGE);
    const input = Uint8Array.from([0x82, 0x02, 1, 2, 3, 4, 5, 6, 7]);
    const err = expectCodecError(() => decodeRemusPage(input, 0, input.length, buf, offset, PAGE), 'REMUS_TRUNCATED', 2);
    expect(err.message).toContain('copy run');
    expect(buf.every((b) => b === SENTINEL)).toBe(true);
  });

  it('rejects a truncated FULL page', () => {
    const { buf, offset } = guardedPage(PAGE);
    const input = new Uint8Array(PAGE + 1).fill(9);
    input[0] = FULL_PAGE;
    const err = expectCodecError(() => decodeRemusPage(input, 0, PAGE, buf, offset, PAGE), 'REMUS_TRUNCATED', 1);
    expect(err.message).toContain('FULL');
    expect(decodeRemusPage(input, 0, PAGE + 1, buf, offset, PAGE)).toBe(PAGE + 1);
    expectGuardsIntact(buf, offset, PAGE);
  });

  it('rejects zero-length runs after the first run', () => {
    const { buf, offset } = guardedPage(PAGE);
    for (const bad of [0x00, 0x80]) {
      const input = Uint8Array.from([0x81, bad, ...skipRun(WORDS)]);
      expectCodecError(() => decodeRemusPage(input, 0, input.length, buf, offset, PAGE), 'REMUS_ZERO_RUN', 1);
    }
    const input = Uint8Array.from([0x01, 1, 2, 3, 4, 0x00]);
    expectCodecError(() => decodeRemusPage(input, 0, input.length, buf, offset, PAGE), 'REMUS_ZERO_RUN', 5);
    expectGuardsIntact(buf, offset, PAGE);
  });

  it('rejects skip and copy runs past the page end, writing nothing past it', () => {
    const { buf, offset } = guardedPage(PAGE);
    const skipPast = Uint8Array.from([...skipRun(1016), 0x89]); // 1016 + 9 > 1024
    expectCodecError(() => decodeRemusPage(skipPast, 0, skipPast.length, buf, offset, PAGE), 'REMUS_RUN_PAST_END', 8);
    const copyPast = Uint8Array.from([...skipRun(1020), 0x05, ...new Array(20).fill(0x11)]); // 1020 + 5 > 1024
    const err = expectCodecError(
      () => decodeRemusPage(copyPast, 0, copyPast.length, buf, offset, PAGE),
      'REMUS_RUN_PAST_END',
      9,
    );
    expect(err.message).toContain('page end');
    expectGuardsIntact(buf, offset, PAGE);
    expect(buf.subarray(offset, offset + PAGE).every((b) => b === SENTINEL)).toBe(true);
  });

  it('stops when the page is covered, leaving following bytes unread', () => {
    const { buf, offset } = guardedPage(512);
    const input = Uint8Array.from([0x7f, ...new Array(508).fill(1), 0x01, 2, 2, 2, 2, 0x00, 0x00]);
    expect(decodeRemusPage(input, 0, input.length, buf, offset, 512)).toBe(input.length - 2);
    expect(buf.subarray(offset, offset + 508).every((b) => b === 1)).toBe(true);
    expect(buf.subarray(offset + 508, offset + 512).every((b) => b === 2)).toBe(true);
    expectGuardsIntact(buf, offset, 512);
  });
});

const PAGE_SIZES = [512, 1024, 2048, 4096, 8192, 16384] as const;

const scenario = fc.record({
  pageSize: fc.constantFrom(...PAGE_SIZES),
  seed: fc.integer(),
  /** Fraction of words changed independently (0 = only the clusters below). */
  density: fc.constantFrom(0, 0, 0.005, 0.014, 0.1, 0.5, 0.95, 1),
  clusters: fc.array(
    fc.record({ at: fc.nat(), len: fc.integer({ min: 1, max: 400 }), toZero: fc.boolean() }),
    { maxLength: 6 },
  ),
  curPad: fc.nat(4),
  cachedPad: fc.nat(4),
  outPos: fc.nat(7),
  /** Byte offset of the output / target arrays inside their buffers. */
  viewOffset: fc.nat(3),
  shared: fc.boolean(),
});

type Scenario = typeof scenario extends fc.Arbitrary<infer T> ? T : never;

function buildPages(s: Scenario): { old: Uint32Array; next: Uint32Array } {
  const words = s.pageSize / 4;
  const old = randomPage(s.seed, words);
  const next = old.slice();
  const noise = randomPage(s.seed ^ 0x5a5a5a5a, words);
  const threshold = s.density * 0x100000000;
  for (let i = 0; i < words; i++) {
    if (noise[i] < threshold) next[i] = (next[i] ^ (noise[i] | 1)) >>> 0;
  }
  for (const c of s.clusters) {
    const from = c.at % words;
    const to = Math.min(words, from + c.len);
    for (let i = from; i < to; i++) next[i] = c.toZero ? 0 : (next[i] + 0x01010101) >>> 0;
  }
  return { old, next };
}

describe('properties', () => {
  it('encode matches the reference, decodes back, and leaves cached == new', () => {
    fc.assert(
      fc.property(scenario, (s) => {
        const { old, next } = buildPages(s);
        const words = s.pageSize / 4;
        const cur = new Uint32Array(words + 2 * s.curPad).fill(0x12345678);
        cur.set(next, s.curPad);
        const curBefore = cur.slice();
        const cached = new Uint32Array(words + 2 * s.cachedPad).fill(0x87654321);
        cached.set(old, s.cachedPad);
        const max = remusMaxEncodedBytes(s.pageSize);
        const outLength = s.outPos + max + 8;
        const outBacking = s.shared
          ? new SharedArrayBuffer(s.viewOffset + outLength)
          : new ArrayBuffer(s.viewOffset + outLength);
        const out = new Uint8Array(outBacking, s.viewOffset, outLength).fill(0xee);

        const end = encodeRemusDelta(cur, s.curPad, cached, s.cachedPad, words, out, s.outPos);

        expect(end - s.outPos).toBeLessThanOrEqual(max);
        expect(Array.from(out.subarray(s.outPos, end))).toEqual(referenceEncode(old, next));
        expect(out.subarray(0, s.outPos).every((b) => b === 0xee)).toBe(true);
        expect(out.subarray(end).every((b) => b === 0xee)).toBe(true);
        expect(cached.subarray(s.cachedPad, s.cachedPad + words)).toEqual(next);
        expect(cached.subarray(0, s.cachedPad).every((w) => w === 0x87654321)).toBe(true);
        expect(cached.subarray(s.cachedPad + words).every((w) => w === 0x87654321)).toBe(true);
        expect(cur).toEqual(curBefore);

        // The receiver holds `old`; trailing garbage after the record must not be read.
        const { buf, offset } = guardedPage(s.pageSize, 16, 3 - s.viewOffset, s.shared);
        buf.set(pageBytes(old), offset);
        out[end] = 0x00;
        expect(decodeRemusPage(out, s.outPos, out.length, buf, offset, s.pageSize)).toBe(end);
        expect(buf.subarray(offset, offset + s.pageSize)).toEqual(pageBytes(next));
        expectGuardsIntact(buf, offset, s.pageSize);

        // Encoding again against the updated cache is EMPTY.
        expect(encodeRemusDelta(cur, s.curPad, cached, s.cachedPad, words, out, 0)).toBe(1);
        expect(out[0]).toBe(EMPTY_PAGE);
      }),
      { numRuns: 300 },
    );
  });

  it('every truncation of a valid record is rejected as REMUS_TRUNCATED', () => {
    fc.assert(
      fc.property(scenario, fc.nat(), (s, cutSeed) => {
        const { old, next } = buildPages(s);
        const rec = Uint8Array.from(referenceEncode(old, next));
        const cut = cutSeed % rec.length; // 0 .. length-1 bytes kept
        const { buf, offset } = guardedPage(s.pageSize, 16);
        expectCodecError(() => decodeRemusPage(rec, 0, cut, buf, offset, s.pageSize), 'REMUS_TRUNCATED');
        expectGuardsIntact(buf, offset, s.pageSize);
      }),
      { numRuns: 200 },
    );
  });

  /** Byte strings shaped like run sequences (lengths often 0 or overlong), or plain noise. */
  const hostileInput = fc.oneof(
    fc.uint8Array({ maxLength: 1200 }),
    fc
      .array(
        fc.record({
          skip: fc.boolean(),
          len: fc.oneof(fc.constantFrom(0, 1, 127), fc.integer({ min: 0, max: 127 })),
          data: fc.uint8Array({ maxLength: 40 }),
        }),
        { maxLength: 12 },
      )
      .map((runs) => {
        const bytes: number[] = [];
        for (const r of runs) {
          bytes.push((r.skip ? 0x80 : 0) | r.len);
          if (!r.skip) bytes.push(...r.data);
        }
        return Uint8Array.from(bytes);
      }),
  );

  it('decoding hostile bytes throws CodecError or stays within end, never writing outside the page', () => {
    fc.assert(
      fc.property(hostileInput, fc.constantFrom(512, 1024, 4096), fc.nat(), (input, pageSize, endSeed) => {
        const end = input.length === 0 ? 0 : endSeed % (input.length + 1);
        const { buf, offset } = guardedPage(pageSize, 32);
        try {
          const pos = decodeRemusPage(input, 0, end, buf, offset, pageSize);
          expect(pos).toBeGreaterThan(0);
          expect(pos).toBeLessThanOrEqual(end);
        } catch (e) {
          if (!(e instanceof CodecError)) throw e;
          expect(['REMUS_TRUNCATED', 'REMUS_ZERO_RUN', 'REMUS_RUN_PAST_END']).toContain(e.code);
          expect(e.offset).toBeGreaterThanOrEqual(0);
          expect(e.offset).toBeLessThanOrEqual(end);
        }
        expectGuardsIntact(buf, offset, pageSize);
      }),
      { numRuns: 500 },
    );
  });
});
