import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FrameError } from '../src/errors.js';
import {
  ABORT_PAYLOAD_MAX_BYTES,
  FRAME_FIELD,
  FrameSplitter,
  computeFrameCrc,
  encodeAbortFrame,
  maxRecordBytes,
  minFrameBytes,
  readFrameHeader,
  readU32,
  sealFrame,
  writeFrameHeader,
  type FrameHeader,
} from '../src/frames.js';
import { CODEC_REMUS, FLAG_ABORT, FLAG_LAST, FLAG_RESYNC, FRAME_HEADER_BYTES, FRAME_VERSION } from '../src/wire.js';

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });

const headerArb: fc.Arbitrary<FrameHeader> = fc.record({
  flags: fc.integer({ min: 0, max: 0xff }),
  codec: fc.integer({ min: 0, max: 0xff }),
  pageShift: fc.integer({ min: 0, max: 0xff }),
  epoch: u32,
  sequence: u32,
  recordCount: u32,
  payloadLength: u32,
  epochPageCount: u32,
  epochDigest: fc.uint8Array({ minLength: 32, maxLength: 32 }),
});

/** A sealed frame with this payload. */
function frameOf(payload: Uint8Array, epoch = 1, sequence = 0): Uint8Array {
  const frame = new Uint8Array(FRAME_HEADER_BYTES + payload.length);
  writeFrameHeader(frame, 0, {
    flags: FLAG_LAST,
    codec: CODEC_REMUS,
    pageShift: 12,
    epoch,
    sequence,
    recordCount: 0,
    payloadLength: payload.length,
    epochPageCount: 0,
    epochDigest: new Uint8Array(32).fill(0xab),
  });
  frame.set(payload, FRAME_HEADER_BYTES);
  sealFrame(frame, 0);
  return frame;
}

function splitError(fn: () => unknown): FrameError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(FrameError);
    return err as FrameError;
  }
  throw new Error('no error');
}

describe('frame header', () => {
  it('round-trips every field, at any offset', () => {
    fc.assert(
      fc.property(headerArb, fc.nat({ max: 100 }), (h, offset) => {
        const buf = new Uint8Array(offset + FRAME_HEADER_BYTES + 8).fill(0xee);
        writeFrameHeader(buf, offset, h);
        const back = readFrameHeader(buf, offset);
        const last = (h.flags & FLAG_LAST) !== 0;
        expect(back).toEqual({ ...h, epochDigest: last ? h.epochDigest : new Uint8Array(32) });
        expect(Buffer.from(buf.subarray(offset, offset + 4)).toString('latin1')).toBe('RMFR');
        expect(buf[offset + FRAME_FIELD.version]).toBe(FRAME_VERSION);
        // The CRC bytes are sealFrame's, and nothing outside the header is touched.
        expect([...buf.subarray(offset + FRAME_FIELD.crc, offset + FRAME_HEADER_BYTES)]).toEqual([0xee, 0xee, 0xee, 0xee]);
        expect(buf.subarray(0, offset).every((b) => b === 0xee)).toBe(true);
      }),
    );
  });

  it('refuses a header that does not fit the buffer', () => {
    expect(() => readFrameHeader(new Uint8Array(63), 0)).toThrow(RangeError);
    expect(() => sealFrame(new Uint8Array(70), 10)).toThrow(RangeError);
  });

  it('sealFrame stores the CRC-32 of header bytes 0..59 and the payload', () => {
    const frame = frameOf(Uint8Array.of(1, 2, 3, 4, 5));
    const stored = readU32(frame, FRAME_FIELD.crc);
    expect(stored).toBe(computeFrameCrc(frame, 0));
    const covered = Buffer.concat([frame.subarray(0, FRAME_FIELD.crc), frame.subarray(FRAME_HEADER_BYTES)]);
    expect(stored).toBe(zlibCrc(covered));
  });

  it('the CRC detects a flipped bit anywhere in header or payload', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(), (payload, bitSeed) => {
        const frame = frameOf(payload);
        const coveredBits = (frame.length - 4) * 8;
        let bit = bitSeed % coveredBits;
        // Skip the CRC's own four bytes.
        if (bit >= FRAME_FIELD.crc * 8) bit += 32;
        const byte = bit >> 3;
        frame[byte] ^= 1 << (bit & 7);
        let crcStillMatches: boolean;
        try {
          crcStillMatches = computeFrameCrc(frame, 0) === readU32(frame, FRAME_FIELD.crc);
        } catch (err) {
          // A flip in payloadLength can point past the buffer: refused too.
          expect(err).toBeInstanceOf(RangeError);
          crcStillMatches = false;
        }
        expect(crcStillMatches).toBe(false);
      }),
    );
  });

  it('sizes records and frames for the worst case', () => {
    expect(maxRecordBytes(4096)).toBe(8 + 4105);
    // A frame header, a codec 3 chunk's header and first index (15), one worst-case record.
    expect(minFrameBytes(4096)).toBe(64 + 15 + 8 + 4105);
    expect(minFrameBytes(512)).toBeGreaterThan(FRAME_HEADER_BYTES + ABORT_PAYLOAD_MAX_BYTES);
  });
});

