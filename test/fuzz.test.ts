import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { bodyCase, checkBodyCase, checkStreamCase, isDocumentedError, streamCase } from '../bench/fuzz-props.js';
import { buildApp } from '../src/app.js';
import { SenderClient, type StreamInfo } from '../src/client.js';
import { hashImage } from '../src/digest.js';
import { epochLayout } from '../src/epoch-record.js';
import { FrameSplitter } from '../src/frames.js';
import { MemoryImage, Receiver } from '../src/receiver.js';
import { Sender } from '../src/sender.js';
import { generateEpochs } from '../src/trace-gen.js';
import { encodeEpochRecord, TraceImage } from '../src/trace.js';
import { MAX_FRAME_BYTES } from '../src/wire.js';

/**
 * Property tests over the two parsers that take untrusted bytes: the
 * sender's epoch body reader and the receiver's frame path. The properties
 * live in bench/fuzz-props.ts, which bench/fuzz.ts runs for longer
 * (`node dist/bench/fuzz.js --seconds 60`). Seeds are fast-check's: a
 * failure prints the seed and path that reproduce it.
 */

describe('fuzz: the sender body reader (src/epoch-body.ts)', () => {
  it('accepts exactly what the trace parser accepts, throws only ServiceError, and writes only inside its slab', async () => {
    await fc.assert(fc.asyncProperty(bodyCase, async (c) => void (await checkBodyCase(c))), { numRuns: 600 });
  });

  it('the generator reaches both outcomes (else the property above proves little)', async () => {
    const outcomes = new Set<string>();
    for (const c of fc.sample(bodyCase, { numRuns: 300, seed: 42 })) outcomes.add(await checkBodyCase(c));
    expect([...outcomes].sort()).toEqual(['accepted', 'refused']);
  });
});

describe('fuzz: mutated multi-frame streams through FrameSplitter and Receiver', () => {
  it('throws only FrameError/CodecError/ServiceError, and the image is exactly epoch 2 or exactly as before', () => {
    fc.assert(fc.property(streamCase, (c) => void checkStreamCase(c)), { numRuns: 500 });
  });

  it('the generator reaches every outcome', () => {
    const outcomes = new Set<string>();
    for (const c of fc.sample(streamCase, { numRuns: 300, seed: 7 })) outcomes.add(checkStreamCase(c));
    outcomes.add(checkStreamCase({ flips: [], deletions: [], insertions: [], cut: undefined, chunks: [100] }));
    expect([...outcomes].sort()).toEqual(['committed', 'incomplete', 'refused']);
  });

  it('isDocumentedError takes only ServiceError and its subclasses', () => {
    expect(isDocumentedError(new RangeError('x'))).toBe(false);
    expect(isDocumentedError(new Error('x'))).toBe(false);
  });
});

describe('fuzz: mutated epoch bodies over HTTP', () => {
  const PAGE = 4096;
  const epochs = [...generateEpochs({ seed: 31, epochs: 4, pages: 48, dirtyFraction: 0.5, profile: 'mixed' })];
  const records = epochs.map((e, i) => encodeEpochRecord(i, e.pfns, e.kinds, e.pages, PAGE));
  let sender: Sender;
  let app: FastifyInstance;
  let client: SenderClient;
  let url: string;

  beforeAll(async () => {
    sender = new Sender({ workers: 2 });
    app = await buildApp({ sender: { sender } });
    url = await app.listen({ host: '127.0.0.1', port: 0 });
    client = new SenderClient(url);
  });

  afterAll(async () => {
    await app.close();
    await sender.close();
  });

  function apply(rx: Receiver, frames: Uint8Array): void {
    const splitter = new FrameSplitter(MAX_FRAME_BYTES);
    for (const frame of splitter.push(frames)) rx.applyFrame(frame);
    splitter.end();
  }

  it('a refused body changes nothing (counters, nextEpoch, cache); an accepted one is aborted; the stream then stays exact', async () => {
    // The last legal pfn is the trace's largest: a flip above it is out of range.
    const pfnLimit = Math.max(...epochs.flatMap((e) => [...e.pfns])) + 1;
    const stream = await client.createStream({ workers: 2, pfnLimit, frameBytes: 64 * 1024 });
    const rx = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE) });
    apply(rx, await client.sendEpochCollect(stream.id, records[0]));
    apply(rx, await client.sendEpochCollect(stream.id, records[1]));
    const layout = epochLayout(epochs[2].pfns.length, PAGE);
    const outcomes: Record<string, number> = {};

    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ at: fc.nat({ max: layout.pageOffset + 2 * PAGE }), xor: fc.integer({ min: 1, max: 255 }) }), { minLength: 1, maxLength: 3 }),
        fc.option(fc.nat({ max: records[2].length }), { nil: undefined }),
        fc.boolean(),
        async (flips, cut, chunked) => {
          let body = Buffer.from(records[2]);
          for (const f of flips) body[f.at] ^= f.xor;
          if (cut !== undefined) body = body.subarray(0, cut);
          const before: StreamInfo = await client.getStream(stream.id);
          const res = await fetch(`${url}/v1/streams/${stream.id}/epochs`, {
            method: 'POST',
            headers: { 'content-type': 'application/octet-stream' },
            // A stream body goes chunked, without Content-Length.
            body: chunked ? new Blob([body]).stream() : body,
            duplex: 'half',
          } as RequestInit);
          const answer = Buffer.from(await res.arrayBuffer());
          if (res.status === 200) {
            // A mutation the format allows (a page byte, a kind made raw, another legal pfn):
            // abort it, as a controller whose receiver did not commit would.
            outcomes.accepted = (outcomes.accepted ?? 0) + 1;
            expect(answer.length).toBeGreaterThan(0);
            const aborted = await fetch(`${url}/v1/streams/${stream.id}/epochs/2/abort`, { method: 'POST' });
            expect(await aborted.json()).toEqual({ aborted: 'completed', nextEpoch: 2 });
            return;
          }
          outcomes.refused = (outcomes.refused ?? 0) + 1;
          expect(res.status).toBeGreaterThanOrEqual(400);
          expect(res.status).toBeLessThan(500);
          const json = JSON.parse(answer.toString('utf8')) as { code: string; message: string };
          expect(json.code).toMatch(/^[A-Z_]+$/);
          expect(await client.getStream(stream.id)).toEqual(before);
        },
      ),
      { numRuns: 40 },
    );
    expect(outcomes.refused).toBeGreaterThan(0);

    // Whatever was refused or aborted, the cache holds only what the
    // receiver holds: the real epochs 2 and 3 leave it exact.
    apply(rx, await client.sendEpochCollect(stream.id, records[2]));
    apply(rx, await client.sendEpochCollect(stream.id, records[3]));
    const oracle = new TraceImage(PAGE);
    for (const e of epochs) oracle.apply(e);
    const expected = hashImage(oracle.pfns(), PAGE, (pfn, dst) => dst.set(oracle.get(pfn) as Uint8Array));
    expect(rx.committedEpoch).toBe(3);
    expect(rx.imageDigest().toString('hex')).toBe(expected.toString('hex'));
  });
});
