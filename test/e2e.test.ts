import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../src/app.js';
import { ReceiverClient, SenderClient } from '../src/client.js';
import { ChunkReader, chunkLimitBytes, readChunkHeader, readChunkIndices } from '../src/codec/chunk.js';
import { hashImage } from '../src/digest.js';
import { FrameSplitter, minFrameBytes, readFrameHeader } from '../src/frames.js';
import { packageRoot } from '../src/package-root.js';
import { replay } from '../src/replay.js';
import { generateTrace } from '../src/trace-gen.js';
import { parseTrace, TraceImage } from '../src/trace.js';
import { CODEC_REMUS_ZSTD, FLAG_LAST, FRAME_HEADER_BYTES, MAX_FRAME_BYTES, RECORD_CHUNK, codecByte, type CodecName } from '../src/wire.js';

/**
 * The whole product over real HTTP on loopback: a generated trace of 20+
 * epochs and 4096 pages (raw pages, zero pages, a cold set evicted from a
 * small cache) goes through the sender and the receiver with 1, 2 and 4
 * workers; the receiver's image must equal the sender's byte for byte, and
 * two runs with the same settings must give identical frames.
 */
const PAGES = 4096;
const EPOCHS = 22;
/** 512 pages of cache for 4096 pages of image: the cold set is evicted. */
const SMALL_CACHE = 512 * 4096;

const traceBytes = generateTrace({ seed: 20261126, epochs: EPOCHS, pages: PAGES, profile: 'mixed' });
const trace = parseTrace(traceBytes);

let dir: string;
let senderApp: FastifyInstance;
let receiverApp: FastifyInstance;
let sender: SenderClient;
let receiver: ReceiverClient;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'remus-e2e-'));
  writeFileSync(join(dir, 'trace.rmtr'), traceBytes);
  senderApp = await buildApp({ sender: { workers: 4 } });
  receiverApp = await buildApp({ receiver: {} });
  sender = new SenderClient(await senderApp.listen({ host: '127.0.0.1', port: 0 }));
  receiver = new ReceiverClient(await receiverApp.listen({ host: '127.0.0.1', port: 0 }));
});

afterAll(async () => {
  await Promise.all([senderApp?.close(), receiverApp?.close()]);
  rmSync(dir, { recursive: true, force: true });
});

/**
 * Send every epoch, collect its frames, apply them to a fresh receiver image;
 * returns a hash of all frames, and each epoch's frames.
 */
async function runTrace(
  workers: number,
  codec: CodecName = 'remus',
  frameSize = 256 * 1024,
): Promise<{ framesHash: string; imageId: string; frameBytes: number; epochs: Buffer[] }> {
  const stream = await sender.createStream({ workers, cacheBytes: SMALL_CACHE, frameBytes: frameSize, codec });
  expect(stream.config.codec).toBe(codec);
  const image = await receiver.createImage({ pageSize: trace.pageSize });
  const framesHash = createHash('sha256');
  let frameBytes = 0;
  const epochs: Buffer[] = [];
  for (const epoch of trace.epochs) {
    const frames = await sender.sendEpochCollect(stream.id, epoch.record);
    // Byte 6 of every frame header is the stream's codec (1 remus, 2 xbzrle, 3 remus-zstd); the first frame stands for the rest.
    expect(frames[6]).toBe(codecByte(codec));
    framesHash.update(frames);
    frameBytes += frames.length;
    epochs.push(frames);
    const applied = await receiver.postFrames(image.id, frames);
    expect(applied.committedEpoch).toBe(epoch.epoch);
  }
  const info = await sender.getStream(stream.id);
  expect(info.nextEpoch).toBe(EPOCHS);
  expect(info.stats.pages).toBe(trace.epochs.reduce((n, e) => n + e.count, 0));
  // The small cache must really have evicted pages, and the trace really
  // holds zero and raw pages: otherwise this test proves less than it says.
  expect(info.stats.cacheMisses).toBeGreaterThan(PAGES);
  expect(info.stats.zeroPages).toBeGreaterThan(0);
  expect(info.stats.rawPages).toBeGreaterThan(0);
  expect(info.stats.cacheHits).toBeGreaterThan(0);
  await sender.deleteStream(stream.id);
  return { framesHash: framesHash.digest('hex'), imageId: image.id, frameBytes, epochs };
}

/**
 * Walk a codec 3 run's frames: every frame within `frameSize`, every record
 * a chunk within chunkLimitBytes(frameSize), and each epoch's chunks naming
 * the indices 0..count-1 exactly once. Returns the records per chunk.
 */
function checkChunks(epochs: Buffer[], frameSize: number): number[] {
  const reader = new ChunkReader();
  const limit = chunkLimitBytes(frameSize);
  const perChunk: number[] = [];
  epochs.forEach((bytes, e) => {
    const splitter = new FrameSplitter(MAX_FRAME_BYTES);
    const frames = splitter.push(bytes);
    splitter.end();
    const count = trace.epochs[e].count;
    const seen = new Uint8Array(count);
    let pages = 0;
    for (const frame of frames) {
      expect(frame.length, `epoch ${e}: a frame over frameBytes`).toBeLessThanOrEqual(frameSize);
      const h = readFrameHeader(frame, 0);
      expect(h.codec).toBe(CODEC_REMUS_ZSTD);
      let pos = FRAME_HEADER_BYTES;
      for (let c = 0; c < h.recordCount; c++) {
        expect(frame[pos]).toBe(RECORD_CHUNK);
        const chunk = readChunkHeader(frame, pos, frame.length);
        expect(chunk.rawLength, `epoch ${e}: a chunk over the chunk limit`).toBeLessThanOrEqual(limit);
        const slots = new Int32Array(chunk.records);
        readChunkIndices(reader.raw(frame, chunk), chunk.records, slots, count);
        for (const i of slots) {
          expect(seen[i], `epoch ${e}: index ${i} twice`).toBe(0);
          seen[i] = 1;
        }
        perChunk.push(chunk.records);
        pages += chunk.records;
        pos = chunk.end;
      }
      expect(pos).toBe(frame.length);
      if ((h.flags & FLAG_LAST) !== 0) expect(h.epochPageCount).toBe(count);
    }
    expect(pages, `epoch ${e}: pages in its chunks`).toBe(count);
  });
  return perChunk;
}

