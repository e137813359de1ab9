/**
 * The frame header (docs/FORMAT.md "Frame"): writing and sealing it for the
 * sender, reading it for the receiver, and cutting a byte stream back into
 * frames.
 */
import { crc32 } from 'node:zlib';
import { remusMaxEncodedBytes } from './codec/remus.js';
import { xbzrleMaxEncodedBytes } from './codec/xbzrle.js';
import { DIGEST_BYTES } from './digest.js';
import { FrameError } from './errors.js';
import {
  FLAG_ABORT,
  FLAG_LAST,
  FLAG_RESYNC,
  CHUNK_OVERHEAD_BYTES,
  CODEC_REMUS,
  FRAME_CRC_OFFSET,
  FRAME_HEADER_BYTES,
  FRAME_MAGIC,
  FRAME_VERSION,
  RECORD_PREFIX_MAX_BYTES,
} from './wire.js';

export interface FrameHeader {
  flags: number;
  codec: number;
  pageShift: number;
  epoch: number;
  sequence: number;
  recordCount: number;
  payloadLength: number;
  epochPageCount: number;
  /** 32 bytes; meaningful on LAST frames only. */
  epochDigest: Uint8Array;
}

/** Byte offsets of the header fields, for readers and for error messages that name a field's offset. */
export const FRAME_FIELD = {
  magic: 0,
  version: 4,
  flags: 5,
  codec: 6,
  pageShift: 7,
  epoch: 8,
  sequence: 12,
  recordCount: 16,
  payloadLength: 20,
  epochPageCount: 24,
  epochDigest: 28,
  crc: FRAME_CRC_OFFSET,
} as const;

const MAGIC_BYTES = Uint8Array.from(FRAME_MAGIC, (c) => c.charCodeAt(0));

/**
 * An ABORT payload is kept small enough to fit any legal frame size: the
 * smallest frame a stream may use still holds a FULL record of the smallest
 * page (512 bytes).
 */
export const ABORT_PAYLOAD_MAX_BYTES = 512;
const ELLIPSIS = '…';

export function readU32(buf: Uint8Array, offset: number): number {
  return (buf[offset] | (buf[offset + 1] << 8) | (buf[offset + 2] << 16) | (buf[offset + 3] << 24)) >>> 0;
}

export function writeU32(buf: Uint8Array, offset: number, value: number): void {
  buf[offset] = value;
  buf[offset + 1] = value >>> 8;
  buf[offset + 2] = value >>> 16;
  buf[offset + 3] = value >>> 24;
}

function checkHeaderRoom(buf: Uint8Array, offset: number, what: string): void {
  if (offset < 0 || offset + FRAME_HEADER_BYTES > buf.length) {
    throw new RangeError(`${what}: header at ${offset} does not fit a buffer of ${buf.length} bytes`);
  }
}

/**
 * Write header bytes 0..59 at `offset`. The digest is written only on LAST
 * frames (zeros otherwise, as the format requires); the CRC is left to
 * sealFrame, once the payload is in place. Byte stores only: the sender calls
 * this per frame from its slab and must not allocate.
 */
export function writeFrameHeader(buf: Uint8Array, offset: number, h: FrameHeader): void {
  checkHeaderRoom(buf, offset, 'writeFrameHeader');
  for (let i = 0; i < MAGIC_BYTES.length; i++) buf[offset + i] = MAGIC_BYTES[i];
  buf[offset + FRAME_FIELD.version] = FRAME_VERSION;
  buf[offset + FRAME_FIELD.flags] = h.flags;
  buf[offset + FRAME_FIELD.codec] = h.codec;
  buf[offset + FRAME_FIELD.pageShift] = h.pageShift;
  writeU32(buf, offset + FRAME_FIELD.epoch, h.epoch);
  writeU32(buf, offset + FRAME_FIELD.sequence, h.sequence);
  writeU32(buf, offset + FRAME_FIELD.recordCount, h.recordCount);
  writeU32(buf, offset + FRAME_FIELD.payloadLength, h.payloadLength);
  writeU32(buf, offset + FRAME_FIELD.epochPageCount, h.epochPageCount);
  const digestAt = offset + FRAME_FIELD.epochDigest;
  if ((h.flags & FLAG_LAST) !== 0) {
    if (h.epochDigest.length < DIGEST_BYTES) {
      throw new RangeError(`writeFrameHeader: epochDigest has ${h.epochDigest.length} bytes, needs ${DIGEST_BYTES}`);
    }
    for (let i = 0; i < DIGEST_BYTES; i++) buf[digestAt + i] = h.epochDigest[i];
  } else {
    for (let i = 0; i < DIGEST_BYTES; i++) buf[digestAt + i] = 0;
  }
}

