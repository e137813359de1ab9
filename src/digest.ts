import { Blake3Hasher } from '@napi-rs/blake-hash';
import { writePfn } from './epoch-record.js';

/**
 * The end-of-epoch digest proves that the receiver holds exactly the pages
 * the sender was given. It is a two-level BLAKE3 hash so that groups can be
 * hashed in parallel by the encoding workers while the result stays
 * independent of how pages were sharded:
 *
 *   group g   = records [64g, 64g + 64) of the epoch, in record order
 *   groupHash = BLAKE3( pfn of each record as u64 LE || page contents after
 *               the epoch of each record )
 *   digest    = BLAKE3( epoch as u32 LE || 1 if RESYNC else 0 (one byte)
 *               || groupHash_0 || groupHash_1 || ... )
 *
 * BLAKE3 rather than SHA-256: the digest hashes every dirty byte, and on this
 * machine Node's SHA-256 runs at 1.2 GB/s a core against 6.7 GB/s for BLAKE3
 * (native, @napi-rs/blake-hash), which would have made hashing, not
 * compression, the service's bottleneck. Both are 256-bit cryptographic hashes.
 */
export const DIGEST_ALGORITHM = 'blake3';
export const DIGEST_GROUP_PAGES = 64;
export const DIGEST_BYTES = 32;
/** u32 epoch and one byte for the RESYNC bit. */
const DIGEST_PREFIX_BYTES = 5;

/** Number of digest groups for an epoch of `pageCount` records. */
export function digestGroupCount(pageCount: number): number {
  return Math.ceil(pageCount / DIGEST_GROUP_PAGES);
}

/**
 * Hash one group. `pfns` holds the group's pfns as consecutive u64 LE values
 * and `pages` the group's page contents back to back, both in record order.
 * The 32-byte result is written to `out` at `outOffset`.
 */
export function hashDigestGroup(pfns: Uint8Array, pages: Uint8Array, out: Uint8Array, outOffset: number): void {
  const hash = freshHasher();
  hash.update(asBuffer(pfns));
  hash.update(asBuffer(pages));
  writeDigest(hash, out, outOffset);
}

/**
 * The hasher's 32-byte result into out[offset..], by way of its hex form:
 * the binding's digestBuffer() leaks ~340 bytes of native memory a call
 * (400,000 calls grew a process by 136 MiB, with collections running;
 * digest('hex') held it at 51), which grew the service by ~14 KiB an 8 MiB
 * epoch, without end. A 64-character string per 64 pages costs nothing
 * measurable.
 */
function writeDigest(hash: Blake3Hasher, out: Uint8Array, offset: number): void {
  const hex = hash.digest('hex');
  if (hex.length !== 2 * DIGEST_BYTES || offset < 0 || offset + DIGEST_BYTES > out.length) {
    throw new RangeError(`digest of ${hex.length / 2} bytes at ${offset} into ${out.length}`);
  }
  for (let i = 0; i < DIGEST_BYTES; i++) out[offset + i] = (hexValue(hex.charCodeAt(2 * i)) << 4) | hexValue(hex.charCodeAt(2 * i + 1));
}

/** One lowercase hex digit's value. */
function hexValue(code: number): number {
  return code <= 0x39 ? code - 0x30 : code - 0x57;
}

/**
 * One hasher per thread, reset for each digest: a Blake3Hasher is ~1.9 KiB
 * of native memory that the addon's allocator gets back only when V8
 * finalizes its wrapper, and the workers collect so rarely that one new
 * hasher per group of 64 pages grew the service's resident set by ~50 KiB
 * an 8 MiB epoch (70 MiB after 1200 epochs; docs/PERFORMANCE.md, "Memory").
 * Every use is synchronous, so no two digests share it at once.
 */
const threadHasher = new Blake3Hasher();

function freshHasher(): Blake3Hasher {
  threadHasher.reset();
  return threadHasher;
}

/** The binding is typed for Buffer; a Buffer view of the same bytes costs no copy. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Fold the group hashes (`groupCount` x 32 bytes, in order) into the epoch
 * digest. The epoch number and the RESYNC bit are hashed first: they decide
 * what a commit does to the image (a RESYNC epoch replaces it), so a frame
 * whose flags were altered and resealed cannot commit.
 */
export function foldEpochDigest(groupHashes: Uint8Array, groupCount: number, epoch: number, resync: boolean): Buffer {
  const prefix = Buffer.alloc(DIGEST_PREFIX_BYTES);
  prefix.writeUInt32LE(epoch, 0);
  prefix[4] = resync ? 1 : 0;
  const hash = freshHasher();
  hash.update(prefix);
  hash.update(asBuffer(groupHashes.subarray(0, groupCount * DIGEST_BYTES)));
  const digest = Buffer.alloc(DIGEST_BYTES);
  writeDigest(hash, digest, 0);
  return digest;
}

/**
 * The image digest: BLAKE3 over every page of an image in ascending pfn
 * order, each as its pfn (u64 LE) followed by its contents. Two images with
 * the same digest hold the same pages.
 */
export function hashImage(pfnsAscending: readonly number[], pageSize: number, readPage: (pfn: number, dst: Uint8Array) => void): Buffer {
  const hash = new Blake3Hasher();
  const pfnBytes = Buffer.alloc(8);
  const page = Buffer.alloc(pageSize);
  for (const pfn of pfnsAscending) {
    writePfn(pfnBytes, 0, pfn);
    readPage(pfn, page);
    hash.update(pfnBytes);
    hash.update(page);
  }
  const digest = Buffer.alloc(DIGEST_BYTES);
  writeDigest(hash, digest, 0);
  return digest;
}
