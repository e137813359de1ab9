import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { epochLayout, writePfn } from '../src/epoch-record.js';
import { TraceError } from '../src/errors.js';
import { generateEpochs, generateTrace, generateTraceFile, type GenerateOptions, type TraceProfile } from '../src/trace-gen.js';
import {
  TRACE_HEADER_BYTES,
  TraceImage,
  TraceWriter,
  encodeEpochRecord,
  encodeTraceHeader,
  openTrace,
  parseEpochRecord,
  parseTrace,
  parseTraceHeader,
  readTrace,
  summarizeTrace,
  type TraceEpoch,
} from '../src/trace.js';

const PYTHON_TRACE = fileURLToPath(new URL('../../shared/traces/python-small.rmtr', import.meta.url));
const pythonTraceExists = existsSync(PYTHON_TRACE);

interface EpochInput {
  pfns: number[];
  kinds: number[];
  pages: Uint8Array;
}

let dir: string;
let fileCounter = 0;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'trace-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
const tempPath = (): string => join(dir, `t${fileCounter++}.rmtr`);

/** Deterministic page bytes: every page of every test is distinguishable. */
function pagesFor(count: number, pageSize: number, salt: number): Uint8Array {
  const pages = new Uint8Array(count * pageSize);
  for (let i = 0; i < pages.length; i++) pages[i] = (i * 31 + salt * 17 + (i >>> 9)) & 0xff;
  return pages;
}

function buildTrace(pageSize: number, epochs: EpochInput[]): Buffer {
  return Buffer.concat([
    encodeTraceHeader(pageSize),
    ...epochs.map((e, i) => encodeEpochRecord(i, e.pfns, e.kinds, e.pages, pageSize)),
  ]);
}

async function collect(epochs: AsyncIterable<TraceEpoch>): Promise<TraceEpoch[]> {
  const out: TraceEpoch[] = [];
  for await (const e of epochs) out.push(e);
  return out;
}

