import { randomFillSync } from 'node:crypto';
import http from 'node:http';
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../src/app.js';
import { SenderClient } from '../src/client.js';
import { hashImage } from '../src/digest.js';
import { FrameSplitter } from '../src/frames.js';
import { MemoryImage, Receiver } from '../src/receiver.js';
import { DEFAULT_CACHE_POLICY, DEFAULT_CODEC, MAX_BATCH_BYTES, Sender, type SenderOptions } from '../src/sender.js';
import { Stream, type StreamConfig } from '../src/stream.js';
import { generateEpochs, type GeneratedEpoch } from '../src/trace-gen.js';
import { encodeEpochRecord, TraceImage } from '../src/trace.js';
import { MAX_FRAME_BYTES } from '../src/wire.js';

/**
 * Load: the service-wide memory budget (stream creation and input-slab
 * growth), the bound on epochs in flight (503 OVERLOADED with Retry-After,
 * nothing changed), and a slow reader that neither makes the service buffer
 * without bound nor stops another stream. Waits only sequence the test;
 * nothing asserts on time.
 */
const PAGE = 4096;
const OCTETS = 'application/octet-stream';
const WAIT_MS = 30_000;

let sender: Sender | null = null;
let app: FastifyInstance | null = null;
const held = new Set<http.ClientRequest>();

afterEach(async () => {
  for (const req of held) req.destroy();
  held.clear();
  await app?.close();
  await sender?.close();
  app = null;
  sender = null;
});

async function start(options: SenderOptions): Promise<{ client: SenderClient; url: string; sender: Sender }> {
  sender = new Sender(options);
  app = await buildApp({ sender: { sender } });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  return { client: new SenderClient(url), url, sender };
}

/** The configuration of the streams these tests create (the service's default codec: its chunk scratch is part of a stream's slabs). */
function config(overrides: Partial<StreamConfig> = {}): StreamConfig {
  return { pageSize: PAGE, cacheBytes: 1024 * 1024, partitions: 1, frameBytes: 64 * 1024, pfnLimit: 2 ** 48, maxEpochBytes: 1024 ** 3, codec: DEFAULT_CODEC, cachePolicy: DEFAULT_CACHE_POLICY, ...overrides };
}

async function waitUntil(what: string, check: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`gave up after ${WAIT_MS} ms waiting until ${what}`);
    await sleep(5);
  }
}

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  json: { statusCode: number; code: string; message: string };
}

async function postJson(url: string, path: string, body: unknown): Promise<Answer> {
  const res = await fetch(new URL(path, url), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, headers: Object.fromEntries(res.headers), json: (await res.json()) as Answer['json'] };
}

async function postEpochRaw(url: string, id: string, record: Uint8Array): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  const res = await fetch(new URL(`/v1/streams/${id}/epochs`, url), { method: 'POST', headers: { 'content-type': OCTETS }, body: record });
  return { status: res.status, headers: Object.fromEntries(res.headers), body: Buffer.from(await res.arrayBuffer()) };
}

/** A request whose body the test writes itself; its answer arrives as a stream. */
function open(url: string, id: string, length: number): { req: http.ClientRequest; response: Promise<http.IncomingMessage> } {
  const req = http.request(new URL(`/v1/streams/${id}/epochs`, url), { method: 'POST', headers: { 'content-type': OCTETS, 'content-length': length }, agent: false });
  held.add(req);
  req.on('error', () => undefined);
  const response = new Promise<http.IncomingMessage>((resolve, reject) => {
    req.once('response', resolve);
    req.once('error', reject);
  });
  response.catch(() => undefined);
  return { req, response };
}

function expectShed(answer: { status: number; headers: http.IncomingHttpHeaders; json: { code: string; message: string } }, code: string, retryAfter: string): void {
  expect(answer.status, answer.json.message).toBe(503);
  expect(answer.json.code).toBe(code);
  expect(answer.headers['retry-after']).toBe(retryAfter);
}

/** Apply an answer to an in-process receiver and return how many epochs it committed. */
function applyFrames(rx: Receiver, bytes: Uint8Array): number {
  const splitter = new FrameSplitter(MAX_FRAME_BYTES);
  let committed = 0;
  for (const frame of splitter.push(bytes)) if (rx.applyFrame(frame).committed) committed++;
  splitter.end();
  return committed;
}

