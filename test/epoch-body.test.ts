import { PassThrough } from 'node:stream';
import { setFlagsFromString } from 'node:v8';
import fc from 'fast-check';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { EpochBodyReader, InPlaceBody, type InputSlabProvider } from '../src/epoch-body.js';
import { encodeEpochRecord } from '../src/trace.js';

const PAGE_SIZE = 4096;
const PAGES = 64;

// The retention test needs to run the collector itself.
setFlagsFromString('--expose-gc');
const collectGarbage = runInNewContext('gc') as () => void;

const slabs: InputSlabProvider = {
  inputSlab: (bytes) => new Uint8Array(bytes),
  pfnScratch: (count) => new Float64Array(count),
};

function epochBody(): Uint8Array {
  const pfns = Float64Array.from({ length: PAGES }, (_, i) => 0x1000 + i);
  const pages = new Uint8Array(PAGES * PAGE_SIZE).map((_, i) => i * 7);
  return encodeEpochRecord(1, pfns, new Uint8Array(PAGES), pages, PAGE_SIZE);
}

function reader(body: Uint8Array): EpochBodyReader {
  return new EpochBodyReader(
    { pageSize: PAGE_SIZE, pfnLimit: 2 ** 48, maxEpochBytes: 1 << 30, expectedEpoch: 1, declaredLength: body.length },
    slabs,
  );
}

/** A reader pumping a fresh request (a PassThrough, as the route hands it an IncomingMessage) that will carry epochBody(). */
function pumpRequest(): { body: Uint8Array; request: PassThrough; r: EpochBodyReader; pumped: Promise<void> } {
  const body = epochBody();
  const request = new PassThrough();
  const r = reader(body);
  return { body, request, r, pumped: r.pump(request) };
}

/** The same, once the first 5000 bytes (header, pfn list and the first page) are in. */
async function pumpRequestMidBody(): Promise<ReturnType<typeof pumpRequest>> {
  const started = pumpRequest();
  started.request.write(started.body.slice(0, 5000));
  await until(() => started.r.hasPages(1));
  return started;
}

/** Until `done()` holds, letting the pump run. */
async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 10_000 && !done(); i++) await new Promise((resolve) => setImmediate(resolve));
  expect(done()).toBe(true);
}