/** CRC-32 of header bytes 0..59 then the payload whose length the header states. */
export function computeFrameCrc(buf: Uint8Array, offset: number): number {
  checkHeaderRoom(buf, offset, 'computeFrameCrc');
  const payloadStart = offset + FRAME_HEADER_BYTES;
  const payloadEnd = payloadStart + readU32(buf, offset + FRAME_FIELD.payloadLength);
  if (payloadEnd > buf.length) {
    throw new RangeError(`computeFrameCrc: payload [${payloadStart}, ${payloadEnd}) outside a buffer of ${buf.length} bytes`);
  }
  const headerCrc = crc32(buf.subarray(offset, offset + FRAME_CRC_OFFSET));
  return crc32(buf.subarray(payloadStart, payloadEnd), headerCrc);
}

/** Compute the CRC of the frame at `offset` (header and payload written) and store it at byte 60. */
export function sealFrame(buf: Uint8Array, offset: number): void {
  writeU32(buf, offset + FRAME_FIELD.crc, computeFrameCrc(buf, offset));
}

/** True when the first min(4, available) bytes at `offset` match the magic. */
export function hasFrameMagic(buf: Uint8Array, offset: number, available = MAGIC_BYTES.length): boolean {
  const n = Math.min(available, MAGIC_BYTES.length);
  for (let i = 0; i < n; i++) {
    if (buf[offset + i] !== MAGIC_BYTES[i]) return false;
  }
  return true;
}

/** The header fields as stored, unchecked; epochDigest is a copy. Magic, version and CRC are read with FRAME_FIELD. */
export function readFrameHeader(buf: Uint8Array, offset: number): FrameHeader {
  checkHeaderRoom(buf, offset, 'readFrameHeader');
  const digestAt = offset + FRAME_FIELD.epochDigest;
  return {
    flags: buf[offset + FRAME_FIELD.flags],
    codec: buf[offset + FRAME_FIELD.codec],
    pageShift: buf[offset + FRAME_FIELD.pageShift],
    epoch: readU32(buf, offset + FRAME_FIELD.epoch),
    sequence: readU32(buf, offset + FRAME_FIELD.sequence),
    recordCount: readU32(buf, offset + FRAME_FIELD.recordCount),
    payloadLength: readU32(buf, offset + FRAME_FIELD.payloadLength),
    epochPageCount: readU32(buf, offset + FRAME_FIELD.epochPageCount),
    epochDigest: buf.slice(digestAt, digestAt + DIGEST_BYTES),
  };
}

/**
 * The largest record of one page under any codec: type byte, longest pfn,
 * worst-case body (Remus all-changed runs, 4105 for 4096-byte pages; an
 * XBZRLE body is at most a FULL page, 4097).
 */
export function maxRecordBytes(pageSize: number): number {
  return RECORD_PREFIX_MAX_BYTES + Math.max(remusMaxEncodedBytes(pageSize), xbzrleMaxEncodedBytes(pageSize));
}

/**
 * Bytes to reserve per page where records are written: the largest record
 * plus what a codec 3 chunk of one page adds to it (each further page of a
 * chunk adds less), so a region of n x this holds any n records.
 */
export function recordRegionBytes(pageSize: number): number {
  return CHUNK_OVERHEAD_BYTES + maxRecordBytes(pageSize);
}

/** The smallest frame size that can carry any record of this page size, alone or in a chunk of one (codec 3). */
export function minFrameBytes(pageSize: number): number {
  return FRAME_HEADER_BYTES + recordRegionBytes(pageSize);
}

/**
 * An ABORT frame for `epoch`. Only the RESYNC bit of `flags` is kept (the
 * format requires it to match the epoch's other frames). The message is cut
 * to keep the payload within ABORT_PAYLOAD_MAX_BYTES.
 */
export function encodeAbortFrame(
  epoch: number,
  sequence: number,
  pageShift: number,
  flags: number,
  code: string,
  message: string,
  codec: number = CODEC_REMUS,
): Buffer {
  let payload = Buffer.from(JSON.stringify({ code, message }), 'utf8');
  let text = message;
  while (payload.length > ABORT_PAYLOAD_MAX_BYTES) {
    if (text.length === 0) throw new RangeError(`encodeAbortFrame: code ${JSON.stringify(code)} alone exceeds ${ABORT_PAYLOAD_MAX_BYTES} bytes`);
    // Every character is at least one byte, so cutting the overshoot in
    // characters never cuts too little more than once or twice.
    const keep = Math.max(0, text.length - (payload.length - ABORT_PAYLOAD_MAX_BYTES) - ELLIPSIS.length);
    text = text.slice(0, keep);
    payload = Buffer.from(JSON.stringify({ code, message: text + ELLIPSIS }), 'utf8');
  }
  const frame = Buffer.alloc(FRAME_HEADER_BYTES + payload.length);
  writeFrameHeader(frame, 0, {
    flags: (flags & FLAG_RESYNC) | FLAG_ABORT,
    codec,
    pageShift,
    epoch,
    sequence,
    recordCount: 0,
    payloadLength: payload.length,
    epochPageCount: 0,
    epochDigest: new Uint8Array(DIGEST_BYTES),
  });
  frame.set(payload, FRAME_HEADER_BYTES);
  sealFrame(frame, 0);
  return frame;
}

