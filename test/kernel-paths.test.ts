import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { MAX_CHUNK_RECORDS } from '../src/codec/chunk.js';
import { minFrameBytes } from '../src/frames.js';
import { hashImage } from '../src/digest.js';
import type { FrameSink } from '../src/merge.js';
import { packageRoot } from '../src/package-root.js';
import { MemoryImage, Receiver } from '../src/receiver.js';
import { Sender } from '../src/sender.js';
import type { StreamStats } from '../src/stream.js';
import { generateTrace } from '../src/trace-gen.js';
import { encodeEpochRecord, encodeTraceHeader, parseTrace, readTrace, TraceImage, type TraceEpoch } from '../src/trace.js';
import { CODEC_NAMES, type CodecName } from '../src/wire.js';
import type { KernelChoice } from '../workers/protocol.js';
import { CACHE_POLICIES, type CachePolicyName } from '../workers/cache-policy.js';

/**
 * The workers' two page-codec paths against each other: the WebAssembly
 * SIMD kernel over the stream's arena (kernel 'wasm', the default) and the
 * portable TypeScript codecs (kernel 'js'). For every codec and 1 and 2
 * partitions, both must send byte-identical frames, epoch by epoch, and the
 * receiver's image must equal the trace's. In process (Sender and Stream,
 * no HTTP): the frames are the stream's own.
 */
const PYTHON_TRACE = join(packageRoot(), '..', 'shared', 'traces', 'python-small.rmtr');
const KERNELS: readonly KernelChoice[] = ['wasm', 'js'];

const senders = new Map<KernelChoice, Sender>();

beforeAll(() => {
  for (const kernel of KERNELS) senders.set(kernel, new Sender({ workers: 2, kernel }));
});

afterAll(async () => {
  await Promise.all([...senders.values()].map((s) => s.close()));
});

interface Run {
  /** Every epoch's frames, concatenated. */
  frames: Buffer[];
  stats: StreamStats;
  imageDigest: string;
}

async function* once(record: Uint8Array): AsyncGenerator<Uint8Array> {
  yield record;
}

/** Stream settings besides codec, partitions, page size and cache budget. */
interface RunOptions {
  frameBytes?: number;
  cachePolicy?: CachePolicyName;
}

/** Send `epochs` through a new stream of the `kernel` sender; apply the frames to a fresh receiver. */
async function run(
  kernel: KernelChoice, codec: CodecName, partitions: number, epochs: Iterable<TraceEpoch> | AsyncIterable<TraceEpoch>, pageSize: number, cacheBytes: number,
  options: RunOptions = {},
): Promise<Run> {
  const sender = senders.get(kernel) as Sender;
  const stream = sender.create({ workers: partitions, codec, cacheBytes, pageSize, frameBytes: options.frameBytes ?? 256 * 1024, cachePolicy: options.cachePolicy });
  expect(stream.kernel).toBe(kernel);
  const rx = new Receiver({ pageSize, image: new MemoryImage(pageSize) });
  const frames: Buffer[] = [];
  try {
    for await (const epoch of epochs) {
      const parts: Buffer[] = [];
      let committed = false;
      const sink: FrameSink = {
        begin() {},
        write(frame, release) {
          // The frame is a view of a slab that is reused once released.
          const copy = Buffer.from(frame);
          parts.push(copy);
          // Released even when the receiver refuses the frame: the stream
          // then fails the epoch at once, rather than wait for its slab.
          try {
            if (rx.applyFrame(copy).committed) committed = true;
          } finally {
            release(null);
          }
        },
      };
      await stream.runEpoch(once(epoch.record), epoch.record.length, sink);
      expect(committed, `epoch ${epoch.epoch} committed by the receiver`).toBe(true);
      frames.push(Buffer.concat(parts));
    }
    return { frames, stats: { ...stream.stats }, imageDigest: rx.imageDigest().toString('hex') };
  } finally {
    await sender.delete(stream.id);
  }
}

function oracleDigest(epochs: Iterable<TraceEpoch>, pageSize: number): string {
  const oracle = new TraceImage(pageSize);
  for (const e of epochs) oracle.apply(e);
  return hashImage(oracle.pfns(), pageSize, (pfn, dst) => dst.set(oracle.get(pfn) as Uint8Array)).toString('hex');
}

