import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  decodeRemusPage,
  encodeRemusDelta,
  encodeRemusFull,
  isZeroPage,
  remusMaxEncodedBytes,
} from '../src/codec/remus.js';
import { createKernelMemory, instantiateRemusWasm, type KernelMemory } from '../src/codec/remus-wasm.js';
import { encodeXbzrleBody, xbzrleDeltaLimit, xbzrleEncode, xbzrleMaxEncodedBytes } from '../src/codec/xbzrle.js';
import { CodecError } from '../src/errors.js';
import { packageRoot } from '../src/package-root.js';
import { parseTrace } from '../src/trace.js';
import { generateTrace } from '../src/trace-gen.js';
import { measureKernel, prepareTrace } from '../bench/kernel.js';

/**
 * The WebAssembly kernel (assembly/remus.ts via src/codec/remus-wasm.ts)
 * against the TypeScript codec (src/codec/remus.ts), byte for byte: records,
 * the cache page after encoding, decoded pages, decode positions and errors.
 * The .wasm comes from `npm run build` (run by pretest).
 */
const MAX_PAGE = 16384;
const SENTINEL = 0xa5;
/** Guard bytes around every region the kernel writes, checked after each call. */
const GUARD = 64;

// One shared memory for the whole file: regions for the current page, the
// cached copy, the output record and a decode target, each with guards.
const memory: KernelMemory = createKernelMemory(1 << 20, 4 << 20);
const k = instantiateRemusWasm(memory);
const mem = new Uint8Array(memory.buffer);
const REGION = MAX_PAGE + 2 * GUARD + 1024;
const CUR = GUARD;
const CACHED = CUR + REGION;
const OUT = CACHED + REGION;
const TARGET = OUT + REGION;
const INPUT = TARGET + REGION;

function u8(words: Uint32Array): Uint8Array {
  return new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

function expectBytes(got: Uint8Array, want: Uint8Array, what: string): void {
  if (equalBytes(got, want)) return;
  let i = 0;
  while (i < Math.min(got.length, want.length) && got[i] === want[i]) i++;
  expect.fail(`${what}: ${got.length} vs ${want.length} bytes, first difference at byte ${i} (${got[i]} vs ${want[i]})`);
}

function expectGuard(from: number, to: number, what: string): void {
  for (let i = from; i < to; i++) if (mem[i] !== SENTINEL) expect.fail(`${what}: byte ${i - from} of the guard was written`);
}

/**
 * Encode `cur` against `old` with both codecs; the wasm side at the given
 * byte misalignments, by encodeDelta or (onePass) encodeDeltaOrZero, which
 * must return 0 exactly when `cur` is all zero and else the same record.
 * Checks the record, the cache page after, that nothing past the record's
 * end or around the pages was written, and that the page was not. Returns
 * the record.
 */
function expectSameEncode(old: Uint32Array, cur: Uint32Array, shift = { cur: 0, cached: 0, out: 0 }, onePass = false): Uint8Array {
  const pageSize = cur.length * 4;
  const cachedTs = old.slice();
  const out = new Uint8Array(remusMaxEncodedBytes(pageSize));
  const end = encodeRemusDelta(cur, 0, cachedTs, 0, cur.length, out, 0);
  const record = out.subarray(0, end);

  const c = CUR + shift.cur;
  const kk = CACHED + shift.cached;
  const o = OUT + shift.out;
  mem.fill(SENTINEL, CUR - GUARD, INPUT);
  mem.set(u8(cur), c);
  mem.set(u8(old), kk);
  let wend: number;
  if (onePass) {
    const zero = isZeroPage(cur, 0, cur.length);
    const r = k.encodeDeltaOrZero(c, kk, pageSize, o);
    if (zero) expect(r, 'an all-zero page gives 0').toBe(0);
    else expect(r, 'a page with a non-zero word gives its end').toBe(o + end);
    // The bytes it wrote (as a record, or past a zero page's ZERO record) are encodeDelta's.
    wend = o + end;
  } else {
    wend = k.encodeDelta(c, kk, pageSize, o);
  }
  expectBytes(mem.subarray(o, wend), record, `record (${pageSize}-byte page)`);
  expectBytes(mem.subarray(kk, kk + pageSize), u8(cachedTs), 'cache page after encoding');
  expectBytes(mem.subarray(c, c + pageSize), u8(cur), 'current page (must not be written)');
  expectGuard(wend, o + remusMaxEncodedBytes(pageSize) + GUARD, 'bytes after the record');
  expectGuard(o - GUARD, o, 'bytes before the record');
  expectGuard(kk - GUARD, kk, 'bytes before the cache page');
  expectGuard(kk + pageSize, kk + pageSize + GUARD, 'bytes after the cache page');
  return record;
}

/** Deterministic words (xorshift32). */
function fillRandom(words: Uint32Array, seed: number): void {
  let x = (seed | 0) || 0x9e3779b9;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x >>> 0;
  }
}

