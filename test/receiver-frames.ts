/**
 * Test helper: a minimal sender that builds valid frames by hand (codec +
 * writeFrameHeader/sealFrame + digest groups), independent of the worker
 * pipeline, so receiver tests do not depend on the sender being right.
 */
import { expect } from 'vitest';
import { CHUNK_INDEX_RESERVE_BYTES, CHUNK_STORED, ChunkWriter } from '../src/codec/chunk.js';
import { encodeRemusDelta, encodeRemusFull, remusMaxEncodedBytes } from '../src/codec/remus.js';
import { DIGEST_BYTES, DIGEST_GROUP_PAGES, digestGroupCount, foldEpochDigest, hashDigestGroup, hashImage } from '../src/digest.js';
import { writePfn } from '../src/epoch-record.js';
import { FrameError } from '../src/errors.js';
import { sealFrame, writeFrameHeader } from '../src/frames.js';
import type { Receiver } from '../src/receiver.js';
import {
  CHUNK_HEADER_MAX_BYTES,
  CODEC_REMUS,
  CODEC_REMUS_ZSTD,
  FLAG_LAST,
  FLAG_RESYNC,
  FRAME_HEADER_BYTES,
  RECORD_CHUNK,
  RECORD_REMUS,
  RECORD_ZERO,
  pageShiftOf,
  uleb128Length,
  writeUleb128,
} from '../src/wire.js';

/** One page record: its type, pfn and body, and the page it leaves behind. */
export interface RecordSpec {
  pfn: number;
  type: number;
  /** The Remus encoding (REMUS) or nothing (ZERO). */
  body: Uint8Array;
  page: Uint8Array;
}

export interface HeaderFields {
  epoch: number;
  sequence: number;
  flags?: number;
  pageShift?: number;
  codec?: number;
  recordCount: number;
  epochPageCount?: number;
  epochDigest?: Uint8Array;
}

/** A sealed frame around `payload`. */
export function buildFrame(fields: HeaderFields, payload: Uint8Array, pageSize = 4096): Uint8Array {
  const frame = new Uint8Array(FRAME_HEADER_BYTES + payload.length);
  writeFrameHeader(frame, 0, {
    flags: fields.flags ?? 0,
    codec: fields.codec ?? CODEC_REMUS,
    pageShift: fields.pageShift ?? pageShiftOf(pageSize),
    epoch: fields.epoch,
    sequence: fields.sequence,
    recordCount: fields.recordCount,
    payloadLength: payload.length,
    epochPageCount: fields.epochPageCount ?? 0,
    epochDigest: fields.epochDigest ?? new Uint8Array(DIGEST_BYTES),
  });
  frame.set(payload, FRAME_HEADER_BYTES);
  sealFrame(frame, 0);
  return frame;
}

/** Recompute the CRC after a test edited the frame, so that the checks behind the CRC are reached. */
export function reseal(frame: Uint8Array): Uint8Array {
  sealFrame(frame, 0);
  return frame;
}