describe('encodeAbortFrame', () => {
  it('writes an ABORT frame with a JSON payload, keeping only the RESYNC bit', () => {
    const frame = encodeAbortFrame(9, 3, 12, FLAG_RESYNC | FLAG_LAST, 'ENCODE_FAILED', 'worker died');
    const h = readFrameHeader(frame, 0);
    expect(h).toMatchObject({ flags: FLAG_ABORT | FLAG_RESYNC, epoch: 9, sequence: 3, pageShift: 12, recordCount: 0, epochPageCount: 0 });
    expect(h.payloadLength).toBe(frame.length - FRAME_HEADER_BYTES);
    expect(readU32(frame, FRAME_FIELD.crc)).toBe(computeFrameCrc(frame, 0));
    expect(JSON.parse(frame.subarray(FRAME_HEADER_BYTES).toString('utf8'))).toEqual({ code: 'ENCODE_FAILED', message: 'worker died' });
  });

  it('cuts a long message to fit the smallest legal frame', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', minLength: 0, maxLength: 3000 }), (message) => {
        const frame = encodeAbortFrame(1, 0, 9, 0, 'X', message);
        expect(frame.length - FRAME_HEADER_BYTES).toBeLessThanOrEqual(ABORT_PAYLOAD_MAX_BYTES);
        const parsed = JSON.parse(frame.subarray(FRAME_HEADER_BYTES).toString('utf8')) as { code: string; message: string };
        expect(parsed.code).toBe('X');
        if (parsed.message !== message) expect(parsed.message.endsWith('…')).toBe(true);
      }),
    );
  });
});

describe('FrameSplitter', () => {
  it('yields the same frames whatever the chunking', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 200 }), { minLength: 1, maxLength: 8 }),
        fc.array(fc.nat(), { maxLength: 20 }),
        (payloads, cutSeeds) => {
          const frames = payloads.map((p, i) => frameOf(p, 1, i));
          const stream = Buffer.concat(frames);
          const cuts = [...new Set(cutSeeds.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
          const splitter = new FrameSplitter(1024);
          const got: Uint8Array[] = [];
          let from = 0;
          for (const cut of [...cuts, stream.length]) {
            got.push(...splitter.push(stream.subarray(from, cut)));
            from = cut;
          }
          expect(splitter.pendingBytes).toBe(0);
          expect(got.map((f) => Buffer.from(f).toString('hex'))).toEqual(frames.map((f) => Buffer.from(f).toString('hex')));
        },
      ),
    );
  });

  it('reports the bytes of an incomplete frame', () => {
    const frame = frameOf(new Uint8Array(100));
    const splitter = new FrameSplitter(1024);
    expect(splitter.push(frame.subarray(0, 10))).toEqual([]);
    expect(splitter.pendingBytes).toBe(10);
    expect(splitter.push(frame.subarray(10, 150))).toEqual([]);
    expect(splitter.pendingBytes).toBe(150);
    expect(splitter.push(frame.subarray(150))).toHaveLength(1);
    expect(splitter.pendingBytes).toBe(0);
  });

  it('refuses an oversized frame from its header, before buffering the payload', () => {
    const frame = frameOf(new Uint8Array(2000));
    const splitter = new FrameSplitter(1024);
    const err = splitError(() => splitter.push(frame.subarray(0, FRAME_HEADER_BYTES)));
    expect(err.code).toBe('FRAME_TOO_LARGE');
    expect(err.message).toContain('2064');
    // Broken stream: further input is refused the same way.
    expect(splitError(() => splitter.push(frame.subarray(FRAME_HEADER_BYTES))).code).toBe('FRAME_TOO_LARGE');
  });

  it('refuses a payloadLength of 4 GiB in a header split over chunks', () => {
    const frame = frameOf(new Uint8Array(0));
    frame.set([0xff, 0xff, 0xff, 0xff], FRAME_FIELD.payloadLength);
    const splitter = new FrameSplitter(1024);
    expect(splitter.push(frame.subarray(0, 30))).toEqual([]);
    expect(splitError(() => splitter.push(frame.subarray(30))).code).toBe('FRAME_TOO_LARGE');
  });

  it('refuses a bad magic at its first byte', () => {
    const splitter = new FrameSplitter(1024);
    expect(splitter.push(Buffer.from('R'))).toEqual([]);
    const err = splitError(() => splitter.push(Buffer.from('X')));
    expect(err.code).toBe('FRAME_BAD_MAGIC');
  });

  it('hands out the frames before a bad magic, then refuses, naming the stream offset', () => {
    const good = frameOf(Uint8Array.of(1, 2, 3));
    const splitter = new FrameSplitter(1024);
    const frames = splitter.push(Buffer.concat([good, good, Buffer.from('garbage that is long enough to be a header ....................')]));
    expect(frames).toHaveLength(2);
    const err = splitError(() => splitter.end());
    expect(err.code).toBe('FRAME_BAD_MAGIC');
    expect(err.message).toContain(`stream byte ${2 * good.length}`);
    expect(splitError(() => splitter.push(good)).code).toBe('FRAME_BAD_MAGIC');
  });

  it('end() refuses a stream that stops inside a frame', () => {
    const good = frameOf(Uint8Array.of(1, 2, 3));
    const splitter = new FrameSplitter(1024);
    expect(splitter.push(good.subarray(0, good.length - 1))).toEqual([]);
    const err = splitError(() => splitter.end());
    expect(err.code).toBe('FRAME_TRUNCATED');
    const whole = new FrameSplitter(1024);
    whole.push(good);
    expect(() => whole.end()).not.toThrow();
  });
});

/** Bitwise CRC-32 (IEEE, reflected), independent of zlib, to pin the polynomial and the covered bytes. */
function zlibCrc(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const b of bytes) {
    crc ^= b;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}