describe('EpochBodyReader', () => {
  it('lets go of every chunk it has copied while the body is still arriving', async () => {
    const body = epochBody();
    const chunkBytes = 1024;
    const chunkCount = Math.ceil(body.length / chunkBytes);
    const refs: WeakRef<Uint8Array>[] = [];
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let sent = 0;
    // A client that sends all but the last chunk, then stalls; each chunk is
    // a fresh buffer, as the socket gives them, referenced here only weakly.
    async function* source(): AsyncGenerator<Uint8Array> {
      for (let c = 0; c < chunkCount; c++) {
        if (c === chunkCount - 1) await gate;
        const chunk = body.slice(c * chunkBytes, (c + 1) * chunkBytes);
        refs.push(new WeakRef(chunk));
        sent += chunk.length;
        yield chunk;
      }
    }
    const r = reader(body);
    const pumped = r.pump(source());
    await until(() => refs.length === chunkCount - 1 && r.hasPages(PAGES - 1));
    // WeakRefs read in this job stay alive until it ends: collect in later turns.
    await new Promise((resolve) => setImmediate(resolve));
    collectGarbage();
    await new Promise((resolve) => setImmediate(resolve));
    collectGarbage();
    const kept = refs.slice(0, -2).filter((ref) => ref.deref() !== undefined).length;
    expect(kept).toBe(0);
    release();
    await pumped;
    await r.finished();
    expect(sent).toBe(body.length);
    const meta = await r.metadata();
    expect(Buffer.from(meta.input.subarray(0, body.length)).equals(Buffer.from(body))).toBe(true);
  });

  it('abort ends a pump whose client has stalled, with the abort reason', async () => {
    const body = epochBody();
    let stalled = false;
    async function* source(): AsyncGenerator<Uint8Array> {
      yield body.slice(0, 4096);
      stalled = true;
      await new Promise(() => undefined); // never sends the rest
    }
    const r = reader(body);
    const pumped = r.pump(source());
    await until(() => stalled);
    const reason = new Error('stream deleted');
    r.abort(reason);
    await pumped;
    await expect(r.finished()).rejects.toBe(reason);
    await expect(r.waitForPages(1)).rejects.toBe(reason);
  });

  it('abort before the pump starts stops it at its first chunk', async () => {
    const body = epochBody();
    let pulled = 0;
    async function* source(): AsyncGenerator<Uint8Array> {
      pulled++;
      yield body;
    }
    const r = reader(body);
    const reason = new Error('aborted early');
    r.abort(reason);
    await r.pump(source());
    expect(pulled).toBe(0);
    await expect(r.finished()).rejects.toBe(reason);
  });

  describe('from a Node readable (an HTTP request), through its data events', () => {
    it('copies the body exactly, however it is split into chunks', async () => {
      const length = epochBody().length;
      await fc.assert(
        fc.asyncProperty(fc.uniqueArray(fc.integer({ min: 1, max: length - 1 }), { maxLength: 40 }), async (cuts) => {
          const { body, request, r, pumped } = pumpRequest();
          const bounds = [0, ...cuts.sort((a, b) => a - b), body.length];
          for (let i = 0; i + 1 < bounds.length; i++) request.write(body.slice(bounds[i], bounds[i + 1]));
          request.end();
          await pumped;
          await r.finished();
          const meta = await r.metadata();
          expect(Buffer.from(meta.input.subarray(0, body.length)).equals(Buffer.from(body))).toBe(true);
        }),
        { numRuns: 50 },
      );
    });

    it('lets go of every chunk it has copied while the body is still arriving', async () => {
      const { body, request, r, pumped } = pumpRequest();
      const chunkBytes = 1024;
      const refs: WeakRef<Uint8Array>[] = [];
      for (let at = 0; at + chunkBytes < body.length; at += chunkBytes) {
        const chunk = body.slice(at, at + chunkBytes);
        refs.push(new WeakRef(chunk));
        request.write(chunk);
      }
      await until(() => r.hasPages(PAGES - 1));
      await new Promise((resolve) => setImmediate(resolve));
      collectGarbage();
      await new Promise((resolve) => setImmediate(resolve));
      collectGarbage();
      // The PassThrough's transform still holds the chunk written last.
      expect(refs.slice(0, -1).filter((ref) => ref.deref() !== undefined).length).toBe(0);
      request.end(body.slice(refs.length * chunkBytes));
      await pumped;
      await r.finished();
    });

    it('a body that ends early is EPOCH_TRUNCATED', async () => {
      const { body, request, r, pumped } = pumpRequest();
      request.end(body.slice(0, body.length - 1));
      await pumped;
      await expect(r.finished()).rejects.toMatchObject({ code: 'EPOCH_TRUNCATED' });
    });

    it('a request destroyed mid-body fails the read', async () => {
      const { request, r, pumped } = await pumpRequestMidBody();
      request.destroy();
      await pumped;
      await expect(r.finished()).rejects.toMatchObject({ code: 'ERR_STREAM_PREMATURE_CLOSE' });
    });

    it('abort stops a stalled body at once and leaves the rest of it unread', async () => {
      const { body, request, r, pumped } = await pumpRequestMidBody();
      const reason = new Error('stream deleted');
      r.abort(reason);
      await pumped;
      await expect(r.finished()).rejects.toBe(reason);
      request.write(body.slice(5000, 9000));
      await new Promise((resolve) => setImmediate(resolve));
      expect(request.isPaused()).toBe(true);
      expect(request.readableLength).toBe(4000);
      expect(r.hasPages(2)).toBe(false);
    });

    it('a body that goes on past its record stops there with EPOCH_BODY_TOO_LONG, the rest unread', async () => {
      const { body, request, r, pumped } = pumpRequest();
      request.write(Buffer.concat([body, Buffer.alloc(10)]));
      request.write(Buffer.alloc(100));
      await pumped;
      await expect(r.finished()).rejects.toMatchObject({ code: 'EPOCH_BODY_TOO_LONG' });
      expect(request.isPaused()).toBe(true);
    });
  });
});

