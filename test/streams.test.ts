import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../src/app.js';
import { ApiError, ReceiverClient, SenderClient, type StreamConfigRequest, type StreamInfo } from '../src/client.js';
import { decodeRemusPage, EMPTY_PAGE, FULL_PAGE } from '../src/codec/remus.js';
import { hashImage } from '../src/digest.js';
import { epochLayout, writePfn } from '../src/epoch-record.js';
import { minFrameBytes, readFrameHeader } from '../src/frames.js';
import { generateEpochs, type GeneratedEpoch } from '../src/trace-gen.js';
import { encodeEpochRecord, TraceImage } from '../src/trace.js';
import { FLAG_ABORT, FLAG_LAST, FLAG_RESYNC, FRAME_HEADER_BYTES, MAX_FRAME_BYTES, PFN_LIMIT, RECORD_REMUS, RECORD_ZERO } from '../src/wire.js';

/**
 * The sender's HTTP API, behaviour by behaviour, over real HTTP on loopback:
 * stream creation and its limits, every way an epoch body can be wrong (each
 * refused with a JSON error and the stream left exactly as it was), one
 * epoch at a time, abort (completed and running), a client that goes away in
 * the middle of the answer, reset, delete, and frames that stream out while
 * the body is still arriving. The receiver (a second app) and TraceImage are
 * the oracles: after every disturbance the receiver's image must equal the
 * controller's, byte for byte.
 *
 * node:http is used directly where the typed client is too polite: bodies
 * sent in pieces or cut short, lying or missing Content-Length, wrong
 * content types, and a client that disconnects mid-answer. Waits only
 * sequence the test (e.g. "until the stream says busy"), never measure time.
 */
const PAGE = 4096;
const OCTETS = 'application/octet-stream';
/** The sender's batches in these tests: 1024 pages of 4 KiB. */
const TEST_BATCH_BYTES = 4 * 1024 * 1024;
/** Sequencing waits: generous, because the machine is shared; reaching one is a failure, not a timing measurement. */
const WAIT_MS = 30_000;

let senderApp: FastifyInstance;
let receiverApp: FastifyInstance;
let senderUrl: string;
let sender: SenderClient;
let receiver: ReceiverClient;

beforeAll(async () => {
  // 4 MiB (1024-page) batches: the tests of held-open and cut-off bodies
  // need an epoch of the 12 MiB trace below to span several batches.
  senderApp = await buildApp({ sender: { workers: 2, batchBytes: TEST_BATCH_BYTES } });
  receiverApp = await buildApp({ receiver: {} });
  senderUrl = await senderApp.listen({ host: '127.0.0.1', port: 0 });
  sender = new SenderClient(senderUrl);
  receiver = new ReceiverClient(await receiverApp.listen({ host: '127.0.0.1', port: 0 }));
});

afterAll(async () => {
  await Promise.all([senderApp?.close(), receiverApp?.close()]);
});

// ---------------------------------------------------------------- traces

function trace(seed: number, pages: number, epochs: number, dirtyFraction: number): GeneratedEpoch[] {
  return [...generateEpochs({ seed, epochs, pages, dirtyFraction, profile: 'mixed' })];
}

/** The same trace with every pfn replaced by its rank in epoch 0 (the full image): pfns 0 .. pages-1. */
function ranked(epochs: GeneratedEpoch[]): GeneratedEpoch[] {
  const rank = new Map<number, number>();
  epochs[0].pfns.forEach((pfn, i) => rank.set(pfn, i));
  return epochs.map((e) => ({ ...e, pfns: Float64Array.from(e.pfns, (pfn) => rank.get(pfn) as number) }));
}

/** Deterministic page contents: a few words from a small LCG, the rest zero (so deltas stay small). */
function page(seed: number): Uint8Array {
  const out = new Uint8Array(PAGE);
  const view = new DataView(out.buffer);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let w = 0; w < 64; w++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    view.setUint32(((x >>> 8) % (PAGE / 4)) * 4, x, true);
  }
  return out;
}

function epochOf(pfns: number[], pages: Uint8Array[], kinds?: number[]): GeneratedEpoch {
  const all = new Uint8Array(pfns.length * PAGE);
  pages.forEach((p, i) => all.set(p, i * PAGE));
  return { pfns: Float64Array.from(pfns), kinds: Uint8Array.from(kinds ?? pfns.map(() => 0)), pages: all };
}

/** `e` with more pages appended. */
function extended(e: GeneratedEpoch, pfns: number[], pages: Uint8Array[]): GeneratedEpoch {
  const extra = epochOf(pfns, pages);
  const all = new Uint8Array(e.pages.length + extra.pages.length);
  all.set(e.pages, 0);
  all.set(extra.pages, e.pages.length);
  return {
    pfns: Float64Array.from([...e.pfns, ...extra.pfns]),
    kinds: Uint8Array.from([...e.kinds, ...extra.kinds]),
    pages: all,
  };
}

function recordOf(n: number, e: GeneratedEpoch): Buffer {
  return encodeEpochRecord(n, e.pfns, e.kinds, e.pages, PAGE);
}

/** The whole image after `epochs` as one epoch (pfns ascending): what a controller sends after a reset. */
function fullImage(epochs: readonly GeneratedEpoch[]): GeneratedEpoch {
  const oracle = new TraceImage(PAGE);
  for (const e of epochs) oracle.apply(e);
  const pfns = oracle.pfns();
  return epochOf(pfns, pfns.map((pfn) => oracle.get(pfn) as Uint8Array));
}

async function expectExact(imageId: string, applied: readonly GeneratedEpoch[]): Promise<void> {
  const oracle = new TraceImage(PAGE);
  for (const e of applied) oracle.apply(e);
  const pfns = oracle.pfns();
  const expected = hashImage(pfns, PAGE, (pfn, dst) => dst.set(oracle.get(pfn) as Uint8Array));
  const digest = await receiver.digest(imageId);
  expect(digest.pages).toBe(pfns.length);
  expect(digest.digest, `image ${imageId} differs from the controller's`).toBe(expected.toString('hex'));
}

/**
 * A stream, a receiver image and the epochs a controller sends through them;
 * `applied` is what the receiver must hold (the oracle's input).
 */
class Run {
  readonly applied: GeneratedEpoch[] = [];

  private constructor(
    readonly id: string,
    readonly imageId: string,
    readonly epochs: GeneratedEpoch[],
  ) {}

  static async start(epochs: GeneratedEpoch[], config: StreamConfigRequest = {}): Promise<Run> {
    // The seed's codec: parseFrames reads codec 1's records to check kinds (FULL after an abort, and so on).
    const stream = await sender.createStream({ workers: 2, codec: 'remus', ...config });
    const image = await receiver.createImage({ pageSize: PAGE });
    return new Run(stream.id, image.id, epochs);
  }

  record(n: number): Buffer {
    return recordOf(n, this.epochs[n]);
  }

  /** Send epoch n with the typed client, apply its frames, and expect the receiver to commit it. */
  async step(n: number): Promise<Buffer> {
    const frames = await sender.sendEpochCollect(this.id, this.record(n));
    await this.apply(n, frames);
    return frames;
  }

