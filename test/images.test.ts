import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.js';
import { FRAMES_CONTENT_TYPE } from '../src/content-types.js';
import { encodeAbortFrame } from '../src/frames.js';
import { Prng, SenderModel, concat, epochFrames, reseal, type RecordSpec } from './receiver-frames.js';

const PS = 4096;

interface Epoch {
  epoch: number;
  records: RecordSpec[];
  frames: Uint8Array[];
  resync: boolean;
}

/** Epoch 0 (RESYNC, 30 pages) and three delta epochs, each over several frames. */
function epochs(): { list: Epoch[]; final: SenderModel } {
  const rng = new Prng(11);
  const model = new SenderModel(PS);
  const list: Epoch[] = [];
  for (let e = 0; e < 4; e++) {
    const resync = e === 0;
    const changes: Array<[number, Uint8Array]> = resync
      ? Array.from({ length: 30 }, (_, i) => [i * 2, i % 7 === 3 ? new Uint8Array(PS) : rng.page(PS)])
      : [...model.pages.keys()].filter((_, i) => i % (e + 1) === 0).map((pfn) => [pfn, rng.touch(model.pages.get(pfn)!, 3)]);
    if (!resync) changes.push([1000 + e, rng.page(PS)]);
    const records = model.records(changes);
    list.push({ epoch: e, records, frames: epochFrames(records, { epoch: e, pageSize: PS, resync, recordsPerFrame: 6 }), resync });
    model.commit(e, records, resync);
  }
  return { list, final: model };
}

