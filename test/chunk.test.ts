import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import zstd from 'zstd-napi/binding.js';
import { decompress as zstdDecompress } from 'zstd-napi';
import {
  CHUNK_INDEX_RESERVE_BYTES,
  CHUNK_STORED,
  CHUNK_TARGET_BYTES,
  CHUNK_ZSTD,
  CHUNK_ZSTD_LEVEL,
  ChunkReader,
  ChunkWriter,
  MAX_CHUNK_RAW_BYTES,
  MAX_CHUNK_RECORDS,
  chunkHasRoom,
  chunkLimitBytes,
  readChunkHeader,
  readChunkIndices,
  type ChunkHeader,
} from '../src/codec/chunk.js';
import { encodeRemusDelta, remusMaxEncodedBytes } from '../src/codec/remus.js';
import { CodecError, FrameError } from '../src/errors.js';
import { encodeAbortFrame, maxRecordBytes, minFrameBytes } from '../src/frames.js';
import { countRecords, inspectFile, reportHasErrors } from '../src/inspect.js';
import { MemoryImage, Receiver } from '../src/receiver.js';
import {
  CHUNK_HEADER_MAX_BYTES,
  CHUNK_OVERHEAD_BYTES,
  CODEC_REMUS,
  CODEC_REMUS_ZSTD,
  FLAG_LAST,
  FLAG_RESYNC,
  FRAME_HEADER_BYTES,
  MAX_PFN_BYTES,
  PFN_LIMIT,
  RECORD_CHUNK,
  RECORD_REMUS,
  RECORD_ZERO,
  writeUleb128,
} from '../src/wire.js';
import {
  Prng,
  SenderModel,
  buildFrame,
  chunkFrame,
  chunkIndexSection,
  chunkRecord,
  chunkedEpochFrames,
  concat,
  epochDigest,
  epochFrames,
  recordBytes,
  reseal,
  storedChunk,
  type RecordSpec,
  expectImage,
  receiverSnapshot,
  refusal,
} from './receiver-frames.js';

/**
 * Codec 3's chunk record (src/codec/chunk.ts, docs/FORMAT.md "Codec 3"):
 * ChunkWriter against an independent ULEB128 and zstd reference, hand-built
 * vectors, every refusal of readChunkHeader / ChunkReader.raw /
 * readChunkIndices with its CodecError code, the sizing rule that a frame of
 * minFrameBytes always takes a chunk of one worst-case record; then codec 3
 * frames at the receiver (built by hand with the real ChunkWriter) and
 * inspect's count of the pages inside chunks.
 */

/** Indices and gaps below 2^28 are ULEB128 in at most 4 bytes (the format's bound). */
const INDEX_LIMIT = 2 ** 28;
const SENTINEL = 0xa5;
const GUARD = 24;

/** Plain ULEB128, written here rather than taken from src/wire.ts. */
function uleb(value: number): number[] {
  const out: number[] = [];
  do {
    let b = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) b |= 0x80;
    out.push(b);
  } while (value > 0);
  return out;
}

/** The index section a chunk of these (increasing) indices must carry: first index, then gaps. */
function indexSection(indices: number[]): number[] {
  const out = uleb(indices[0]);
  for (let k = 1; k < indices.length; k++) out.push(...uleb(indices[k] - indices[k - 1] - 1));
  return out;
}

/** What zstd level CHUNK_ZSTD_LEVEL makes of `raw`, from a context of our own. */
/**
 * What zstd makes of `raw` with room for one byte less than it, as the
 * writer asks (a frame as long as the raw chunk is not worth storing), or
 * Infinity when it does not fit. The room matters: zstd needs more room
 * than its result while it works, so a result that would just fit can be
 * refused (a 64-byte chunk found by the property below compresses to 63
 * bytes with ample room, and is refused with 63); the writer then stores
 * the chunk, which this reference must predict.
 */
function zstdSize(raw: Uint8Array): number {
  const cctx = new zstd.CCtx();
  const dst = new Uint8Array(Math.max(0, raw.length - 1));
  try {
    return cctx.compress(dst, raw, CHUNK_ZSTD_LEVEL);
  } catch (err) {
    if (err instanceof Error && /too small/i.test(err.message)) return Infinity;
    throw err;
  }
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CodecError);
    return (err as CodecError).code;
  }
  throw new Error('expected a CodecError, nothing was thrown');
}

interface Written {
  out: Uint8Array;
  pos: number;
  end: number;
}

/**
 * Lay `records` out in a scratch the way the encoder does (after
 * CHUNK_INDEX_RESERVE_BYTES) and write the chunk at out[pos..]; the output
 * is sentinel-filled, with GUARD bytes past the room the writer may use.
 */
function writeChunk(indices: number[], records: Uint8Array, pos = 0, writer = new ChunkWriter(), guard = GUARD): Written {
  const scratch = new Uint8Array(CHUNK_INDEX_RESERVE_BYTES + records.length);
  scratch.set(records, CHUNK_INDEX_RESERVE_BYTES);
  // Unrelated indices around the chunk's own: only [first, end) may be read.
  const all = Int32Array.from([7, ...indices, 3]);
  const out = new Uint8Array(pos + CHUNK_HEADER_MAX_BYTES + indexSection(indices).length + records.length + guard).fill(SENTINEL);
  const end = writer.write(scratch, scratch.length, all, 1, 1 + indices.length, out, pos);
  // The writer puts the index section in front of the records; the records stay as they were.
  expect(Buffer.from(scratch.subarray(CHUNK_INDEX_RESERVE_BYTES)).equals(Buffer.from(records))).toBe(true);
  return { out, pos, end };
}

/** Deterministic incompressible bytes. */
function randomBytes(n: number, seed: number): Uint8Array {
  const rng = new Prng(seed);
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.next();
  return out;
}

/** A stored chunk record built by hand: header fields as given, then the raw bytes. */
function handChunk(method: number, records: number, rawLength: number, storedLength: number, payload: ArrayLike<number>): Uint8Array {
  return Uint8Array.from([RECORD_CHUNK, method, ...uleb(records), ...uleb(rawLength), ...uleb(storedLength), ...Array.from(payload)]);
}

// ---------------------------------------------------------------- arbitraries

/** 1..n increasing indices below 2^28 with gaps from 0 to near 2^21 (the writer's reserve allows gaps below 2^21). */
const indicesArb = fc
  .record({
    first: fc.oneof(fc.constant(0), fc.nat({ max: 127 }), fc.nat({ max: 16383 }), fc.nat({ max: INDEX_LIMIT - 1 })),
    gaps: fc.array(fc.oneof({ weight: 6, arbitrary: fc.nat({ max: 3 }) }, fc.nat({ max: 200 }), fc.nat({ max: 2 ** 21 - 1 })), { maxLength: 300 }),
  })
  .map(({ first, gaps }) => {
    const span = gaps.reduce((a, g) => a + g + 1, 0);
    // Keep the last index below 2^28: move the first index down if needed.
    const start = Math.max(0, Math.min(first, INDEX_LIMIT - 1 - span));
    const indices = [start];
    for (const g of gaps) indices.push(indices[indices.length - 1] + g + 1);
    return indices;
  })
  .filter((indices) => indices[indices.length - 1] < INDEX_LIMIT);

type Kind = 'random' | 'compressible' | 'arbitrary';
const recordsArb = fc.oneof(
  fc.record({ kind: fc.constant<Kind>('random'), seed: fc.integer(), length: fc.integer({ min: 1, max: 20000 }) }).map(({ kind, seed, length }) => ({
    kind,
    bytes: randomBytes(length, seed),
  })),
  fc
    .record({ kind: fc.constant<Kind>('compressible'), seed: fc.integer(), length: fc.integer({ min: 64, max: 40000 }), alphabet: fc.integer({ min: 1, max: 4 }) })
    .map(({ kind, seed, length, alphabet }) => {
      // Page records of a mostly-zero memory: long runs of few values.
      const rng = new Prng(seed);
      const bytes = new Uint8Array(length);
      for (let i = 0; i < length; ) {
        const run = 8 + rng.below(120);
        bytes.fill(rng.below(alphabet), i, Math.min(length, i + run));
        i += run;
      }
      return { kind, bytes };
    }),
  fc.uint8Array({ minLength: 1, maxLength: 3000 }).map((bytes) => ({ kind: 'arbitrary' as Kind, bytes })),
);