/** How a page changes from its cached copy. */
type Change =
  | { kind: 'none' }
  | { kind: 'all' }
  | { kind: 'sparse'; at: number[] }
  | { kind: 'dense'; everyNth: number; phase: number }
  | { kind: 'runs'; runs: { start: number; length: number }[] }
  | { kind: 'edges'; first: boolean; last: boolean; middle: number[] };

/** Run lengths around the 127-word split. */
const RUN_LENGTHS = [1, 2, 3, 4, 5, 126, 127, 128, 129, 253, 254, 255, 256, 381, 382];

const changeArb: fc.Arbitrary<Change> = fc.oneof(
  fc.constant<Change>({ kind: 'none' }),
  fc.constant<Change>({ kind: 'all' }),
  fc.record({ kind: fc.constant('sparse' as const), at: fc.array(fc.nat(), { minLength: 1, maxLength: 24 }) }),
  fc.record({ kind: fc.constant('dense' as const), everyNth: fc.integer({ min: 1, max: 5 }), phase: fc.nat(4) }),
  fc.record({
    kind: fc.constant('runs' as const),
    runs: fc.array(
      fc.record({ start: fc.nat(), length: fc.oneof(fc.constantFrom(...RUN_LENGTHS), fc.integer({ min: 1, max: 600 })) }),
      { minLength: 1, maxLength: 6 },
    ),
  }),
  fc.record({ kind: fc.constant('edges' as const), first: fc.boolean(), last: fc.boolean(), middle: fc.array(fc.nat(), { maxLength: 4 }) }),
);

const pageArb = fc.record({
  /** The service's page sizes, mostly; any whole number of words too (both codecs take them). */
  pageSize: fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(512, 1024, 2048, 4096, 8192, 16384) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 200 }).map((w) => 4 * w) },
  ),
  seed: fc.integer(),
  oldZero: fc.boolean(),
  /** XOR applied to a changed word: any non-zero value (a single changed bit or byte included). */
  flip: fc.oneof(fc.constantFrom(1, 0x80, 0x100, 0x8000_0000, 0xff00_0000), fc.integer({ min: 1, max: 0xffff_ffff })),
  change: changeArb,
  shift: fc.record({ cur: fc.constantFrom(0, 1, 4, 8, 12), cached: fc.constantFrom(0, 3, 4, 8), out: fc.constantFrom(0, 1, 2, 3) }),
});

type PageCase = typeof pageArb extends fc.Arbitrary<infer T> ? T : never;

function buildPages(p: PageCase): { old: Uint32Array; cur: Uint32Array } {
  const words = p.pageSize / 4;
  const old = new Uint32Array(words);
  if (!p.oldZero) fillRandom(old, p.seed);
  const cur = old.slice();
  const flip = (i: number): void => {
    cur[i] = (old[i] ^ p.flip) >>> 0;
  };
  const c = p.change;
  switch (c.kind) {
    case 'none':
      break;
    case 'all':
      for (let i = 0; i < words; i++) flip(i);
      break;
    case 'sparse':
      for (const a of c.at) flip(a % words);
      break;
    case 'dense':
      for (let i = c.phase % c.everyNth; i < words; i += c.everyNth) flip(i);
      break;
    case 'runs':
      for (const r of c.runs) {
        const start = r.start % words;
        for (let i = start; i < Math.min(words, start + r.length); i++) flip(i);
      }
      break;
    case 'edges':
      if (c.first) flip(0);
      if (c.last) flip(words - 1);
      for (const m of c.middle) flip(m % words);
      break;
  }
  return { old, cur };
}