export function recordBytes(spec: Pick<RecordSpec, 'pfn' | 'type' | 'body'>): Uint8Array {
  const out = new Uint8Array(1 + uleb128Length(spec.pfn) + spec.body.length);
  out[0] = spec.type;
  const pos = writeUleb128(out, 1, spec.pfn);
  out.set(spec.body, pos);
  return out;
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

/** The end-of-epoch digest of docs/FORMAT.md over the records' resulting pages. */
export function epochDigest(records: RecordSpec[], pageSize: number, epoch: number, resync: boolean): Buffer {
  const groups = digestGroupCount(records.length);
  const hashes = new Uint8Array(Math.max(1, groups) * DIGEST_BYTES);
  for (let g = 0; g < groups; g++) {
    const group = records.slice(g * DIGEST_GROUP_PAGES, (g + 1) * DIGEST_GROUP_PAGES);
    const pfns = new Uint8Array(group.length * 8);
    const pages = new Uint8Array(group.length * pageSize);
    group.forEach((r, i) => {
      writePfn(pfns, i * 8, r.pfn);
      pages.set(r.page, i * pageSize);
    });
    hashDigestGroup(pfns, pages, hashes, g * DIGEST_BYTES);
  }
  return foldEpochDigest(hashes, groups, epoch, resync);
}

export interface EpochFramesOptions {
  epoch: number;
  pageSize: number;
  resync?: boolean;
  /** Records per frame (default: all in one frame). */
  recordsPerFrame?: number;
  /** Override the LAST frame's count or digest, to test the receiver's refusal. */
  epochPageCount?: number;
  epochDigest?: Uint8Array;
  /** Frame codec byte (default CODEC_REMUS). */
  codec?: number;
}

/** The frames of one epoch: records split `recordsPerFrame` to a frame, the last frame LAST. */
export function epochFrames(records: RecordSpec[], options: EpochFramesOptions): Uint8Array[] {
  const perFrame = Math.max(1, options.recordsPerFrame ?? records.length);
  const frames: Uint8Array[] = [];
  const resync = options.resync ? FLAG_RESYNC : 0;
  let start = 0;
  do {
    const chunk = records.slice(start, start + perFrame);
    const last = start + perFrame >= records.length;
    frames.push(
      buildFrame(
        {
          epoch: options.epoch,
          sequence: frames.length,
          codec: options.codec,
          flags: resync | (last ? FLAG_LAST : 0),
          recordCount: chunk.length,
          epochPageCount: last ? (options.epochPageCount ?? records.length) : 0,
          epochDigest: last ? (options.epochDigest ?? epochDigest(records, options.pageSize, options.epoch, options.resync ?? false)) : undefined,
        },
        concat(chunk.map(recordBytes)),
        options.pageSize,
      ),
    );
    start += perFrame;
  } while (start < records.length);
  return frames;
}

// ------------------------------------------------------------- codec 3 chunks

let chunkWriter: ChunkWriter | null = null;

/** The raw chunk's index section for increasing request-order `indices`: the first index, then the gaps (docs/FORMAT.md "Codec 3"). */
export function chunkIndexSection(indices: number[]): Uint8Array {
  const out = new Uint8Array(indices.reduce((n, _, k) => n + uleb128Length(k === 0 ? indices[0] : indices[k] - indices[k - 1] - 1), 0));
  let pos = writeUleb128(out, 0, indices[0]);
  for (let k = 1; k < indices.length; k++) pos = writeUleb128(out, pos, indices[k] - indices[k - 1] - 1);
  return out;
}

/**
 * One codec 3 chunk record, written by the real ChunkWriter (zstd when that
 * is smaller, stored otherwise): `records` (page record bytes) at the
 * request-order `indices`, which must increase.
 */
export function chunkRecord(indices: number[], records: Uint8Array[]): Uint8Array {
  if (indices.length !== records.length) throw new RangeError(`chunkRecord: ${indices.length} indices for ${records.length} records`);
  const body = concat(records);
  const scratch = new Uint8Array(CHUNK_INDEX_RESERVE_BYTES + body.length);
  scratch.set(body, CHUNK_INDEX_RESERVE_BYTES);
  const out = new Uint8Array(CHUNK_HEADER_MAX_BYTES + chunkIndexSection(indices).length + body.length);
  chunkWriter ??= new ChunkWriter();
  const end = chunkWriter.write(scratch, scratch.length, Int32Array.from(indices), 0, indices.length, out, 0);
  return out.slice(0, end);
}

/**
 * A stored chunk record built by hand around any raw bytes (index section
 * and records, or anything else), claiming `records` page records: for the
 * chunks the writer would never produce.
 */
export function storedChunk(records: number, raw: Uint8Array): Uint8Array {
  const out = new Uint8Array(CHUNK_HEADER_MAX_BYTES + raw.length);
  out[0] = RECORD_CHUNK;
  out[1] = CHUNK_STORED;
  let pos = writeUleb128(out, 2, records);
  pos = writeUleb128(out, pos, raw.length);
  pos = writeUleb128(out, pos, raw.length);
  out.set(raw, pos);
  return out.slice(0, pos + raw.length);
}

/** A sealed codec 3 frame whose payload is `chunks` (recordCount counts the chunks). */
export function chunkFrame(fields: Omit<HeaderFields, 'recordCount' | 'codec'> & { recordCount?: number }, chunks: Uint8Array[], pageSize = 4096): Uint8Array {
  return buildFrame({ ...fields, codec: CODEC_REMUS_ZSTD, recordCount: fields.recordCount ?? chunks.length }, concat(chunks), pageSize);
}

/**
 * The codec 3 frames of one epoch whose pages are `records` in request
 * order. `layout[f]` lists frame f's chunks, each as the request-order
 * indices (into `records`, increasing) of its pages, in any order across
 * chunks and frames, the way partitioned workers send them. The LAST frame's
 * count and digest cover `records` in request order, unless overridden.
 */
export function chunkedEpochFrames(records: RecordSpec[], layout: number[][][], options: EpochFramesOptions): Uint8Array[] {
  const resync = options.resync ? FLAG_RESYNC : 0;
  return layout.map((chunks, f) => {
    const last = f === layout.length - 1;
    return chunkFrame(
      {
        epoch: options.epoch,
        sequence: f,
        flags: resync | (last ? FLAG_LAST : 0),
        epochPageCount: last ? (options.epochPageCount ?? records.length) : 0,
        epochDigest: last ? (options.epochDigest ?? epochDigest(records, options.pageSize, options.epoch, options.resync ?? false)) : undefined,
      },
      chunks.map((indices) => chunkRecord(indices, indices.map((i) => recordBytes(records[i])))),
      options.pageSize,
    );
  });
}

/**
 * What a sender knows of the receiver's image: it encodes a page as a delta
 * when the receiver holds it, FULL otherwise, ZERO for zero pages. commit()
 * advances the model once the receiver is expected to have committed.
 */
export class SenderModel {
  readonly pageSize: number;
  pages = new Map<number, Uint8Array>();
  epoch = -1;

  constructor(pageSize: number) {
    this.pageSize = pageSize;
  }

  records(changes: Array<[number, Uint8Array]>): RecordSpec[] {
    const out = new Uint8Array(remusMaxEncodedBytes(this.pageSize));
    return changes.map(([pfn, page]) => {
      const copy = Uint8Array.from(page);
      if (copy.every((b) => b === 0)) return { pfn, type: RECORD_ZERO, body: new Uint8Array(0), page: copy };
      const held = this.pages.get(pfn);
      let n: number;
      if (held === undefined) {
        n = encodeRemusFull(copy, 0, this.pageSize, out, 0);
      } else {
        const cached = new Uint32Array(Uint8Array.from(held).buffer);
        n = encodeRemusDelta(new Uint32Array(copy.buffer), 0, cached, 0, this.pageSize / 4, out, 0);
      }
      return { pfn, type: RECORD_REMUS, body: out.slice(0, n), page: copy };
    });
  }

  commit(epoch: number, records: RecordSpec[], resync: boolean): void {
    if (resync) this.pages = new Map();
    for (const r of records) this.pages.set(r.pfn, r.page);
    this.epoch = epoch;
  }

  /** docs/FORMAT.md "Image digest" of the modelled image. */
  imageDigest(): Buffer {
    const pfns = [...this.pages.keys()].sort((a, b) => a - b);
    return hashImage(pfns, this.pageSize, (pfn, dst) => dst.set(this.pages.get(pfn) as Uint8Array));
  }
}

/** Deterministic pseudo-random bytes (xorshift32), so failures reproduce. */
export class Prng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0 || 1;
  }

  next(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }

  below(n: number): number {
    return this.next() % n;
  }

  page(pageSize: number): Uint8Array {
    const page = new Uint8Array(pageSize);
    for (let i = 0; i < pageSize; i++) page[i] = this.next();
    return page;
  }

  /** `page` with a few 32-bit words changed, the way a checkpoint's dirty page usually is. */
  touch(page: Uint8Array, words: number): Uint8Array {
    const next = Uint8Array.from(page);
    for (let w = 0; w < words; w++) {
      const at = this.below(page.length / 4) * 4;
      next[at] ^= (this.next() | 1) & 0xff;
    }
    return next;
  }
}

