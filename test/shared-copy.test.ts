import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { copyInto } from '../src/shared-copy.js';

/** A target of `length` bytes over shared or ordinary memory, at a byte offset into its buffer (so any alignment), filled with a marker. */
function makeTarget(shared: boolean, skew: number, length: number): Uint8Array {
  const buffer = shared ? new SharedArrayBuffer(skew + length) : new ArrayBuffer(skew + length);
  return new Uint8Array(buffer, skew, length).fill(0xa5);
}

describe('copyInto', () => {
  it('copies exactly the source into the range, whatever the memory and the alignment of either side', () => {
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.boolean(),
        fc.integer({ min: 0, max: 15 }),
        fc.integer({ min: 0, max: 15 }),
        fc.uint8Array({ minLength: 0, maxLength: 3000 }),
        fc.nat({ max: 64 }),
        fc.nat({ max: 64 }),
        (sharedTarget, sharedSource, targetSkew, sourceSkew, bytes, offset, slack) => {
          const target = makeTarget(sharedTarget, targetSkew, offset + bytes.length + slack);
          const expected = target.slice();
          expected.set(bytes, offset);
          const sourceBuffer = sharedSource ? new SharedArrayBuffer(sourceSkew + bytes.length) : new ArrayBuffer(sourceSkew + bytes.length);
          const source = new Uint8Array(sourceBuffer, sourceSkew, bytes.length);
          source.set(bytes);
          copyInto(target, offset, source);
          expect(Buffer.from(target.buffer, target.byteOffset, target.length).equals(expected)).toBe(true);
        },
      ),
    );
  });

  it('copies a Buffer from a subarray, as a request body chunk comes', () => {
    const chunk = Buffer.from('..header..payload bytes');
    const target = makeTarget(true, 3, 40);
    copyInto(target, 7, chunk.subarray(10));
    expect(Buffer.from(target.subarray(7, 7 + 13)).toString()).toBe('payload bytes');
    expect(target[6]).toBe(0xa5);
    expect(target[20]).toBe(0xa5);
  });

  it('does nothing for an empty source, even at the very end', () => {
    const target = makeTarget(true, 0, 8);
    copyInto(target, 8, new Uint8Array(0));
    expect([...target]).toEqual(new Array(8).fill(0xa5));
  });

  it('refuses a range that does not fit, and writes nothing', () => {
    const target = makeTarget(true, 1, 16);
    expect(() => copyInto(target, 10, new Uint8Array(7))).toThrow(RangeError);
    expect(() => copyInto(target, -1, new Uint8Array(1))).toThrow(RangeError);
    expect(() => copyInto(target, 0.5, new Uint8Array(1))).toThrow(RangeError);
    expect([...target]).toEqual(new Array(16).fill(0xa5));
  });
});