describe('wasm encodeDelta equals encodeRemusDelta', () => {
  it('on random pages: sparse, dense, run boundaries, edges, all and none changed (512..16384 bytes, and odd word counts)', () => {
    fc.assert(
      fc.property(pageArb, (p) => {
        const { old, cur } = buildPages(p);
        expectSameEncode(old, cur, p.shift);
      }),
      { numRuns: 4000 },
    );
  });

  it('on every run length around the 127-word split, at the first and the last word', () => {
    for (const pageSize of [512, 4096]) {
      const words = pageSize / 4;
      const old = new Uint32Array(words);
      fillRandom(old, pageSize);
      for (const length of [...RUN_LENGTHS, words - 1, words]) {
        for (const start of [0, 1, 3, 4, 5, words - length, words - length - 1]) {
          if (start < 0 || start + length > words) continue;
          const cur = old.slice();
          for (let i = start; i < start + length; i++) cur[i] = ~old[i] >>> 0;
          expectSameEncode(old, cur);
        }
      }
      // Alternating changed/unchanged words: the shortest runs of both kinds.
      for (const phase of [0, 1]) {
        const cur = old.slice();
        for (let i = phase; i < words; i += 2) cur[i] ^= 1;
        expectSameEncode(old, cur);
      }
      // One change per 16-byte vector lane and per 64-byte block position.
      for (let i = 0; i < 32; i++) {
        const cur = old.slice();
        cur[i] ^= 0x10000;
        cur[words - 1 - i] ^= 0x10000;
        expectSameEncode(old, cur);
      }
    }
  });

  it('encodeDeltaOrZero: the same, and 0 exactly for an all-zero page (unchanged, changed to zero, or whose changed words are zero)', () => {
    const zeroArb = fc.constantFrom('as built' as const, 'all zero' as const, 'changed words zeroed' as const, 'one word left' as const);
    fc.assert(
      fc.property(pageArb, zeroArb, fc.nat(), (p, how, at) => {
        const { old, cur } = buildPages(p);
        if (how === 'all zero') cur.fill(0);
        // The changed words become zero, the unchanged stay as cached: zero only where the cached copy was.
        if (how === 'changed words zeroed') for (let i = 0; i < cur.length; i++) if (cur[i] !== old[i]) cur[i] = 0;
        // Every word zero but one, changed or not: the kernel must look past the changed words.
        if (how === 'one word left') {
          const keep = at % cur.length;
          for (let i = 0; i < cur.length; i++) if (i !== keep) cur[i] = 0;
        }
        expectSameEncode(old, cur, p.shift, true);
      }),
      { numRuns: 3000 },
    );
  });

  it('emits EMPTY for an identical page and leaves the cache as it was', () => {
    const old = new Uint32Array(1024);
    fillRandom(old, 7);
    const rec = expectSameEncode(old, old.slice());
    expect(Array.from(rec)).toEqual([0x00]);
  });
});