// ---------------------------------------------------------------- round trip

describe('ChunkWriter / readChunkHeader / ChunkReader.raw / readChunkIndices round trip (fast-check)', () => {
  const writer = new ChunkWriter();
  const reader = new ChunkReader();

  it('writes exact headers, chooses zstd only when smaller, and reads back the index section and the records', () => {
    fc.assert(
      fc.property(indicesArb, recordsArb, fc.nat({ max: 5 }), (indices, { kind, bytes }, pos) => {
        const { out, end } = writeChunk(indices, bytes, pos, writer);
        const section = indexSection(indices);
        const rawLength = section.length + bytes.length;
        const expectedRaw = Uint8Array.from([...section, ...bytes]);

        // Nothing before pos, nothing past the room the writer was promised.
        for (let i = 0; i < pos; i++) expect(out[i]).toBe(SENTINEL);
        for (let i = pos + CHUNK_HEADER_MAX_BYTES + rawLength; i < out.length; i++) expect(out[i], `byte ${i} past the room`).toBe(SENTINEL);
        expect(end - pos).toBeLessThanOrEqual(CHUNK_HEADER_MAX_BYTES + rawLength);

        // The method: zstd exactly when zstd's output is shorter than the raw chunk.
        const reference = zstdSize(expectedRaw);
        const method = reference < rawLength ? CHUNK_ZSTD : CHUNK_STORED;
        // Random records never compress, but a long index section of small
        // gaps does (it is in the raw chunk too): the check needs a short one.
        if (kind === 'random' && section.length <= 8) expect(method, 'random bytes never compress').toBe(CHUNK_STORED);
        if (kind === 'compressible') expect(method, 'long runs always compress').toBe(CHUNK_ZSTD);
        const storedLength = method === CHUNK_ZSTD ? reference : rawLength;

        // The header, byte for byte (minimal ULEB128 fields, the stored length moved back when shorter).
        const header = [RECORD_CHUNK, method, ...uleb(indices.length), ...uleb(rawLength), ...uleb(storedLength)];
        expect(Array.from(out.subarray(pos, pos + header.length))).toEqual(header);
        expect(end).toBe(pos + header.length + storedLength);

        const h = readChunkHeader(out, pos, end);
        expect(h).toEqual({ method, records: indices.length, rawLength, storedLength, payloadStart: pos + header.length, end } satisfies ChunkHeader);
        // Bytes after the record do not change what is read.
        expect(readChunkHeader(out, pos, out.length)).toEqual(h);

        const raw = reader.raw(out, h);
        expect(Buffer.from(raw).equals(Buffer.from(expectedRaw))).toBe(true);
        if (method === CHUNK_STORED) {
          expect(Buffer.from(out.subarray(h.payloadStart, h.end)).equals(Buffer.from(expectedRaw))).toBe(true);
        } else {
          // Standard zstd: any decoder gets the raw chunk back.
          expect(zstdDecompress(out.subarray(h.payloadStart, h.end)).equals(Buffer.from(expectedRaw))).toBe(true);
        }

        const slots = new Int32Array(indices.length);
        const last = indices[indices.length - 1];
        expect(readChunkIndices(raw, indices.length, slots, last + 1)).toBe(section.length);
        expect(Array.from(slots)).toEqual(indices);
        // The bound is exclusive: one less and the last index is past it.
        expect(codeOf(() => readChunkIndices(raw, indices.length, new Int32Array(indices.length), last))).toBe('CHUNK_BAD_INDEX');
      }),
      { numRuns: 200 },
    );
  });

  it('the same input gives the same bytes from a reused writer and from a fresh one', () => {
    fc.assert(
      fc.property(indicesArb, recordsArb, (indices, { bytes }) => {
        const a = writeChunk(indices, bytes, 0, writer);
        const b = writeChunk(indices, bytes, 0, new ChunkWriter());
        expect(Buffer.from(a.out.subarray(0, a.end)).equals(Buffer.from(b.out.subarray(0, b.end)))).toBe(true);
      }),
      { numRuns: 40 },
    );
  });

  it('fits an output of exactly CHUNK_HEADER_MAX_BYTES + rawLength, at the largest raw chunk and record count', () => {
    // MAX_CHUNK_RECORDS pages with random gaps and random records (so stored): the largest stored chunk.
    const rng = new Prng(4);
    const indices = [rng.below(128)];
    while (indices.length < MAX_CHUNK_RECORDS) indices.push(indices[indices.length - 1] + 1 + rng.below(128));
    const section = indexSection(indices);
    const records = randomBytes(MAX_CHUNK_RAW_BYTES - section.length, 99);
    const { out, end } = writeChunk(indices, records, 0, writer, 0);
    expect(end).toBe(out.length - (CHUNK_HEADER_MAX_BYTES - (2 + 2 + 3 + 3)));
    const h = readChunkHeader(out, 0, end);
    expect(h).toMatchObject({ method: CHUNK_STORED, records: MAX_CHUNK_RECORDS, rawLength: MAX_CHUNK_RAW_BYTES, storedLength: MAX_CHUNK_RAW_BYTES });
    const slots = new Int32Array(MAX_CHUNK_RECORDS);
    readChunkIndices(reader.raw(out, h), MAX_CHUNK_RECORDS, slots, INDEX_LIMIT);
    expect(Array.from(slots)).toEqual(indices);
    // The same size, compressible: zstd, read back whole.
    const zeros = new Uint8Array(MAX_CHUNK_RAW_BYTES - section.length);
    const z = writeChunk(indices, zeros, 0, writer, 0);
    const hz = readChunkHeader(z.out, 0, z.end);
    expect(hz.method).toBe(CHUNK_ZSTD);
    const raw = reader.raw(z.out, hz);
    expect(raw.length).toBe(MAX_CHUNK_RAW_BYTES);
    expect(Array.from(raw.subarray(0, section.length))).toEqual(section);
    expect(raw.subarray(section.length).every((b) => b === 0)).toBe(true);
  });

  it('refuses to write what a receiver would refuse, or what does not fit', () => {
    const scratch = new Uint8Array(CHUNK_INDEX_RESERVE_BYTES + 16);
    const out = new Uint8Array(256);
    const idx = Int32Array.from({ length: MAX_CHUNK_RECORDS + 1 }, (_, i) => i);
    expect(() => writer.write(scratch, scratch.length, idx, 0, 0, out, 0)).toThrow(RangeError);
    expect(() => writer.write(scratch, scratch.length, idx, 0, MAX_CHUNK_RECORDS + 1, out, 0)).toThrow(RangeError);
    // One byte past MAX_CHUNK_RAW_BYTES.
    const big = new Uint8Array(CHUNK_INDEX_RESERVE_BYTES + MAX_CHUNK_RAW_BYTES);
    expect(() => writer.write(big, big.length, Int32Array.of(0), 0, 1, new Uint8Array(MAX_CHUNK_RAW_BYTES + 64), 0)).toThrow(RangeError);
    // An output one byte short of CHUNK_HEADER_MAX_BYTES + rawLength (17).
    expect(() => writer.write(scratch, scratch.length, Int32Array.of(0), 0, 1, new Uint8Array(CHUNK_HEADER_MAX_BYTES + 17 - 1), 0)).toThrow(RangeError);
    expect(() => writer.write(scratch, scratch.length, Int32Array.of(0), 0, 1, new Uint8Array(CHUNK_HEADER_MAX_BYTES + 17), -1)).toThrow(RangeError);
    expect(() => writer.write(scratch, scratch.length, Int32Array.of(0), 0, 1, new Uint8Array(CHUNK_HEADER_MAX_BYTES + 17), 0)).not.toThrow();
    // Indices the reserve in front of the records cannot hold: not increasing, a gap of 2^21, a first index of 2^28.
    expect(() => writer.write(scratch, scratch.length, Int32Array.of(5, 5), 0, 2, out, 0)).toThrow(RangeError);
    expect(() => writer.write(scratch, scratch.length, Int32Array.of(5, 4), 0, 2, out, 0)).toThrow(RangeError);
    expect(() => writer.write(scratch, scratch.length, Int32Array.of(0, 2 ** 21 + 1), 0, 2, out, 0)).toThrow(RangeError);
    expect(() => writer.write(scratch, scratch.length, Int32Array.of(0, 2 ** 21), 0, 2, out, 0)).not.toThrow();
    expect(() => writer.write(scratch, scratch.length, Int32Array.of(2 ** 28), 0, 1, out, 0)).toThrow(RangeError);
  });
});

