/**
 * Codec 3 (remus-zstd): the seed's page records, grouped into chunks that are
 * compressed with zstd as a second stage. See docs/FORMAT.md "Codec 3".
 *
 * Why chunks and not pages: most of the seed's bytes on real memory are FULL
 * pages for cache misses, and a miss compresses well only with some context;
 * deltas (a few changed words per page) compress only when many are seen
 * together. Measured on the python and redis traces (32 MiB cache), zstd -1
 * over chunks of >= 128 records halves the python output and divides redis'
 * by 4.6, where one zstd frame per page or lz4 over chunks do not reach half
 * (level 2 is used: see CHUNK_ZSTD_LEVEL).
 *
 * A chunk record:
 *   RECORD_CHUNK              u8
 *   method                    u8      CHUNK_STORED or CHUNK_ZSTD
 *   records                   ULEB128 page records inside, 1..MAX_CHUNK_RECORDS
 *   rawLength                 ULEB128 bytes of the raw chunk, 1..MAX_CHUNK_RAW_BYTES
 *   storedLength              ULEB128 bytes that follow (= rawLength when stored)
 *   payload                   storedLength bytes: the raw chunk, as it is or zstd-compressed
 * The raw chunk is the pages' places in the epoch, then their records:
 *   first index               ULEB128 request-order index of the first page
 *   gaps                      ULEB128 x (records - 1): index - previous index - 1
 *   page records              codec 1's (RECORD_REMUS, RECORD_ZERO), never a chunk
 * Why the indices: a worker's chunk holds only its partition's pages (pfn mod
 * partitions), so chunks arrive out of request order, and the epoch digest is
 * defined over request order; the receiver stages each page at its index.
 * Gaps are below the partition count, one byte each before compression.
 *
 * Nothing here allocates per page: the encoder and decoder each own one zstd
 * context and one scratch slab; the zstd calls take a view per chunk.
 */
import zstd from 'zstd-napi/binding.js';
import { CodecError } from '../errors.js';
import { CHUNK_HEADER_MAX_BYTES, FRAME_HEADER_BYTES, RECORD_CHUNK, writeUleb128 } from '../wire.js';

/** Payload is the page records as they are (compression did not pay). */
export const CHUNK_STORED = 0;
/** Payload is one or more zstd frames that decompress to exactly rawLength bytes. */
export const CHUNK_ZSTD = 1;

/**
 * The encoder closes a chunk before it could pass this many raw bytes: large
 * enough that zstd sees 64 FULL pages or hundreds of deltas (no gain measured
 * past 128 records), small enough to bound the receiver's scratch.
 */
export const CHUNK_TARGET_BYTES = 256 * 1024;
/** The largest rawLength a receiver accepts: a target chunk plus one worst-case record of a 64 KiB page, rounded up. */
export const MAX_CHUNK_RAW_BYTES = 512 * 1024;
/** ULEB128 bytes of a length up to MAX_CHUNK_RAW_BYTES (2^19 needs 3): CHUNK_HEADER_MAX_BYTES counts on it. */
const MAX_LENGTH_BYTES = 3;

/** ULEB128 bytes of a first index below 2^28 (CHUNK_OVERHEAD_BYTES counts on it). */
const CHUNK_FIRST_INDEX_MAX_BYTES = 4;
/** First indices are below 2^28 (4 ULEB128 bytes), gaps below 2^21 (3): what the index reserve is sized for. */
const MAX_FIRST_INDEX = 2 ** 28;
const MAX_GAP = 2 ** 21;
/** Most page records in one chunk: bounds the index section the encoder reserves and the receiver parses. */
export const MAX_CHUNK_RECORDS = 4096;
/**
 * Encoder scratch reserved in front of a chunk's records for its index
 * section: a first index below 2^28 and gaps below 2^21 (a batch holds at
 * most 2^14 pages).
 */
export const CHUNK_INDEX_RESERVE_BYTES = CHUNK_FIRST_INDEX_MAX_BYTES + 3 * MAX_CHUNK_RECORDS;

/**
 * zstd level of the second stage. Level 2 against 1 on the kernel bench's
 * ours-zstd row (node dist/bench/kernel.js over the five traces, runs of
 * 04:31 and 05:02 UTC on 2026-11-26): out/in python 1.09% -> 1.00%, redis
 * 2.65% -> 2.58%, postgres 4.02% -> 3.71%, sqlite 8.75% -> 8.45%, node
 * 16.06% -> 15.26%, for 1-11% of encode speed (python 2.55 -> 2.42 GB/s,
 * sqlite 0.90 -> 0.80). Chosen for python, the tightest case against the
 * seed's bytes (0.48x -> 0.44x).
 */