describe('wasm decodePage equals decodeRemusPage', () => {
  /** Decode `input` onto `old` with both; expect the same outcome: position and page, or the same CodecError. */
  function expectSameDecode(input: Uint8Array, inEnd: number, old: Uint8Array, pageSize: number, inShift = 0): void {
    const tsPage = old.slice();
    let tsPos = -1;
    let tsErr: unknown = null;
    try {
      tsPos = decodeRemusPage(input, 0, inEnd, tsPage, 0, pageSize);
    } catch (e) {
      tsErr = e;
    }
    mem.fill(SENTINEL, TARGET - GUARD, INPUT + MAX_PAGE * 2 + GUARD);
    const inOff = INPUT + inShift;
    mem.set(input, inOff);
    mem.set(old, TARGET);
    let wPos = -1;
    let wErr: unknown = null;
    try {
      wPos = k.decodePage(inOff, inOff + inEnd, TARGET, pageSize);
    } catch (e) {
      wErr = e;
    }
    if (tsErr === null) {
      expect(wErr).toBeNull();
      expect(wPos - inOff).toBe(tsPos);
    } else {
      expect(tsErr).toBeInstanceOf(CodecError);
      expect(wErr).toBeInstanceOf(CodecError);
      const t = tsErr as CodecError;
      const w = wErr as CodecError;
      expect(w.code).toBe(t.code);
      expect(w.offset - inOff).toBe(t.offset);
      expect(w.message.replace(/ \(at byte \d+\)$/, '')).toBe(t.message.replace(/ \(at byte \d+\)$/, ''));
    }
    // Same page after, success or not (runs before a bad one are applied by both).
    expectBytes(mem.subarray(TARGET, TARGET + pageSize), tsPage, 'decoded page');
    expectGuard(TARGET - GUARD, TARGET, 'bytes before the page');
    expectGuard(TARGET + pageSize, TARGET + pageSize + GUARD, 'bytes after the page');
  }

  it('on valid records (runs, EMPTY, FULL), with input after the record', () => {
    fc.assert(
      fc.property(pageArb, fc.boolean(), fc.uint8Array({ maxLength: 16 }), fc.nat(3), (p, full, trailer, inShift) => {
        const { old, cur } = buildPages(p);
        const rec = new Uint8Array(remusMaxEncodedBytes(p.pageSize) + trailer.length);
        const end = full
          ? encodeRemusFull(u8(cur), 0, p.pageSize, rec, 0)
          : encodeRemusDelta(cur, 0, old.slice(), 0, cur.length, rec, 0);
        rec.set(trailer, end);
        expectSameDecode(rec, end + trailer.length, u8(old), p.pageSize, inShift);
        // The page decodes to the new page.
        expectBytes(mem.subarray(TARGET, TARGET + p.pageSize), u8(cur), 'decoded page equals the new page');
      }),
      { numRuns: 600 },
    );
  });

  it('on truncated and corrupted records: same error code, offset and message', () => {
    const corruption = fc.record({
      cut: fc.option(fc.nat(), { nil: undefined }),
      edits: fc.array(fc.record({ at: fc.nat(), value: fc.oneof(fc.constantFrom(0x00, 0x80, 0x7f, 0xff, 0x01), fc.nat(255)) }), { maxLength: 3 }),
    });
    fc.assert(
      fc.property(pageArb, fc.boolean(), corruption, (p, full, c) => {
        const { old, cur } = buildPages(p);
        const rec = new Uint8Array(remusMaxEncodedBytes(p.pageSize));
        let end = full
          ? encodeRemusFull(u8(cur), 0, p.pageSize, rec, 0)
          : encodeRemusDelta(cur, 0, old.slice(), 0, cur.length, rec, 0);
        for (const e of c.edits) rec[e.at % end] = e.value;
        if (c.cut !== undefined) end = c.cut % (end + 1);
        expectSameDecode(rec, end, u8(old), p.pageSize);
      }),
      { numRuns: 1500 },
    );
  });

  it('on random bytes', () => {
    fc.assert(
      fc.property(fc.constantFrom(512, 1024, 4096), fc.uint8Array({ maxLength: 700 }), fc.integer(), (pageSize, input, seed) => {
        const old = new Uint32Array(pageSize / 4);
        fillRandom(old, seed);
        expectSameDecode(input, input.length, u8(old), pageSize);
      }),
      { numRuns: 1000 },
    );
  });

  it('maps each error to its CodecError code', () => {
    const page = new Uint8Array(512);
    const cases: [number[], string][] = [
      [[], 'REMUS_TRUNCATED'],
      [[0x80, 1, 2], 'REMUS_TRUNCATED'],
      [[0x81], 'REMUS_TRUNCATED'],
      [[0x01, 1, 2], 'REMUS_TRUNCATED'],
      [[0x81, 0x00], 'REMUS_ZERO_RUN'],
      [[0xff, 0x82], 'REMUS_RUN_PAST_END'],
    ];
    for (const [bytes, code] of cases) {
      mem.set(bytes, INPUT);
      expect(() => k.decodePage(INPUT, INPUT + bytes.length, TARGET, 512)).toThrow(CodecError);
      try {
        k.decodePage(INPUT, INPUT + bytes.length, TARGET, 512);
      } catch (e) {
        expect((e as CodecError).code).toBe(code);
      }
      expectSameDecode(Uint8Array.from(bytes), bytes.length, page, 512);
    }
  });
});