// ---------------------------------------------------------------- vectors

describe('hand-built vectors', () => {
  const reader = new ChunkReader();

  it('a stored chunk of three ZERO records at indices 5, 6, 9, byte for byte', () => {
    // ZERO pfn 1, ZERO pfn 128 (two-byte ULEB128), ZERO pfn 7.
    const records = Uint8Array.of(RECORD_ZERO, 1, RECORD_ZERO, 0x80, 0x01, RECORD_ZERO, 7);
    const { out, end } = writeChunk([5, 6, 9], records);
    const expected = [RECORD_CHUNK, CHUNK_STORED, 3, 10, 10, /* first index */ 5, /* gaps */ 0, 2, ...records];
    expect(Array.from(out.subarray(0, end))).toEqual(expected);
    const h = readChunkHeader(out, 0, end);
    expect(h).toEqual({ method: CHUNK_STORED, records: 3, rawLength: 10, storedLength: 10, payloadStart: 5, end: 15 });
    const raw = reader.raw(out, h);
    // A stored chunk is read in place.
    expect(raw.buffer).toBe(out.buffer);
    const slots = new Int32Array(3);
    expect(readChunkIndices(raw, 3, slots, 10)).toBe(3);
    expect(Array.from(slots)).toEqual([5, 6, 9]);
  });

  it('a stored 1-record chunk with a two-byte first index', () => {
    const { out, end } = writeChunk([300], Uint8Array.of(RECORD_ZERO, 0));
    expect(Array.from(out.subarray(0, end))).toEqual([RECORD_CHUNK, CHUNK_STORED, 1, 4, 4, 0xac, 0x02, RECORD_ZERO, 0]);
    const slots = new Int32Array(1);
    expect(readChunkIndices(reader.raw(out, readChunkHeader(out, 0, end)), 1, slots, 301)).toBe(2);
    expect(slots[0]).toBe(300);
  });

  it('a zstd 1-record chunk: one FULL page of a repeated word', () => {
    const page = new Uint8Array(4096);
    for (let i = 0; i < page.length; i += 4) page.set([0xde, 0xad, 0xbe, 0xef], i);
    const record = Uint8Array.from([RECORD_REMUS, ...uleb(2 ** 40), 0x80, ...page]);
    const rawLength = 1 + record.length; // first index 0: one byte
    expect(rawLength).toBe(1 + 1 + 6 + 1 + 4096);
    const { out, end } = writeChunk([0], record);
    const h = readChunkHeader(out, 0, end);
    expect(h.method).toBe(CHUNK_ZSTD);
    expect(Array.from(out.subarray(0, 5))).toEqual([RECORD_CHUNK, CHUNK_ZSTD, 1, ...uleb(rawLength)]);
    expect(h.storedLength).toBeLessThan(100);
    // The stored length moved back over the unused byte of its field.
    expect(h.payloadStart).toBe(5 + uleb(h.storedLength).length);
    expect(Array.from(reader.raw(out, h))).toEqual([0, ...record]);
  });

  it('the zero-index, zero-gap case: indices 0..n-1 give a section of n zero bytes', () => {
    const n = 200;
    const records = new Uint8Array(2 * n);
    for (let i = 0; i < n; i++) records.set([RECORD_ZERO, i & 0x7f], 2 * i);
    const { out, end } = writeChunk(Array.from({ length: n }, (_, i) => i), records);
    const raw = reader.raw(out, readChunkHeader(out, 0, end));
    expect(Array.from(raw.subarray(0, n))).toEqual(new Array(n).fill(0));
  });
});

// ---------------------------------------------------------------- refusals