export const CHUNK_ZSTD_LEVEL = 2;

/** Indices and gaps are below 2^28: ULEB128 in at most 4 bytes. */
const MAX_INDEX_BYTES = CHUNK_FIRST_INDEX_MAX_BYTES;
const ULEB_PAYLOAD_MASK = 0x7f;
const ULEB_CONTINUE = 0x80;

/**
 * The raw-bytes limit of a stream's chunks: CHUNK_TARGET_BYTES, or less when
 * the frames are too small for a chunk that size (a chunk record never spans
 * frames). A chunk of one worst-case record always fits, because
 * minFrameBytes leaves CHUNK_OVERHEAD_BYTES for it.
 */
export function chunkLimitBytes(frameBytes: number): number {
  return Math.min(CHUNK_TARGET_BYTES, frameBytes - FRAME_HEADER_BYTES - CHUNK_HEADER_MAX_BYTES);
}

/**
 * Whether a chunk of `records` records taking `recordBytes` can take one more
 * record of up to `nextRecordBytes` and stay within `limit` raw bytes,
 * counting the index section at its largest (first index 4 bytes, gaps 3).
 */
export function chunkHasRoom(recordBytes: number, records: number, nextRecordBytes: number, limit: number): boolean {
  return records < MAX_CHUNK_RECORDS && CHUNK_FIRST_INDEX_MAX_BYTES + 3 * records + recordBytes + nextRecordBytes <= limit;
}

/**
 * Compresses the page records a worker gathered in its scratch and writes
 * them out as one chunk record. One per worker thread.
 */
export class ChunkWriter {
  private readonly cctx = new zstd.CCtx();

  /**
   * Write the chunk whose page records are scratch[CHUNK_INDEX_RESERVE_BYTES,
   * recordsEnd), for the pages whose request-order indices are
   * indices[first, end), at out[pos..]; returns the end. The index section
   * goes just in front of the records. The caller guarantees
   * CHUNK_HEADER_MAX_BYTES + the raw chunk's bytes are free at `pos` (a
   * stored chunk takes that much).
   */
  write(scratch: Uint8Array, recordsEnd: number, indices: Int32Array, first: number, end: number, out: Uint8Array, pos: number): number {
    const records = end - first;
    if (records < 1 || records > MAX_CHUNK_RECORDS) throw new RangeError(`ChunkWriter.write: ${records} records in one chunk`);
    // The reserve in front of the records holds a first index below 2^28 and gaps below 2^21.
    if (indices[first] < 0 || indices[first] >= MAX_FIRST_INDEX) throw new RangeError(`ChunkWriter.write: first index ${indices[first]}`);
    let indexBytes = ulebBytes(indices[first]);
    for (let k = first + 1; k < end; k++) {
      const gap = indices[k] - indices[k - 1] - 1;
      if (gap < 0 || gap >= MAX_GAP) throw new RangeError(`ChunkWriter.write: indices ${indices[k - 1]}, ${indices[k]} do not increase by less than 2^21`);
      indexBytes += ulebBytes(gap);
    }
    const rawStart = CHUNK_INDEX_RESERVE_BYTES - indexBytes;
    let p = writeUleb128(scratch, rawStart, indices[first]);
    for (let k = first + 1; k < end; k++) p = writeUleb128(scratch, p, indices[k] - indices[k - 1] - 1);
    const rawLength = recordsEnd - rawStart;
    if (rawLength > MAX_CHUNK_RAW_BYTES) throw new RangeError(`ChunkWriter.write: raw chunk of ${rawLength} bytes`);
    if (pos < 0 || pos + CHUNK_HEADER_MAX_BYTES + rawLength > out.length) {
      throw new RangeError(`ChunkWriter.write: ${CHUNK_HEADER_MAX_BYTES + rawLength} bytes at ${pos} do not fit output of ${out.length} bytes`);
    }
    const raw = scratch.subarray(rawStart, recordsEnd);
    out[pos++] = RECORD_CHUNK;
    const methodPos = pos++;
    pos = writeUleb128(out, pos, records);
    pos = writeUleb128(out, pos, rawLength);
    // The stored length is known only after compressing: the payload goes
    // after room for rawLength's ULEB128 (storedLength is never longer) and
    // moves back if the field turns out shorter.
    const lengthPos = pos;
    const payloadPos = lengthPos + ulebBytes(rawLength);
    let storedLength = 0;
    try {
      // Room for less than the raw chunk: anything longer is not worth it,
      // and zstd then refuses with "destination buffer is too small".
      storedLength = this.cctx.compress(out.subarray(payloadPos, payloadPos + rawLength - 1), raw, CHUNK_ZSTD_LEVEL);
    } catch (err) {
      if (!(err instanceof Error) || !/too small/i.test(err.message)) throw err;
      storedLength = 0;
    }
    if (storedLength > 0) {
      out[methodPos] = CHUNK_ZSTD;
      const payloadEnd = writeUleb128(out, lengthPos, storedLength);
      if (payloadEnd !== payloadPos) out.copyWithin(payloadEnd, payloadPos, payloadPos + storedLength);
      return payloadEnd + storedLength;
    }
    out[methodPos] = CHUNK_STORED;
    pos = writeUleb128(out, lengthPos, rawLength);
    out.set(raw, pos);
    return pos + rawLength;
  }
}