describe('InPlaceBody (the fast path reads into the slab)', () => {
  /**
   * Drive the body as src/fast-path.ts does: each step reads at most `step`
   * bytes, into the slab window when there is one (a read never goes past
   * the window), else into a scratch that is then written in (a copy).
   */
  function feed(body: Uint8Array, inPlace: InPlaceBody, steps: number[]): { windows: number; copied: number } {
    let at = 0;
    let windows = 0;
    let copied = 0;
    for (let i = 0; at < body.length && !inPlace.stopped; i++) {
      const step = Math.max(1, steps[i % steps.length]);
      const window = inPlace.window(body.length - at);
      if (window !== null) {
        const bytes = Math.min(step, window.length);
        window.set(body.subarray(at, at + bytes));
        inPlace.wrote(bytes);
        at += bytes;
        windows++;
      } else {
        const bytes = Math.min(step, body.length - at);
        inPlace.write(body.slice(at, at + bytes));
        at += bytes;
        copied += bytes;
      }
    }
    return { windows, copied };
  }

  it('any mix of reads in place and copies: the slab holds the body, byte for byte', async () => {
    const length = epochBody().length;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 1, max: length }), { minLength: 1, maxLength: 30 }), async (steps) => {
        const body = epochBody();
        const r = reader(body);
        const inPlace = new InPlaceBody();
        const pumped = r.pump(inPlace);
        const { windows } = feed(body, inPlace, steps);
        inPlace.end();
        await pumped;
        await r.finished();
        const meta = await r.metadata();
        expect(Buffer.from(meta.input.subarray(0, body.length)).equals(Buffer.from(body))).toBe(true);
        // Once the header is in, reads go straight to the slab.
        if (steps[0] >= 16 && body.length > steps[0]) expect(windows).toBeGreaterThan(0);
      }),
      { numRuns: 60 },
    );
  });

  it('the window never reaches past the record, nor past the limit asked', async () => {
    const body = epochBody();
    const r = reader(body);
    const inPlace = new InPlaceBody();
    const pumped = r.pump(inPlace);
    expect(inPlace.window(body.length)).toBeNull();
    inPlace.write(body.slice(0, 100));
    expect(inPlace.window(50)?.length).toBe(50);
    expect(inPlace.window(body.length)?.length).toBe(body.length - 100);
    inPlace.write(body.slice(100));
    expect(inPlace.window(body.length)).toBeNull();
    inPlace.end();
    await pumped;
    await r.finished();
  });

  it('a bad header stops it: stopped, onStop called once, the failure reported, later bytes ignored', async () => {
    const body = epochBody();
    new DataView(body.buffer, body.byteOffset).setUint32(4, 7, true); // epoch 7; the stream expects 1
    const r = reader(body);
    const inPlace = new InPlaceBody();
    let stops = 0;
    inPlace.onStop = () => stops++;
    const pumped = r.pump(inPlace);
    inPlace.write(body.slice(0, 4096));
    expect(inPlace.stopped).toBe(true);
    expect(stops).toBe(1);
    expect(inPlace.window(body.length)).toBeNull();
    inPlace.write(body.slice(4096));
    inPlace.end();
    await pumped;
    await expect(r.finished()).rejects.toMatchObject({ code: 'EPOCH_OUT_OF_ORDER' });
    expect(stops).toBe(1);
  });

  it('a body that ends short is EPOCH_TRUNCATED; abort stops the transport with its reason', async () => {
    const short = epochBody();
    const r = reader(short);
    const inPlace = new InPlaceBody();
    const pumped = r.pump(inPlace);
    feed(short.subarray(0, 10_000), inPlace, [3000]);
    inPlace.end();
    await pumped;
    await expect(r.finished()).rejects.toMatchObject({ code: 'EPOCH_TRUNCATED' });

    const aborted = reader(short);
    const body = new InPlaceBody();
    let stopped = false;
    body.onStop = () => (stopped = true);
    const abortedPump = aborted.pump(body);
    feed(short.subarray(0, 10_000), body, [3000]);
    aborted.abort(new Error('client went away'));
    expect(stopped).toBe(true);
    expect(body.window(short.length)).toBeNull();
    await abortedPump;
    await expect(aborted.finished()).rejects.toThrow('client went away');
  });
});