describe('every refusal, with its CodecError code', () => {
  const reader = new ChunkReader();
  const ok = handChunk(CHUNK_STORED, 1, 3, 3, [0, RECORD_ZERO, 1]);

  it('accepts the reference chunk the refusals below are cut from', () => {
    expect(readChunkHeader(ok, 0, ok.length)).toEqual({ method: CHUNK_STORED, records: 1, rawLength: 3, storedLength: 3, payloadStart: 5, end: 8 });
  });

  it('CHUNK_BAD_METHOD for any method but 0 and 1', () => {
    for (const method of [2, 3, 0x7f, 0x80, 0xff]) {
      const bytes = handChunk(method, 1, 3, 3, [0, RECORD_ZERO, 1]);
      expect(codeOf(() => readChunkHeader(bytes, 0, bytes.length)), `method ${method}`).toBe('CHUNK_BAD_METHOD');
    }
  });

  it('CHUNK_BAD_LENGTH for records 0 or above MAX_CHUNK_RECORDS; the limits themselves pass', () => {
    const payload = new Uint8Array(MAX_CHUNK_RECORDS + 8);
    for (const records of [0, MAX_CHUNK_RECORDS + 1, 2 ** 21 - 1]) {
      const bytes = handChunk(CHUNK_STORED, records, payload.length, payload.length, payload);
      expect(codeOf(() => readChunkHeader(bytes, 0, bytes.length)), `records ${records}`).toBe('CHUNK_BAD_LENGTH');
    }
    for (const records of [1, MAX_CHUNK_RECORDS]) {
      const bytes = handChunk(CHUNK_STORED, records, payload.length, payload.length, payload);
      expect(readChunkHeader(bytes, 0, bytes.length).records).toBe(records);
    }
  });

  it('CHUNK_BAD_LENGTH for rawLength 0 or above MAX_CHUNK_RAW_BYTES; MAX_CHUNK_RAW_BYTES passes', () => {
    const zero = handChunk(CHUNK_STORED, 1, 0, 0, []);
    expect(codeOf(() => readChunkHeader(zero, 0, zero.length))).toBe('CHUNK_BAD_LENGTH');
    const zeroZstd = handChunk(CHUNK_ZSTD, 1, 0, 0, []);
    expect(codeOf(() => readChunkHeader(zeroZstd, 0, zeroZstd.length))).toBe('CHUNK_BAD_LENGTH');
    const payload = new Uint8Array(MAX_CHUNK_RAW_BYTES + 1);
    const over = handChunk(CHUNK_STORED, 1, MAX_CHUNK_RAW_BYTES + 1, MAX_CHUNK_RAW_BYTES + 1, payload);
    expect(codeOf(() => readChunkHeader(over, 0, over.length))).toBe('CHUNK_BAD_LENGTH');
    const overZstd = handChunk(CHUNK_ZSTD, 1, MAX_CHUNK_RAW_BYTES + 1, 100, payload.subarray(0, 100));
    expect(codeOf(() => readChunkHeader(overZstd, 0, overZstd.length))).toBe('CHUNK_BAD_LENGTH');
    const max = handChunk(CHUNK_STORED, 1, MAX_CHUNK_RAW_BYTES, MAX_CHUNK_RAW_BYTES, payload.subarray(0, MAX_CHUNK_RAW_BYTES));
    expect(readChunkHeader(max, 0, max.length).rawLength).toBe(MAX_CHUNK_RAW_BYTES);
  });

  it('CHUNK_BAD_LENGTH for a stored chunk whose storedLength is not rawLength', () => {
    for (const stored of [2, 4, 0]) {
      const bytes = handChunk(CHUNK_STORED, 1, 3, stored, [0, RECORD_ZERO, 1, 9]);
      expect(codeOf(() => readChunkHeader(bytes, 0, bytes.length)), `storedLength ${stored}`).toBe('CHUNK_BAD_LENGTH');
    }
  });

  it('CHUNK_BAD_LENGTH for a zstd chunk whose storedLength is 0 or not below rawLength', () => {
    for (const stored of [0, 40, 41, 500]) {
      const bytes = handChunk(CHUNK_ZSTD, 1, 40, stored, new Uint8Array(stored));
      expect(codeOf(() => readChunkHeader(bytes, 0, bytes.length)), `storedLength ${stored}`).toBe('CHUNK_BAD_LENGTH');
    }
  });

  it('CHUNK_BAD_LENGTH for a length field longer than 3 bytes, even with a small value', () => {
    // records = 1 spelled in 4 bytes (0x81 0x80 0x80 0x00).
    const bytes = Uint8Array.from([RECORD_CHUNK, CHUNK_STORED, 0x81, 0x80, 0x80, 0x00, 3, 3, 0, RECORD_ZERO, 1]);
    expect(codeOf(() => readChunkHeader(bytes, 0, bytes.length))).toBe('CHUNK_BAD_LENGTH');
    const raw4 = Uint8Array.from([RECORD_CHUNK, CHUNK_STORED, 1, 0x83, 0x80, 0x80, 0x00, 3, 0, RECORD_ZERO, 1]);
    expect(codeOf(() => readChunkHeader(raw4, 0, raw4.length))).toBe('CHUNK_BAD_LENGTH');
  });

  it('CHUNK_TRUNCATED for every cut inside the header or the payload', () => {
    for (let cut = 0; cut < ok.length; cut++) {
      expect(codeOf(() => readChunkHeader(ok, 0, cut)), `cut at ${cut}`).toBe('CHUNK_TRUNCATED');
    }
    // The same at an offset: `end` is absolute, not a length.
    const shifted = Uint8Array.from([9, 9, ...ok]);
    expect(readChunkHeader(shifted, 2, shifted.length).end).toBe(shifted.length);
    expect(codeOf(() => readChunkHeader(shifted, 2, shifted.length - 1))).toBe('CHUNK_TRUNCATED');
  });

  /** A real zstd chunk to corrupt. */
  function zstdChunk(): { bytes: Uint8Array; h: ChunkHeader } {
    const { out, end } = writeChunk([0, 1, 2], new Uint8Array(3000).fill(RECORD_ZERO));
    const bytes = out.slice(0, end);
    const h = readChunkHeader(bytes, 0, end);
    expect(h.method).toBe(CHUNK_ZSTD);
    return { bytes, h };
  }

  it('CHUNK_BAD_PAYLOAD for a zstd payload that is not zstd, is cut short, or is garbage', () => {
    const { bytes, h } = zstdChunk();
    expect(reader.raw(bytes, h).length).toBe(h.rawLength);
    const badMagic = bytes.slice();
    badMagic[h.payloadStart] ^= 0xff;
    expect(codeOf(() => reader.raw(badMagic, h))).toBe('CHUNK_BAD_PAYLOAD');
    // The payload's last bytes missing (the header says so consistently).
    const cut = handChunk(CHUNK_ZSTD, h.records, h.rawLength, h.storedLength - 3, bytes.subarray(h.payloadStart, h.end - 3));
    const hc = readChunkHeader(cut, 0, cut.length);
    expect(codeOf(() => reader.raw(cut, hc))).toBe('CHUNK_BAD_PAYLOAD');
    const garbage = handChunk(CHUNK_ZSTD, 1, 1000, 200, randomBytes(200, 5));
    expect(codeOf(() => reader.raw(garbage, readChunkHeader(garbage, 0, garbage.length)))).toBe('CHUNK_BAD_PAYLOAD');
    // The reader is still good afterwards.
    expect(reader.raw(bytes, h).length).toBe(h.rawLength);
  });

  it('CHUNK_BAD_PAYLOAD for a zstd payload that decompresses to more or fewer bytes than rawLength', () => {
    const { bytes, h } = zstdChunk();
    const payload = bytes.subarray(h.payloadStart, h.end);
    for (const rawLength of [h.rawLength - 1, h.rawLength + 1, h.storedLength + 1, MAX_CHUNK_RAW_BYTES]) {
      const lying = handChunk(CHUNK_ZSTD, h.records, rawLength, h.storedLength, payload);
      const hl = readChunkHeader(lying, 0, lying.length);
      expect(codeOf(() => reader.raw(lying, hl)), `rawLength ${rawLength}`).toBe('CHUNK_BAD_PAYLOAD');
    }
  });

  it('CHUNK_BAD_INDEX for an index at or past the limit, also when reached through gaps', () => {
    const slots = new Int32Array(4);
    expect(codeOf(() => readChunkIndices(Uint8Array.of(10), 1, slots, 10))).toBe('CHUNK_BAD_INDEX');
    expect(readChunkIndices(Uint8Array.of(9), 1, slots, 10)).toBe(1);
    // 0, then gaps 3 and 5: indices 0, 4, 10.
    expect(codeOf(() => readChunkIndices(Uint8Array.of(0, 3, 5), 3, slots, 10))).toBe('CHUNK_BAD_INDEX');
    expect(readChunkIndices(Uint8Array.of(0, 3, 5), 3, slots, 11)).toBe(3);
    expect(Array.from(slots.subarray(0, 3))).toEqual([0, 4, 10]);
    // Gaps that sum past 2^31 must not wrap around to a small index.
    const huge = Uint8Array.from(Array.from({ length: 9 }, () => uleb(INDEX_LIMIT - 1)).flat());
    expect(codeOf(() => readChunkIndices(huge, 9, new Int32Array(9), 2 ** 31 - 1))).toBe('CHUNK_BAD_INDEX');
  });

  it('CHUNK_BAD_INDEX for an index or gap ULEB128 longer than 4 bytes; 4 bytes pass', () => {
    const slots = new Int32Array(2);
    expect(codeOf(() => readChunkIndices(Uint8Array.of(0x80, 0x80, 0x80, 0x80, 0x00), 1, slots, INDEX_LIMIT))).toBe('CHUNK_BAD_INDEX');
    expect(codeOf(() => readChunkIndices(Uint8Array.of(0, 0x81, 0x80, 0x80, 0x80, 0x00), 2, slots, INDEX_LIMIT))).toBe('CHUNK_BAD_INDEX');
    expect(readChunkIndices(Uint8Array.of(0xff, 0xff, 0xff, 0x7f), 1, slots, INDEX_LIMIT)).toBe(4);
    expect(slots[0]).toBe(INDEX_LIMIT - 1);
    expect(readChunkIndices(Uint8Array.of(0x81, 0x80, 0x80, 0x00), 1, slots, INDEX_LIMIT)).toBe(4);
    expect(slots[0]).toBe(1);
  });

  it('CHUNK_TRUNCATED for a raw chunk that ends inside its index section', () => {
    const slots = new Int32Array(3);
    expect(codeOf(() => readChunkIndices(Uint8Array.of(), 1, slots, 100))).toBe('CHUNK_TRUNCATED');
    expect(codeOf(() => readChunkIndices(Uint8Array.of(1, 2), 3, slots, 100))).toBe('CHUNK_TRUNCATED');
    expect(codeOf(() => readChunkIndices(Uint8Array.of(1, 0x80), 2, slots, 100))).toBe('CHUNK_TRUNCATED');
  });
});

// ---------------------------------------------------------------- sizing

