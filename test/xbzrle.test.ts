import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  XBZRLE_DELTA,
  XBZRLE_FULL,
  XBZRLE_UNCHANGED,
  decodeXbzrleBody,
  encodeXbzrleBody,
  xbzrleDecode,
  xbzrleDeltaLimit,
  xbzrleEncode,
  xbzrleMaxEncodedBytes,
} from '../src/codec/xbzrle.js';
import { CodecError, FrameError } from '../src/errors.js';
import { maxRecordBytes } from '../src/frames.js';
import { countRecords } from '../src/inspect.js';
import { MemoryImage, Receiver } from '../src/receiver.js';
import { CODEC_XBZRLE, FLAG_LAST, FLAG_RESYNC, RECORD_XBZRLE, RECORD_ZERO } from '../src/wire.js';
import { buildFrame, concat, epochDigest, epochFrames, recordBytes, type RecordSpec } from './receiver-frames.js';

/**
 * QEMU's XBZRLE (migration/xbzrle.c): hand-built vectors in its format, its
 * overflow rule, every decoder refusal, round trips against a plain
 * byte-by-byte port of xbzrle_encode_buffer, and codec-2 frames at the
 * receiver.
 */
const PAGE = 4096;
const SENTINEL = 0xa5;
const GUARD = 16;

/** Deterministic bytes (xorshift32). */
function randomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = (seed | 0) || 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

function encode(old: Uint8Array, cur: Uint8Array, limit = old.length): number[] | -1 {
  const out = new Uint8Array(limit + 8).fill(SENTINEL);
  const end = xbzrleEncode(cur, 0, old, 0, old.length, out, 4, limit);
  for (let i = 4 + limit; i < out.length; i++) expect(out[i], 'nothing written past the limit').toBe(SENTINEL);
  for (let i = 0; i < 4; i++) expect(out[i]).toBe(SENTINEL);
  return end < 0 ? -1 : Array.from(out.subarray(4, end));
}

/** A plain port of QEMU's xbzrle_encode_buffer (byte loops, 14-bit ULEB128 extended to plain ULEB128). */
function referenceEncode(old: Uint8Array, cur: Uint8Array, dlen: number): number[] | -1 {
  const slen = old.length;
  const dst: number[] = [];
  const uleb = (n: number): void => {
    while (n >= 0x80) {
      dst.push((n & 0x7f) | 0x80);
      n >>>= 7;
    }
    dst.push(n);
  };
  const ulebLen = (n: number): number => (n < 0x80 ? 1 : n < 0x4000 ? 2 : 3);
  let i = 0;
  while (i < slen) {
    if (dst.length + 2 > dlen) return -1;
    let zrun = 0;
    while (i < slen && old[i] === cur[i]) {
      zrun++;
      i++;
    }
    if (zrun === slen) return [];
    if (i === slen) return dst;
    if (dst.length + ulebLen(zrun) > dlen) return -1;
    uleb(zrun);
    if (dst.length + 2 > dlen) return -1;
    const start = i;
    while (i < slen && old[i] !== cur[i]) i++;
    if (dst.length + ulebLen(i - start) > dlen) return -1;
    uleb(i - start);
    if (dst.length + (i - start) > dlen) return -1;
    for (let k = start; k < i; k++) dst.push(cur[k]);
  }
  return dst;
}

/** Decode `input` onto a copy of `old` inside sentinels; returns the page. */
function decodeOnto(old: Uint8Array, input: number[] | Uint8Array): Uint8Array {
  const buf = new Uint8Array(old.length + 2 * GUARD).fill(SENTINEL);
  buf.set(old, GUARD);
  const bytes = Uint8Array.from(input);
  expect(xbzrleDecode(bytes, 0, bytes.length, buf, GUARD, old.length)).toBe(bytes.length);
  return buf.slice(GUARD, GUARD + old.length);
}

