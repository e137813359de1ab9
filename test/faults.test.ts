import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../src/app.js';
import { ApiError, ReceiverClient, SenderClient } from '../src/client.js';
import { hashImage } from '../src/digest.js';
import { Sender } from '../src/sender.js';
import { generateEpochs } from '../src/trace-gen.js';
import { encodeEpochRecord, TraceImage } from '../src/trace.js';

/**
 * A worker thread that dies in the middle of an encode task, after it has
 * already moved some cache slots, is the case partition invalidation exists
 * for. The epoch must fail (a 5xx before the first frame, an ABORT frame
 * after it), the receiver must not commit it, and the same epoch sent again,
 * then the rest of the trace, must leave the receiver's image exact.
 */
const PAGE_SIZE = 4096;
const epochs = [...generateEpochs({ seed: 99, epochs: 6, pages: 3000, dirtyFraction: 0.6, profile: 'mixed' })];
const records = epochs.map((e, i) => encodeEpochRecord(i, e.pfns, e.kinds, e.pages, PAGE_SIZE));

let sender: Sender;
let senderApp: FastifyInstance;
let receiverApp: FastifyInstance;
let senderClient: SenderClient;
let receiverClient: ReceiverClient;

beforeEach(async () => {
  // 4 MiB (1024-page) batches, so that an epoch of the trace below (1800
  // dirty pages) takes two tasks a worker: a crash in the second comes after
  // frames went out.
  sender = new Sender({ workers: 2, allowFaults: true, batchBytes: 4 * 1024 * 1024 });
  senderApp = await buildApp({ sender: { sender } });
  receiverApp = await buildApp({ receiver: {} });
  senderClient = new SenderClient(await senderApp.listen({ host: '127.0.0.1', port: 0 }));
  receiverClient = new ReceiverClient(await receiverApp.listen({ host: '127.0.0.1', port: 0 }));
});

afterEach(async () => {
  await Promise.all([senderApp.close(), receiverApp.close()]);
  await sender.close();
});

async function expectExactImage(imageId: string): Promise<void> {
  const oracle = new TraceImage(PAGE_SIZE);
  for (const e of epochs) oracle.apply(e);
  const expected = hashImage(oracle.pfns(), PAGE_SIZE, (pfn, dst) => dst.set(oracle.get(pfn) as Uint8Array));
  const digest = await receiverClient.digest(imageId);
  expect(digest.pages).toBe(oracle.size);
  expect(digest.digest).toBe(expected.toString('hex'));
}

/** Run the trace; before epoch `faultEpoch`, arm a crash of worker 0; returns how that epoch failed. */
async function runWithCrash(faultEpoch: number, skipTasks: number): Promise<{ failure: string; receiverAborted: boolean }> {
  const stream = await senderClient.createStream({ workers: 2, cacheBytes: 1024 * PAGE_SIZE, frameBytes: 64 * 1024 });
  const image = await receiverClient.createImage({ pageSize: PAGE_SIZE });
  let failure = '';
  let receiverAborted = false;
  for (let e = 0; e < records.length; e++) {
    if (e === faultEpoch) {
      sender.pool.armCrash(0, 5, skipTasks);
      try {
        const frames = await senderClient.sendEpochCollect(stream.id, records[e]);
        // Frames had gone out before the worker died: the answer ends with
        // an ABORT frame, and the receiver must not commit anything.
        const applied = await receiverClient.postFrames(image.id, frames);
        receiverAborted = applied.aborted === true;
        expect(applied.committedEpoch).toBe(e - 1);
        failure = 'abort-frame';
      } catch (err) {
        expect(err).toBeInstanceOf(ApiError);
        expect((err as ApiError).status).toBe(500);
        expect((err as ApiError).code).toBe('EPOCH_FAILED');
        failure = 'http-500';
      }
      const info = await senderClient.getStream(stream.id);
      expect(info.nextEpoch).toBe(e);
      expect(info.stats.epochsAborted).toBe(1);
    }
    const frames = await senderClient.sendEpochCollect(stream.id, records[e]);
    const applied = await receiverClient.postFrames(image.id, frames);
    expect(applied.committedEpoch).toBe(e);
  }
  await expectExactImage(image.id);
  return { failure, receiverAborted };
}

describe('a worker dies in the middle of an epoch', () => {
  it('before the first frame: the epoch fails with 500, and the resent epoch and the rest stay exact', async () => {
    const result = await runWithCrash(2, 0);
    expect(result.failure).toBe('http-500');
    expect(sender.pool.failures).toBeGreaterThan(0);
  });

  it('after frames went out: an ABORT frame ends the answer, the receiver drops the epoch, and the rest stays exact', async () => {
    const result = await runWithCrash(3, 1);
    expect(result.failure).toBe('abort-frame');
    expect(result.receiverAborted).toBe(true);
  });
});