/** A worst-case codec 1 record: the longest pfn, then a delta against a page differing in every word. */
function worstRecord(pageSize: number, seed: number): Uint8Array {
  const words = pageSize / 4;
  const cached = new Uint32Array(words);
  const cur = new Uint32Array(words);
  const rng = new Prng(seed);
  for (let w = 0; w < words; w++) {
    cached[w] = rng.next();
    cur[w] = ~cached[w] >>> 0;
  }
  const body = new Uint8Array(remusMaxEncodedBytes(pageSize));
  const n = encodeRemusDelta(cur, 0, cached, 0, words, body, 0);
  expect(n).toBe(remusMaxEncodedBytes(pageSize));
  const record = new Uint8Array(1 + MAX_PFN_BYTES + n);
  record[0] = RECORD_REMUS;
  const p = writeUleb128(record, 1, PFN_LIMIT - 1);
  expect(p).toBe(1 + MAX_PFN_BYTES);
  record.set(body.subarray(0, n), p);
  return record;
}

describe('chunkHasRoom / chunkLimitBytes', () => {
  const reader = new ChunkReader();

  it('chunkLimitBytes is CHUNK_TARGET_BYTES for large frames and frameBytes - header - chunk header below', () => {
    expect(chunkLimitBytes(16 * 1024 * 1024)).toBe(CHUNK_TARGET_BYTES);
    expect(chunkLimitBytes(1024 * 1024)).toBe(CHUNK_TARGET_BYTES);
    const edge = CHUNK_TARGET_BYTES + FRAME_HEADER_BYTES + CHUNK_HEADER_MAX_BYTES;
    expect(chunkLimitBytes(edge)).toBe(CHUNK_TARGET_BYTES);
    expect(chunkLimitBytes(edge - 1)).toBe(CHUNK_TARGET_BYTES - 1);
    expect(chunkLimitBytes(65536)).toBe(65536 - FRAME_HEADER_BYTES - CHUNK_HEADER_MAX_BYTES);
  });

  it('counts the index section at its largest: 4 bytes for the first index, 3 per further page', () => {
    expect(chunkHasRoom(0, 0, 96, 100)).toBe(true);
    expect(chunkHasRoom(0, 0, 97, 100)).toBe(false);
    expect(chunkHasRoom(50, 2, 40, 100)).toBe(true); // 4 + 6 + 50 + 40
    expect(chunkHasRoom(50, 2, 41, 100)).toBe(false);
    expect(chunkHasRoom(0, MAX_CHUNK_RECORDS - 1, 1, 2 ** 30)).toBe(true);
    expect(chunkHasRoom(0, MAX_CHUNK_RECORDS, 1, 2 ** 30)).toBe(false);
  });

  for (const pageSize of [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]) {
    it(`a frame of minFrameBytes(${pageSize}) takes a chunk of one worst-case record, and not a byte more`, () => {
      const frameBytes = minFrameBytes(pageSize);
      const worst = maxRecordBytes(pageSize);
      const limit = chunkLimitBytes(frameBytes);
      expect(chunkHasRoom(0, 0, worst, limit)).toBe(true);
      expect(chunkHasRoom(0, 0, worst + 1, limit)).toBe(false);
      expect(chunkHasRoom(0, 0, worst, limit - 1)).toBe(false);
      // A real one: worst-case body, longest pfn, the largest first index; incompressible, so stored.
      const record = worstRecord(pageSize, pageSize);
      expect(record.length).toBeLessThanOrEqual(worst);
      const { out, end } = writeChunk([INDEX_LIMIT - 1], record);
      const h = readChunkHeader(out, 0, end);
      expect(h.method).toBe(CHUNK_STORED);
      expect(h.rawLength).toBeLessThanOrEqual(limit);
      expect(FRAME_HEADER_BYTES + end).toBeLessThanOrEqual(frameBytes);
      // The rule the frame format states: the chunk adds at most CHUNK_OVERHEAD_BYTES to its record.
      expect(end - record.length).toBeLessThanOrEqual(CHUNK_OVERHEAD_BYTES);
      expect(Array.from(reader.raw(out, h).subarray(4))).toEqual(Array.from(record));
    });
  }

  it('greedy chunking with chunkHasRoom keeps every chunk record inside its frame (fast-check)', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(512, 4096, 65536),
        fc.nat({ max: 3 }),
        fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: 1, maxLength: 60 }),
        fc.nat({ max: 7 }),
        (pageSize, frameExtra, sizes, gap) => {
          const worst = maxRecordBytes(pageSize);
          const frameBytes = minFrameBytes(pageSize) + [0, 1, 4096, 65536][frameExtra];
          const limit = chunkLimitBytes(frameBytes);
          let recordBytes = 0;
          let index = 0;
          let indices: number[] = [];
          const flush = (): void => {
            const { end } = writeChunk(indices, randomBytes(recordBytes, indices[0] + 1));
            expect(FRAME_HEADER_BYTES + end).toBeLessThanOrEqual(frameBytes);
            recordBytes = 0;
            indices = [];
          };
          for (const s of sizes) {
            const size = Math.max(2, Math.round(s * worst));
            if (indices.length > 0 && !chunkHasRoom(recordBytes, indices.length, worst, limit)) flush();
            recordBytes += size;
            indices.push(index);
            index += 1 + gap;
          }
          flush();
        },
      ),
      { numRuns: 60 },
    );
  });
});


// ================================================================ receiver

const PS = 4096;


/** The frame is refused with `code`, and image, committed epoch and staging are as before. */
function expectRefused(rx: Receiver, frame: Uint8Array, code: string, what = ''): FrameError {
  const before = receiverSnapshot(rx);
  const err = refusal(rx, frame);
  expect(err.code, `${what}: ${err.message}`).toBe(code);
  expect(receiverSnapshot(rx), `${what}: state after the refusal`).toEqual(before);
  return err;
}


/** The chunk headers of a codec 3 frame's payload. */
function chunksOf(frame: Uint8Array): ChunkHeader[] {
  const out: ChunkHeader[] = [];
  let pos = FRAME_HEADER_BYTES;
  while (pos < frame.length) {
    const h = readChunkHeader(frame, pos, frame.length);
    out.push(h);
    pos = h.end;
  }
  return out;
}

/** A page that compresses: zeros with a few words set. */
function sparsePage(rng: Prng): Uint8Array {
  const page = new Uint8Array(PS);
  for (let k = 0; k < 6; k++) page[rng.below(PS)] = 1 + rng.below(255);
  return page;
}

const EPOCH0_PFNS = [10, 3, 2 ** 40 + 1, 7, 0, 99, 5, 6, 1000, 8, 9, 11];
/** Epoch 0's chunks, out of request order within and across frames (as two partitions would send them). */
const EPOCH0_LAYOUT = [
  [
    [1, 4, 7, 10],
    [0, 3],
  ],
  [
    [2, 5, 8, 11],
    [6, 9],
  ],
];

interface Scenario {
  rx: Receiver;
  model: SenderModel;
  /** Epoch 0 (RESYNC), committed. */
  r0: RecordSpec[];
  /** Epoch 1, 8 pages in request order, not applied. */
  r1: RecordSpec[];
}

/** A receiver that committed epoch 0 from codec 3 frames, and epoch 1's records: deltas, an unchanged page, ZERO, new pfns. */
function scenario(maxEpochBytes?: number): Scenario {
  const rng = new Prng(33);
  const model = new SenderModel(PS);
  const rx = new Receiver({ pageSize: PS, image: new MemoryImage(PS), ...(maxEpochBytes === undefined ? {} : { maxEpochBytes }) });
  const changes = EPOCH0_PFNS.map((pfn, i): [number, Uint8Array] => [pfn, [rng.page(PS), new Uint8Array(PS), sparsePage(rng), sparsePage(rng)][i % 4]]);
  const r0 = model.records(changes);
  for (const f of chunkedEpochFrames(r0, EPOCH0_LAYOUT, { epoch: 0, pageSize: PS, resync: true })) rx.applyFrame(f);
  model.commit(0, r0, true);
  return { rx, model, r0, r1: epoch1Records(model, rng) };
}