async function expectImageEqualsTrace(imageId: string): Promise<void> {
  const oracle = new TraceImage(trace.pageSize);
  for (const epoch of trace.epochs) oracle.apply(epoch);
  const pfns = oracle.pfns();
  for (const pfn of pfns) {
    const got = await receiver.getPage(imageId, pfn);
    expect(got, `page ${pfn}`).not.toBeNull();
    expect(Buffer.compare(got as Buffer, Buffer.from(oracle.get(pfn) as Uint8Array)), `page ${pfn} differs`).toBe(0);
  }
  const digest = await receiver.digest(imageId);
  expect(digest.pages).toBe(pfns.length);
  expect(digest.digest).toBe(hashImage(pfns, trace.pageSize, (pfn, dst) => dst.set(oracle.get(pfn) as Uint8Array)).toString('hex'));
}

describe('end to end over HTTP', () => {
  for (const workers of [1, 2, 4]) {
    it(`replays a generated trace exactly with ${workers} worker(s), deterministically`, async () => {
      const first = await runTrace(workers);
      await expectImageEqualsTrace(first.imageId);
      const second = await runTrace(workers);
      expect(second.framesHash).toBe(first.framesHash);
      expect(second.frameBytes).toBe(first.frameBytes);
    });
  }
  for (const workers of [1, 2]) {
    it(`replays a generated trace exactly with codec remus-zstd and ${workers} worker(s), deterministically, in fewer bytes than remus`, async () => {
      const first = await runTrace(workers, 'remus-zstd');
      await expectImageEqualsTrace(first.imageId);
      const perChunk = checkChunks(first.epochs, 256 * 1024);
      // Chunks gather many pages at this frame size.
      expect(Math.max(...perChunk)).toBeGreaterThan(16);
      const second = await runTrace(workers, 'remus-zstd');
      expect(second.framesHash).toBe(first.framesHash);
      expect(second.frameBytes).toBe(first.frameBytes);
      const remus = await runTrace(workers, 'remus');
      expect(first.frameBytes).toBeLessThan(remus.frameBytes);
    });
  }
  it('codec remus-zstd with the smallest frames (minFrameBytes(4096)): one page a chunk, the image exact', async () => {
    const frameSize = minFrameBytes(trace.pageSize);
    const run = await runTrace(2, 'remus-zstd', frameSize);
    await expectImageEqualsTrace(run.imageId);
    // A chunk of a frame this small has room for one worst-case record only.
    expect(new Set(checkChunks(run.epochs, frameSize))).toEqual(new Set([1]));
  });
  it('codec remus-zstd with 64 KiB frames: chunks cut by the frame size, the image exact, deterministic', async () => {
    const frameSize = 64 * 1024;
    const run = await runTrace(2, 'remus-zstd', frameSize);
    await expectImageEqualsTrace(run.imageId);
    const perChunk = checkChunks(run.epochs, frameSize);
    expect(Math.max(...perChunk)).toBeGreaterThan(1);
    const again = await runTrace(2, 'remus-zstd', frameSize);
    expect(again.framesHash).toBe(run.framesHash);
  });
  for (const workers of [1, 2]) {
    it(`replays a generated trace exactly with codec xbzrle and ${workers} worker(s), deterministically`, async () => {
      const first = await runTrace(workers, 'xbzrle');
      await expectImageEqualsTrace(first.imageId);
      const second = await runTrace(workers, 'xbzrle');
      expect(second.framesHash).toBe(first.framesHash);
      expect(second.frameBytes).toBe(first.frameBytes);
    });
  }
});

const pythonTrace = resolve(packageRoot(), '..', 'shared', 'traces', 'python-small.rmtr');
const havePython = existsSync(pythonTrace);

describe('codec remus-zstd on a real trace', () => {
  const skipped = havePython ? '' : ' (skipped: ../shared/traces/python-small.rmtr is not on this machine)';
  it.skipIf(!havePython)(`replays ../shared/traces/python-small.rmtr exactly, with under half the dirty bytes of remus${skipped}`, async () => {
    const zstd = await replay({ tracePath: pythonTrace, workers: 2, codec: 'remus-zstd' });
    expect(zstd.config.codec).toBe('remus-zstd');
    expect(zstd.mismatches).toEqual([]);
    expect(zstd.digestEqual).toBe(true);
    expect(zstd.imageEqual).toBe(true);
    expect(zstd.pagesCompared).toBe(zstd.imagePages);
    const remus = await replay({ tracePath: pythonTrace, workers: 2, codec: 'remus' });
    expect(remus.config.codec).toBe('remus');
    expect(remus.imageEqual).toBe(true);
    expect(zstd.dirty.bytesIn).toBe(remus.dirty.bytesIn);
    expect(zstd.dirty.ratio).toBeLessThan(remus.dirty.ratio / 2);
  });
});