describe('xbzrleEncode: hand-built vectors in QEMU format (4096-byte page, limit = page size)', () => {
  const old = randomBytes(PAGE, 7);

  it('an unchanged page encodes to nothing', () => {
    expect(encode(old, old.slice())).toEqual([]);
  });

  it('one changed byte at offset 0: empty zero run, non-zero run of 1, the new byte, no trailing zero run', () => {
    const cur = old.slice();
    cur[0] = old[0] ^ 0xff;
    expect(encode(old, cur)).toEqual([0x00, 0x01, cur[0]]);
    expect(decodeOnto(old, [0x00, 0x01, cur[0]])).toEqual(cur);
  });

  it('a change at the end: a 4095-byte zero run in two ULEB128 bytes', () => {
    const cur = old.slice();
    cur[PAGE - 1] = old[PAGE - 1] ^ 0x01;
    expect(encode(old, cur)).toEqual([0xff, 0x1f, 0x01, cur[PAGE - 1]]);
    expect(decodeOnto(old, [0xff, 0x1f, 0x01, cur[PAGE - 1]])).toEqual(cur);
  });

  it('two changes with a zero run between', () => {
    const cur = old.slice();
    cur[10] = old[10] ^ 1;
    cur[11] = old[11] ^ 2;
    cur[20] = old[20] ^ 4;
    const expected = [10, 2, cur[10], cur[11], 8, 1, cur[20]];
    expect(encode(old, cur)).toEqual(expected);
    expect(decodeOnto(old, expected)).toEqual(cur);
  });

  it('runs of 128 bytes and more take a two-byte ULEB128', () => {
    const cur = old.slice();
    cur[200] = old[200] ^ 0x10; // zero run of 200 = 0xc8 0x01
    for (let k = 300; k < 430; k++) cur[k] = old[k] ^ 0x80; // non-zero run of 130 = 0x82 0x01
    const expected = [0xc8, 0x01, 0x01, cur[200], 99, 0x82, 0x01, ...cur.subarray(300, 430)];
    expect(encode(old, cur)).toEqual(expected);
    expect(decodeOnto(old, expected)).toEqual(cur);
  });

  it('the new bytes are sent, not the XOR', () => {
    const before = new Uint8Array(PAGE);
    before[5] = 0x40;
    const after = new Uint8Array(PAGE);
    after[5] = 0x42;
    expect(encode(before, after)).toEqual([5, 1, 0x42]);
  });

  it('overflow: a fully changed page returns -1 (QEMU: the page goes whole)', () => {
    const cur = old.map((b) => b ^ 0xff);
    expect(encode(old, cur)).toBe(-1);
    expect(referenceEncode(old, cur, PAGE)).toBe(-1);
  });

  it("follows QEMU's room rule: 2 bytes must be free before each run, even a trailing zero run that is never written", () => {
    const cur = old.slice();
    cur[0] ^= 0xff; // encoding [0, 1, x]: 3 bytes, but QEMU needs d + 2 <= dlen at the top of the next loop
    expect(encode(old, cur, 4)).toBe(-1);
    expect(encode(old, cur, 5)).toEqual([0, 1, cur[0]]);
    const last = old.slice();
    last[PAGE - 1] ^= 1; // encoding of 4 bytes ends the page: fits a limit of exactly 4
    expect(encode(old, last, 4)).toEqual([0xff, 0x1f, 1, last[PAGE - 1]]);
    expect(encode(old, last, 3)).toBe(-1);
  });
});