/** Epoch 1 over epoch 0: deltas, a zero page that got data, an unchanged page, a page that became zero, new pfns (one FULL and compressible). */
function epoch1Records(model: SenderModel, rng: Prng): RecordSpec[] {
  const page = (pfn: number): Uint8Array => model.pages.get(pfn) as Uint8Array;
  return model.records([
    [10, rng.touch(page(10), 3)],
    [3, sparsePage(rng)],
    [2 ** 40 + 1, rng.touch(page(2 ** 40 + 1), 1)],
    [6, page(6)],
    [7, new Uint8Array(PS)],
    [123456, rng.page(PS)],
    [1000, rng.touch(page(1000), 40)],
    [77, sparsePage(rng)],
  ]);
}

describe('codec 3 frames at the receiver', () => {
  it('stages chunks that arrive out of request order at their indices, and commits the request-order digest', () => {
    const rng = new Prng(33);
    const model = new SenderModel(PS);
    const rx = new Receiver({ pageSize: PS, image: new MemoryImage(PS) });
    const changes = EPOCH0_PFNS.map((pfn, i): [number, Uint8Array] => [pfn, [rng.page(PS), new Uint8Array(PS), sparsePage(rng), sparsePage(rng)][i % 4]]);
    const r0 = model.records(changes);
    const frames = chunkedEpochFrames(r0, EPOCH0_LAYOUT, { epoch: 0, pageSize: PS, resync: true });
    const first = rx.applyFrame(frames[0]);
    // ApplyResult.records counts page records, not chunks.
    expect(first).toMatchObject({ epoch: 0, sequence: 0, records: 6, committed: false });
    expect(rx.stagingState).toEqual({ epoch: 0, resync: true, nextSequence: 1, records: 6 });
    const last = rx.applyFrame(frames[1]);
    expect(last).toMatchObject({ sequence: 1, records: 6, committed: true });
    model.commit(0, r0, true);
    expectImage(rx, model);

    // The same pages as codec 1 frames give the same image.
    const plain = new Receiver({ pageSize: PS, image: new MemoryImage(PS) });
    for (const f of epochFrames(r0, { epoch: 0, pageSize: PS, resync: true, recordsPerFrame: 5 })) plain.applyFrame(f);
    expect(plain.imageDigest().equals(rx.imageDigest())).toBe(true);

    // Epoch 1: deltas against the committed pages, chunks in reverse order, over three frames.
    const r1 = epoch1Records(model, rng);
    const frames1 = chunkedEpochFrames(r1, [[[5, 6, 7]], [[1, 3], [4]], [[0, 2]]], { epoch: 1, pageSize: PS });
    const methods = new Set(frames1.flatMap(chunksOf).map((h) => h.method));
    expect(methods, 'both methods occur').toEqual(new Set([CHUNK_STORED, CHUNK_ZSTD]));
    expect(frames1.map((f) => rx.applyFrame(f).records)).toEqual([3, 3, 2]);
    model.commit(1, r1, false);
    expectImage(rx, model);
  });

  it('refuses a digest taken over arrival order: the pages are staged by index, not as they come', () => {
    const s = scenario();
    const layout = [[[5, 6, 7]], [[1, 3], [4]], [[0, 2]]];
    const arrival = layout.flat(2).map((i) => s.r1[i]);
    const frames = chunkedEpochFrames(s.r1, layout, { epoch: 1, pageSize: PS, epochDigest: epochDigest(arrival, PS, 1, false) });
    const before = receiverSnapshot(s.rx);
    s.rx.applyFrame(frames[0]);
    s.rx.applyFrame(frames[1]);
    expect(refusal(s.rx, frames[2]).code).toBe('FRAME_DIGEST_MISMATCH');
    expect(receiverSnapshot(s.rx)).toEqual({ ...before, staging: null });
    // The right digest over the same chunks commits.
    for (const f of chunkedEpochFrames(s.r1, layout, { epoch: 1, pageSize: PS })) s.rx.applyFrame(f);
    s.model.commit(1, s.r1, false);
    expectImage(s.rx, s.model);
  });

  /**
   * Bad frames of epoch 1, each standing where a good frame would. `restart`
   * says whether the same payload is also bad as a sequence-0 frame (it
   * does not lean on what frame 0 staged).
   */
  function badFrames(s: Scenario): { name: string; code: string; message?: string; restart: boolean; payload: Uint8Array[]; recordCount?: number; codec?: number }[] {
    const rec = (i: number): Uint8Array => recordBytes(s.r1[i]);
    const corrupt = chunkRecord([1, 7], [rec(1), rec(7)]);
    const ch = readChunkHeader(corrupt, 0, corrupt.length);
    expect(ch.method).toBe(CHUNK_ZSTD);
    corrupt[ch.payloadStart] ^= 0xff; // the zstd magic
    const delta = s.r1[0]; // pfn 10, a delta
    const deltaWithoutBase = recordBytes({ ...delta, pfn: 555555 });
    return [
      { name: 'a top-level REMUS record', code: 'FRAME_BAD_RECORD', message: 'hold only chunks', restart: true, payload: [rec(1)] },
      { name: 'a top-level ZERO record', code: 'FRAME_BAD_RECORD', message: 'hold only chunks', restart: true, payload: [rec(4)] },
      {
        name: 'a chunk inside a chunk',
        code: 'FRAME_BAD_RECORD',
        message: 'unknown type 3',
        restart: true,
        payload: [storedChunk(1, concat([chunkIndexSection([1]), chunkRecord([1], [rec(1)])]))],
      },
      { name: 'an unknown inner record type', code: 'FRAME_BAD_RECORD', message: 'unknown type 7', restart: true, payload: [storedChunk(1, Uint8Array.of(1, 7, 5))] },
      {
        name: 'a duplicate index across two chunks of the frame',
        code: 'FRAME_BAD_RECORD',
        message: 'already has a record',
        restart: true,
        payload: [chunkRecord([1, 3], [rec(1), rec(3)]), chunkRecord([3], [rec(5)])],
      },
      { name: 'an index staged by an earlier frame', code: 'FRAME_BAD_RECORD', message: 'already has a record', restart: false, payload: [chunkRecord([2], [rec(1)])] },
      { name: 'a pfn staged by an earlier frame', code: 'FRAME_DUPLICATE_PFN', restart: false, payload: [chunkRecord([1], [rec(0)])] },
      { name: 'a pfn twice in the frame', code: 'FRAME_DUPLICATE_PFN', restart: true, payload: [chunkRecord([1], [rec(1)]), chunkRecord([3], [rec(1)])] },
      { name: 'fewer chunks than recordCount', code: 'FRAME_BAD_RECORD', restart: true, payload: [chunkRecord([1], [rec(1)])], recordCount: 2 },
      { name: 'a chunk holding fewer records than it claims', code: 'FRAME_BAD_RECORD', restart: true, payload: [storedChunk(2, concat([chunkIndexSection([1, 3]), rec(1)]))] },
      {
        name: 'bytes after the records of a chunk',
        code: 'FRAME_TRAILING_BYTES',
        restart: true,
        payload: [storedChunk(1, concat([chunkIndexSection([1]), rec(4), Uint8Array.of(0)]))],
      },
      { name: 'bytes after the last chunk', code: 'FRAME_TRAILING_BYTES', restart: true, payload: [chunkRecord([1], [rec(1)]), Uint8Array.of(RECORD_CHUNK)], recordCount: 1 },
      { name: 'a corrupt zstd payload', code: 'FRAME_BAD_RECORD', message: 'CHUNK_BAD_PAYLOAD', restart: true, payload: [corrupt] },
      { name: 'an unknown chunk method', code: 'FRAME_BAD_RECORD', message: 'CHUNK_BAD_METHOD', restart: true, payload: [Uint8Array.of(RECORD_CHUNK, 9, 1, 3, 3, 1, RECORD_ZERO, 5)] },
      {
        name: 'an index ULEB128 of 5 bytes',
        code: 'FRAME_BAD_RECORD',
        message: 'CHUNK_BAD_INDEX',
        restart: true,
        payload: [storedChunk(1, concat([Uint8Array.of(0x81, 0x80, 0x80, 0x80, 0x00), rec(4)]))],
      },
      { name: 'a delta for a pfn the image lacks', code: 'FRAME_DELTA_WITHOUT_BASE', restart: true, payload: [chunkRecord([1], [deltaWithoutBase])] },
      { name: 'codec 1 frame in a codec 3 epoch', code: 'FRAME_BAD_CODEC', restart: false, payload: [rec(1)], codec: CODEC_REMUS },
    ];
  }

  it('refuses each bad frame with its code, leaving image and staging as they were; the good frames still apply', () => {
    const s = scenario();
    const layout = [[[0, 2]], [[1, 3], [4, 5, 6, 7]]];
    const good = chunkedEpochFrames(s.r1, layout, { epoch: 1, pageSize: PS });
    s.rx.applyFrame(good[0]);
    const staged = s.rx.stagingState;
    expect(staged).toEqual({ epoch: 1, resync: false, nextSequence: 1, records: 2 });
    for (const bad of badFrames(s)) {
      for (const last of [false, true]) {
        const frame = buildFrame(
          {
            epoch: 1,
            sequence: 1,
            codec: bad.codec ?? CODEC_REMUS_ZSTD,
            flags: last ? FLAG_LAST : 0,
            recordCount: bad.recordCount ?? bad.payload.length,
            epochPageCount: last ? s.r1.length : 0,
            epochDigest: last ? epochDigest(s.r1, PS, 1, false) : undefined,
          },
          concat(bad.payload),
          PS,
        );
        const err = expectRefused(s.rx, frame, bad.code, `${bad.name}${last ? ' (LAST)' : ''}`);
        if (bad.message !== undefined) expect(err.message, bad.name).toContain(bad.message);
        expect(s.rx.stagingState).toEqual(staged);
      }
    }
    s.rx.applyFrame(good[1]);
    s.model.commit(1, s.r1, false);
    expectImage(s.rx, s.model);
  });

  it('refuses the same bad frames as a restart (sequence 0 over a staged frame), keeping the older staging', () => {
    const s = scenario();
    const good = chunkedEpochFrames(s.r1, [[[0, 2]], [[1, 3], [4, 5, 6, 7]]], { epoch: 1, pageSize: PS });
    s.rx.applyFrame(good[0]);
    const staged = s.rx.stagingState;
    for (const bad of badFrames(s).filter((b) => b.restart)) {
      const frame = chunkFrame({ epoch: 1, sequence: 0, recordCount: bad.recordCount ?? bad.payload.length }, bad.payload, PS);
      // Refused the same way with and without a staging to keep.
      const fresh = scenario();
      expectRefused(fresh.rx, frame, bad.code, `${bad.name} (first frame)`);
      const err = expectRefused(s.rx, frame, bad.code, `${bad.name} (restart)`);
      if (bad.message !== undefined) expect(err.message, bad.name).toContain(bad.message);
      expect(s.rx.stagingState).toEqual(staged);
    }
    s.rx.applyFrame(good[1]);
    s.model.commit(1, s.r1, false);
    expectImage(s.rx, s.model);
  });

  it('FRAME_COUNT_MISMATCH when an index is missing though the count is right, and when the counts differ', () => {
    const s = scenario();
    const four = s.r1.slice(0, 4);
    const digest = epochDigest(s.r1.slice(0, 3), PS, 1, false);
    const before = receiverSnapshot(s.rx);
    const cases: { name: string; frames: Uint8Array[] }[] = [
      {
        name: 'indices 0, 1, 3 for a count of 3',
        frames: [chunkFrame({ epoch: 1, sequence: 0, flags: FLAG_LAST, epochPageCount: 3, epochDigest: digest }, [chunkRecord([0, 1, 3], [0, 1, 3].map((i) => recordBytes(four[i])))], PS)],
      },
      {
        name: 'a hole across frames: 0 and 2, then 3, for a count of 3',
        frames: [
          chunkFrame({ epoch: 1, sequence: 0 }, [chunkRecord([0, 2], [recordBytes(four[0]), recordBytes(four[2])])], PS),
          chunkFrame({ epoch: 1, sequence: 1, flags: FLAG_LAST, epochPageCount: 3, epochDigest: digest }, [chunkRecord([3], [recordBytes(four[3])])], PS),
        ],
      },
      { name: 'three pages for a count of 4', frames: chunkedEpochFrames(s.r1.slice(0, 3), [[[2], [0, 1]]], { epoch: 1, pageSize: PS, epochPageCount: 4 }) },
      { name: 'three pages for a count of 2', frames: chunkedEpochFrames(s.r1.slice(0, 3), [[[0, 1]], [[2]]], { epoch: 1, pageSize: PS, epochPageCount: 2 }) },
    ];
    for (const c of cases) {
      for (const f of c.frames.slice(0, -1)) s.rx.applyFrame(f);
      const err = refusal(s.rx, c.frames[c.frames.length - 1]);
      expect(err.code, `${c.name}: ${err.message}`).toBe('FRAME_COUNT_MISMATCH');
      // A count mismatch discards the staged epoch; the image stays at epoch 0.
      expect(receiverSnapshot(s.rx), c.name).toEqual({ ...before, staging: null });
    }
    for (const f of chunkedEpochFrames(s.r1, [[[1, 3, 5, 7]], [[0, 2, 4, 6]]], { epoch: 1, pageSize: PS })) s.rx.applyFrame(f);
    s.model.commit(1, s.r1, false);
    expectImage(s.rx, s.model);
  });

  it('FRAME_EPOCH_TOO_LARGE past maxEpochBytes, counted in pages, staging kept', () => {
    const s = scenario(16 * PS);
    const rng = new Prng(5);
    const model = new SenderModel(PS);
    const rx = new Receiver({ pageSize: PS, image: new MemoryImage(PS), maxEpochBytes: 4 * PS });
    const r = model.records(Array.from({ length: 5 }, (_, i): [number, Uint8Array] => [i, i % 2 === 0 ? sparsePage(rng) : rng.page(PS)]));
    const rec = (i: number): Uint8Array => recordBytes(r[i]);
    const digest5 = epochDigest(r, PS, 0, true);
    // Five chunks in one frame: more records than the bound, before any is decoded.
    expectRefused(rx, chunkFrame({ epoch: 0, sequence: 0, flags: FLAG_RESYNC }, [0, 1, 2, 3, 4].map((i) => chunkRecord([i], [rec(i)])), PS), 'FRAME_EPOCH_TOO_LARGE', 'five chunks');
    // One chunk of five pages: the epoch is past the bound just the same.
    expectRefused(
      rx,
      chunkFrame({ epoch: 0, sequence: 0, flags: FLAG_RESYNC | FLAG_LAST, epochPageCount: 5, epochDigest: digest5 }, [chunkRecord([0, 1, 2, 3, 4], r.map((x) => recordBytes(x)))], PS),
      'FRAME_EPOCH_TOO_LARGE',
      'one chunk of five pages',
    );
    // Three pages staged, then a chunk of two: five pages in all.
    rx.applyFrame(chunkFrame({ epoch: 0, sequence: 0, flags: FLAG_RESYNC }, [chunkRecord([0, 1, 2], [rec(0), rec(1), rec(2)])], PS));
    expectRefused(rx, chunkFrame({ epoch: 0, sequence: 1, flags: FLAG_RESYNC }, [chunkRecord([3, 4], [rec(3), rec(4)])], PS), 'FRAME_EPOCH_TOO_LARGE', 'three then two');
    expect(rx.stagingState).toEqual({ epoch: 0, resync: true, nextSequence: 1, records: 3 });
    // The same as a restart over the three staged pages: five pages in one frame, the staging kept.
    expectRefused(
      rx,
      chunkFrame({ epoch: 0, sequence: 0, flags: FLAG_RESYNC }, [chunkRecord([0, 1, 2], [rec(0), rec(1), rec(2)]), chunkRecord([2, 3], [rec(3), rec(4)])], PS),
      'FRAME_EPOCH_TOO_LARGE',
      'restart: three then two in one frame',
    );
    // A good restart replaces the staging.
    rx.applyFrame(chunkFrame({ epoch: 0, sequence: 0, flags: FLAG_RESYNC }, [chunkRecord([2], [rec(2)]), chunkRecord([0, 1], [rec(0), rec(1)])], PS));
    expect(rx.stagingState).toEqual({ epoch: 0, resync: true, nextSequence: 1, records: 3 });
    // Four pages fit exactly.
    const four = r.slice(0, 4);
    rx.applyFrame(chunkFrame({ epoch: 0, sequence: 1, flags: FLAG_RESYNC | FLAG_LAST, epochPageCount: 4, epochDigest: epochDigest(four, PS, 0, true) }, [chunkRecord([3], [rec(3)])], PS));
    model.commit(0, four, true);
    expectImage(rx, model);
    // A scenario receiver with a larger bound takes an epoch of 8 pages.
    for (const f of chunkedEpochFrames(s.r1, [[[0, 1, 2, 3, 4, 5, 6, 7]]], { epoch: 1, pageSize: PS })) s.rx.applyFrame(f);
    s.model.commit(1, s.r1, false);
    expectImage(s.rx, s.model);
  });

  it('applies a codec 3 epoch after a codec 1 epoch, and an ABORT of a codec 3 epoch drops its staging', () => {
    const s = scenario();
    const codec1 = epochFrames(s.r1, { epoch: 1, pageSize: PS, recordsPerFrame: 3 });
    for (const f of codec1) s.rx.applyFrame(f);
    s.model.commit(1, s.r1, false);
    const page = (pfn: number): Uint8Array => s.model.pages.get(pfn) as Uint8Array;
    const rng = new Prng(9);
    const r2 = s.model.records([
      [10, rng.touch(page(10), 2)],
      [77, rng.touch(page(77), 2)],
    ]);
    const frames = chunkedEpochFrames(r2, [[[1]], [[0]]], { epoch: 2, pageSize: PS });
    s.rx.applyFrame(frames[0]);
    expect(s.rx.stagingState?.records).toBe(1);
    s.rx.applyFrame(encodeAbortFrame(2, 1, 12, 0, 'TEST', 'drop it', CODEC_REMUS_ZSTD));
    expect(s.rx.stagingState).toBeNull();
    for (const f of frames) s.rx.applyFrame(f);
    s.model.commit(2, r2, false);
    expectImage(s.rx, s.model);
  });
});