/** Bytes of `value` as ULEB128 (value below 2^28). */
function ulebBytes(value: number): number {
  let n = 1;
  while (value >= ULEB_CONTINUE) {
    value >>>= 7;
    n++;
  }
  return n;
}

/** A chunk record's header, checked against the bytes available. */
export interface ChunkHeader {
  method: number;
  records: number;
  rawLength: number;
  storedLength: number;
  /** Offset of the payload in the input. */
  payloadStart: number;
  /** Offset just after the chunk record. */
  end: number;
}

/**
 * Parse the chunk record at input[pos] (its type byte) up to `end`. Throws
 * CodecError: CHUNK_TRUNCATED, CHUNK_BAD_METHOD, CHUNK_BAD_LENGTH.
 */
export function readChunkHeader(input: Uint8Array, pos: number, end: number): ChunkHeader {
  const start = pos;
  if (end - pos < 2) throw new CodecError('CHUNK_TRUNCATED', 'input ends inside a chunk header', pos);
  pos++; // RECORD_CHUNK, checked by the caller
  const method = input[pos];
  if (method !== CHUNK_STORED && method !== CHUNK_ZSTD) {
    throw new CodecError('CHUNK_BAD_METHOD', `chunk method ${method}, expected ${CHUNK_STORED} (stored) or ${CHUNK_ZSTD} (zstd)`, pos);
  }
  pos++;
  const fields = [0, 0, 0];
  for (let f = 0; f < 3; f++) {
    let value = 0;
    let shift = 0;
    for (let n = 0; ; n++) {
      if (pos >= end) throw new CodecError('CHUNK_TRUNCATED', 'input ends inside a chunk header', pos);
      if (n === MAX_LENGTH_BYTES) throw new CodecError('CHUNK_BAD_LENGTH', `chunk length field longer than ${MAX_LENGTH_BYTES} bytes`, pos);
      const b = input[pos++];
      value |= (b & ULEB_PAYLOAD_MASK) << shift;
      shift += 7;
      if ((b & ULEB_CONTINUE) === 0) break;
    }
    fields[f] = value;
  }
  const [records, rawLength, storedLength] = fields;
  if (records < 1 || records > MAX_CHUNK_RECORDS) {
    throw new CodecError('CHUNK_BAD_LENGTH', `chunk of ${records} records, expected 1..${MAX_CHUNK_RECORDS}`, start);
  }
  if (rawLength < 1 || rawLength > MAX_CHUNK_RAW_BYTES) {
    throw new CodecError('CHUNK_BAD_LENGTH', `chunk rawLength ${rawLength}, expected 1..${MAX_CHUNK_RAW_BYTES}`, start);
  }
  if (method === CHUNK_STORED ? storedLength !== rawLength : storedLength < 1 || storedLength >= rawLength) {
    throw new CodecError(
      'CHUNK_BAD_LENGTH',
      `chunk storedLength ${storedLength} with rawLength ${rawLength}: a stored chunk has them equal, a zstd chunk is shorter than its records`,
      start,
    );
  }
  if (end - pos < storedLength) {
    throw new CodecError('CHUNK_TRUNCATED', `chunk payload of ${storedLength} bytes, ${end - pos} left`, pos);
  }
  return { method, records, rawLength, storedLength, payloadStart: pos, end: pos + storedLength };
}