function expectTraceError(err: unknown, code: string, offset: number): void {
  expect(err).toBeInstanceOf(TraceError);
  const e = err as TraceError;
  expect(e.code).toBe(code);
  expect(e.offset).toBe(offset);
  expect(e.message).toContain(`(at byte ${offset})`);
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

async function rejected(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

function expectEpochsEqual(actual: TraceEpoch[], expected: EpochInput[]): void {
  expect(actual.length).toBe(expected.length);
  actual.forEach((e, i) => {
    expect(e.epoch).toBe(i);
    expect(e.count).toBe(expected[i].pfns.length);
    expect([...e.pfns]).toEqual(expected[i].pfns);
    expect([...e.kinds]).toEqual(expected[i].kinds);
    expect(Buffer.from(e.pages).equals(Buffer.from(expected[i].pages))).toBe(true);
  });
}

// The corruption fixture: page size 512, two records.
//   record 0 at 16:   count 3, pfns at 32, kinds at 56, padding at 59, pages at 64, 1584 bytes
//   record 1 at 1600: count 2, pfns at 1616, kinds at 1632, padding at 1634, pages at 1640, 1064 bytes
const PS = 512;
const R0 = TRACE_HEADER_BYTES;
const R1 = R0 + epochLayout(3, PS).totalBytes;
const fixtureEpochs: EpochInput[] = [
  { pfns: [5, 2 ** 32 + 7, 9], kinds: [0, 1, 0], pages: pagesFor(3, PS, 1) },
  { pfns: [9, 1], kinds: [0, 0], pages: pagesFor(2, PS, 2) },
];
const fixture = (): Buffer => buildTrace(PS, fixtureEpochs);

interface Corruption {
  name: string;
  code: string;
  offset: number;
  build(): Buffer;
}

function patched(edit: (b: Buffer) => void): () => Buffer {
  return () => {
    const b = fixture();
    edit(b);
    return b;
  };
}

const truncated = (length: number) => () => fixture().subarray(0, length);

const corruptions: Corruption[] = [
  { name: 'bad file magic', code: 'TRACE_BAD_MAGIC', offset: 0, build: patched((b) => b.write('RMTX', 0, 'latin1')) },
  { name: 'bad version', code: 'TRACE_BAD_VERSION', offset: 4, build: patched((b) => b.writeUInt16LE(2, 4)) },
  { name: 'non-zero reserved u16 in the file header', code: 'TRACE_BAD_RESERVED', offset: 6, build: patched((b) => b.writeUInt16LE(1, 6)) },
  { name: 'non-zero reserved u32 in the file header', code: 'TRACE_BAD_RESERVED', offset: 12, build: patched((b) => b.writeUInt32LE(1, 12)) },
  { name: 'page size not a power of two', code: 'TRACE_BAD_PAGE_SIZE', offset: 8, build: patched((b) => b.writeUInt32LE(3000, 8)) },
  { name: 'page size below 512', code: 'TRACE_BAD_PAGE_SIZE', offset: 8, build: patched((b) => b.writeUInt32LE(256, 8)) },
  { name: 'page size above 65536', code: 'TRACE_BAD_PAGE_SIZE', offset: 8, build: patched((b) => b.writeUInt32LE(131072, 8)) },
  { name: 'page size 0', code: 'TRACE_BAD_PAGE_SIZE', offset: 8, build: patched((b) => b.writeUInt32LE(0, 8)) },
  { name: 'file header truncated', code: 'TRACE_TRUNCATED', offset: 0, build: truncated(10) },
  { name: 'bad record magic', code: 'TRACE_BAD_MAGIC', offset: R1, build: patched((b) => b.write('EPCX', R1, 'latin1')) },
  { name: 'first epoch not 0', code: 'TRACE_BAD_EPOCH', offset: R0 + 4, build: patched((b) => b.writeUInt32LE(1, R0 + 4)) },
  { name: 'epoch number skipped', code: 'TRACE_BAD_EPOCH', offset: R1 + 4, build: patched((b) => b.writeUInt32LE(2, R1 + 4)) },
  { name: 'non-zero reserved in a record', code: 'TRACE_BAD_RESERVED', offset: R1 + 12, build: patched((b) => b.writeUInt32LE(7, R1 + 12)) },
  { name: 'record truncated in its header', code: 'TRACE_TRUNCATED', offset: R1, build: truncated(R1 + 10) },
  { name: 'record truncated in its pfns', code: 'TRACE_TRUNCATED', offset: R1 + 24, build: truncated(R1 + 28) },
  { name: 'record truncated in its kinds', code: 'TRACE_TRUNCATED', offset: R1 + 33, build: truncated(R1 + 33) },
  { name: 'record truncated in its padding', code: 'TRACE_TRUNCATED', offset: R1 + 36, build: truncated(R1 + 36) },
  { name: 'record truncated in its pages', code: 'TRACE_TRUNCATED', offset: R1 + 40 + PS, build: truncated(R1 + 40 + PS + 100) },
  {
    name: 'count beyond the end of the file',
    code: 'TRACE_TRUNCATED',
    // The first pfn that does not fit starts where the file ends.
    offset: R1 + epochLayout(2, PS).totalBytes,
    build: patched((b) => b.writeUInt32LE(0xffff_ffff, R1 + 8)),
  },
  { name: 'duplicate pfn', code: 'TRACE_DUPLICATE_PFN', offset: R0 + 32, build: patched((b) => writePfn(b, R0 + 32, 5)) },
  { name: 'kind 2', code: 'TRACE_BAD_KIND', offset: R0 + 42, build: patched((b) => (b[R0 + 42] = 2)) },
  { name: 'non-zero padding', code: 'TRACE_BAD_PADDING', offset: R0 + 45, build: patched((b) => (b[R0 + 45] = 1)) },
  { name: 'pfn of 2^48', code: 'TRACE_PFN_RANGE', offset: R0 + 24, build: patched((b) => writePfn(b, R0 + 24, 2 ** 48)) },
  { name: 'pfn of 2^64 - 1', code: 'TRACE_PFN_RANGE', offset: R1 + 16, build: patched((b) => b.fill(0xff, R1 + 16, R1 + 24)) },
];

describe('trace rejections', () => {
  it('the fixture itself is valid', async () => {
    const path = tempPath();
    await writeFile(path, fixture());
    expectEpochsEqual(parseTrace(fixture()).epochs, fixtureEpochs);
    expectEpochsEqual(await collect(readTrace(path)), fixtureEpochs);
  });

  describe.each(corruptions)('$name', ({ code, offset, build }) => {
    it(`parseTrace: ${code} at byte ${offset}`, () => {
      expectTraceError(thrown(() => parseTrace(build())), code, offset);
    });

    it(`readTrace: ${code} at byte ${offset}`, async () => {
      const path = tempPath();
      await writeFile(path, build());
      expectTraceError(await rejected(collect(readTrace(path))), code, offset);
    });
  });

  it('accepts the largest pfn, 2^48 - 1', () => {
    const bytes = buildTrace(PS, [{ pfns: [2 ** 48 - 1, 0], kinds: [1, 0], pages: pagesFor(2, PS, 3) }]);
    expect([...parseTrace(bytes).epochs[0].pfns]).toEqual([2 ** 48 - 1, 0]);
  });

  it('parseTraceHeader reads the page size of a valid header', () => {
    expect(parseTraceHeader(encodeTraceHeader(65536))).toEqual({ pageSize: 65536 });
    expect(parseTraceHeader(encodeTraceHeader(512))).toEqual({ pageSize: 512 });
  });

  it('parseEpochRecord names offsets relative to fileOffset, and checks the epoch only when asked', () => {
    const record = encodeEpochRecord(4, [1, 2], [0, 0], pagesFor(2, PS, 4), PS);
    record[epochLayout(2, PS).kindOffset + 1] = 9;
    // An HTTP body: the record alone, offsets from its start.
    expectTraceError(thrown(() => parseEpochRecord(record, 0, PS, null)), 'TRACE_BAD_KIND', 33);
    const embedded = Buffer.concat([Buffer.alloc(5), record]);
    expectTraceError(thrown(() => parseEpochRecord(embedded, 5, PS, null, 1000)), 'TRACE_BAD_KIND', 1033);
    expectTraceError(thrown(() => parseEpochRecord(embedded, 5, PS, 3, 1000)), 'TRACE_BAD_EPOCH', 1004);

    const good = encodeEpochRecord(4, [1, 2], [0, 1], pagesFor(2, PS, 4), PS);
    const parsed = parseEpochRecord(Buffer.concat([good, Buffer.alloc(3)]), 0, PS, null);
    expect(parsed.epoch).toBe(4);
    expect(parsed.record.length).toBe(good.length);
    expect([...parsed.kinds]).toEqual([0, 1]);
  });

  it('encodeEpochRecord refuses to build an invalid record', () => {
    const page = pagesFor(1, PS, 5);
    expect(() => encodeEpochRecord(0, [1, 1], [0, 0], pagesFor(2, PS, 5), PS)).toThrow(RangeError);
    expect(() => encodeEpochRecord(0, [1], [2], page, PS)).toThrow(RangeError);
    expect(() => encodeEpochRecord(0, [2 ** 48], [0], page, PS)).toThrow(RangeError);
    expect(() => encodeEpochRecord(0, [-1], [0], page, PS)).toThrow(RangeError);
    expect(() => encodeEpochRecord(0, [1.5], [0], page, PS)).toThrow(RangeError);
    expect(() => encodeEpochRecord(0, [1], [0, 0], page, PS)).toThrow(RangeError);
    expect(() => encodeEpochRecord(0, [1], [0], page.subarray(1), PS)).toThrow(RangeError);
    expect(() => encodeEpochRecord(0, [1], [0], pagesFor(1, 1000, 5), 1000)).toThrow(RangeError);
    expect(() => encodeEpochRecord(2 ** 32, [1], [0], page, PS)).toThrow(RangeError);
    expect(() => encodeTraceHeader(1024 + 512)).toThrow(RangeError);
  });
});

interface EntrySpec {
  pfn: number;
  kind: number;
  page: { fill: 'zero' | 'noise' | 'byte'; seed: number };
}

describe('trace round trip', () => {
  const pfnArb = fc.oneof(
    fc.integer({ min: 0, max: 300 }),
    fc.bigInt({ min: 0n, max: 2n ** 48n - 1n }).map(Number),
    fc.constantFrom(2 ** 32 - 1, 2 ** 32, 2 ** 48 - 1),
  );
  const pageArb = fc.record({ fill: fc.constantFrom('zero', 'noise', 'byte'), seed: fc.integer({ min: 0, max: 0xffff }) });
  const epochArb: fc.Arbitrary<EntrySpec[]> = fc.uniqueArray(fc.record({ pfn: pfnArb, kind: fc.constantFrom(0, 1), page: pageArb }), {
    selector: (entry) => entry.pfn,
    maxLength: 17,
  });
  const traceArb = fc.record({ pageSize: fc.constantFrom(512, 1024), epochs: fc.array(epochArb, { maxLength: 4 }) });

  function expand(pageSize: number, entries: EntrySpec[]): EpochInput {
    const pages = new Uint8Array(entries.length * pageSize);
    entries.forEach(({ page }, i) => {
      const target = pages.subarray(i * pageSize, (i + 1) * pageSize);
      if (page.fill === 'byte') target.fill(page.seed & 0xff);
      if (page.fill === 'noise') for (let j = 0; j < pageSize; j++) target[j] = (Math.imul(j + 1, page.seed + 0x9e37) >>> 7) & 0xff;
    });
    return { pfns: entries.map((e) => e.pfn), kinds: entries.map((e) => e.kind), pages };
  }

  it('TraceWriter -> readTrace and parseTrace returns what was written (fast-check)', async () => {
    const path = tempPath();
    await fc.assert(
      fc.asyncProperty(traceArb, async ({ pageSize, epochs }) => {
        const inputs = epochs.map((entries) => expand(pageSize, entries));
        const writer = await TraceWriter.create(path, pageSize);
        for (const e of inputs) await writer.writeEpoch(e.pfns, e.kinds, e.pages);
        await writer.close();

        const bytes = await readFile(path);
        expect(bytes.equals(buildTrace(pageSize, inputs))).toBe(true);
        const parsed = parseTrace(bytes);
        expect(parsed.pageSize).toBe(pageSize);
        expectEpochsEqual(parsed.epochs, inputs);

        const streamed = await collect(readTrace(path));
        expectEpochsEqual(streamed, inputs);
        let offset = TRACE_HEADER_BYTES;
        for (const e of streamed) {
          expect(Buffer.from(e.record).equals(bytes.subarray(offset, offset + e.record.length))).toBe(true);
          offset += e.record.length;
        }
        expect(offset).toBe(bytes.length);
      }),
      { numRuns: 60 },
    );
  });

  it('round-trips counts 0, 8 and 16, where the record has no padding', async () => {
    for (const count of [0, 8, 16]) {
      const layout = epochLayout(count, PS);
      expect(layout.pageOffset).toBe(layout.paddingOffset);
    }
    const inputs: EpochInput[] = [0, 8, 16, 0].map((count, i) => ({
      pfns: Array.from({ length: count }, (_, j) => j * 1000 + i),
      kinds: Array.from({ length: count }, (_, j) => j % 2),
      pages: pagesFor(count, PS, i),
    }));
    const path = tempPath();
    const writer = await TraceWriter.create(path, PS);
    for (const e of inputs) await writer.writeEpoch(e.pfns, e.kinds, e.pages);
    await writer.close();
    expectEpochsEqual(await collect(readTrace(path)), inputs);
    expectEpochsEqual(parseTrace(await readFile(path)).epochs, inputs);
  });

  it('a trace with no epochs is a bare header', async () => {
    const path = tempPath();
    await (await TraceWriter.create(path, 4096)).close();
    expect((await readFile(path)).equals(encodeTraceHeader(4096))).toBe(true);
    expect(await collect(readTrace(path))).toEqual([]);
  });

  it('openTrace exposes the page size and can iterate the epochs more than once', async () => {
    const path = tempPath();
    await writeFile(path, fixture());
    const trace = await openTrace(path);
    try {
      expect(trace.pageSize).toBe(PS);
      expectEpochsEqual(await collect(trace.epochs()), fixtureEpochs);
      expectEpochsEqual(await collect(trace.epochs()), fixtureEpochs);
    } finally {
      await trace.close();
    }
  });
});

describe('TraceImage', () => {
  it('holds the latest contents of every pfn, raw pages included, as copies', () => {
    const { epochs } = parseTrace(fixture());
    const image = new TraceImage(PS);
    image.apply(epochs[0]);
    image.apply(epochs[1]);
    expect(image.size).toBe(4);
    expect(image.pfns()).toEqual([1, 5, 9, 2 ** 32 + 7]);
    expect(Buffer.from(image.get(9)!).equals(Buffer.from(epochs[1].pages.subarray(0, PS)))).toBe(true);
    expect(Buffer.from(image.get(5)!).equals(Buffer.from(epochs[0].pages.subarray(0, PS)))).toBe(true);
    expect(Buffer.from(image.get(2 ** 32 + 7)!).equals(Buffer.from(epochs[0].pages.subarray(PS, 2 * PS)))).toBe(true);
    expect(image.get(2)).toBeUndefined();

    const before = Buffer.from(image.get(1)!);
    epochs[1].record.fill(0xee);
    expect(Buffer.from(image.get(1)!).equals(before)).toBe(true);
  });

  it('refuses pages of another size', () => {
    expect(() => new TraceImage(PS).apply({ pfns: [1], pages: new Uint8Array(PS + 1) })).toThrow(RangeError);
  });
});

describe('summarizeTrace', () => {
  it('counts epochs, pages, dirty pages per epoch, raw and zero pages', async () => {
    const zeroAndData = pagesFor(3, PS, 6);
    zeroAndData.fill(0, 0, PS);
    const bytes = buildTrace(PS, [
      { pfns: [1, 2, 3], kinds: [0, 1, 0], pages: zeroAndData },
      { pfns: [2, 3], kinds: [1, 0], pages: new Uint8Array(2 * PS) },
      { pfns: [], kinds: [], pages: new Uint8Array(0) },
    ]);
    const path = tempPath();
    await writeFile(path, bytes);
    const expected = {
      epochs: 3,
      totalPages: 5,
      pageBytes: 5 * PS,
      imagePages: 3,
      dirtyPages: { min: 0, mean: 1, max: 2 },
      rawPages: 2,
      zeroPages: 3,
    };
    expect(await summarizeTrace(parseTrace(bytes).epochs)).toEqual(expected);
    expect(await summarizeTrace(readTrace(path))).toEqual(expected);
  });
});

/** Per dirty page of epochs 1.., how it changed against the image before the epoch. */
interface ChangeCounts {
  raw: number;
  zero: number;
  unchanged: number;
  sparse: number;
  rewrite: number;
  revived: number;
  sortedEpochs: number;
  unsortedEpochs: number;
}

function changedWords(before: Uint8Array, after: Uint8Array): number {
  const a = Buffer.from(before.buffer, before.byteOffset, before.length);
  const b = Buffer.from(after.buffer, after.byteOffset, after.length);
  let changed = 0;
  for (let i = 0; i < a.length; i += 4) if (a.readUInt32LE(i) !== b.readUInt32LE(i)) changed++;
  return changed;
}

function countChanges(bytes: Buffer): ChangeCounts {
  const { pageSize, epochs } = parseTrace(bytes);
  const words = pageSize / 4;
  const counts: ChangeCounts = { raw: 0, zero: 0, unchanged: 0, sparse: 0, rewrite: 0, revived: 0, sortedEpochs: 0, unsortedEpochs: 0 };
  const image = new TraceImage(pageSize);
  image.apply(epochs[0]);
  for (const e of epochs.slice(1)) {
    const pfns = [...e.pfns];
    const sorted = pfns.every((p, i) => i === 0 || pfns[i - 1] < p);
    if (sorted) counts.sortedEpochs++;
    else counts.unsortedEpochs++;
    for (let i = 0; i < e.count; i++) {
      const page = e.pages.subarray(i * pageSize, (i + 1) * pageSize);
      const before = image.get(e.pfns[i])!;
      const changed = changedWords(before, page);
      const wasZero = before.every((x) => x === 0);
      const isZero = page.every((x) => x === 0);
      if (e.kinds[i] === 1) counts.raw++;
      if (isZero) counts.zero++;
      if (wasZero && !isZero) counts.revived++;
      if (changed === 0) counts.unchanged++;
      else if (changed <= 64) counts.sparse++;
      else if (changed >= words * 0.9) counts.rewrite++;
    }
    image.apply(e);
  }
  return counts;
}

describe('trace generator', () => {
  const base: GenerateOptions = { seed: 42, epochs: 12, pages: 2048 };

  it('is deterministic: same options, same bytes; another seed, other bytes', async () => {
    const small = { ...base, pages: 256, epochs: 6 };
    const a = generateTrace(small);
    expect(generateTrace(small).equals(a)).toBe(true);
    expect(generateTrace({ ...small, seed: 43 }).equals(a)).toBe(false);
    expect(generateTrace({ ...small, seed: 42 + 2 ** 32 }).equals(a)).toBe(false);
    const path = tempPath();
    await generateTraceFile(path, small);
    expect((await readFile(path)).equals(a)).toBe(true);
  });

  it.each<TraceProfile>(['mixed', 'sparse', 'rewrite', 'zeros'])('profile %s parses and has the shape of a memory trace', (profile) => {
    const pageSize = profile === 'sparse' ? 1024 : 4096;
    const { pageSize: parsedSize, epochs } = parseTrace(generateTrace({ ...base, profile, pageSize }));
    expect(parsedSize).toBe(pageSize);
    expect(epochs.length).toBe(base.epochs);
    const image = [...epochs[0].pfns];
    expect(image.length).toBe(base.pages);
    expect(image.every((p, i) => i === 0 || image[i - 1] < p)).toBe(true);
    expect(image.some((p) => p > 2 ** 32)).toBe(true);
    const gaps = image.filter((p, i) => i > 0 && p - image[i - 1] > 1).length;
    expect(gaps).toBeGreaterThan(3);
    const known = new Set(image);
    for (const e of epochs.slice(1)) {
      expect(e.count).toBeGreaterThan(0);
      expect(e.count).toBeLessThanOrEqual(base.pages * 0.1 * 1.25 + 1);
      expect([...e.pfns].every((p) => known.has(p))).toBe(true);
    }
  });

  it("'mixed' has raw, zero, revived, unchanged, sparsely edited and rewritten pages, in and out of pfn order", () => {
    const counts = countChanges(generateTrace(base));
    expect(counts.raw).toBeGreaterThan(0);
    expect(counts.zero).toBeGreaterThan(0);
    expect(counts.revived).toBeGreaterThan(0);
    expect(counts.unchanged).toBeGreaterThan(0);
    expect(counts.sparse).toBeGreaterThan(0);
    expect(counts.rewrite).toBeGreaterThan(0);
    expect(counts.sparse).toBeGreaterThan(counts.rewrite);
    expect(counts.sortedEpochs).toBeGreaterThan(0);
    expect(counts.unsortedEpochs).toBeGreaterThan(0);
  });

  it("'mixed' has a small hot set dirtied most epochs and a cold set dirtied rarely", () => {
    const dirtied = new Map<number, number>();
    let epochIndex = 0;
    for (const e of generateEpochs({ ...base, epochs: 21 })) {
      if (epochIndex++ === 0) continue;
      for (const pfn of e.pfns) dirtied.set(pfn, (dirtied.get(pfn) ?? 0) + 1);
    }
    const hot = [...dirtied.values()].filter((n) => n >= 10).length;
    const once = [...dirtied.values()].filter((n) => n === 1).length;
    expect(hot).toBeGreaterThan(base.pages * 0.02);
    expect(hot).toBeLessThan(base.pages * 0.1);
    expect(once).toBeGreaterThan(base.pages * 0.1);
  });

  it('profiles differ the way their names say', () => {
    const sparse = countChanges(generateTrace({ ...base, profile: 'sparse' }));
    const rewrite = countChanges(generateTrace({ ...base, profile: 'rewrite' }));
    const mixed = countChanges(generateTrace({ ...base, profile: 'mixed' }));
    const zeros = countChanges(generateTrace({ ...base, profile: 'zeros' }));
    expect(sparse.sparse).toBeGreaterThan(5 * sparse.rewrite);
    expect(rewrite.rewrite).toBeGreaterThan(2 * rewrite.sparse);
    expect(zeros.zero).toBeGreaterThan(2 * mixed.zero);
  });

  it('handles empty images, no dirty pages and no epochs', () => {
    expect(parseTrace(generateTrace({ seed: 1, epochs: 3, pages: 0 })).epochs.map((e) => e.count)).toEqual([0, 0, 0]);
    expect(parseTrace(generateTrace({ seed: 1, epochs: 3, pages: 64, dirtyFraction: 0 })).epochs.map((e) => e.count)).toEqual([64, 0, 0]);
    expect(generateTrace({ seed: 1, epochs: 0, pages: 64 }).equals(encodeTraceHeader(4096))).toBe(true);
    const noRaw = parseTrace(generateTrace({ seed: 1, epochs: 4, pages: 512, rawFraction: 0 })).epochs;
    expect(noRaw.every((e) => e.kinds.every((k) => k === 0))).toBe(true);
  });

  it('rejects options it cannot honour', () => {
    expect(() => generateTrace({ ...base, pageSize: 3000 })).toThrow(RangeError);
    expect(() => generateTrace({ ...base, profile: 'bogus' as TraceProfile })).toThrow(RangeError);
    expect(() => generateTrace({ ...base, dirtyFraction: 1.5 })).toThrow(RangeError);
    expect(() => generateTrace({ ...base, rawFraction: -0.1 })).toThrow(RangeError);
    expect(() => generateTrace({ ...base, pages: 1.5 })).toThrow(RangeError);
    expect(() => generateTrace({ ...base, seed: Number.NaN })).toThrow(RangeError);
  });
});

describe('real trace', () => {
  it.skipIf(!pythonTraceExists)('python-small.rmtr (skipped when ../shared/traces is absent): 16 epochs, 1615 pages in epoch 0', async () => {
    const trace = await openTrace(PYTHON_TRACE);
    try {
      expect(trace.pageSize).toBe(4096);
      const summary = await summarizeTrace(trace.epochs());
      expect(summary.epochs).toBe(16);
      expect(summary.imagePages).toBe(1615);
    } finally {
      await trace.close();
    }
  });
});