/** Both kernels' runs: identical frames, epoch by epoch, identical counters (but time), and the trace's image. */
function expectSame(wasm: Run, js: Run, expectedDigest: string): void {
  expect(wasm.frames.length).toBe(js.frames.length);
  for (let e = 0; e < wasm.frames.length; e++) {
    if (!wasm.frames[e].equals(js.frames[e])) expect.fail(`epoch ${e}: the wasm kernel's frames (${wasm.frames[e].length} bytes) differ from the js codecs' (${js.frames[e].length} bytes)`);
  }
  const counters = (s: StreamStats): Partial<StreamStats> => ({ ...s, encodeNs: 0, encodingRate: 0 });
  expect(counters(wasm.stats)).toEqual(counters(js.stats));
  expect(wasm.imageDigest).toBe(expectedDigest);
  expect(js.imageDigest).toBe(expectedDigest);
}

describe('wasm kernel and TypeScript codecs send the same frames', () => {
  // 22 epochs of 4096 pages (zero pages, raw pages, a cold set) through a
  // 512-page cache: hits, misses, evictions, zero and raw pages under both.
  const generated = parseTrace(generateTrace({ seed: 4, epochs: 22, pages: 4096, profile: 'mixed' }));
  const generatedDigest = oracleDigest(generated.epochs, generated.pageSize);

  for (const codec of CODEC_NAMES) {
    for (const partitions of [1, 2]) {
      it(`generated trace, ${codec}, ${partitions} partition(s)`, async () => {
        const wasm = await run('wasm', codec, partitions, generated.epochs, generated.pageSize, 512 * 4096);
        const js = await run('js', codec, partitions, generated.epochs, generated.pageSize, 512 * 4096);
        expectSame(wasm, js, generatedDigest);
        expect(wasm.stats.cacheHits).toBeGreaterThan(0);
        expect(wasm.stats.cacheMisses).toBeGreaterThan(4096);
        expect(wasm.stats.zeroPages).toBeGreaterThan(0);
        expect(wasm.stats.rawPages).toBeGreaterThan(0);
      });
    }
  }

  // Epochs that grow (64, 128, ... 4096 pages) make the arena grow in place
  // between epochs, under workers that already hold a kernel instance over it.
  it('epochs growing the arena epoch after epoch, every codec, 2 partitions; 8 KiB pages', async () => {
    const pageSize = 8192;
    const pages = 4096;
    const image = new Uint8Array(pages * pageSize);
    let seed = 7;
    const rand = (): number => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0);
    for (let i = 0; i < image.length; i += 4) if (rand() % 3 !== 0) image[i + (rand() & 3)] = rand() & 0xff;
    const records: Buffer[] = [encodeTraceHeader(pageSize)];
    for (let e = 0; 64 << e <= pages; e++) {
      const count = 64 << e;
      // Change a few words of every other page sent; page 5 goes to zero.
      for (let p = 0; p < count; p += 2) image[p * pageSize + (rand() % (pageSize / 4)) * 4] ^= 0x5a;
      image.fill(0, 5 * pageSize, 6 * pageSize);
      const pfns = Float64Array.from({ length: count }, (_, i) => (i * 7919) % pages);
      const body = new Uint8Array(count * pageSize);
      for (let i = 0; i < count; i++) body.set(image.subarray(pfns[i] * pageSize, (pfns[i] + 1) * pageSize), i * pageSize);
      records.push(encodeEpochRecord(e, pfns, new Uint8Array(count), body, pageSize));
    }
    const { epochs } = parseTrace(Buffer.concat(records));
    const digest = oracleDigest(epochs, pageSize);
    for (const codec of CODEC_NAMES) {
      const wasm = await run('wasm', codec, 2, epochs, pageSize, 1024 * pageSize);
      const js = await run('js', codec, 2, epochs, pageSize, 1024 * pageSize);
      expectSame(wasm, js, digest);
      expect(wasm.stats.cacheHits).toBeGreaterThan(0);
    }
  });

  // With a cache far smaller than a task, slots change owner again and
  // again within one task (a hit's slot may go to a later miss of the same
  // task), and with no budget every page is a miss without a slot: the
  // kernel's cache copies and fills must land in the same slots as the
  // TypeScript path's.
  for (const cachePages of [0, 3, 40]) {
    it(`a ${cachePages}-page cache for 2 partitions: evictions within every task, every codec, both policies`, async () => {
      const trace = parseTrace(generateTrace({ seed: 11, epochs: 8, pages: 600, profile: 'mixed', dirtyFraction: 0.4 }));
      const digest = oracleDigest(trace.epochs, trace.pageSize);
      for (const codec of CODEC_NAMES) {
        for (const cachePolicy of CACHE_POLICIES) {
          const wasm = await run('wasm', codec, 2, trace.epochs, trace.pageSize, cachePages * trace.pageSize, { cachePolicy });
          const js = await run('js', codec, 2, trace.epochs, trace.pageSize, cachePages * trace.pageSize, { cachePolicy });
          expectSame(wasm, js, digest);
          expect(wasm.stats.zeroPages).toBeGreaterThan(0);
          expect(wasm.stats.rawPages).toBeGreaterThan(0);
          if (cachePages === 0) expect(wasm.stats.cacheHits).toBe(0);
          else expect(wasm.stats.cacheMisses).toBeGreaterThan(600 + cachePages);
          if (cachePages === 40) expect(wasm.stats.cacheHits).toBeGreaterThan(0);
        }
      }
    });
  }

  // Codec 3 closes a chunk when the next worst-case record might not fit
  // (the frame size bounds a chunk) or at MAX_CHUNK_RECORDS records; both
  // paths must close it at the very same pages.
  it('remus-zstd with frames of one to a few worst-case records: chunk boundaries at every few pages', async () => {
    const trace = parseTrace(generateTrace({ seed: 12, epochs: 6, pages: 400, profile: 'mixed', dirtyFraction: 0.5 }));
    const digest = oracleDigest(trace.epochs, trace.pageSize);
    const smallest = minFrameBytes(trace.pageSize);
    for (const frameBytes of [smallest, smallest + 100, 3 * smallest + 17]) {
      for (const partitions of [1, 2]) {
        const wasm = await run('wasm', 'remus-zstd', partitions, trace.epochs, trace.pageSize, 64 * trace.pageSize, { frameBytes });
        const js = await run('js', 'remus-zstd', partitions, trace.epochs, trace.pageSize, 64 * trace.pageSize, { frameBytes });
        expectSame(wasm, js, digest);
      }
    }
  });

  it(`remus-zstd, 512-byte pages: a task of 8192 small records makes chunks of ${MAX_CHUNK_RECORDS} records`, async () => {
    const pageSize = 512;
    const count = 8192;
    const pfns = Float64Array.from({ length: count }, (_, i) => i);
    const image = new Uint8Array(count * pageSize);
    for (let i = 0; i < count; i += 2) image[i * pageSize + (i % pageSize)] = 1 + (i & 0x7f);
    // Epoch 0 sends every page; epoch 1 the same pages unchanged or zero: 3- and 4-byte records.
    const records = [encodeTraceHeader(pageSize), encodeEpochRecord(0, pfns, new Uint8Array(count), image, pageSize)];
    const next = image.slice();
    for (let i = 0; i < count; i += 3) next.fill(0, i * pageSize, (i + 1) * pageSize);
    records.push(encodeEpochRecord(1, pfns, new Uint8Array(count), next, pageSize));
    const { epochs } = parseTrace(Buffer.concat(records));
    const wasm = await run('wasm', 'remus-zstd', 1, epochs, pageSize, count * pageSize);
    const js = await run('js', 'remus-zstd', 1, epochs, pageSize, count * pageSize);
    expectSame(wasm, js, oracleDigest(epochs, pageSize));
    expect(wasm.stats.unchangedPages + wasm.stats.zeroPages).toBeGreaterThan(2 * MAX_CHUNK_RECORDS);
  });

  it('random small traces, settings and frame sizes: the same frames from both kernels (fast-check)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          seed: fc.integer(),
          epochs: fc.integer({ min: 1, max: 5 }),
          pages: fc.integer({ min: 1, max: 200 }),
          pageSize: fc.constantFrom(512, 4096),
          profile: fc.constantFrom('mixed' as const, 'sparse' as const, 'rewrite' as const, 'zeros' as const),
          dirtyFraction: fc.double({ min: 0.05, max: 1, noNaN: true }),
          rawFraction: fc.constantFrom(0, 0.01, 0.2),
          cachePages: fc.integer({ min: 0, max: 120 }),
          partitions: fc.integer({ min: 1, max: 2 }),
          codec: fc.constantFrom(...CODEC_NAMES),
          cachePolicy: fc.constantFrom(...CACHE_POLICIES),
          /** Frame size above the smallest allowed: small ones cut codec 3's chunks often. */
          frameExtra: fc.oneof(fc.integer({ min: 0, max: 20_000 }), fc.constant(256 * 1024)),
        }),
        async (c) => {
          const { pageSize, epochs } = parseTrace(generateTrace(c));
          const frameBytes = minFrameBytes(pageSize) + c.frameExtra;
          const options = { frameBytes, cachePolicy: c.cachePolicy };
          const wasm = await run('wasm', c.codec, c.partitions, epochs, pageSize, c.cachePages * pageSize, options);
          const js = await run('js', c.codec, c.partitions, epochs, pageSize, c.cachePages * pageSize, options);
          expectSame(wasm, js, oracleDigest(epochs, pageSize));
        },
      ),
      { numRuns: 100 },
    );
  }, 120_000);

  const havePython = existsSync(PYTHON_TRACE);
  for (const codec of CODEC_NAMES) {
    for (const partitions of [1, 2]) {
      it.skipIf(!havePython)(`${havePython ? '' : '(skipped: ../shared/traces/python-small.rmtr is absent) '}python-small.rmtr, ${codec}, ${partitions} partition(s)`, async () => {
        const epochs: TraceEpoch[] = [];
        for await (const e of readTrace(PYTHON_TRACE)) epochs.push(e);
        const pageSize = 4096;
        const wasm = await run('wasm', codec, partitions, epochs, pageSize, 32 * 1024 * 1024);
        const js = await run('js', codec, partitions, epochs, pageSize, 32 * 1024 * 1024);
        expectSame(wasm, js, oracleDigest(epochs, pageSize));
      });
    }
  }
});