/**
 * Read a raw chunk's index section: `count` request-order indices into
 * slots[0, count), each below `limit`. Returns the offset of the first page
 * record. Throws CodecError CHUNK_BAD_INDEX (past `limit`, or a ULEB128
 * longer than 4 bytes) or CHUNK_TRUNCATED.
 */
export function readChunkIndices(raw: Uint8Array, count: number, slots: Int32Array, limit: number): number {
  let pos = 0;
  let slot = -1;
  for (let k = 0; k < count; k++) {
    let value = 0;
    let shift = 0;
    for (let n = 0; ; n++) {
      if (pos >= raw.length) throw new CodecError('CHUNK_TRUNCATED', `the chunk ends inside index ${k} of ${count}`, pos);
      if (n === MAX_INDEX_BYTES) throw new CodecError('CHUNK_BAD_INDEX', `index ${k} is longer than ${MAX_INDEX_BYTES} bytes`, pos);
      const b = raw[pos++];
      value |= (b & ULEB_PAYLOAD_MASK) << shift;
      shift += 7;
      if ((b & ULEB_CONTINUE) === 0) break;
    }
    slot += value + 1;
    if (slot >= limit) throw new CodecError('CHUNK_BAD_INDEX', `page ${k} of the chunk has index ${slot}, past the epoch bound of ${limit} pages`, pos);
    slots[k] = slot;
  }
  return pos;
}

/** A chunk ChunkReader.open() has read. */
export interface OpenChunk {
  header: ChunkHeader;
  /** Index section, then page records; valid until the reader's next call. */
  raw: Uint8Array;
  /** Offset in `raw` of the first page record. */
  recordsStart: number;
}

/**
 * Turns a chunk's payload back into its page records. One per receiver; the
 * scratch is reused by every chunk, so the records returned are valid until
 * the next call.
 */
export class ChunkReader {
  private readonly dctx = new zstd.DCtx();
  private readonly scratch: Uint8Array;
  /** The request-order indices of the last chunk open() read, in [0, its records). */
  readonly indices = new Int32Array(MAX_CHUNK_RECORDS);

  /**
   * `scratch` (at least MAX_CHUNK_RAW_BYTES bytes; default a new array) is
   * where compressed chunks are decompressed: the receiver passes a region
   * of its wasm memory, so that its kernel decodes the records in place.
   */
  constructor(scratch: Uint8Array = new Uint8Array(MAX_CHUNK_RAW_BYTES)) {
    if (scratch.length < MAX_CHUNK_RAW_BYTES) throw new RangeError(`ChunkReader: scratch of ${scratch.length} bytes, needs ${MAX_CHUNK_RAW_BYTES}`);
    this.scratch = scratch;
  }

  /**
   * Read the chunk record at input[pos] (its type byte) up to `end`: its
   * header, its raw bytes (see raw()) and its index section, into `indices`,
   * each below `indexLimit`. Returns the header, the raw chunk, and where
   * its page records start in it. Throws CodecError (readChunkHeader's,
   * raw()'s and readChunkIndices' codes).
   */
  open(input: Uint8Array, pos: number, end: number, indexLimit: number): OpenChunk {
    const header = readChunkHeader(input, pos, end);
    const raw = this.raw(input, header);
    return { header, raw, recordsStart: readChunkIndices(raw, header.records, this.indices, indexLimit) };
  }

  /**
   * The raw chunk (index section, then page records): a view of the input
   * when stored, of the scratch when compressed. Throws CodecError CHUNK_BAD_PAYLOAD when the
   * zstd payload is corrupt or does not give exactly rawLength bytes.
   */
  raw(input: Uint8Array, h: ChunkHeader): Uint8Array {
    const payload = input.subarray(h.payloadStart, h.end);
    if (h.method === CHUNK_STORED) return payload;
    let n: number;
    try {
      n = this.dctx.decompress(this.scratch.subarray(0, h.rawLength), payload);
    } catch (err) {
      throw new CodecError('CHUNK_BAD_PAYLOAD', `zstd payload does not decompress to ${h.rawLength} bytes: ${(err as Error).message}`, h.payloadStart);
    }
    if (n !== h.rawLength) {
      throw new CodecError('CHUNK_BAD_PAYLOAD', `zstd payload decompresses to ${n} bytes, rawLength says ${h.rawLength}`, h.payloadStart);
    }
    return this.scratch.subarray(0, n);
  }
}