describe('xbzrleDecode refusals (page surrounded by sentinels, nothing written outside it)', () => {
  const cases: [string, number[], string][] = [
    ['input ends inside a zero-run length', [0x80], 'XBZRLE_TRUNCATED'],
    ['input ends after a zero run (no trailing zero run in the format)', [5], 'XBZRLE_TRUNCATED'],
    ['input ends inside a non-zero-run length', [5, 0x81], 'XBZRLE_TRUNCATED'],
    ['input ends inside a non-zero run', [5, 3, 1, 2], 'XBZRLE_TRUNCATED'],
    ['a non-zero run past the page end', [0xa0, 0x1f, 100, ...new Array<number>(100).fill(1)], 'XBZRLE_RUN_PAST_END'],
    ['a zero run of the whole page then a non-zero run', [0x80, 0x20, 1, 9], 'XBZRLE_RUN_PAST_END'],
    ['a second zero run past the end', [0, 1, 9, 0xff, 0x1f, 1, 9], 'XBZRLE_RUN_PAST_END'],
    ['a zero-run length over the page size', [0x81, 0x20, 1, 9], 'XBZRLE_BAD_LENGTH'],
    ['a non-zero-run length over the page size', [0, 0x81, 0x20], 'XBZRLE_BAD_LENGTH'],
    ['a ULEB128 longer than a 4096-byte page needs', [0x80, 0x80, 0x00, 1, 9], 'XBZRLE_BAD_LENGTH'],
    ['a non-zero run of length 0', [5, 0], 'XBZRLE_BAD_LENGTH'],
    ['an empty zero run after the first', [0, 1, 9, 0, 1, 9], 'XBZRLE_BAD_LENGTH'],
  ];
  for (const [name, input, code] of cases) {
    it(`${code}: ${name}`, () => {
      const buf = new Uint8Array(PAGE + 2 * GUARD).fill(SENTINEL);
      const bytes = Uint8Array.from(input);
      let caught: unknown;
      try {
        xbzrleDecode(bytes, 0, bytes.length, buf, GUARD, PAGE);
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(CodecError);
      expect((caught as CodecError).code).toBe(code);
      for (let i = 0; i < GUARD; i++) {
        expect(buf[i]).toBe(SENTINEL);
        expect(buf[GUARD + PAGE + i]).toBe(SENTINEL);
      }
    });
  }

  it('accepts the first zero run empty, and an empty encoding (page unchanged)', () => {
    const old = randomBytes(PAGE, 3);
    expect(decodeOnto(old, [])).toEqual(old);
    const cur = old.slice();
    cur[0] = 7;
    expect(decodeOnto(old, [0, 1, 7])).toEqual(cur);
  });

  const bodyCases: [string, number[], string][] = [
    ['an unknown kind', [0x02], 'XBZRLE_BAD_KIND'],
    ['no kind byte', [], 'XBZRLE_TRUNCATED'],
    ['a FULL page cut short', [XBZRLE_FULL, 1, 2, 3], 'XBZRLE_TRUNCATED'],
    ['a delta length of 0', [XBZRLE_DELTA, 0], 'XBZRLE_BAD_LENGTH'],
    ['a delta length over the page size', [XBZRLE_DELTA, 0x81, 0x20], 'XBZRLE_BAD_LENGTH'],
    ['a delta length of too many bytes', [XBZRLE_DELTA, 0x83, 0x80, 0x00], 'XBZRLE_BAD_LENGTH'],
    ['a delta cut short', [XBZRLE_DELTA, 5, 0, 1, 9], 'XBZRLE_TRUNCATED'],
    ['a delta whose runs overrun its length', [XBZRLE_DELTA, 3, 0, 2, 9, 9], 'XBZRLE_TRUNCATED'],
  ];
  for (const [name, input, code] of bodyCases) {
    it(`decodeXbzrleBody ${code}: ${name}`, () => {
      const buf = new Uint8Array(PAGE + 2 * GUARD).fill(SENTINEL);
      const bytes = Uint8Array.from(input);
      expect(() => decodeXbzrleBody(bytes, 0, bytes.length, buf, GUARD, PAGE)).toThrow(
        expect.objectContaining({ code }) as unknown as Error,
      );
      for (let i = 0; i < GUARD; i++) {
        expect(buf[i]).toBe(SENTINEL);
        expect(buf[GUARD + PAGE + i]).toBe(SENTINEL);
      }
    });
  }
});

/** A page and an edited copy: random, sparse edits, or equal. */
const pagePair = (pageSize: number) =>
  fc.oneof(
    fc.record({ seed: fc.integer(), kind: fc.constant('equal' as const), edits: fc.constant([] as { at: number; len: number; value: number }[]) }),
    fc.record({ seed: fc.integer(), kind: fc.constant('random' as const), edits: fc.constant([] as { at: number; len: number; value: number }[]) }),
    fc.record({
      seed: fc.integer(),
      kind: fc.constant('sparse' as const),
      edits: fc.array(fc.record({ at: fc.nat({ max: pageSize - 1 }), len: fc.integer({ min: 1, max: 300 }), value: fc.integer({ min: 0, max: 255 }) }), { maxLength: 12 }),
    }),
  ).map(({ seed, kind, edits }) => {
    const old = randomBytes(pageSize, seed);
    const cur = kind === 'random' ? randomBytes(pageSize, seed ^ 0x5bd1e995) : old.slice();
    for (const e of edits) cur.fill(e.value, e.at, Math.min(pageSize, e.at + e.len));
    return { old, cur };
  });

describe('round trips (fast-check)', () => {
  for (const pageSize of [16, 512, 4096, 65536]) {
    it(`decode(encode(old, new)) onto old == new, byte-exact with QEMU's loop, ${pageSize}-byte pages`, () => {
      fc.assert(
        fc.property(pagePair(pageSize), fc.integer({ min: 0, max: 3 }), ({ old, cur }, shift) => {
          // Unaligned copies take the byte path; the output must not change.
          const curBuf = new Uint8Array(pageSize + 4);
          curBuf.set(cur, shift);
          const oldBuf = new Uint8Array(pageSize + 8);
          oldBuf.set(old, 4);
          for (const limit of [pageSize, xbzrleDeltaLimit(pageSize)]) {
            const out = new Uint8Array(limit + 3);
            const end = xbzrleEncode(curBuf, shift, oldBuf, 4, pageSize, out, 3, limit);
            const expected = referenceEncode(old, cur, limit);
            if (expected === -1) {
              expect(end).toBe(-1);
              continue;
            }
            expect(Buffer.from(out.subarray(3, end)).equals(Buffer.from(expected))).toBe(true);
            expect(Buffer.from(decodeOnto(old, out.subarray(3, end))).equals(cur)).toBe(true);
          }
          // The old copy is never written.
          expect(Buffer.from(oldBuf.subarray(4, 4 + pageSize)).equals(old)).toBe(true);
          // And the record body: unchanged, a delta smaller than FULL, or FULL.
          const body = new Uint8Array(xbzrleMaxEncodedBytes(pageSize) + 5);
          const bodyEnd = encodeXbzrleBody(cur, 0, old, 0, pageSize, body, 5);
          const kind = body[5];
          expect([XBZRLE_UNCHANGED, XBZRLE_DELTA, XBZRLE_FULL]).toContain(kind);
          if (kind === XBZRLE_UNCHANGED) expect(Buffer.from(cur).equals(old)).toBe(true);
          if (kind === XBZRLE_DELTA) expect(bodyEnd - 5).toBeLessThan(1 + pageSize);
          if (kind === XBZRLE_FULL) expect(referenceEncode(old, cur, xbzrleDeltaLimit(pageSize))).toBe(-1);
          const target = old.slice();
          expect(decodeXbzrleBody(body, 5, bodyEnd, target, 0, pageSize)).toBe(bodyEnd);
          expect(Buffer.from(target).equals(cur)).toBe(true);
        }),
        { numRuns: pageSize === 65536 ? 25 : 150 },
      );
    });
  }

  it('the frame worst case still fits: a record is at most a FULL page for XBZRLE', () => {
    for (const ps of [512, 4096, 65536]) {
      expect(maxRecordBytes(ps)).toBeGreaterThanOrEqual(8 + xbzrleMaxEncodedBytes(ps));
      const limit = xbzrleDeltaLimit(ps);
      expect(1 + (limit < 128 ? 1 : limit < 16384 ? 2 : 3) + limit).toBeLessThan(1 + ps);
    }
    expect(xbzrleDeltaLimit(4096)).toBe(4093);
  });
});

describe('codec 2 frames at the receiver', () => {
  const pageA = randomBytes(PAGE, 11);
  const pageB = randomBytes(PAGE, 12);

  function xbzrleRecord(pfn: number, cur: Uint8Array, old: Uint8Array | null): RecordSpec {
    const body = new Uint8Array(xbzrleMaxEncodedBytes(PAGE));
    const end =
      old === null
        ? (body.set(cur, 1), (body[0] = XBZRLE_FULL), 1 + PAGE)
        : encodeXbzrleBody(cur, 0, old, 0, PAGE, body, 0);
    return { pfn, type: RECORD_XBZRLE, body: body.slice(0, end), page: cur.slice() };
  }

  function zero(pfn: number): RecordSpec {
    return { pfn, type: RECORD_ZERO, body: new Uint8Array(0), page: new Uint8Array(PAGE) };
  }

  it('applies FULL, DELTA, UNCHANGED and ZERO records', () => {
    const rx = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE) });
    const epoch0 = [xbzrleRecord(1, pageA, null), xbzrleRecord(2, pageB, null)];
    for (const f of epochFrames(epoch0, { epoch: 0, pageSize: PAGE, resync: true, codec: CODEC_XBZRLE })) rx.applyFrame(f);
    const a1 = pageA.slice();
    a1[100] ^= 0xff;
    a1[4000] ^= 0x0f;
    const epoch1 = [xbzrleRecord(1, a1, pageA), xbzrleRecord(2, pageB, pageB), zero(3)];
    expect(epoch1[0].body[0]).toBe(XBZRLE_DELTA);
    expect(epoch1[1].body).toEqual(Uint8Array.of(XBZRLE_UNCHANGED));
    const frames = epochFrames(epoch1, { epoch: 1, pageSize: PAGE, codec: CODEC_XBZRLE, recordsPerFrame: 2 });
    expect(frames).toHaveLength(2);
    for (const f of frames) rx.applyFrame(f);
    expect(rx.committedEpoch).toBe(1);
    const got = new Uint8Array(PAGE);
    rx.readPage(1, got);
    expect(got).toEqual(a1);
    rx.readPage(2, got);
    expect(got).toEqual(pageB);
    rx.readPage(3, got);
    expect(got).toEqual(new Uint8Array(PAGE));
  });

  function refused(rx: Receiver, frame: Uint8Array, code: string): FrameError {
    let caught: unknown;
    try {
      rx.applyFrame(frame);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(FrameError);
    expect((caught as FrameError).code).toBe(code);
    return caught as FrameError;
  }

  it('inspect counts codec 2 records by kind', () => {
    const a1 = pageA.slice();
    a1[9] ^= 1;
    const records = [xbzrleRecord(1, pageA, null), xbzrleRecord(2, a1, pageA), xbzrleRecord(3, pageB, pageB), zero(4)];
    const payload = concat(records.map(recordBytes));
    expect(countRecords(payload, records.length, PAGE, CODEC_XBZRLE)).toEqual({ counts: { zero: 1, full: 1, empty: 1, delta: 1 } });
  });

  it('rejects a codec it does not support with FRAME_BAD_CODEC', () => {
    const rx = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE) });
    const records = [xbzrleRecord(1, pageA, null)];
    const frame = buildFrame(
      { epoch: 0, sequence: 0, codec: 4, flags: FLAG_RESYNC | FLAG_LAST, recordCount: 1, epochPageCount: 1, epochDigest: epochDigest(records, PAGE, 0, true) },
      concat(records.map(recordBytes)),
    );
    expect(refused(rx, frame, 'FRAME_BAD_CODEC').message).toContain('not supported');
    expect(rx.committedEpoch).toBeNull();
  });

  it('rejects a frame whose codec differs from its epoch frame 0', () => {
    const rx = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE) });
    const records = [xbzrleRecord(1, pageA, null), xbzrleRecord(2, pageB, null)];
    const [first, second] = epochFrames(records, { epoch: 0, pageSize: PAGE, resync: true, codec: CODEC_XBZRLE, recordsPerFrame: 1 });
    rx.applyFrame(first);
    const remus = epochFrames(records, { epoch: 0, pageSize: PAGE, resync: true, recordsPerFrame: 1 })[1];
    refused(rx, remus, 'FRAME_BAD_CODEC');
    rx.applyFrame(second);
    expect(rx.committedEpoch).toBe(0);
  });

  it('rejects a bad XBZRLE body as FRAME_BAD_RECORD and a delta without a base as FRAME_DELTA_WITHOUT_BASE', () => {
    const rx = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE) });
    const bad: RecordSpec = { pfn: 1, type: RECORD_XBZRLE, body: Uint8Array.of(0x07), page: pageA };
    const [f] = epochFrames([bad], { epoch: 0, pageSize: PAGE, resync: true, codec: CODEC_XBZRLE });
    expect(refused(rx, f, 'FRAME_BAD_RECORD').message).toContain('XBZRLE_BAD_KIND');
    const delta: RecordSpec = { pfn: 1, type: RECORD_XBZRLE, body: Uint8Array.of(XBZRLE_DELTA, 3, 0, 1, 9), page: pageA };
    const [g] = epochFrames([delta], { epoch: 0, pageSize: PAGE, resync: true, codec: CODEC_XBZRLE });
    refused(rx, g, 'FRAME_DELTA_WITHOUT_BASE');
    const truncated: RecordSpec = { pfn: 1, type: RECORD_XBZRLE, body: Uint8Array.of(XBZRLE_FULL, 1, 2), page: pageA };
    const [h] = epochFrames([truncated], { epoch: 0, pageSize: PAGE, resync: true, codec: CODEC_XBZRLE });
    expect(refused(rx, h, 'FRAME_BAD_RECORD').message).toContain('XBZRLE_TRUNCATED');
  });
});