function expectImage(rx: Receiver, epochs: readonly GeneratedEpoch[]): void {
  const oracle = new TraceImage(PAGE);
  for (const e of epochs) oracle.apply(e);
  const expected = hashImage(oracle.pfns(), PAGE, (pfn, dst) => dst.set(oracle.get(pfn) as Uint8Array));
  expect(rx.pageCount).toBe(oracle.size);
  expect(rx.imageDigest().toString('hex')).toBe(expected.toString('hex'));
}

/** `pages` pages of random bytes at pfns 0..pages-1: every record FULL, nothing compresses. */
function randomEpoch(pages: number): GeneratedEpoch {
  return { pfns: Float64Array.from({ length: pages }, (_, i) => i), kinds: new Uint8Array(pages), pages: randomFillSync(new Uint8Array(pages * PAGE)) };
}

describe('the service-wide memory budget', () => {
  it('refuses a stream past it with 503 MEMORY_BUDGET_EXCEEDED naming the numbers; a delete makes room again', async () => {
    const footprint = 1024 * 1024 + Stream.initialSlabBytes(config());
    const budget = 2 * footprint + Math.floor(footprint / 2);
    const { client, url, sender: s } = await start({ workers: 1, memoryBudgetBytes: budget });
    const a = await client.createStream({ cacheBytes: 1024 * 1024, frameBytes: 64 * 1024 });
    await client.createStream({ cacheBytes: 1024 * 1024, frameBytes: 64 * 1024 });
    expect(s.memoryInUse).toBe(2 * footprint);

    const refused = await postJson(url, '/v1/streams', { cacheBytes: 1024 * 1024, frameBytes: 64 * 1024 });
    expectShed(refused, 'MEMORY_BUDGET_EXCEEDED', '5');
    expect(refused.json.message).toContain(String(footprint));
    expect(refused.json.message).toContain(String(budget));
    expect(refused.json.message).toContain(String(2 * footprint));
    expect(s.list().length).toBe(2);
    expect(s.memoryInUse).toBe(2 * footprint);

    // A cache budget larger than the whole service budget is refused the same way.
    expectShed(await postJson(url, '/v1/streams', { cacheBytes: 2 * budget }), 'MEMORY_BUDGET_EXCEEDED', '5');

    await client.deleteStream(a.id);
    const c = await client.createStream({ cacheBytes: 1024 * 1024, frameBytes: 64 * 1024 });
    expect(c.id).not.toBe(a.id);
    expect(s.shed.MEMORY_BUDGET_EXCEEDED).toBe(2);
  });

  it('refuses an epoch whose input slab would take the total past it (503, Retry-After), and nothing changes', async () => {
    const footprint = 1024 * 1024 + Stream.initialSlabBytes(config());
    // Room for about 1 MiB of epoch slabs beyond the stream itself.
    const { client, url, sender: s } = await start({ workers: 1, memoryBudgetBytes: footprint + 1024 * 1024 });
    const stream = await client.createStream({ cacheBytes: 1024 * 1024, frameBytes: 64 * 1024 });
    const small = randomEpoch(64);
    const big = randomEpoch(512); // 2 MiB of pages

    const before = await client.getStream(stream.id);
    const slabBefore = s.get(stream.id).slabBytes;
    const answer = await postEpochRaw(url, stream.id, encodeEpochRecord(0, big.pfns, big.kinds, big.pages, PAGE));
    const json = JSON.parse(answer.body.toString('utf8')) as Answer['json'];
    expectShed({ ...answer, json }, 'MEMORY_BUDGET_EXCEEDED', '5');
    expect(json.message).toContain('input slab');
    expect(await client.getStream(stream.id)).toEqual(before);
    expect(s.get(stream.id).slabBytes).toBe(slabBefore);
    expect(s.epochsInFlight).toBe(0);

    // An epoch that fits goes through, and the receiver takes it.
    const rx = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE) });
    expect(applyFrames(rx, await client.sendEpochCollect(stream.id, encodeEpochRecord(0, small.pfns, small.kinds, small.pages, PAGE)))).toBe(1);
    expectImage(rx, [small]);
    expect(s.memoryInUse).toBeLessThanOrEqual(s.memoryBudgetBytes);
  });
});

