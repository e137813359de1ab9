import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { PFN_LIMIT, MAX_PFN_BYTES, uleb128Length, writeUleb128 } from '../src/wire.js';

/** ULEB128 by the book, on BigInt: 7 bits a byte, low bits first, high bit set on every byte but the last. */
function referenceUleb128(value: number): number[] {
  let v = BigInt(value);
  const out: number[] = [];
  do {
    const low = Number(v & 0x7fn);
    v >>= 7n;
    out.push(v === 0n ? low : low | 0x80);
  } while (v !== 0n);
  return out;
}

/**
 * Values on both sides of 2^31 (where 32-bit shifts would wrap), of 2^32
 * (where writeUleb128 leaves its shifts for division) and of every 7-bit
 * length step, and anything below PFN_LIMIT.
 */
const ulebValue = fc.oneof(
  fc.integer({ min: 0, max: 2 ** 31 + 1000 }),
  fc.integer({ min: 2 ** 31 - 1000, max: 2 ** 31 + 1000 }),
  fc.integer({ min: 2 ** 32 - 1000, max: 2 ** 32 + 1000 }),
  fc.integer({ min: 1, max: 7 }).chain((bytes) => fc.integer({ min: -2, max: 1 }).map((d) => Math.min(PFN_LIMIT - 1, Math.max(0, 2 ** (7 * bytes) + d)))),
  fc.integer({ min: 0, max: PFN_LIMIT - 1 }),
);

describe('writeUleb128', () => {
  it('writes the reference encoding of every value below PFN_LIMIT, and uleb128Length agrees', () => {
    const out = new Uint8Array(16);
    fc.assert(
      fc.property(ulebValue, fc.integer({ min: 0, max: 8 }), (value, at) => {
        out.fill(0xaa);
        const end = writeUleb128(out, at, value);
        const expected = referenceUleb128(value);
        expect(Array.from(out.subarray(at, end))).toEqual(expected);
        expect(uleb128Length(value)).toBe(expected.length);
        // Nothing outside the encoding is touched.
        expect(out.subarray(0, at).every((b) => b === 0xaa)).toBe(true);
        expect(out.subarray(end).every((b) => b === 0xaa)).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  it('writes the values either side of 2^31 exactly, and the largest pfn in MAX_PFN_BYTES', () => {
    const out = new Uint8Array(16);
    expect(writeUleb128(out, 0, PFN_LIMIT - 1)).toBe(MAX_PFN_BYTES);
    expect(writeUleb128(out, 0, 2 ** 31 - 1)).toBe(5);
    expect(Array.from(out.subarray(0, 5))).toEqual([0xff, 0xff, 0xff, 0xff, 0x07]);
    expect(writeUleb128(out, 0, 2 ** 31)).toBe(5);
    expect(Array.from(out.subarray(0, 5))).toEqual([0x80, 0x80, 0x80, 0x80, 0x08]);
  });
});