// ================================================================ inspect

describe('inspect: countRecords under codec 3', () => {
  it('counts the page records inside the chunks by kind', () => {
    const s = scenario();
    const kinds = s.r1.map((r) => (r.type === RECORD_ZERO ? 'zero' : r.body[0] === 0x80 ? 'full' : r.body.length === 1 ? 'empty' : 'delta'));
    const expected = { zero: 0, full: 0, empty: 0, delta: 0 };
    for (const k of kinds) expected[k]++;
    expect(expected.zero).toBeGreaterThan(0);
    expect(expected.full).toBeGreaterThan(0);
    expect(expected.empty).toBeGreaterThan(0);
    expect(expected.delta).toBeGreaterThan(0);
    const frames = chunkedEpochFrames(s.r1, [[[0, 2, 5], [1], [3, 4, 6, 7]]], { epoch: 1, pageSize: PS });
    const payload = frames[0].subarray(FRAME_HEADER_BYTES);
    expect(chunksOf(frames[0]).map((h) => h.method)).toContain(CHUNK_ZSTD);
    expect(countRecords(payload, 3, PS, CODEC_REMUS_ZSTD)).toEqual({ counts: expected });
    // Read as codec 1, the same payload is not page records.
    expect(countRecords(payload, 3, PS, CODEC_REMUS).error).toBeDefined();
  });

  it('reports an error, naming the chunk, for a corrupt chunk or a payload that is not chunks', () => {
    const s = scenario();
    const rec = (i: number): Uint8Array => recordBytes(s.r1[i]);
    const good = chunkRecord([0], [rec(0)]);
    const corrupt = chunkRecord([1, 7], [rec(1), rec(7)]);
    const h = readChunkHeader(corrupt, 0, corrupt.length);
    expect(h.method).toBe(CHUNK_ZSTD);
    corrupt[h.payloadStart + 1] ^= 0xff;
    const cases: [string, Uint8Array[], number, RegExp][] = [
      ['a corrupt zstd payload', [good, corrupt], 2, /chunk 1 .*zstd/],
      ['a zstd payload with a lying rawLength', [good, handChunk(CHUNK_ZSTD, h.records, h.rawLength + 1, h.storedLength, corrupt.subarray(h.payloadStart, h.end))], 2, /chunk 1/],
      ['an unknown method', [Uint8Array.of(RECORD_CHUNK, 7, 1, 3, 3, 1, RECORD_ZERO, 5)], 1, /chunk 0/],
      ['a page record at top level', [good, rec(4)], 2, /chunk 1 .*expected a chunk/],
      ['a chunk inside a chunk', [storedChunk(1, concat([chunkIndexSection([0]), good]))], 1, /chunk 0 .*unknown record type 3/],
      ['a chunk short of its records', [storedChunk(2, concat([chunkIndexSection([0, 1]), rec(4)]))], 1, /chunk 0/],
      ['bytes after a chunk\'s records', [storedChunk(1, concat([chunkIndexSection([0]), rec(4), Uint8Array.of(9)]))], 1, /chunk 0/],
      ['a truncated chunk', [good.subarray(0, good.length - 1)], 1, /chunk 0/],
      ['fewer chunks than recordCount', [good], 2, /chunk 1/],
      ['bytes after the last chunk', [good, Uint8Array.of(0)], 1, /after the last chunk/],
    ];
    for (const [name, parts, count, pattern] of cases) {
      const result = countRecords(concat(parts), count, PS, CODEC_REMUS_ZSTD);
      expect(result.error, name).toMatch(pattern);
    }
  });

  it('inspectFile reads a codec 3 frame stream without errors and totals the pages inside its chunks', async () => {
    const s = scenario();
    const frames = chunkedEpochFrames(s.r1, [[[1, 3, 5, 7]], [[0, 2, 4, 6]]], { epoch: 1, pageSize: PS });
    const dir = mkdtempSync(join(tmpdir(), 'remus-chunk-'));
    try {
      const file = join(dir, 'frames.rmfr');
      writeFileSync(file, concat(frames));
      const report = await inspectFile(file);
      expect(report.kind).toBe('frames');
      if (report.kind !== 'frames') return;
      expect(reportHasErrors(report)).toBe(false);
      expect(report.frames.map((f) => [f.codec, f.recordCount])).toEqual([
        [CODEC_REMUS_ZSTD, 1],
        [CODEC_REMUS_ZSTD, 1],
      ]);
      const t = report.totals.records;
      expect(t.zero + t.full + t.empty + t.delta).toBe(s.r1.length);
      // A flipped byte in a zstd payload (CRC resealed) is a record error.
      const bad = Uint8Array.from(frames[0]);
      const h = chunksOf(bad)[0];
      bad[h.payloadStart] ^= 0xff;
      writeFileSync(file, reseal(bad));
      const badReport = await inspectFile(file);
      expect(badReport.kind === 'frames' && badReport.frames[0].recordError).toMatch(/chunk 0/);
      expect(reportHasErrors(badReport)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