describe('epochs in flight, service-wide', () => {
  it('past maxConcurrentEpochs: 503 OVERLOADED with Retry-After, nothing changed; accepted again once one ends', async () => {
    const { client, url, sender: s } = await start({ workers: 1, maxConcurrentEpochs: 1 });
    const epochs = [...generateEpochs({ seed: 5, epochs: 2, pages: 64, dirtyFraction: 0.5, profile: 'mixed' })];
    const records = epochs.map((e, i) => encodeEpochRecord(i, e.pfns, e.kinds, e.pages, PAGE));
    const a = await client.createStream({ workers: 1 });
    const b = await client.createStream({ workers: 1 });

    // Stream a's epoch holds its place: its body has not all arrived.
    const held = open(url, a.id, records[0].length);
    held.req.write(records[0].subarray(0, 100));
    await waitUntil('stream a is busy', () => s.get(a.id).busy);
    expect(s.epochsInFlight).toBe(1);

    const before = await client.getStream(b.id);
    const answer = await postEpochRaw(url, b.id, records[0]);
    const json = JSON.parse(answer.body.toString('utf8')) as Answer['json'];
    expectShed({ ...answer, json }, 'OVERLOADED', '1');
    expect(json.message).toContain('1');
    expect(await client.getStream(b.id)).toEqual(before);
    expect(s.shed.OVERLOADED).toBe(1);

    held.req.end(records[0].subarray(100));
    const res = await held.response;
    expect(res.statusCode).toBe(200);
    const chunks: Buffer[] = [];
    for await (const chunk of res) chunks.push(chunk as Buffer);
    const rxA = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE) });
    expect(applyFrames(rxA, Buffer.concat(chunks))).toBe(1);
    await waitUntil('no epoch is in flight', () => s.epochsInFlight === 0);

    const rxB = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE) });
    for (let e = 0; e < 2; e++) expect(applyFrames(rxB, await client.sendEpochCollect(b.id, records[e]))).toBe(1);
    expectImage(rxB, epochs);
    expectImage(rxA, epochs.slice(0, 1));
  });
});