  async apply(n: number, frames: Uint8Array): Promise<void> {
    const applied = await receiver.postFrames(this.imageId, frames);
    expect(applied.aborted).toBe(false);
    expect(applied.committedEpoch).toBe(n);
    this.applied.push(this.epochs[n]);
  }

  info(): Promise<StreamInfo> {
    return sender.getStream(this.id);
  }

  async expectExact(): Promise<void> {
    await expectExact(this.imageId, this.applied);
  }
}

// ---------------------------------------------------------------- raw HTTP

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

interface OpenRequest {
  req: http.ClientRequest;
  response: Promise<http.IncomingMessage>;
}

/** Requests a test holds open; destroyed after each test, so a failed test cannot keep the server from closing. */
const held = new Set<http.ClientRequest>();

afterEach(() => {
  for (const req of held) req.destroy();
  held.clear();
});

/** A request whose body the test writes itself (in pieces, cut short, or not at all). */
function open(method: string, path: string, headers: http.OutgoingHttpHeaders = {}): OpenRequest {
  const req = http.request(new URL(path, senderUrl), { method, headers, agent: false });
  held.add(req);
  const response = new Promise<http.IncomingMessage>((resolve, reject) => {
    req.once('response', resolve);
    req.once('error', reject);
  });
  // Once answered, writing into a connection the server closed may fail:
  // the answer is what the test checks.
  req.on('error', () => undefined);
  response.catch(() => undefined);
  return { req, response };
}

async function readAll(res: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of res) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** POST a whole body at once with exactly the given headers (node:http adds no Content-Length when one is given or chunked is asked for). */
async function post(path: string, body: Uint8Array | null, headers: http.OutgoingHttpHeaders): Promise<Answer> {
  const { req, response } = open('POST', path, headers);
  if (body !== null && body.length > 0) req.write(body);
  req.end();
  const res = await within(response, `the answer to POST ${path}`);
  const data = await within(readAll(res), `the body of the answer to POST ${path}`);
  req.destroy();
  return { status: res.statusCode ?? 0, headers: res.headers, body: data };
}

function epochPath(id: string): string {
  return `/v1/streams/${id}/epochs`;
}

/** An epoch body with an honest Content-Length. */
function postEpoch(id: string, body: Uint8Array, headers: http.OutgoingHttpHeaders = {}): Promise<Answer> {
  return post(epochPath(id), body, { 'content-type': OCTETS, 'content-length': body.length, ...headers });
}

/** An epoch body without Content-Length (chunked): its length is only known when it ends. */
function postEpochChunked(id: string, body: Uint8Array): Promise<Answer> {
  return post(epochPath(id), body, { 'content-type': OCTETS, 'transfer-encoding': 'chunked' });
}

function expectErrorAnswer(answer: Answer, status: number, code: string): { statusCode: number; code: string; message: string } {
  const text = answer.body.toString('utf8');
  expect(answer.status, text).toBe(status);
  expect(answer.headers['content-type']).toMatch(/^application\/json/);
  const body = JSON.parse(text) as { statusCode: number; code: string; message: string };
  expect(body.statusCode).toBe(status);
  expect(body.code).toBe(code);
  expect(typeof body.message).toBe('string');
  expect(body.message.length).toBeGreaterThan(0);
  return body;
}

