import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../src/app.js';
import { ReceiverClient, SenderClient } from '../src/client.js';
import { hashImage } from '../src/digest.js';
import { generateTrace } from '../src/trace-gen.js';
import { parseTrace, TraceImage } from '../src/trace.js';

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

/** Send every epoch, collect its frames, apply them to a fresh receiver image; returns a hash of all frames. */
async function runTrace(workers: number, codec: 'remus' | 'xbzrle' = 'remus'): Promise<{ framesHash: string; imageId: string; frameBytes: number }> {
  const stream = await sender.createStream({ workers, cacheBytes: SMALL_CACHE, frameBytes: 256 * 1024, codec });
  expect(stream.config.codec).toBe(codec);
  const image = await receiver.createImage({ pageSize: trace.pageSize });
  const framesHash = createHash('sha256');
  let frameBytes = 0;
  for (const epoch of trace.epochs) {
    const frames = await sender.sendEpochCollect(stream.id, epoch.record);
    // Byte 6 of every frame header is the stream's codec (1 remus, 2 xbzrle); the first frame stands for the rest.
    expect(frames[6]).toBe(codec === 'xbzrle' ? 2 : 1);
    framesHash.update(frames);
    frameBytes += frames.length;
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
  return { framesHash: framesHash.digest('hex'), imageId: image.id, frameBytes };
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
    it(`replays a generated trace exactly with codec xbzrle and ${workers} worker(s), deterministically`, async () => {
      const first = await runTrace(workers, 'xbzrle');
      await expectImageEqualsTrace(first.imageId);
      const second = await runTrace(workers, 'xbzrle');
      expect(second.framesHash).toBe(first.framesHash);
      expect(second.frameBytes).toBe(first.frameBytes);
    });
  }
});