describe('a slow reader', () => {
  it('holds at most its frame slabs in flight, does not grow memory with its epoch, and does not stop another stream', async () => {
    const { client, url, sender: s } = await start({ workers: 2 });
    // The server's sockets: what Node holds for them in user space is what a
    // slow reader could make the service buffer.
    const sockets = new Set<Socket>();
    app?.server.on('connection', (socket: Socket) => sockets.add(socket));
    const buffered = (): number => [...sockets].reduce((sum, socket) => sum + socket.writableLength, 0);
    const FRAME = 64 * 1024;
    // 48 MiB of incompressible pages: far more than the socket buffers of a
    // reader that does not read can hold.
    const slowEpoch = randomEpoch(12 * 1024);
    const slowRecord = encodeEpochRecord(0, slowEpoch.pfns, slowEpoch.kinds, slowEpoch.pages, PAGE);
    const slow = await client.createStream({ workers: 2, frameBytes: FRAME, cacheBytes: 1024 * 1024 });
    const { req, response } = open(url, slow.id, slowRecord.length);
    req.end(slowRecord);
    const res = await response;
    expect(res.statusCode).toBe(200);
    // Read nothing: the sender's writes stall once the socket buffers are full.
    res.pause();
    const slowStream = s.get(slow.id);
    await waitUntil('every frame slab of the slow stream waits on the socket', () => slowStream.framesInFlight === 3);
    const sentAtStall = slowStream.framesSent;
    const slabsAtStall = slowStream.slabBytes;
    expect(buffered()).toBeLessThanOrEqual(3 * FRAME);

    // Meanwhile another stream runs its epochs to the end, receiver exact.
    const other = [...generateEpochs({ seed: 11, epochs: 12, pages: 512, dirtyFraction: 0.4, profile: 'mixed' })];
    const fast = await client.createStream({ workers: 2, frameBytes: FRAME });
    const rx = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE) });
    for (let e = 0; e < other.length; e++) {
      const frames = await client.sendEpochCollect(fast.id, encodeEpochRecord(e, other[e].pfns, other[e].kinds, other[e].pages, PAGE));
      expect(applyFrames(rx, frames)).toBe(1);
    }
    expectImage(rx, other);

    // The slow epoch is still running, with no more than its three slabs
    // in flight, and far from done: nothing piled up for it in the service.
    expect(slowStream.busy).toBe(true);
    expect(slowStream.framesInFlight).toBeLessThanOrEqual(3);
    const totalFrames = Math.ceil(slowRecord.length / FRAME);
    expect(slowStream.framesSent).toBeLessThan(totalFrames / 2);
    expect(slowStream.framesSent - sentAtStall).toBeLessThan(totalFrames / 4);
    // The frames still to come are not buffered anywhere: Node holds at most
    // the three slabs' frames for the socket, and the stream's slabs did not grow.
    expect(buffered()).toBeLessThanOrEqual(3 * FRAME);
    expect(slowStream.slabBytes).toBe(slabsAtStall);

    // The reader comes back: the epoch completes and the receiver takes it.
    const chunks: Buffer[] = [];
    res.on('data', (chunk: Buffer) => chunks.push(chunk));
    const ended = new Promise<void>((resolve, reject) => {
      res.on('end', resolve);
      res.on('error', reject);
    });
    res.resume();
    await ended;
    const rxSlow = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE) });
    expect(applyFrames(rxSlow, Buffer.concat(chunks))).toBe(1);
    expectImage(rxSlow, [slowEpoch]);
    await waitUntil('the slow stream is idle', () => !slowStream.busy);
    expect(slowStream.framesInFlight).toBe(0);
  });
});

describe('batchBytes', () => {
  it('sets the record regions a stream reserves: two batches of worst-case records and their index', () => {
    const batchPages = (bytes: number): number => Math.max(64, Math.floor(bytes / PAGE / 64) * 64);
    const small = Stream.initialSlabBytes(config(), 1024 * 1024);
    const large = Stream.initialSlabBytes(config(), 8 * 1024 * 1024);
    const morePages = 2 * (batchPages(8 * 1024 * 1024) - batchPages(1024 * 1024));
    // Each page of a batch reserves at least a whole page of record region (a FULL record) and 4 bytes of index.
    expect(large - small).toBeGreaterThanOrEqual(morePages * (PAGE + 4));
    expect(large - small).toBeLessThan(morePages * (2 * PAGE + 4) + 8192);
    // Less than one digest group of pages still makes a batch of one group.
    expect(Stream.initialSlabBytes(config(), 1)).toBe(Stream.initialSlabBytes(config(), 64 * PAGE));
  });

  it('is refused outside 1 to MAX_BATCH_BYTES with INVALID_CONFIG', () => {
    for (const batchBytes of [0, -1, 1.5, MAX_BATCH_BYTES + 1, Number.NaN]) {
      expect(() => new Sender({ workers: 1, batchBytes }), String(batchBytes)).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
    }
  });

  it('one-group batches (64 pages) keep every epoch exact over many batches and ring turns, at every codec', async () => {
    const epochs = [...generateEpochs({ seed: 31, epochs: 5, pages: 700, dirtyFraction: 0.6, profile: 'mixed' })];
    const { client, url } = await start({ workers: 2, batchBytes: 64 * PAGE });
    for (const codec of ['remus', 'xbzrle', 'remus-zstd'] as const) {
      const stream = await client.createStream({ cacheBytes: 256 * PAGE, frameBytes: 64 * 1024, codec });
      const rx = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE) });
      for (const [i, e] of epochs.entries()) {
        const answer = await postEpochRaw(url, stream.id, encodeEpochRecord(i, e.pfns, e.kinds, e.pages, PAGE));
        expect(answer.status, codec).toBe(200);
        expect(applyFrames(rx, answer.body), codec).toBe(1);
      }
      expectImage(rx, epochs);
    }
  });
});