/** What a refused frame must leave as it was: the image, the committed epoch and the staging. */
export function receiverSnapshot(rx: Receiver) {
  return { digest: rx.imageDigest().toString('hex'), committed: rx.committedEpoch, staging: rx.stagingState, pages: rx.pageCount };
}

/** Apply `frame`, expecting a FrameError; returns it. */
export function refusal(rx: Receiver, frame: Uint8Array): FrameError {
  try {
    rx.applyFrame(frame);
  } catch (err) {
    expect(err).toBeInstanceOf(FrameError);
    return err as FrameError;
  }
  throw new Error('the frame was accepted');
}

/** The receiver holds exactly the model's image: every page, the image digest, the committed epoch. */
export function expectImage(rx: Receiver, model: SenderModel): void {
  expect(rx.pageCount).toBe(model.pages.size);
  const got = new Uint8Array(model.pageSize);
  for (const [pfn, page] of model.pages) {
    expect(rx.readPage(pfn, got), `pfn ${pfn} present`).toBe(true);
    expect(Buffer.from(got).equals(Buffer.from(page)), `pfn ${pfn} contents`).toBe(true);
  }
  expect(rx.imageDigest().toString('hex')).toBe(model.imageDigest().toString('hex'));
  expect(rx.committedEpoch).toBe(model.epoch);
}