describe('image routes over HTTP', () => {
  let app: FastifyInstance;
  let base: string;
  let dir: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'remus-images-'));
    app = await buildApp({ receiver: { imageDir: dir } });
    base = await app.listen({ port: 0, host: '127.0.0.1' });
  });

  afterAll(async () => {
    await app.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function create(body: object = {}): Promise<{ id: string; pageSize: number; committedEpoch: number | null; pages: number }> {
    const res = await fetch(`${base}/v1/images`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect(res.status).toBe(201);
    return (await res.json()) as { id: string; pageSize: number; committedEpoch: number | null; pages: number };
  }

  function post(id: string, body: Uint8Array | ReadableStream<Uint8Array>, contentType = FRAMES_CONTENT_TYPE, signal?: AbortSignal): Promise<Response> {
    const init: RequestInit & { duplex: 'half' } = { method: 'POST', headers: { 'content-type': contentType }, body, duplex: 'half', signal };
    return fetch(`${base}/v1/images/${id}/frames`, init);
  }

  /** A body that arrives in small pieces cut across frame boundaries. */
  function trickle(bytes: Uint8Array, piece: number): ReadableStream<Uint8Array> {
    let at = 0;
    return new ReadableStream({
      pull(controller) {
        if (at >= bytes.length) {
          controller.close();
          return;
        }
        controller.enqueue(bytes.slice(at, at + piece));
        at += piece;
      },
    });
  }

  async function digest(id: string): Promise<{ committedEpoch: number | null; pages: number; algorithm: string; digest: string }> {
    const res = await fetch(`${base}/v1/images/${id}/digest`);
    expect(res.status).toBe(200);
    return (await res.json()) as { committedEpoch: number | null; pages: number; algorithm: string; digest: string };
  }

  async function expectError(res: Response, status: number, code: string): Promise<{ message: string }> {
    const body = (await res.json()) as { statusCode: number; code: string; message: string; error: string };
    expect({ status: res.status, code: body.code }).toEqual({ status, code });
    expect(body.statusCode).toBe(status);
    return body;
  }

  it('creates an image, applies all epochs in one body, serves digest and pages', async () => {
    const { list, final } = epochs();
    const image = await create();
    expect(image).toMatchObject({ pageSize: PS, committedEpoch: null, pages: 0 });

    const all = concat(list.flatMap((e) => e.frames));
    const res = await post(image.id, all);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({
      committedEpoch: 3,
      stagingEpoch: null,
      framesApplied: list.reduce((n, e) => n + e.frames.length, 0),
      epochsCommitted: 4,
      aborted: false,
    });

    expect(await digest(image.id)).toEqual({ committedEpoch: 3, pages: final.pages.size, algorithm: 'blake3', digest: final.imageDigest().toString('hex') });
    for (const [pfn, page] of final.pages) {
      const got = await fetch(`${base}/v1/images/${image.id}/pages/${pfn}`);
      expect(got.status).toBe(200);
      expect(got.headers.get('content-type')).toBe('application/octet-stream');
      expect(Buffer.from(await got.arrayBuffer()).equals(Buffer.from(page))).toBe(true);
    }
    const info = await (await fetch(`${base}/v1/images/${image.id}`)).json();
    expect(info).toEqual({ id: image.id, pageSize: PS, committedEpoch: 3, stagingEpoch: null, pages: final.pages.size });
  });

  it('continues an epoch across bodies, and streams a body cut anywhere', async () => {
    const { list, final } = epochs();
    const image = await create();
    const frames = list.flatMap((e) => e.frames);
    // Epoch 1's frames are split between the two bodies.
    const cut = list[0].frames.length + 2;
    const first = await post(image.id, concat(frames.slice(0, cut)));
    expect(await first.json()).toMatchObject({ committedEpoch: 0, stagingEpoch: 1, framesApplied: cut, epochsCommitted: 1 });
    const second = await post(image.id, trickle(concat(frames.slice(cut)), 1000));
    expect(second.status).toBe(200);
    expect(await second.json()).toMatchObject({ committedEpoch: 3, stagingEpoch: null, framesApplied: frames.length - cut, epochsCommitted: 3 });
    expect((await digest(image.id)).digest).toBe(final.imageDigest().toString('hex'));
  });

  it('takes a body larger than the service body limit: frames are applied as they arrive', async () => {
    const rng = new Prng(5);
    const model = new SenderModel(PS);
    const records = model.records(Array.from({ length: 400 }, (_, i): [number, Uint8Array] => [i, rng.page(PS)]));
    model.commit(0, records, true);
    const body = concat(epochFrames(records, { epoch: 0, pageSize: PS, resync: true, recordsPerFrame: 50 }));
    expect(body.length).toBeGreaterThan(1024 * 1024);
    const image = await create();
    const res = await post(image.id, trickle(body, 64 * 1024));
    expect(await res.json()).toMatchObject({ committedEpoch: 0, framesApplied: 8, epochsCommitted: 1 });
    expect((await digest(image.id)).digest).toBe(model.imageDigest().toString('hex'));
  });

  it('refuses a bad frame with its code, saying how many frames of the body were applied', async () => {
    const { list } = epochs();
    const image = await create();
    const bad = Uint8Array.from(list[1].frames[1]);
    bad[64] = 9; // unknown record type
    reseal(bad);
    const body = concat([...list[0].frames, list[1].frames[0], bad, list[1].frames[2]]);
    const res = await post(image.id, body);
    const err = await expectError(res, 400, 'FRAME_BAD_RECORD');
    const applied = list[0].frames.length + 1;
    expect(err.message).toContain(`frame ${applied + 1} of this body; the ${applied} frames before it were applied`);
    // Epoch 0 committed, epoch 1 staged up to frame 0: the rest can follow.
    expect(await (await fetch(`${base}/v1/images/${image.id}`)).json()).toMatchObject({ committedEpoch: 0, stagingEpoch: 1 });
    const rest = await post(image.id, concat(list[1].frames.slice(1)));
    expect(await rest.json()).toMatchObject({ committedEpoch: 1 });
  });

  it('a client that goes away mid-body leaves the image usable', async () => {
    const { list, final } = epochs();
    const image = await create();
    const abort = new AbortController();
    const half = concat(list[0].frames);
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(half.slice(0, half.length - 100));
        // Never closed: the client is cut off with the last frame unfinished.
      },
    });
    const cut = post(image.id, body, FRAMES_CONTENT_TYPE, abort.signal);
    // Wait until the server is inside the body (it answers IMAGE_BUSY meanwhile).
    for (let i = 0; ; i++) {
      const probe = await post(image.id, new Uint8Array(0));
      if (probe.status === 409) break;
      await probe.arrayBuffer();
      expect(i).toBeLessThan(1000);
      await new Promise((r) => setTimeout(r, 10));
    }
    abort.abort();
    await expect(cut).rejects.toThrow();
    let res: Response;
    for (let i = 0; ; i++) {
      res = await post(image.id, concat(list.flatMap((e) => e.frames).slice(list[0].frames.length - 1)));
      if (res.status !== 409) break;
      await res.arrayBuffer();
      expect(i).toBeLessThan(1000);
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(res.status).toBe(200);
    expect((await digest(image.id)).digest).toBe(final.imageDigest().toString('hex'));
  });

  it('answers 409 to an epoch out of turn', async () => {
    const { list } = epochs();
    const image = await create();
    await expectError(await post(image.id, list[2].frames[0]), 409, 'FRAME_UNEXPECTED_EPOCH');
    await post(image.id, concat(list[0].frames));
    await expectError(await post(image.id, list[1].frames[1]), 409, 'FRAME_UNEXPECTED_SEQUENCE');
  });

  it('reports an ABORT frame without failing', async () => {
    const { list } = epochs();
    const image = await create();
    await post(image.id, concat([...list[0].frames, list[1].frames[0]]));
    const res = await post(image.id, encodeAbortFrame(1, 1, 12, 0, 'WORKER_LOST', 'partition 2'));
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({
      committedEpoch: 0,
      stagingEpoch: null,
      framesApplied: 1,
      aborted: true,
      abort: { epoch: 1, code: 'FRAME_ABORTED', senderCode: 'WORKER_LOST', senderMessage: 'partition 2' },
    });
  });

  it('refuses a body that ends inside a frame, and a body that is not frames', async () => {
    const { list } = epochs();
    const image = await create();
    const whole = concat(list[0].frames);
    await expectError(await post(image.id, whole.subarray(0, whole.length - 10)), 400, 'FRAME_TRUNCATED');
    await expectError(await post(image.id, Buffer.from('XXXXXXXX')), 400, 'FRAME_BAD_MAGIC');
    const json = await fetch(`${base}/v1/images/${image.id}/frames`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{}',
    });
    await expectError(json, 415, 'IMAGE_BAD_CONTENT_TYPE');
    const octets = await post(image.id, whole, 'application/octet-stream');
    expect(octets.status).toBe(415);
  });

  it('answers 404 for unknown images and pages', async () => {
    const image = await create();
    await expectError(await fetch(`${base}/v1/images/nope`), 404, 'IMAGE_NOT_FOUND');
    await expectError(await fetch(`${base}/v1/images/nope/digest`), 404, 'IMAGE_NOT_FOUND');
    await expectError(await post('nope', new Uint8Array(0)), 404, 'IMAGE_NOT_FOUND');
    await expectError(await fetch(`${base}/v1/images/${image.id}/pages/12`), 404, 'IMAGE_PAGE_NOT_FOUND');
    await expectError(await fetch(`${base}/v1/images/${image.id}/pages/281474976710656`), 400, 'IMAGE_BAD_PFN');
    expect((await fetch(`${base}/v1/images/${image.id}/pages/-1`)).status).toBe(400);
    expect((await fetch(`${base}/v1/images/${image.id}`, { method: 'DELETE' })).status).toBe(204);
    await expectError(await fetch(`${base}/v1/images/${image.id}`), 404, 'IMAGE_NOT_FOUND');
    await expectError(await fetch(`${base}/v1/images/${image.id}`, { method: 'DELETE' }), 404, 'IMAGE_NOT_FOUND');
  });

  it('checks the page size', async () => {
    const res = await fetch(`${base}/v1/images`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ pageSize: 1000 }) });
    await expectError(res, 400, 'IMAGE_BAD_PAGE_SIZE');
    const small = await create({ pageSize: 512 });
    expect(small.pageSize).toBe(512);
    await fetch(`${base}/v1/images/${small.id}`, { method: 'DELETE' });
  });

  it('keeps file images inside the image directory, and resumes them', async () => {
    const { list, final } = epochs();
    for (const file of ['../escape', 'a/b', '.hidden', '/etc/passwd', '..', 'vm0.index']) {
      const res = await fetch(`${base}/v1/images`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ file }) });
      await expectError(res, 400, 'IMAGE_FILE_NOT_ALLOWED');
    }
    const image = await create({ file: 'vm1.img' });
    expect(readdirSync(dir).sort()).toEqual(['vm1.img', 'vm1.img.index']);
    const again = await fetch(`${base}/v1/images`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ file: 'vm1.img' }) });
    await expectError(again, 409, 'IMAGE_FILE_IN_USE');

    await post(image.id, concat(list.flatMap((e) => e.frames)));
    const before = await digest(image.id);
    expect(before.digest).toBe(final.imageDigest().toString('hex'));
    expect((await fetch(`${base}/v1/images/${image.id}`, { method: 'DELETE' })).status).toBe(204);

    const resumed = await create({ file: 'vm1.img' });
    expect(resumed).toMatchObject({ committedEpoch: 3, pages: final.pages.size });
    expect(await digest(resumed.id)).toEqual(before);
    const mismatch = await fetch(`${base}/v1/images`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ file: 'vm1.img', pageSize: 8192 }),
    });
    await expectError(mismatch, 409, 'IMAGE_FILE_IN_USE');
    await fetch(`${base}/v1/images/${resumed.id}`, { method: 'DELETE' });
    const reopened = await fetch(`${base}/v1/images`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ file: 'vm1.img', pageSize: 8192 }),
    });
    await expectError(reopened, 400, 'IMAGE_PAGE_SIZE_MISMATCH');
  });

  it('documents the routes in the OpenAPI document', async () => {
    const doc = (await (await fetch(`${base}/openapi.json`)).json()) as { paths: Record<string, Record<string, { summary?: string; requestBody?: { content: Record<string, unknown> } }>> };
    for (const p of ['/v1/images', '/v1/images/{id}/frames', '/v1/images/{id}', '/v1/images/{id}/digest', '/v1/images/{id}/pages/{pfn}']) {
      expect(doc.paths[p], p).toBeDefined();
      for (const op of Object.values(doc.paths[p])) expect(op.summary, p).toBeTruthy();
    }
    expect(Object.keys(doc.paths['/v1/images/{id}/frames'].post.requestBody!.content)).toEqual([FRAMES_CONTENT_TYPE]);
  });
});

describe('image routes without an image directory', () => {
  let app: FastifyInstance;
  let base: string;

  beforeAll(async () => {
    app = await buildApp({ receiver: { maxImages: 1 } });
    base = await app.listen({ port: 0, host: '127.0.0.1' });
  });

  afterAll(async () => {
    await app.close();
  });

  it('refuses file images and limits the number of images', async () => {
    const post = (body: object) =>
      fetch(`${base}/v1/images`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const file = await post({ file: 'x.img' });
    expect(file.status).toBe(400);
    expect(((await file.json()) as { code: string }).code).toBe('IMAGE_FILE_NOT_ALLOWED');
    expect((await post({})).status).toBe(201);
    const over = await post({});
    expect(over.status).toBe(409);
    expect(((await over.json()) as { code: string }).code).toBe('IMAGE_LIMIT_REACHED');
  });
});