/**
 * Cuts a byte stream, arriving in chunks of any size, into whole frames.
 * Frames lying wholly inside one chunk are returned as views of that chunk;
 * frames spread over chunks are assembled into a buffer of their own, sized
 * from the header once it is complete, and only after the size has been
 * checked against maxFrameBytes: a hostile length never makes it allocate.
 * After an error the stream is unusable (frame boundaries are lost) and
 * every later push or end throws the same error.
 */
export class FrameSplitter {
  private readonly maxFrameBytes: number;
  private readonly head = new Uint8Array(FRAME_HEADER_BYTES);
  private headFilled = 0;
  private partial: Uint8Array | null = null;
  private partialFilled = 0;
  /** Stream offset of the frame being assembled, for messages. */
  private frameStart = 0;
  private failure: FrameError | null = null;

  constructor(maxFrameBytes: number) {
    if (!Number.isInteger(maxFrameBytes) || maxFrameBytes < FRAME_HEADER_BYTES) {
      throw new RangeError(`FrameSplitter: maxFrameBytes ${maxFrameBytes} is below the ${FRAME_HEADER_BYTES}-byte header`);
    }
    this.maxFrameBytes = maxFrameBytes;
  }

  /** Bytes held of a frame not yet complete. */
  get pendingBytes(): number {
    return this.partial !== null ? this.partialFilled : this.headFilled;
  }

  /**
   * The frames completed by `chunk`. When the chunk also holds a bad spot
   * after some whole frames, those frames are returned first and the error
   * is thrown by the next push() or end(), so that a caller applies all
   * frames that preceded it.
   */
  push(chunk: Uint8Array): Uint8Array[] {
    if (this.failure !== null) throw this.failure;
    const frames: Uint8Array[] = [];
    try {
      this.split(chunk, frames);
    } catch (err) {
      if (!(err instanceof FrameError)) throw err;
      this.failure = err;
      if (frames.length === 0) throw err;
    }
    return frames;
  }

  /** The stream has ended: throws a pending error, or FRAME_TRUNCATED when it ended inside a frame. */
  end(): void {
    if (this.failure !== null) throw this.failure;
    if (this.pendingBytes > 0) {
      throw new FrameError('FRAME_TRUNCATED', `the stream ends ${this.pendingBytes} bytes into the frame at stream byte ${this.frameStart}`);
    }
  }

  private split(chunk: Uint8Array, frames: Uint8Array[]): void {
    let pos = 0;
    while (pos < chunk.length) {
      if (this.partial !== null) {
        const n = Math.min(this.partial.length - this.partialFilled, chunk.length - pos);
        this.partial.set(chunk.subarray(pos, pos + n), this.partialFilled);
        this.partialFilled += n;
        pos += n;
        if (this.partialFilled === this.partial.length) {
          frames.push(this.partial);
          this.frameStart += this.partial.length;
          this.partial = null;
        }
        continue;
      }
      if (this.headFilled === 0 && chunk.length - pos >= FRAME_HEADER_BYTES) {
        // Fast path: the header is whole in this chunk; a frame that is
        // whole too is passed on without a copy.
        const total = this.frameLength(chunk, pos);
        if (chunk.length - pos >= total) {
          frames.push(chunk.subarray(pos, pos + total));
          this.frameStart += total;
          pos += total;
        } else {
          this.partial = new Uint8Array(total);
          this.partial.set(chunk.subarray(pos));
          this.partialFilled = chunk.length - pos;
          pos = chunk.length;
        }
        continue;
      }
      const n = Math.min(FRAME_HEADER_BYTES - this.headFilled, chunk.length - pos);
      this.head.set(chunk.subarray(pos, pos + n), this.headFilled);
      this.headFilled += n;
      pos += n;
      if (!hasFrameMagic(this.head, 0, this.headFilled)) throw this.badMagic();
      if (this.headFilled === FRAME_HEADER_BYTES) {
        const total = this.frameLength(this.head, 0);
        this.headFilled = 0;
        this.partial = new Uint8Array(total);
        this.partial.set(this.head);
        this.partialFilled = FRAME_HEADER_BYTES;
        if (total === FRAME_HEADER_BYTES) {
          frames.push(this.partial);
          this.frameStart += total;
          this.partial = null;
        }
      }
    }
  }

  /** Total length of the frame whose whole header is at buf[offset..], after the magic and size checks. */
  private frameLength(buf: Uint8Array, offset: number): number {
    if (!hasFrameMagic(buf, offset)) throw this.badMagic();
    const payloadLength = readU32(buf, offset + FRAME_FIELD.payloadLength);
    const total = FRAME_HEADER_BYTES + payloadLength;
    if (total > this.maxFrameBytes) {
      throw new FrameError(
        'FRAME_TOO_LARGE',
        `frame at stream byte ${this.frameStart}: payloadLength ${payloadLength} (header byte ${FRAME_FIELD.payloadLength}) makes a ${total}-byte frame, over the ${this.maxFrameBytes}-byte limit`,
      );
    }
    return total;
  }

  private badMagic(): FrameError {
    return new FrameError('FRAME_BAD_MAGIC', `frame at stream byte ${this.frameStart} does not start with magic "${FRAME_MAGIC}"`);
  }
}