describe('the kernel option and the arena', () => {
  it('a sender refuses a kernel that is neither wasm nor js', () => {
    expect(() => new Sender({ workers: 1, kernel: 'simd' as KernelChoice })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
  });

  it('a cache that leaves a stream\'s arena no room below 4 GiB is refused with INVALID_CONFIG, before anything is allocated', async () => {
    // Past wasm32's 4 GiB but inside this (large) budget: the arena, not the budget, refuses it.
    const big = new Sender({ workers: 1, memoryBudgetBytes: 2 ** 40 });
    try {
      let error: unknown = null;
      try {
        big.create({ cacheBytes: 2 ** 32 });
      } catch (err) {
        error = err;
      }
      expect(error).toMatchObject({ code: 'INVALID_CONFIG', statusCode: 400 });
      expect((error as Error).message).toContain('WebAssembly memory');
      expect(big.list().length).toBe(0);
      expect(big.memoryInUse).toBe(0);
    } finally {
      await big.close();
    }
  });

  it('serve --kernel: a bad value exits 2 naming the option; --help lists it with REMUS_KERNEL', async () => {
    const cliPath = join(packageRoot(), 'dist', 'src', 'cli.js');
    const run = (args: string[], env: Record<string, string> = {}): Promise<{ code: number; out: string }> =>
      new Promise((resolve) => {
        execFile('node', [cliPath, ...args], { env: { ...process.env, ...env }, timeout: 60_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
          resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, out: stdout + stderr });
        });
      });
    const bad = await run(['serve', '--kernel', 'fast']);
    expect(bad.code).toBe(2);
    expect(bad.out).toContain('--kernel');
    const badEnv = await run(['serve'], { REMUS_KERNEL: 'fast' });
    expect(badEnv.code).toBe(2);
    const help = await run(['serve', '--help']);
    expect(help.code).toBe(0);
    expect(help.out).toContain('--kernel wasm|js');
    expect(help.out).toContain('REMUS_KERNEL');
  });
});