describe('wasm helpers', () => {
  it('isZeroPage equals the TypeScript check, whichever byte is non-zero', () => {
    for (const pageSize of [512, 4096]) {
      mem.fill(0, CUR, CUR + pageSize);
      const words = new Uint32Array(pageSize / 4);
      expect(k.isZeroPage(CUR, pageSize)).toBe(true);
      for (let b = 0; b < pageSize; b += 1 + (b % 7)) {
        mem[CUR + b] = 1 << (b % 8);
        words[b >> 2] = 1;
        expect(k.isZeroPage(CUR, pageSize)).toBe(isZeroPage(words, 0, words.length));
        expect(k.isZeroPage(CUR + 1, pageSize)).toBe(false);
        mem[CUR + b] = 0;
        words[b >> 2] = 0;
      }
    }
  });

  it('encodeFull equals encodeRemusFull; copy and fill stay inside their ranges', () => {
    const page = new Uint32Array(1024);
    fillRandom(page, 99);
    const want = new Uint8Array(4097);
    encodeRemusFull(u8(page), 0, 4096, want, 0);
    mem.fill(SENTINEL, OUT - GUARD, OUT + 4097 + GUARD);
    mem.set(u8(page), CUR);
    expect(k.encodeFull(CUR, 4096, OUT + 1)).toBe(OUT + 1 + 4097);
    expectBytes(mem.subarray(OUT + 1, OUT + 1 + 4097), want, 'FULL record');
    mem.fill(SENTINEL, TARGET - GUARD, TARGET + 4096 + GUARD);
    k.copy(TARGET, CUR, 4096);
    expectBytes(mem.subarray(TARGET, TARGET + 4096), u8(page), 'copied page');
    k.fill(TARGET, 0, 4096);
    expect(k.isZeroPage(TARGET, 4096)).toBe(true);
    expectGuard(TARGET - GUARD, TARGET, 'before');
    expectGuard(TARGET + 4096, TARGET + 4096 + GUARD, 'after');
  });

  it('encodeFullOrZero: the FULL record and the page in its cache slot, in one pass; 0 exactly for an all-zero page', () => {
    for (const pageSize of [4, 12, 512, 4096, 4100]) {
      const page = new Uint32Array(pageSize / 4);
      const want = new Uint8Array(pageSize + 1);
      // All zero, then one non-zero byte at a time (every lane of a vector, the word tail), then random.
      const cases: Uint32Array[] = [page.slice()];
      for (let b = 0; b < pageSize; b += 1 + (b % 13)) {
        const one = page.slice();
        new Uint8Array(one.buffer)[b] = 1 << (b % 8);
        cases.push(one);
      }
      const random = page.slice();
      fillRandom(random, pageSize);
      cases.push(random);
      for (const cur of cases) {
        mem.fill(SENTINEL, CUR - GUARD, INPUT);
        mem.set(u8(cur), CUR);
        const r = k.encodeFullOrZero(CUR, pageSize, OUT + 1, TARGET);
        expectBytes(mem.subarray(TARGET, TARGET + pageSize), u8(cur), 'cache slot');
        expectGuard(TARGET - GUARD, TARGET, 'before the cache slot');
        expectGuard(TARGET + pageSize, TARGET + pageSize + GUARD, 'after the cache slot');
        expectGuard(OUT + 2 + pageSize, OUT + 2 + pageSize + GUARD, 'after the record');
        if (isZeroPage(cur, 0, cur.length)) {
          expect(r).toBe(0);
          continue;
        }
        encodeRemusFull(u8(cur), 0, pageSize, want, 0);
        expect(r).toBe(OUT + 1 + pageSize + 1);
        expectBytes(mem.subarray(OUT + 1, r), want, 'FULL record');
      }
    }
  });

  it('checks its arguments: ranges outside the memory, bad page sizes, unshared memory', () => {
    const size = memory.buffer.byteLength;
    expect(() => k.encodeDelta(size - 100, 0, 4096, OUT)).toThrow(RangeError);
    expect(() => k.encodeDelta(CUR, CACHED, 4095, OUT)).toThrow(RangeError);
    expect(() => k.encodeDelta(CUR, CACHED, 4096, size - 4096)).toThrow(RangeError); // needs 4105 bytes of room
    expect(() => k.decodePage(INPUT, size + 1, TARGET, 4096)).toThrow(RangeError);
    expect(() => k.decodePage(-1, INPUT, TARGET, 4096)).toThrow(RangeError);
    expect(() => k.decodePage(INPUT, INPUT + 1, size - 10, 4096)).toThrow(RangeError);
    expect(() => k.isZeroPage(size - 10, 4096)).toThrow(RangeError);
    expect(() => k.encodeDeltaOrZero(CUR, CACHED, 4095, OUT)).toThrow(RangeError);
    expect(() => k.encodeDeltaOrZero(CUR, CACHED, 4096, size - 4096)).toThrow(RangeError);
    expect(() => k.encodeFullOrZero(CUR, 4096, size - 4096, TARGET)).toThrow(RangeError); // needs 4097 bytes of room
    expect(() => k.encodeFullOrZero(CUR, 4096, OUT, size - 100)).toThrow(RangeError);
    expect(() => instantiateRemusWasm(new (globalThis as unknown as { WebAssembly: { Memory: new (d: object) => KernelMemory } }).WebAssembly.Memory({ initial: 1 }))).toThrow(TypeError);
  });

  it('sees memory it has grown into', () => {
    const m = createKernelMemory(65536, 4 * 65536);
    const kk = instantiateRemusWasm(m);
    expect(() => kk.isZeroPage(65536, 4096)).toThrow(RangeError);
    m.grow(1);
    expect(kk.isZeroPage(65536, 4096)).toBe(true);
  });

  it('runs in another thread over the same memory', async () => {
    const m = createKernelMemory(1 << 16);
    const view = new Uint8Array(m.buffer);
    const old = new Uint32Array(1024);
    fillRandom(old, 5);
    const cur = old.slice();
    cur[10] ^= 1;
    cur[1000] ^= 2;
    view.set(u8(cur), 0);
    view.set(u8(old), 4096);
    const wasmModule = pathToFileURL(join(packageRoot(), 'dist', 'src', 'codec', 'remus-wasm.js')).href;
    const worker = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       import(workerData.url).then(({ instantiateRemusWasm }) => {
         const k = instantiateRemusWasm(workerData.memory);
         parentPort.postMessage(k.encodeDelta(0, 4096, 4096, 8192));
       });`,
      { eval: true, workerData: { url: wasmModule, memory: m } },
    );
    const end = await new Promise<number>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    const cachedTs = old.slice();
    const want = new Uint8Array(remusMaxEncodedBytes(4096));
    const wantEnd = encodeRemusDelta(cur, 0, cachedTs, 0, 1024, want, 0);
    expect(end - 8192).toBe(wantEnd);
    expectBytes(view.subarray(8192, end), want.subarray(0, wantEnd), 'record made in the worker');
    expectBytes(view.subarray(4096, 8192), u8(cur), 'cache page updated by the worker');
  });
});

/**
 * XBZRLE: the record body (and QEMU's raw encode with any limit) from both
 * encoders, compared over the whole region each may write (partial bytes of
 * an overflow included), and the old page never written.
 */
function expectSameXbzrle(old: Uint8Array, cur: Uint8Array, limit: number | null, shift = { cur: 0, cached: 0, out: 0 }): Uint8Array {
  const pageSize = cur.length;
  const room = limit === null ? xbzrleMaxEncodedBytes(pageSize) : limit;
  const out = new Uint8Array(room).fill(SENTINEL);
  const end = limit === null
    ? encodeXbzrleBody(cur, 0, old, 0, pageSize, out, 0)
    : xbzrleEncode(cur, 0, old, 0, pageSize, out, 0, limit);

  const c = CUR + shift.cur;
  const o = CACHED + shift.cached;
  const w = OUT + shift.out;
  mem.fill(SENTINEL, CUR - GUARD, INPUT);
  mem.set(cur, c);
  mem.set(old, o);
  const wend = limit === null ? k.encodeXbzrleBody(c, o, pageSize, w) : k.xbzrleEncode(c, o, pageSize, w, limit);
  if (end < 0) expect(wend).toBe(-1);
  else expect(wend - w).toBe(end);
  // Everything in the writable region, the bytes after the end included (both leave the same there).
  expectBytes(mem.subarray(w, w + room), out, `XBZRLE ${limit === null ? 'body' : `encode, limit ${limit}`} (${pageSize}-byte page)`);
  expectGuard(w - GUARD, w, 'bytes before the output');
  expectGuard(w + room, w + room + GUARD, 'bytes after the output room');
  expectBytes(mem.subarray(o, o + pageSize), old, 'old page (must not be written)');
  expectBytes(mem.subarray(c, c + pageSize), cur, 'current page (must not be written)');
  return out.subarray(0, Math.max(end, 0));
}

describe('wasm XBZRLE encoder equals encodeXbzrleBody and xbzrleEncode', () => {
  type ByteEdit = { at: number; length: number; value: number | null };
  const edits = fc.array(
    fc.record({
      at: fc.nat(),
      length: fc.oneof(fc.constantFrom(1, 2, 3, 15, 16, 17, 63, 64, 65, 127, 128, 129, 255, 256, 16383, 16384), fc.integer({ min: 1, max: 700 })),
      /** null: each byte gets old ^ 0xff (all changed); a value: set to it (some bytes may stay equal). */
      value: fc.option(fc.nat(255), { nil: null }),
    }),
    { maxLength: 16 },
  );
  const xbzrleCase = fc.record({
    pageSize: fc.oneof(fc.constantFrom(512, 1024, 2048, 4096, 8192, 16384), fc.integer({ min: 1, max: 600 })),
    seed: fc.integer(),
    oldZero: fc.boolean(),
    mode: fc.constantFrom('edits', 'edits', 'edits', 'all', 'none', 'every-nth'),
    nth: fc.integer({ min: 2, max: 9 }),
    edits,
    shift: fc.record({ cur: fc.constantFrom(0, 1, 4, 7), cached: fc.constantFrom(0, 3, 8), out: fc.constantFrom(0, 1, 2, 3) }),
    limitFraction: fc.double({ min: 0, max: 1.05, noNaN: true }),
  });

  function build(p: typeof xbzrleCase extends fc.Arbitrary<infer T> ? T : never): { old: Uint8Array; cur: Uint8Array } {
    const old = new Uint8Array(p.pageSize);
    if (!p.oldZero) {
      const w = new Uint32Array(Math.ceil(p.pageSize / 4));
      fillRandom(w, p.seed);
      old.set(new Uint8Array(w.buffer).subarray(0, p.pageSize));
    }
    const cur = old.slice();
    if (p.mode === 'all') for (let i = 0; i < cur.length; i++) cur[i] = old[i] ^ 0xff;
    if (p.mode === 'every-nth') for (let i = 0; i < cur.length; i += p.nth) cur[i] = old[i] ^ 0x01;
    if (p.mode === 'edits') {
      for (const e of p.edits as ByteEdit[]) {
        const at = e.at % cur.length;
        for (let i = at; i < Math.min(cur.length, at + e.length); i++) cur[i] = e.value === null ? old[i] ^ 0xff : e.value;
      }
    }
    return { old, cur };
  }

  it('record bodies, on random pages (512..16384 bytes and odd sizes): UNCHANGED, DELTA, overflow to FULL', () => {
    const kinds = new Set<number>();
    fc.assert(
      fc.property(xbzrleCase, (p) => {
        const { old, cur } = build(p);
        const body = expectSameXbzrle(old, cur, null, p.shift);
        kinds.add(body[0]);
      }),
      { numRuns: 3000 },
    );
    expect([...kinds].sort((a, b) => a - b)).toEqual([0x00, 0x01, 0x80]);
  });

  it("QEMU's encode with any output limit: the same bytes, the same -1 on overflow, nothing past the limit", () => {
    fc.assert(
      fc.property(xbzrleCase, (p) => {
        const { old, cur } = build(p);
        const limit = Math.floor(p.limitFraction * p.pageSize);
        expectSameXbzrle(old, cur, limit, p.shift);
      }),
      { numRuns: 3000 },
    );
  });

  it('at the delta limit: deltas one byte under, at and over xbzrleDeltaLimit', () => {
    for (const pageSize of [512, 4096]) {
      const old = new Uint8Array(pageSize);
      const limit = xbzrleDeltaLimit(pageSize);
      // Every other byte changed costs 3 bytes per 2 page bytes: walk the
      // number of changed bytes across the limit.
      for (let changed = Math.floor(limit / 3) - 4; changed <= Math.floor(limit / 3) + 4; changed++) {
        const cur = old.slice();
        for (let i = 0; i < changed; i++) cur[2 * i] = 1;
        expectSameXbzrle(old, cur, null);
        expectSameXbzrle(old, cur, limit);
      }
    }
  });
});

const TRACE = join(packageRoot(), '..', 'shared', 'traces', 'python-small.rmtr');
const hasTrace = existsSync(TRACE);

describe("the kernel bench's wasm paths (bench/kernel.ts ours-wasm, xbzrle-wasm)", () => {
  // measureKernel throws when a wasm path's records differ from its
  // TypeScript twin's (ours, xbzrle), epoch by epoch, and checks every
  // decoded page; a 24-page cache for 96 pages makes both evict.
  it("send the worker loop's records byte for byte, with evictions, zero and raw pages", () => {
    const bytes = generateTrace({ seed: 5, epochs: 6, pages: 96, profile: 'mixed', dirtyFraction: 0.5 });
    const r = measureKernel(prepareTrace('tiny', bytes), { passes: 1, cacheBytes: 24 * 4096, codecs: ['ours', 'ours-wasm', 'xbzrle', 'xbzrle-wasm'] });
    const by = new Map(r.codecs.map((c) => [c.codec, c]));
    expect(by.get('ours-wasm')!.dirty.bytesOut).toBe(by.get('ours')!.dirty.bytesOut);
    expect(by.get('xbzrle-wasm')!.dirty.bytesOut).toBe(by.get('xbzrle')!.dirty.bytesOut);
    for (const [ts, wasm] of [['ours', 'ours-wasm'], ['xbzrle', 'xbzrle-wasm']] as const) {
      for (const phase of ['epoch0', 'dirty'] as const) {
        // Every counter but the time spent.
        expect({ ...by.get(wasm)!.counters![phase], busyNs: 0 }).toEqual({ ...by.get(ts)!.counters![phase], busyNs: 0 });
      }
    }
    const c = by.get('ours')!.counters!.dirty;
    expect(c.cacheMisses).toBeGreaterThan(0);
    expect(c.zeroPages + c.rawPages).toBeGreaterThan(0);
  });

  it.skipIf(!hasTrace)(`on the real trace (${hasTrace ? 'python-small.rmtr' : `skipped: ${TRACE} not found`})`, () => {
    const r = measureKernel(prepareTrace('python', readFileSync(TRACE)), { passes: 1, codecs: ['ours', 'ours-wasm', 'xbzrle', 'xbzrle-wasm'] });
    expect(r.codecs.map((c) => c.roundTripChecked)).toEqual([true, true, true, true]);
  });
});

describe.skipIf(!hasTrace)(`real pages (${hasTrace ? TRACE : `skipped: ${TRACE} not found`})`, () => {
  it('encodes (remus and XBZRLE) and decodes (remus) every page of every epoch as the TypeScript codecs do', () => {
    const { pageSize, epochs } = parseTrace(readFileSync(TRACE));
    const words = pageSize / 4;
    /** Last version of each pfn (zeros before its first appearance), as the cache would hold it. */
    const last = new Map<number, Uint32Array>();
    let deltas = 0;
    let empty = 0;
    for (const e of epochs) {
      for (let i = 0; i < e.count; i++) {
        // A copy (the trace's arrays are Buffers, whose slice() is a view).
        const bytes = new Uint8Array(e.pages.subarray(i * pageSize, (i + 1) * pageSize));
        const cur = new Uint32Array(bytes.buffer);
        const old = last.get(e.pfns[i]) ?? new Uint32Array(words);
        const rec = expectSameEncode(old, cur);
        expectSameXbzrle(u8(old), bytes, null);
        if (rec.length === 1) empty++;
        else deltas++;
        // And back: the record onto the old page gives the page.
        mem.set(rec, INPUT);
        mem.set(u8(old), TARGET);
        expect(k.decodePage(INPUT, INPUT + rec.length, TARGET, pageSize)).toBe(INPUT + rec.length);
        expectBytes(mem.subarray(TARGET, TARGET + pageSize), bytes, `pfn ${e.pfns[i]} of epoch ${e.epoch} decoded`);
        last.set(e.pfns[i], cur);
      }
    }
    expect(deltas).toBeGreaterThan(1000);
    expect(empty + deltas).toBe(epochs.reduce((s, e) => s + e.count, 0));
  });
});
