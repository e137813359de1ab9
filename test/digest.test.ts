import { blake3 } from '@napi-rs/blake-hash';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DIGEST_BYTES, foldEpochDigest, hashDigestGroup, hashImage } from '../src/digest.js';

/** BLAKE3 of the empty input, from the BLAKE3 reference test vectors. */
const BLAKE3_EMPTY = 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262';

describe('digests', () => {
  it('a group hash is BLAKE3 of its pfns then its pages, written where asked, even into shared memory', () => {
    const out = new Uint8Array(new SharedArrayBuffer(3 * DIGEST_BYTES + 7));
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 * 8 }), fc.uint8Array({ maxLength: 3 * 4096 }), fc.integer({ min: 0, max: 2 * DIGEST_BYTES + 7 }), (pfns, pages, at) => {
        out.fill(0xee);
        hashDigestGroup(pfns, pages, out, at);
        expect(Buffer.from(out.subarray(at, at + DIGEST_BYTES)).toString('hex')).toBe(blake3(Buffer.concat([pfns, pages])).toString('hex'));
        expect(out.subarray(0, at).every((b) => b === 0xee)).toBe(true);
        expect(out.subarray(at + DIGEST_BYTES).every((b) => b === 0xee)).toBe(true);
      }),
    );
  });

  it('matches the reference vector, and one hash leaves nothing behind for the next', () => {
    const out = new Uint8Array(DIGEST_BYTES);
    hashDigestGroup(new Uint8Array(0), new Uint8Array(0), out, 0);
    expect(Buffer.from(out).toString('hex')).toBe(BLAKE3_EMPTY);
    hashDigestGroup(new Uint8Array([1, 2, 3]), new Uint8Array(4096).fill(9), out, 0);
    hashDigestGroup(new Uint8Array(0), new Uint8Array(0), out, 0);
    expect(Buffer.from(out).toString('hex')).toBe(BLAKE3_EMPTY);
  });

  it('refuses to write a digest past the end of its output', () => {
    expect(() => hashDigestGroup(new Uint8Array(8), new Uint8Array(64), new Uint8Array(40), 9)).toThrow(RangeError);
  });

  it('the epoch digest is BLAKE3 of the epoch (u32 LE), the RESYNC byte and the group hashes', () => {
    const hashes = new Uint8Array(5 * DIGEST_BYTES).map((_, i) => i * 31);
    const prefix = Buffer.from([0x78, 0x56, 0x34, 0x12, 1]);
    expect(foldEpochDigest(hashes, 4, 0x12345678, true).toString('hex')).toBe(
      blake3(Buffer.concat([prefix, hashes.subarray(0, 4 * DIGEST_BYTES)])).toString('hex'),
    );
    prefix[4] = 0;
    expect(foldEpochDigest(hashes, 5, 0x12345678, false).toString('hex')).toBe(blake3(Buffer.concat([prefix, hashes])).toString('hex'));
  });

  it('the image digest is BLAKE3 over each page as its pfn (u64 LE) then its bytes, in the order given', () => {
    const pages = new Map([[7, Buffer.alloc(512, 1)], [2 ** 40 + 3, Buffer.alloc(512, 2)]]);
    const pfnBytes = (pfn: number): Buffer => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(BigInt(pfn));
      return b;
    };
    const expected = blake3(Buffer.concat([pfnBytes(7), pages.get(7) as Buffer, pfnBytes(2 ** 40 + 3), pages.get(2 ** 40 + 3) as Buffer]));
    expect(hashImage([7, 2 ** 40 + 3], 512, (pfn, dst) => dst.set(pages.get(pfn) as Buffer)).toString('hex')).toBe(expected.toString('hex'));
  });

  it('hashing many groups does not grow the process (the binding leaked ~340 bytes a digest through digestBuffer)', () => {
    const out = new Uint8Array(DIGEST_BYTES);
    const pfns = new Uint8Array(8);
    const page = new Uint8Array(64);
    const hashMany = (n: number): void => {
      for (let i = 0; i < n; i++) hashDigestGroup(pfns, page, out, 0);
    };
    hashMany(20_000);
    const before = process.memoryUsage.rss();
    hashMany(200_000);
    // The leak would add ~65 MiB here; allocator and heap noise stays far below 24.
    expect((process.memoryUsage.rss() - before) / 2 ** 20).toBeLessThan(24);
  });
});