async function fetchJson(method: string, path: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> | null }> {
  const response = await fetch(new URL(path, senderUrl), {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, json: text.length === 0 ? null : (JSON.parse(text) as Record<string, unknown>) };
}

async function within<T>(promise: Promise<T>, what: string, ms = WAIT_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`gave up after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function waitUntil(what: string, check: () => Promise<boolean> | boolean): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`gave up after ${WAIT_MS} ms waiting until ${what}`);
    await sleep(5);
  }
}

async function waitBusy(id: string, busy: boolean): Promise<void> {
  await waitUntil(`stream ${id} is ${busy ? 'busy' : 'idle'}`, async () => (await sender.getStream(id)).busy === busy);
}

/** Collects an answer as it arrives, so a test can wait for its first frame while the request is still open. */
class Collector {
  private readonly chunks: Buffer[] = [];
  length = 0;
  ended = false;
  readonly done: Promise<Buffer>;

  constructor(readonly res: http.IncomingMessage) {
    this.done = new Promise((resolve, reject) => {
      res.on('data', (chunk: Buffer) => {
        this.chunks.push(chunk);
        this.length += chunk.length;
      });
      res.on('end', () => {
        this.ended = true;
        resolve(this.bytes());
      });
      res.on('error', (err) => {
        this.ended = true;
        reject(err);
      });
      res.on('close', () => {
        this.ended = true;
        reject(new Error('the answer was cut off'));
      });
    });
    this.done.catch(() => undefined);
  }

  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }

  /** Wait until the first whole frame has arrived; returns its length. */
  async firstFrame(): Promise<number> {
    await waitUntil('the first frame header arrives', () => {
      if (this.length >= FRAME_HEADER_BYTES) return true;
      if (this.ended) throw new Error(`the answer ended after ${this.length} bytes, before a frame`);
      return false;
    });
    const total = FRAME_HEADER_BYTES + readFrameHeader(this.bytes(), 0).payloadLength;
    await waitUntil('the first frame arrives whole', () => {
      if (this.length >= total) return true;
      if (this.ended) throw new Error(`the answer ended after ${this.length} bytes, inside the first frame`);
      return false;
    });
    return total;
  }
}

// ---------------------------------------------------------------- frames

type RecordKind = 'zero' | 'full' | 'empty' | 'delta';

interface ParsedFrame {
  flags: number;
  epoch: number;
  sequence: number;
  epochPageCount: number;
  records: { pfn: number; kind: RecordKind }[];
  abort?: { code: string; message: string };
}

/** Cut an answer into frames and walk every record (type byte, ULEB128 pfn, Remus body), per docs/FORMAT.md. */
function parseFrames(bytes: Uint8Array): ParsedFrame[] {
  const frames: ParsedFrame[] = [];
  const scratch = new Uint8Array(PAGE);
  let pos = 0;
  while (pos < bytes.length) {
    expect(bytes.length - pos, `frame header at byte ${pos}`).toBeGreaterThanOrEqual(FRAME_HEADER_BYTES);
    expect(Buffer.from(bytes.subarray(pos, pos + 4)).toString('latin1')).toBe('RMFR');
    const h = readFrameHeader(bytes, pos);
    const start = pos + FRAME_HEADER_BYTES;
    const end = start + h.payloadLength;
    expect(end, `frame at byte ${pos} runs past the answer`).toBeLessThanOrEqual(bytes.length);
    const frame: ParsedFrame = { flags: h.flags, epoch: h.epoch, sequence: h.sequence, epochPageCount: h.epochPageCount, records: [] };
    if ((h.flags & FLAG_ABORT) !== 0) {
      frame.abort = JSON.parse(Buffer.from(bytes.subarray(start, end)).toString('utf8')) as { code: string; message: string };
    } else {
      let p = start;
      for (let r = 0; r < h.recordCount; r++) {
        const type = bytes[p++];
        let pfn = 0;
        for (let scale = 1; ; scale *= 128) {
          const b = bytes[p++];
          pfn += (b & 0x7f) * scale;
          if (b < 0x80) break;
        }
        if (type === RECORD_ZERO) {
          frame.records.push({ pfn, kind: 'zero' });
          continue;
        }
        expect(type).toBe(RECORD_REMUS);
        const first = bytes[p];
        frame.records.push({ pfn, kind: first === FULL_PAGE ? 'full' : first === EMPTY_PAGE ? 'empty' : 'delta' });
        p = decodeRemusPage(bytes, p, end, scratch, 0, PAGE);
      }
      expect(p, `records of frame ${h.sequence} do not fill its payload`).toBe(end);
    }
    frames.push(frame);
    pos = end;
  }
  return frames;
}

/** A complete epoch answer: frames 0..n-1 of one epoch, LAST only on the last, and its records in request order. */
function expectCompleteEpoch(bytes: Uint8Array, epoch: GeneratedEpoch, n: number, resync: boolean): ParsedFrame[] {
  const frames = parseFrames(bytes);
  expect(frames.length).toBeGreaterThan(0);
  frames.forEach((f, i) => {
    expect(f.epoch).toBe(n);
    expect(f.sequence).toBe(i);
    expect(f.abort).toBeUndefined();
    expect((f.flags & FLAG_LAST) !== 0).toBe(i === frames.length - 1);
    expect((f.flags & FLAG_RESYNC) !== 0, `RESYNC bit of frame ${i}`).toBe(resync);
  });
  expect(frames[frames.length - 1].epochPageCount).toBe(epoch.pfns.length);
  expect(frames.flatMap((f) => f.records.map((r) => r.pfn))).toEqual([...epoch.pfns]);
  return frames;
}

function kinds(frames: ParsedFrame[]): Set<RecordKind> {
  return new Set(frames.flatMap((f) => f.records.map((r) => r.kind)));
}

/** Every page went FULL or ZERO: nothing was sent as a delta against the cache. */
function expectNoDeltas(frames: ParsedFrame[]): void {
  const found = kinds(frames);
  expect(found.has('delta'), 'a delta record was sent').toBe(false);
  expect(found.has('empty'), 'an EMPTY (unchanged) record was sent').toBe(false);
}

/** The check above means something only if the same epoch otherwise has deltas. */
function expectSomeDeltas(frames: ParsedFrame[]): void {
  const found = kinds(frames);
  expect(found.has('delta') || found.has('empty'), 'the epoch has no delta records at all').toBe(true);
}

// ---------------------------------------------------------------- shared traces

/** 48 pages, pfns 0..47; small enough that every bad body is read in a moment. */
const small = ranked(trace(7001, 48, 5, 0.4));
/** 3000 pages: epoch 0 is 12 MiB, later epochs 1575..2625 pages, so more than one 1024-page batch. */
const large = trace(7002, 3000, 4, 0.7);
/** Where a held-open body of a large epoch pauses: past the first batch (1024 pages), before the second ends. */
const HOLD_PAGES = 1100;

function holdPoint(e: GeneratedEpoch): number {
  expect(e.pfns.length, 'the epoch must be longer than the hold point').toBeGreaterThan(HOLD_PAGES + 64);
  return epochLayout(e.pfns.length, PAGE).pageOffset + HOLD_PAGES * PAGE;
}

// ================================================================ 1. create

describe('POST /v1/streams', () => {
  it('fills in the defaults the README states', async () => {
    const created = await fetchJson('POST', '/v1/streams', {});
    expect(created.status).toBe(201);
    const info = created.json as unknown as StreamInfo;
    expect(info.config).toEqual({
      pageSize: 4096,
      cacheBytes: 33554432,
      workers: 2, // the service's worker count
      frameBytes: 1024 * 1024,
      pfnLimit: 2 ** 48,
      maxEpochBytes: 1024 * 1024 * 1024,
      codec: 'remus-zstd',
      cachePolicy: 'tinylfu',
    });
    expect(info.nextEpoch).toBe(0);
    expect(info.busy).toBe(false);
    expect(info.resyncPending).toBe(true);
    expect(info.lastEpoch).toBeNull();
    for (const [name, value] of Object.entries(info.stats)) expect(value, name).toBe(0);
    expect(await sender.getStream(info.id)).toEqual(info);
    expect(await sender.stats(info.id)).toEqual(info.stats);
    await sender.deleteStream(info.id);
  });

  it('creates a stream with every default when the request has no body at all', async () => {
    const created = await fetchJson('POST', '/v1/streams');
    expect(created.status).toBe(201);
    const info = created.json as unknown as StreamInfo;
    expect(info.config.cacheBytes).toBe(33554432);
    expect(info.config.codec).toBe('remus-zstd');
    await sender.deleteStream(info.id);
  });

  const minFrame4k = minFrameBytes(4096);
  const invalid: [string, Record<string, unknown>, string][] = [
    ['pageSize not a power of two', { pageSize: 3000 }, 'pageSize'],
    ['pageSize below 512', { pageSize: 256 }, 'pageSize'],
    ['pageSize above 65536', { pageSize: 131072 }, 'pageSize'],
    ['pageSize not an integer', { pageSize: 4096.5 }, 'pageSize'],
    ['cacheBytes negative', { cacheBytes: -1 }, 'cacheBytes'],
    ['workers 0', { workers: 0 }, 'workers'],
    ['workers 65', { workers: 65 }, 'workers'],
    ['frameBytes one below the minimum for 4 KiB pages', { frameBytes: minFrame4k - 1 }, 'frameBytes'],
    ['frameBytes enough for 4 KiB pages but not for 64 KiB pages', { pageSize: 65536, frameBytes: minFrame4k }, 'frameBytes'],
    ['frameBytes above 16 MiB', { frameBytes: MAX_FRAME_BYTES + 1 }, 'frameBytes'],
    ['pfnLimit 0', { pfnLimit: 0 }, 'pfnLimit'],
    ['pfnLimit above 2^48', { pfnLimit: PFN_LIMIT + 1 }, 'pfnLimit'],
    ['maxEpochBytes above the service limit', { maxEpochBytes: 1024 * 1024 * 1024 + 1 }, 'maxEpochBytes'],
    ['an unknown field', { pageSize: 4096, cacheBytez: 1 }, 'cacheBytez'],
    ['an unknown codec', { codec: 'lz4' }, 'codec'],
    ['a codec in the wrong case', { codec: 'XBZRLE' }, 'codec'],
    ['an unknown cache policy', { cachePolicy: 'arc' }, 'cachePolicy'],
  ];
  for (const [name, body, field] of invalid) {
    it(`refuses ${name} with 400 naming ${field}`, async () => {
      const streamsBefore = (await fetchJson('GET', '/v1/streams')).json as unknown as unknown[];
      const answer = await fetchJson('POST', '/v1/streams', body);
      expect(answer.status).toBe(400);
      expect(answer.json).toMatchObject({ statusCode: 400 });
      expect(typeof answer.json?.code).toBe('string');
      if (field === 'codec') expect(answer.json?.code).toBe('INVALID_CONFIG');
      expect(String(answer.json?.message)).toContain(field);
      const streamsAfter = (await fetchJson('GET', '/v1/streams')).json as unknown as unknown[];
      expect(streamsAfter.length).toBe(streamsBefore.length);
    });
  }

  it('accepts every limit exactly', async () => {
    const valid: StreamConfigRequest[] = [
      { pageSize: 512 },
      { pageSize: 65536, frameBytes: minFrameBytes(65536) },
      { frameBytes: minFrame4k },
      { frameBytes: MAX_FRAME_BYTES },
      { cacheBytes: 0 },
      { workers: 1 },
      { workers: 64 },
      { pfnLimit: 1 },
      { pfnLimit: PFN_LIMIT },
      { maxEpochBytes: 1024 * 1024 * 1024 },
      { codec: 'remus' },
      { codec: 'xbzrle' },
      { codec: 'remus-zstd' },
      { cachePolicy: 'lru' },
      { cachePolicy: 'tinylfu' },
    ];
    for (const config of valid) {
      const stream = await sender.createStream(config);
      expect(stream.config).toMatchObject(config);
      await sender.deleteStream(stream.id);
    }
  });

  it('answers 503 TOO_MANY_STREAMS at the stream limit, and accepts again after a delete', async () => {
    const app = await buildApp({ sender: { workers: 1, maxStreams: 2 } });
    try {
      const client = new SenderClient(await app.listen({ host: '127.0.0.1', port: 0 }));
      const a = await client.createStream();
      await client.createStream();
      const refused = await fetch(`${client.baseUrl}/v1/streams`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
      expect(refused.status).toBe(503);
      expect(await refused.json()).toMatchObject({ statusCode: 503, code: 'TOO_MANY_STREAMS' });
      const list = (await (await fetch(`${client.baseUrl}/v1/streams`)).json()) as unknown[];
      expect(list.length).toBe(2);
      await client.deleteStream(a.id);
      const c = await client.createStream();
      expect(c.id).not.toBe(a.id);
    } finally {
      await app.close();
    }
  });

  it('answers 404 STREAM_NOT_FOUND for an unknown stream on every route', async () => {
    const id = 's999999';
    const record = recordOf(0, small[0]);
    for (const [method, path] of [
      ['GET', `/v1/streams/${id}`],
      ['GET', `/v1/streams/${id}/stats`],
      ['DELETE', `/v1/streams/${id}`],
      ['POST', `/v1/streams/${id}/reset`],
      ['POST', `/v1/streams/${id}/epochs/0/abort`],
    ] as const) {
      const answer = await fetchJson(method, path);
      expect(answer.status, `${method} ${path}`).toBe(404);
      expect(answer.json, `${method} ${path}`).toMatchObject({ statusCode: 404, code: 'STREAM_NOT_FOUND' });
      expect(String(answer.json?.message)).toContain(id);
    }
    expectErrorAnswer(await postEpoch(id, record), 404, 'STREAM_NOT_FOUND');
    const viaClient = await sender.sendEpochCollect(id, record).catch((err: unknown) => err);
    expect(viaClient).toBeInstanceOf(ApiError);
    expect(viaClient).toMatchObject({ status: 404, code: 'STREAM_NOT_FOUND' });
  });
});

// ================================================================ 2. bad epoch bodies

/** Only the small trace's epochs 0..3 with pfns below this; epoch 2 also gets pfn PFN_CAP - 1 (the last legal one). */
const PFN_CAP = 64;
const MAX_EPOCH = 512 * 1024;

/**
 * Epoch 2 of the small trace, extended with the last legal pfn (limit - 1)
 * and kept at a page count that is not a multiple of 8, so that the record
 * has padding bytes to corrupt.
 */
const badBase: GeneratedEpoch[] = (() => {
  const epochs = small.slice(0, 4);
  let e2 = extended(epochs[2], [PFN_CAP - 1], [page(63)]);
  if (e2.pfns.length % 8 === 0) e2 = extended(e2, [PFN_CAP - 2], [page(62)]);
  epochs[2] = e2;
  return epochs;
})();

/** Epochs 0 and 1 committed (sender and receiver), epoch 2 next. */
async function badBodyRun(): Promise<Run> {
  const run = await Run.start(badBase, { pfnLimit: PFN_CAP, maxEpochBytes: MAX_EPOCH, frameBytes: 64 * 1024 });
  await run.step(0);
  await run.step(1);
  return run;
}

/** After the refusal: epoch 2 (valid) and 3 still go through and the receiver is exact. */
async function finishBadBodyRun(run: Run): Promise<void> {
  const frames = await run.step(2);
  expectSomeDeltas(expectCompleteEpoch(frames, run.epochs[2], 2, false));
  await run.step(3);
  await run.expectExact();
  const info = await run.info();
  expect(info.nextEpoch).toBe(4);
  expect(info.stats.epochsCommitted).toBe(4);
  await sender.deleteStream(run.id);
}

function mutated(run: Run, edit: (record: Buffer, layout: ReturnType<typeof epochLayout>) => void): Buffer {
  const record = run.record(2);
  edit(record, epochLayout(run.epochs[2].pfns.length, PAGE));
  return record;
}

interface BadCase {
  name: string;
  status: number;
  code: string;
  send: (run: Run) => Promise<Answer>;
}

const badCases: BadCase[] = [
  {
    name: 'wrong magic',
    status: 400,
    code: 'TRACE_BAD_MAGIC',
    send: (run) => postEpoch(run.id, mutated(run, (r) => r.write('EPCX', 0, 'latin1'))),
  },
  {
    name: 'reserved word not zero',
    status: 400,
    code: 'TRACE_BAD_RESERVED',
    send: (run) => postEpoch(run.id, mutated(run, (r) => r.writeUInt32LE(1, 12))),
  },
  {
    name: 'an epoch ahead of the expected one',
    status: 409,
    code: 'EPOCH_OUT_OF_ORDER',
    send: (run) => postEpoch(run.id, recordOf(3, run.epochs[2])),
  },
  {
    name: 'the previous epoch again',
    status: 409,
    code: 'EPOCH_OUT_OF_ORDER',
    send: (run) => postEpoch(run.id, recordOf(1, run.epochs[1])),
  },
  {
    name: 'a body that ends inside the header (chunked)',
    status: 400,
    code: 'EPOCH_TRUNCATED',
    send: (run) => postEpochChunked(run.id, run.record(2).subarray(0, 10)),
  },
  {
    name: 'an empty body (chunked)',
    status: 400,
    code: 'EPOCH_TRUNCATED',
    send: (run) => postEpochChunked(run.id, new Uint8Array(0)),
  },
  {
    name: 'a body that ends inside the pfn list (chunked)',
    status: 400,
    code: 'EPOCH_TRUNCATED',
    send: (run) => postEpochChunked(run.id, run.record(2).subarray(0, 16 + 8 * 2 + 3)),
  },
  {
    name: 'a body that ends inside the pages, before a batch is complete (chunked)',
    status: 400,
    code: 'EPOCH_TRUNCATED',
    send: (run) => {
      const layout = epochLayout(run.epochs[2].pfns.length, PAGE);
      return postEpochChunked(run.id, run.record(2).subarray(0, layout.pageOffset + 3 * PAGE + 100));
    },
  },
  {
    name: 'a body longer than the record (chunked)',
    status: 400,
    code: 'EPOCH_BODY_TOO_LONG',
    send: (run) => postEpochChunked(run.id, Buffer.concat([run.record(2), Buffer.alloc(8)])),
  },
  {
    name: 'a Content-Length (and body) longer than the record',
    status: 400,
    code: 'EPOCH_LENGTH_MISMATCH',
    send: (run) => postEpoch(run.id, Buffer.concat([run.record(2), Buffer.alloc(8)])),
  },
  {
    name: 'a Content-Length (and body) shorter than the record',
    status: 400,
    code: 'EPOCH_LENGTH_MISMATCH',
    send: (run) => postEpoch(run.id, run.record(2).subarray(0, run.record(2).length - PAGE)),
  },
  {
    name: 'a record header whose page count is over maxEpochBytes (chunked)',
    status: 413,
    code: 'EPOCH_TOO_LARGE',
    send: (run) => {
      const header = Buffer.alloc(16);
      header.write('EPCH', 0, 'latin1');
      header.writeUInt32LE(2, 4);
      header.writeUInt32LE(Math.ceil(MAX_EPOCH / PAGE) + 1, 8);
      return postEpochChunked(run.id, header);
    },
  },
  {
    name: 'a duplicate pfn',
    status: 400,
    code: 'TRACE_DUPLICATE_PFN',
    send: (run) =>
      postEpoch(
        run.id,
        mutated(run, (r, layout) => writePfn(r, layout.pfnOffset + 8 * (run.epochs[2].pfns.length - 1), run.epochs[2].pfns[0])),
      ),
  },
  {
    name: "a pfn equal to the stream's pfnLimit (the seed's off-by-one)",
    status: 400,
    code: 'TRACE_PFN_RANGE',
    send: (run) => postEpoch(run.id, mutated(run, (r, layout) => writePfn(r, layout.pfnOffset + 8, PFN_CAP))),
  },
  {
    name: "a pfn far above the stream's pfnLimit",
    status: 400,
    code: 'TRACE_PFN_RANGE',
    send: (run) => postEpoch(run.id, mutated(run, (r, layout) => writePfn(r, layout.pfnOffset, 2 ** 40))),
  },
  {
    name: 'a page kind of 2',
    status: 400,
    code: 'TRACE_BAD_KIND',
    send: (run) => postEpoch(run.id, mutated(run, (r, layout) => (r[layout.kindOffset + 1] = 2))),
  },
  {
    name: 'non-zero padding',
    status: 400,
    code: 'TRACE_BAD_PADDING',
    send: (run) =>
      postEpoch(
        run.id,
        mutated(run, (r, layout) => {
          expect(layout.pageOffset).toBeGreaterThan(layout.paddingOffset);
          r[layout.pageOffset - 1] = 0x5a;
        }),
      ),
  },
];

describe('bad epoch bodies: a 4xx JSON error, and nothing changed', () => {
  for (const bad of badCases) {
    it(`${bad.name}: ${bad.status} ${bad.code}`, async () => {
      const run = await badBodyRun();
      const before = await run.info();
      const answer = await bad.send(run);
      expectErrorAnswer(answer, bad.status, bad.code);
      expect(await run.info()).toEqual(before);
      await finishBadBodyRun(run);
    });
  }

  it('a Content-Length over maxEpochBytes: 413 EPOCH_TOO_LARGE without a byte of the body read', async () => {
    const run = await badBodyRun();
    const before = await run.info();
    // Headers only: a server that waited for the body would never answer.
    const { req, response } = open('POST', epochPath(run.id), { 'content-type': OCTETS, 'content-length': MAX_EPOCH + 1 });
    req.flushHeaders();
    const res = await within(response, 'the 413 answer, sent before any body byte');
    const answer = { status: res.statusCode ?? 0, headers: res.headers, body: await within(readAll(res), 'the 413 body') };
    req.destroy();
    expectErrorAnswer(answer, 413, 'EPOCH_TOO_LARGE');
    expect(await run.info()).toEqual(before);
    await finishBadBodyRun(run);
  });

  it('a wrong or missing content type: 415, and nothing changed', async () => {
    const run = await badBodyRun();
    const before = await run.info();
    const record = run.record(2);
    const tries: [string, Uint8Array | null, http.OutgoingHttpHeaders][] = [
      ['text/plain', record, { 'content-type': 'text/plain', 'content-length': record.length }],
      ['application/json with the binary record', record, { 'content-type': 'application/json', 'content-length': record.length }],
      ['application/json with valid JSON', Buffer.from('{}'), { 'content-type': 'application/json', 'content-length': 2 }],
      ['application/x-remus-frames', record, { 'content-type': 'application/x-remus-frames', 'content-length': record.length }],
      ['no content type, with a body', record, { 'content-length': record.length }],
      ['no content type, no body', null, { 'content-length': 0 }],
    ];
    for (const [name, body, headers] of tries) {
      const answer = await post(epochPath(run.id), body, headers);
      expect(answer.status, `${name}: ${answer.body.toString()}`).toBe(415);
      expect(JSON.parse(answer.body.toString())).toMatchObject({ statusCode: 415 });
      expect(await run.info(), name).toEqual(before);
    }
    // The media type's parameters and case do not matter.
    const frames = await post(epochPath(run.id), record, { 'content-type': 'Application/Octet-Stream; x=1', 'content-length': record.length });
    expect(frames.status, frames.body.toString()).toBe(200);
    await run.apply(2, frames.body);
    await run.step(3);
    await run.expectExact();
  });

  it('pfns up to 2^48 - 1 by default, and 2^48 refused', async () => {
    const top = PFN_LIMIT - 1;
    const epochs = [epochOf([0, 1, top], [page(1), page(2), page(3)]), epochOf([top, 1], [page(4), page(5)])];
    const run = await Run.start(epochs);
    await run.step(0);
    const before = await run.info();
    const bad = run.record(1);
    writePfn(bad, 16 + 8, PFN_LIMIT);
    expectErrorAnswer(await postEpoch(run.id, bad), 400, 'TRACE_PFN_RANGE');
    expect(await run.info()).toEqual(before);
    await run.step(1);
    await run.expectExact();
    expect(Buffer.compare((await receiver.getPage(run.imageId, top)) as Buffer, Buffer.from(page(4)))).toBe(0);
    await sender.deleteStream(run.id);
  });

  it('a refused body leaves the last completed epoch abortable', async () => {
    const run = await badBodyRun();
    // Epoch 2 completes at the sender, but its frames never reach the receiver.
    const lost = await sender.sendEpochCollect(run.id, run.record(2));
    expect(lost.length).toBeGreaterThan(0);
    // Bodies of the expected epoch (3) refused at the header, in the pfn list and in the pages.
    const next = recordOf(3, run.epochs[3]);
    const layout = epochLayout(run.epochs[3].pfns.length, PAGE);
    const badMagic = Buffer.from(next);
    badMagic.write('XPCH', 0, 'latin1');
    expectErrorAnswer(await postEpoch(run.id, badMagic), 400, 'TRACE_BAD_MAGIC');
    const badPfn = Buffer.from(next);
    writePfn(badPfn, layout.pfnOffset, PFN_CAP);
    expectErrorAnswer(await postEpoch(run.id, badPfn), 400, 'TRACE_PFN_RANGE');
    expectErrorAnswer(await postEpochChunked(run.id, next.subarray(0, layout.pageOffset + PAGE)), 400, 'EPOCH_TRUNCATED');
    expectErrorAnswer(await postEpoch(run.id, recordOf(2, run.epochs[2])), 409, 'EPOCH_OUT_OF_ORDER');
    expect(await sender.abortEpoch(run.id, 2)).toEqual({ aborted: 'completed', nextEpoch: 2 });
    const frames = await run.step(2);
    expectNoDeltas(expectCompleteEpoch(frames, run.epochs[2], 2, false));
    await run.step(3);
    await run.expectExact();
  });

  it('a body cut off after pages were encoded aborts the epoch: its pages leave the cache', async () => {
    const run = await Run.start(large, { frameBytes: 64 * 1024 });
    await run.step(0);
    const before = await run.info();
    const record = run.record(1);
    const { req, response } = open('POST', epochPath(run.id), { 'content-type': OCTETS, 'transfer-encoding': 'chunked' });
    req.write(record.subarray(0, holdPoint(run.epochs[1])));
    // A frame out proves the first batch was encoded (its pages are in the cache by now).
    const answer = new Collector(await within(response, 'the first frames of the epoch'));
    await answer.firstFrame();
    req.end(); // the body ends more than 1000 pages short
    const frames = parseFrames(await within(answer.done, 'the answer to end'));
    const last = frames[frames.length - 1];
    expect(last.abort?.code).toBe('EPOCH_TRUNCATED');
    expect(frames.some((f) => (f.flags & FLAG_LAST) !== 0)).toBe(false);
    expect(frames.some((f) => f.records.length > 0)).toBe(true);
    const applied = await receiver.postFrames(run.imageId, answer.bytes());
    expect(applied.aborted).toBe(true);
    expect(applied.committedEpoch).toBe(0);

    const after = await run.info();
    expect(after.nextEpoch).toBe(1);
    expect(after.stats).toEqual({ ...before.stats, epochsAborted: before.stats.epochsAborted + 1 });
    // Had the cache kept the cut epoch's pages, they would now go as EMPTY
    // deltas and the receiver could not commit.
    const resent = await run.step(1);
    expectNoDeltas(expectCompleteEpoch(resent, run.epochs[1], 1, false));
    await run.step(2);
    await run.step(3);
    await run.expectExact();
    await sender.deleteStream(run.id);
  });
});

// ================================================================ 3. one epoch at a time

describe('one epoch at a time', () => {
  it('a second epoch while the first is in flight: 409 EPOCH_IN_PROGRESS; the first completes and applies', async () => {
    const run = await Run.start(small);
    await run.step(0);
    const record = run.record(1);
    const { req, response } = open('POST', epochPath(run.id), { 'content-type': OCTETS, 'content-length': record.length });
    req.write(record.subarray(0, record.length - 1000));
    await waitBusy(run.id, true);

    const tiny = recordOf(1, epochOf([], []));
    expectErrorAnswer(await postEpoch(run.id, tiny), 409, 'EPOCH_IN_PROGRESS');
    expectErrorAnswer(await postEpoch(run.id, recordOf(2, epochOf([], []))), 409, 'EPOCH_IN_PROGRESS');
    await expect(sender.sendEpochCollect(run.id, tiny)).rejects.toMatchObject({ status: 409, code: 'EPOCH_IN_PROGRESS' });
    expect((await run.info()).busy).toBe(true);

    req.end(record.subarray(record.length - 1000));
    const res = await within(response, 'the first epoch to answer');
    expect(res.statusCode).toBe(200);
    const frames = await within(readAll(res), 'the first epoch to finish');
    expectCompleteEpoch(frames, run.epochs[1], 1, false);
    await run.apply(1, frames);
    await run.step(2);
    await run.expectExact();
    const info = await run.info();
    expect(info.busy).toBe(false);
    expect(info.stats.epochsCommitted).toBe(3);
    expect(info.stats.epochsAborted).toBe(0);
  });
});

// ================================================================ 4. abort

describe('POST /v1/streams/:id/epochs/:epoch/abort', () => {
  it('the last completed epoch: the receiver never gets it, the epoch is sent again FULL, and everything stays exact', async () => {
    const epochs = trace(7003, 512, 6, 0.4);
    const run = await Run.start(epochs, { frameBytes: 64 * 1024 });
    await run.step(0);
    await run.step(1);
    const lost = await sender.sendEpochCollect(run.id, run.record(2));
    expectSomeDeltas(expectCompleteEpoch(lost, epochs[2], 2, false));
    const completed = await run.info();
    expect(completed.nextEpoch).toBe(3);

    expect(await sender.abortEpoch(run.id, 2)).toEqual({ aborted: 'completed', nextEpoch: 2 });
    const aborted = await run.info();
    expect(aborted.nextEpoch).toBe(2);
    expect(aborted.busy).toBe(false);
    expect(aborted.resyncPending).toBe(false);
    expect(aborted.stats.epochsCommitted).toBe(2);
    expect(aborted.stats.epochsAborted).toBe(1);
    // Epoch 3 is not what the stream expects now.
    expectErrorAnswer(await postEpoch(run.id, run.record(3)), 409, 'EPOCH_OUT_OF_ORDER');

    const resent = await run.step(2);
    expectNoDeltas(expectCompleteEpoch(resent, epochs[2], 2, false));
    expect(resent.length).toBeGreaterThan(lost.length);
    const after = await run.info();
    expect(after.stats.cacheHits).toBe(aborted.stats.cacheHits); // every page of the resent epoch missed
    expect(after.lastEpoch?.bytesOut).toBe(resent.length);
    for (let n = 3; n < epochs.length; n++) await run.step(n);
    await run.expectExact();
  });

  it('a completed RESYNC epoch: the stream goes back to RESYNC, and a fresh image takes the resent epoch', async () => {
    const run = await Run.start(small);
    const lost = await sender.sendEpochCollect(run.id, run.record(0));
    expectCompleteEpoch(lost, small[0], 0, true);
    expect(await sender.abortEpoch(run.id, 0)).toEqual({ aborted: 'completed', nextEpoch: 0 });
    expect((await run.info()).resyncPending).toBe(true);
    expectNoDeltas(expectCompleteEpoch(await run.step(0), small[0], 0, true));
    await run.step(1);
    await run.expectExact();
  });

  it('a running epoch before any frame went out: {aborted: "running"}, the epoch answers 409 EPOCH_ABORTED, and the resent epoch works', async () => {
    const run = await Run.start(small);
    await run.step(0);
    const before = await run.info();
    const record = run.record(1);
    const { req, response } = open('POST', epochPath(run.id), { 'content-type': OCTETS, 'content-length': record.length });
    req.write(record.subarray(0, record.length - 2 * PAGE));
    await waitBusy(run.id, true);

    // The body stays open: the abort must not wait for it.
    expect(await within(sender.abortEpoch(run.id, 1), 'the abort to answer')).toEqual({ aborted: 'running', nextEpoch: 1 });
    const res = await within(response, 'the aborted epoch to answer');
    expectErrorAnswer({ status: res.statusCode ?? 0, headers: res.headers, body: await within(readAll(res), 'the error body') }, 409, 'EPOCH_ABORTED');
    req.destroy();
    const after = await run.info();
    expect(after.busy).toBe(false);
    expect(after.nextEpoch).toBe(1);
    expect(after.stats.epochsCommitted).toBe(before.stats.epochsCommitted);

    await run.step(1);
    await run.step(2);
    await run.expectExact();
  });

  it('a running epoch whose header has not arrived yet: aborted by the next epoch number', async () => {
    const run = await Run.start(small);
    await run.step(0);
    const { req, response } = open('POST', epochPath(run.id), { 'content-type': OCTETS, 'transfer-encoding': 'chunked' });
    req.flushHeaders();
    await waitBusy(run.id, true);
    expect(await within(sender.abortEpoch(run.id, 1), 'the abort to answer')).toEqual({ aborted: 'running', nextEpoch: 1 });
    const res = await within(response, 'the aborted epoch to answer');
    expectErrorAnswer({ status: res.statusCode ?? 0, headers: res.headers, body: await within(readAll(res), 'the error body') }, 409, 'EPOCH_ABORTED');
    req.destroy();
    await waitBusy(run.id, false);
    await run.step(1);
    await run.expectExact();
  });

  it('a running epoch after frames went out: the answer ends with an ABORT frame, and the resent epoch goes FULL and stays exact', async () => {
    const run = await Run.start(large, { frameBytes: 64 * 1024 });
    await run.step(0);
    const record = run.record(1);
    const { req, response } = open('POST', epochPath(run.id), { 'content-type': OCTETS, 'content-length': record.length });
    req.write(record.subarray(0, holdPoint(run.epochs[1])));
    const answer = new Collector(await within(response, 'the first frames'));
    await answer.firstFrame();

    expect(await within(sender.abortEpoch(run.id, 1), 'the abort to answer')).toEqual({ aborted: 'running', nextEpoch: 1 });
    const bytes = await within(answer.done, 'the aborted answer to end');
    req.destroy();
    const frames = parseFrames(bytes);
    expect(frames.length).toBeGreaterThan(1);
    frames.forEach((f, i) => expect(f.sequence).toBe(i));
    expect(frames.some((f) => (f.flags & FLAG_LAST) !== 0)).toBe(false);
    const last = frames[frames.length - 1];
    expect(last.abort?.code).toBe('EPOCH_ABORTED');
    expect(frames.slice(0, -1).every((f) => f.abort === undefined)).toBe(true);

    const applied = await receiver.postFrames(run.imageId, bytes);
    expect(applied.aborted).toBe(true);
    expect(applied.committedEpoch).toBe(0);
    const info = await run.info();
    expect(info.nextEpoch).toBe(1);
    expect(info.busy).toBe(false);
    expect(info.stats.epochsAborted).toBe(1);
    expect(info.stats.epochsCommitted).toBe(1);

    expectNoDeltas(expectCompleteEpoch(await run.step(1), run.epochs[1], 1, false));
    await run.step(2);
    await run.step(3);
    await run.expectExact();
    await sender.deleteStream(run.id);
  });

  it('an epoch that is neither running nor the last completed: 409 EPOCH_NOT_ABORTABLE', async () => {
    const run = await Run.start(small);
    const notAbortable = async (epoch: number): Promise<void> => {
      const answer = await fetchJson('POST', `/v1/streams/${run.id}/epochs/${epoch}/abort`);
      expect(answer.status, `abort ${epoch}`).toBe(409);
      expect(answer.json).toMatchObject({ statusCode: 409, code: 'EPOCH_NOT_ABORTABLE' });
    };
    await notAbortable(0); // nothing ran yet
    await run.step(0);
    await run.step(1);
    const before = await run.info();
    await notAbortable(0); // completed, but not the last
    await notAbortable(2); // the next one, not running
    await notAbortable(7);
    expect(await run.info()).toEqual(before);
    const invalid = await fetchJson('POST', `/v1/streams/${run.id}/epochs/minus-one/abort`);
    expect(invalid.status).toBe(400);
    // The last completed one can be aborted, once.
    await sender.sendEpochCollect(run.id, run.record(2));
    expect((await sender.abortEpoch(run.id, 2)).aborted).toBe('completed');
    await notAbortable(2);
    await notAbortable(1);
    await run.step(2);
    await run.expectExact();
  });
});

// ================================================================ 5. client disconnect

describe('a client that disconnects in the middle of the answer', () => {
  it('aborts the epoch: counted, nextEpoch unchanged, and the resent epoch and the rest stay exact', async () => {
    const run = await Run.start(large, { frameBytes: 16 * 1024 });
    await run.step(0);
    const before = await run.info();
    const record = run.record(1);
    const { req, response } = open('POST', epochPath(run.id), { 'content-type': OCTETS, 'content-length': record.length });
    req.write(record.subarray(0, holdPoint(run.epochs[1])));
    const answer = new Collector(await within(response, 'the first frames'));
    await answer.firstFrame();
    req.destroy(); // mid-answer: some frames read, many more to come

    await waitBusy(run.id, false);
    const after = await run.info();
    expect(after.nextEpoch).toBe(1);
    expect(after.stats).toEqual({ ...before.stats, epochsAborted: before.stats.epochsAborted + 1 });
    // The frames that did arrive must not commit anything.
    const partial = answer.bytes();
    const whole = parseFrames(partial.subarray(0, await answer.firstFrame()));
    expect(whole[0].records.length).toBeGreaterThan(0);

    expectNoDeltas(expectCompleteEpoch(await run.step(1), run.epochs[1], 1, false));
    await run.step(2);
    await run.step(3);
    await run.expectExact();
    await sender.deleteStream(run.id);
  });

  it('with the whole body sent: the client reads one frame, stops reading and goes; the epoch is aborted and resent exactly', async () => {
    // Epoch 0 is 3000 FULL pages: about 12 MiB of frames, far more than
    // the socket buffers hold while the client does not read, so the
    // sender is still sending when the client goes.
    const run = await Run.start(large, { frameBytes: 16 * 1024 });
    const record = run.record(0);
    const { req, response } = open('POST', epochPath(run.id), { 'content-type': OCTETS, 'content-length': record.length });
    req.end(record);
    const answer = new Collector(await within(response, 'the first frames'));
    await answer.firstFrame();
    answer.res.pause();
    req.destroy();

    await waitBusy(run.id, false);
    const after = await run.info();
    expect(after.nextEpoch).toBe(0);
    expect(after.resyncPending).toBe(true);
    expect(after.stats.epochsCommitted).toBe(0);
    expect(after.stats.epochsAborted).toBe(1);
    expect(after.stats.cachedPages).toBe(0);
    expect(after.lastEpoch).toBeNull();

    // Had the cache kept the epoch, the resent RESYNC epoch would be EMPTY
    // deltas that a fresh image cannot take.
    expectNoDeltas(expectCompleteEpoch(await run.step(0), large[0], 0, true));
    await run.step(1);
    await run.expectExact();
    await sender.deleteStream(run.id);
  });
});

// ================================================================ 6. reset

describe('POST /v1/streams/:id/reset', () => {
  it('makes the next epoch a RESYNC epoch without deltas, which a fresh image and one that lost frames both take', async () => {
    const epochs = trace(7004, 256, 6, 0.4);
    const run = await Run.start(epochs, { frameBytes: 32 * 1024 });
    const lostImage = (await receiver.createImage({ pageSize: PAGE })).id;
    const f0 = await run.step(0);
    await receiver.postFrames(lostImage, f0);
    const f1 = await run.step(1);
    expectSomeDeltas(expectCompleteEpoch(f1, epochs[1], 1, false));
    await receiver.postFrames(lostImage, f1);
    await run.step(2); // lostImage never gets epoch 2

    const reset = await sender.reset(run.id);
    expect(reset.resyncPending).toBe(true);
    expect(reset.nextEpoch).toBe(3);
    expect(reset.stats.cachedPages).toBe(0);
    // Nothing to abort after a reset.
    expect((await fetchJson('POST', `/v1/streams/${run.id}/epochs/2/abort`)).status).toBe(409);

    // After a reset the controller sends the whole image.
    const image3 = fullImage(epochs.slice(0, 4));
    const f3 = await sender.sendEpochCollect(run.id, recordOf(3, image3));
    const frames3 = expectCompleteEpoch(f3, image3, 3, true);
    expectNoDeltas(frames3);
    expect((await run.info()).resyncPending).toBe(false);

    const freshImage = (await receiver.createImage({ pageSize: PAGE })).id;
    for (const imageId of [run.imageId, lostImage, freshImage]) {
      const applied = await receiver.postFrames(imageId, f3);
      expect(applied.committedEpoch, imageId).toBe(3);
    }
    const f4 = await sender.sendEpochCollect(run.id, recordOf(4, epochs[4]));
    expectSomeDeltas(expectCompleteEpoch(f4, epochs[4], 4, false));
    for (const imageId of [run.imageId, lostImage, freshImage]) {
      expect((await receiver.postFrames(imageId, f4)).committedEpoch).toBe(4);
      await expectExact(imageId, [image3, epochs[4]]);
    }
  });

  it('while an epoch is running: 409, and the running epoch completes', async () => {
    const run = await Run.start(small);
    await run.step(0);
    const record = run.record(1);
    const { req, response } = open('POST', epochPath(run.id), { 'content-type': OCTETS, 'content-length': record.length });
    req.write(record.subarray(0, 100));
    await waitBusy(run.id, true);
    const refused = await fetchJson('POST', `/v1/streams/${run.id}/reset`);
    expect(refused.status).toBe(409);
    expect(refused.json).toMatchObject({ statusCode: 409, code: 'EPOCH_IN_PROGRESS' });
    req.end(record.subarray(100));
    const res = await within(response, 'the epoch to answer');
    const frames = await readAll(res);
    expectCompleteEpoch(frames, small[1], 1, false);
    await run.apply(1, frames);
    expect((await run.info()).resyncPending).toBe(false);
    await run.step(2);
    await run.expectExact();
  });
});

// ================================================================ 7. delete

describe('DELETE /v1/streams/:id', () => {
  it('204, then 404 everywhere; an id is never reused', async () => {
    const a = await sender.createStream({ workers: 1 });
    const b = await sender.createStream({ workers: 1 });
    const image = (await receiver.createImage({ pageSize: PAGE })).id;
    await receiver.postFrames(image, await sender.sendEpochCollect(b.id, recordOf(0, small[0])));

    const deleted = await fetch(`${senderUrl}/v1/streams/${b.id}`, { method: 'DELETE' });
    expect(deleted.status).toBe(204);
    expect(await deleted.text()).toBe('');
    for (const [method, path] of [
      ['GET', `/v1/streams/${b.id}`],
      ['GET', `/v1/streams/${b.id}/stats`],
      ['DELETE', `/v1/streams/${b.id}`],
      ['POST', `/v1/streams/${b.id}/reset`],
      ['POST', `/v1/streams/${b.id}/epochs/0/abort`],
    ] as const) {
      const answer = await fetchJson(method, path);
      expect(answer.status, `${method} ${path}`).toBe(404);
      expect(answer.json).toMatchObject({ code: 'STREAM_NOT_FOUND' });
    }
    expectErrorAnswer(await postEpoch(b.id, recordOf(1, small[1])), 404, 'STREAM_NOT_FOUND');
    const listed = (await fetchJson('GET', '/v1/streams')).json as unknown as StreamInfo[];
    expect(listed.map((s) => s.id)).not.toContain(b.id);

    const seen = new Set([a.id, b.id]);
    const c = await sender.createStream({ workers: 1 });
    expect(seen.has(c.id)).toBe(false);
    seen.add(c.id);
    await sender.deleteStream(a.id);
    await sender.deleteStream(c.id);
    const d = await sender.createStream({ workers: 1 });
    expect(seen.has(d.id)).toBe(false);
    // The new stream starts from scratch: epoch 0, RESYNC.
    expect(d.nextEpoch).toBe(0);
    expect(d.resyncPending).toBe(true);
    await sender.deleteStream(d.id);
  });

  it('while an epoch is running: the delete does not wait for the body, and the epoch ends with 410 STREAM_DELETED', async () => {
    const run = await Run.start(small);
    await run.step(0);
    const record = run.record(1);
    const { req, response } = open('POST', epochPath(run.id), { 'content-type': OCTETS, 'content-length': record.length });
    req.write(record.subarray(0, 200));
    await waitBusy(run.id, true);
    await within(sender.deleteStream(run.id), 'the delete to answer');
    const res = await within(response, 'the epoch to answer');
    expectErrorAnswer({ status: res.statusCode ?? 0, headers: res.headers, body: await readAll(res) }, 410, 'STREAM_DELETED');
    expect((await fetchJson('GET', `/v1/streams/${run.id}`)).status).toBe(404);
  });
});

// ================================================================ 8. streaming

describe('frames stream out as they are made', () => {
  it('a large epoch answers in many frames, the first before the second half of the body is sent', async () => {
    const run = await Run.start(large, { frameBytes: 64 * 1024 });
    const record = run.record(0);
    const half = epochLayout(large[0].pfns.length, PAGE).pageOffset + 1500 * PAGE;
    const { req, response } = open('POST', epochPath(run.id), { 'content-type': OCTETS, 'content-length': record.length });
    req.write(record.subarray(0, half));
    // The first 1024-page batch is complete: its frames must come now,
    // while the rest of the body has not been written.
    const res = await within(response, 'the answer to start before the second half is sent');
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('application/x-remus-frames');
    const answer = new Collector(res);
    const first = await answer.firstFrame();
    const early = parseFrames(answer.bytes().subarray(0, first));
    expect(early[0].sequence).toBe(0);
    expect(early[0].records.length).toBeGreaterThan(0);

    req.end(record.subarray(half));
    const bytes = await within(answer.done, 'the whole answer');
    const frames = expectCompleteEpoch(bytes, large[0], 0, true);
    expect(frames.length).toBeGreaterThan(100); // 12 MiB of FULL pages in 64 KiB frames
    await run.apply(0, bytes);
    await run.expectExact();
    const info = await run.info();
    expect(info.lastEpoch).toMatchObject({ epoch: 0, pages: large[0].pfns.length, frames: frames.length, bytesOut: bytes.length, resync: true });
    await sender.deleteStream(run.id);
  });
});
