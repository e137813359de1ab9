import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createKernelMemory, instantiateRemusWasm } from '../src/codec/remus-wasm.js';
import { XBZRLE_DELTA, XBZRLE_FULL, XBZRLE_UNCHANGED, decodeXbzrleBody, encodeXbzrleBody, xbzrleMaxEncodedBytes } from '../src/codec/xbzrle.js';
import { CodecError, FrameError } from '../src/errors.js';
import { encodeAbortFrame } from '../src/frames.js';
import { PageArena } from '../src/page-arena.js';
import { PfnTable } from '../src/pfn-table.js';
import { FileImage, MAX_RECEIVER_EPOCH_BYTES, MemoryImage, Receiver, type ImageStore, type ReceiverKernel } from '../src/receiver.js';
import { runReceive } from '../src/receive-cli.js';
import { CODEC_REMUS, CODEC_REMUS_ZSTD, CODEC_XBZRLE, FLAG_RESYNC, FRAME_HEADER_BYTES, RECORD_XBZRLE, RECORD_ZERO, pageShiftOf } from '../src/wire.js';
import {
  Prng,
  SenderModel,
  chunkedEpochFrames,
  epochFrames,
  expectImage,
  receiverSnapshot,
  refusal,
  reseal,
  type RecordSpec,
} from './receiver-frames.js';

/**
 * The receiver's wasm paths against its portable TypeScript ones: the wasm
 * XBZRLE decoder (assembly/xbzrle.ts) against decodeXbzrleBody, receivers
 * with kernel 'wasm' and 'js' over random frame sequences with refused
 * frames, the memory bound (FRAME_MEMORY_FULL: staging, scratch and frame
 * copy in the arena; a memory image's pages outside it), and the pfn table. The .wasm
 * comes from `npm run build` (run by pretest).
 */

// ------------------------------------------------------------------ pfn table

describe('PfnTable', () => {
  const pfnArb = fc.oneof(
    fc.nat({ max: 300 }),
    fc.integer({ min: 0, max: 2 ** 48 - 1 }),
    fc.nat({ max: 40 }).map((k) => 2 ** 32 * k + 7),
  );
  const op = fc.oneof(
    fc.record({ op: fc.constant('set' as const), pfn: pfnArb, value: fc.nat({ max: 2 ** 31 - 1 }) }),
    fc.record({ op: fc.constant('delete' as const), pfn: pfnArb }),
    fc.record({ op: fc.constant('clear' as const) }),
  );

  it('behaves as a Map over random sets, deletes and clears (pfns up to 2^48, colliding low words)', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 400 }), (ops) => {
        const table = new PfnTable();
        const model = new Map<number, number>();
        for (const o of ops) {
          if (o.op === 'set') {
            table.set(o.pfn, o.value);
            model.set(o.pfn, o.value);
          } else if (o.op === 'delete') {
            expect(table.delete(o.pfn)).toBe(model.delete(o.pfn));
          } else {
            table.clear();
            model.clear();
          }
          expect(table.size).toBe(model.size);
        }
        for (const [pfn, value] of model) expect(table.get(pfn)).toBe(value);
        for (const o of ops) if (o.op !== 'clear' && !model.has(o.pfn)) expect(table.get(o.pfn)).toBe(-1);
        expect(table.pfns().sort((a, b) => a - b)).toEqual([...model.keys()].sort((a, b) => a - b));
      }),
      { numRuns: 300 },
    );
  });
});

// ------------------------------------------------- wasm XBZRLE decoder vs TS

const SENTINEL = 0xa5;
const GUARD = 64;
const MAX_PAGE = 65536;
const memory = createKernelMemory(1 << 20, 1 << 20);
const kernel = instantiateRemusWasm(memory);
const mem = new Uint8Array(memory.buffer);
/** Page (with guards) at PAGE_AT, input at INPUT_AT. */
const PAGE_AT = GUARD;
const INPUT_AT = PAGE_AT + MAX_PAGE + 2 * GUARD;

const randomPages = new Map<string, Uint8Array>();

/** Deterministic page contents (a few per size, made once: 64 KiB pages are slow to fill byte by byte). */
function pseudoRandom(n: number, seed: number): Uint8Array {
  const key = `${n}/${seed % 8}`;
  let page = randomPages.get(key);
  if (page === undefined) {
    const rng = new Prng(seed % 8 + 1);
    page = new Uint8Array(n);
    for (let i = 0; i < n; i++) page[i] = rng.next();
    randomPages.set(key, page);
  }
  return page;
}

type Outcome = { pos: number } | { code: string; message: string; offset: number };

/** decodeXbzrleBody on `input` from `start` to its end onto `old`, with the TypeScript decoder and with the kernel: the outcome and the page after. */
function decodeBoth(input: Uint8Array, start: number, old: Uint8Array): { ts: Outcome; wasm: Outcome; tsPage: Uint8Array; wasmPage: Uint8Array } {
  const pageSize = old.length;
  const tsBuf = new Uint8Array(pageSize + 2 * GUARD).fill(SENTINEL);
  tsBuf.set(old, GUARD);
  let ts: Outcome;
  try {
    ts = { pos: decodeXbzrleBody(input, start, input.length, tsBuf, GUARD, pageSize) };
  } catch (err) {
    if (!(err instanceof CodecError)) throw err;
    ts = { code: err.code, message: err.message, offset: err.offset };
  }
  mem.fill(SENTINEL, 0, PAGE_AT + pageSize + GUARD);
  mem.set(old, PAGE_AT);
  mem.fill(SENTINEL, INPUT_AT + input.length, INPUT_AT + input.length + GUARD);
  mem.set(input, INPUT_AT);
  let wasm: Outcome;
  try {
    wasm = { pos: kernel.decodeXbzrleBody(INPUT_AT + start, INPUT_AT + input.length, PAGE_AT, pageSize, INPUT_AT) - INPUT_AT };
  } catch (err) {
    if (!(err instanceof CodecError)) throw err;
    wasm = { code: err.code, message: err.message, offset: err.offset };
  }
  let guardsIntact = true;
  for (let i = 0; i < GUARD; i++) {
    guardsIntact &&= tsBuf[i] === SENTINEL && tsBuf[GUARD + pageSize + i] === SENTINEL;
    guardsIntact &&= mem[PAGE_AT - GUARD + i] === SENTINEL && mem[PAGE_AT + pageSize + i] === SENTINEL && mem[INPUT_AT + input.length + i] === SENTINEL;
  }
  expect(guardsIntact, 'nothing written outside the page, nor into the input').toBe(true);
  return { ts, wasm, tsPage: tsBuf.slice(GUARD, GUARD + pageSize), wasmPage: mem.slice(PAGE_AT, PAGE_AT + pageSize) };
}

function expectSame(input: Uint8Array, start: number, old: Uint8Array): Outcome {
  const r = decodeBoth(input, start, old);
  expect(r.wasm).toEqual(r.ts);
  expect(Buffer.from(r.wasmPage).equals(Buffer.from(r.tsPage)), 'same page after the decode (runs before a bad one applied alike)').toBe(true);
  return r.ts;
}

/** A page changed in `runs` places (short runs, some long), from `old`. */
function changed(old: Uint8Array, seed: number, runs: number, maxRun: number): Uint8Array {
  const rng = new Prng(seed);
  const cur = Uint8Array.from(old);
  for (let r = 0; r < runs; r++) {
    const at = rng.below(old.length);
    const len = 1 + rng.below(maxRun);
    for (let i = at; i < Math.min(old.length, at + len); i++) cur[i] = old[i] ^ (1 + rng.below(255));
  }
  return cur;
}

function validBody(old: Uint8Array, cur: Uint8Array): Uint8Array {
  const out = new Uint8Array(xbzrleMaxEncodedBytes(old.length));
  const end = encodeXbzrleBody(cur, 0, old, 0, old.length, out, 0);
  return out.slice(0, end);
}

const pageSizeArb = fc.constantFrom(512, 1024, 4096, 16384, 65536, 1, 3, 100, 4095);

describe('wasm XBZRLE decoder equals decodeXbzrleBody', () => {
  it('on valid bodies (UNCHANGED, DELTA, FULL), with bytes before and after the body', () => {
    const kinds = new Set<number>();
    fc.assert(
      fc.property(pageSizeArb, fc.nat(), fc.nat({ max: 40 }), fc.integer({ min: 1, max: 600 }), fc.nat({ max: 9 }), fc.nat({ max: 9 }), (ps, seed, runs, maxRun, before, after) => {
        const old = pseudoRandom(ps, seed);
        const cur = changed(old, seed + 1, runs, maxRun);
        const body = validBody(old, cur);
        kinds.add(body[0]);
        const input = new Uint8Array(before + body.length + after).fill(0x55);
        input.set(body, before);
        const r = decodeBoth(input, before, old);
        expect(r.wasm).toEqual({ pos: before + body.length });
        expect(r.ts).toEqual(r.wasm);
        expect(Buffer.from(r.wasmPage).equals(Buffer.from(cur))).toBe(true);
        expect(Buffer.from(r.tsPage).equals(Buffer.from(cur))).toBe(true);
      }),
      { numRuns: 400 },
    );
    expect([...kinds].sort((a, b) => a - b)).toEqual([XBZRLE_UNCHANGED, XBZRLE_DELTA, XBZRLE_FULL]);
  });

  it('on corrupted bodies: same code, message and offset, same bytes written', () => {
    const codes = new Set<string>();
    fc.assert(
      fc.property(
        pageSizeArb,
        fc.nat(),
        fc.nat({ max: 30 }),
        fc.array(fc.record({ at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) }), { maxLength: 4 }),
        fc.option(fc.nat(), { nil: undefined }),
        fc.option(fc.record({ at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 6 }) }), { nil: undefined }),
        (ps, seed, runs, flips, cut, insert) => {
          const old = pseudoRandom(ps, seed);
          let body = validBody(old, changed(old, seed + 1, runs, 40));
          for (const f of flips) body[f.at % body.length] ^= f.xor;
          if (insert !== undefined) {
            const at = insert.at % (body.length + 1);
            body = Uint8Array.from([...body.subarray(0, at), ...insert.bytes, ...body.subarray(at)]);
          }
          if (cut !== undefined) body = body.slice(0, cut % (body.length + 1));
          const outcome = expectSame(body, 0, old);
          if ('code' in outcome) codes.add(outcome.code);
        },
      ),
      { numRuns: 1500 },
    );
    expect(codes).toContain('XBZRLE_TRUNCATED');
    expect(codes).toContain('XBZRLE_BAD_LENGTH');
    expect(codes).toContain('XBZRLE_BAD_KIND');
  });

  it('on random bytes after each kind byte (lengths over the page, too long, zero runs, past the end)', () => {
    const codes = new Set<string>();
    fc.assert(
      fc.property(pageSizeArb, fc.nat(), fc.constantFrom(0x00, 0x01, 0x80, 0x02, 0xff), fc.uint8Array({ maxLength: 40 }), (ps, seed, kind, rest) => {
        const old = pseudoRandom(ps, seed);
        const outcome = expectSame(Uint8Array.of(kind, ...rest), 0, old);
        if ('code' in outcome) codes.add(outcome.code);
      }),
      { numRuns: 1500 },
    );
    for (const code of ['XBZRLE_TRUNCATED', 'XBZRLE_BAD_LENGTH', 'XBZRLE_BAD_KIND']) expect(codes).toContain(code);
  });

  it('hand-picked refusals: every check, in the order the TypeScript decoder makes them', () => {
    const ps = 4096;
    const old = pseudoRandom(ps, 3);
    const cases: Array<[string, number[]]> = [
      ['empty input', []],
      ['FULL cut short', [0x80, 1, 2, 3]],
      ['bad kind', [0x7e]],
      ['delta length cut', [0x01, 0x80]],
      ['delta length of 3 bytes', [0x01, 0x80, 0x80, 0x01]],
      ['delta length 0', [0x01, 0x00]],
      ['delta length over the page', [0x01, 0x81, 0x40]],
      ['delta cut short', [0x01, 5, 0, 1]],
      ['zero-run length cut', [0x01, 1, 0x80]],
      ['zero-run length too long', [0x01, 3, 0x80, 0x80, 0x01]],
      ['zero run over the page', [0x01, 2, 0x81, 0x40]],
      ['zero run after the first empty', [0x01, 5, 0, 1, 9, 0, 1]],
      ['zero run past the end', [0x01, 6, 0xff, 0x1f, 2, 1, 2, 3]],
      ['nothing after a zero run', [0x01, 1, 4]],
      ['non-zero length cut', [0x01, 2, 4, 0x80]],
      ['non-zero run over the page', [0x01, 3, 0, 0x81, 0x40]],
      ['empty non-zero run', [0x01, 2, 4, 0]],
      ['non-zero run past the end', [0x01, 4, 0xfe, 0x1f, 4, 1]],
      ['non-zero run cut', [0x01, 4, 4, 3, 1, 2]],
      ['a good run, then a bad one', [0x01, 6, 4, 1, 9, 0, 0, 0]],
    ];
    const codes = new Set<string>();
    for (const [name, bytes] of cases) {
      const outcome = expectSame(Uint8Array.from(bytes), 0, old);
      expect('code' in outcome, name).toBe(true);
      if ('code' in outcome) codes.add(outcome.code);
    }
    expect([...codes].sort()).toEqual(['XBZRLE_BAD_KIND', 'XBZRLE_BAD_LENGTH', 'XBZRLE_RUN_PAST_END', 'XBZRLE_TRUNCATED']);
  });
});

// ------------------------------------------------ receivers: wasm against js

const PAGE = 512;

function xbzrleRecords(model: SenderModel, changes: Array<[number, Uint8Array]>): RecordSpec[] {
  const ps = model.pageSize;
  const out = new Uint8Array(xbzrleMaxEncodedBytes(ps));
  return changes.map(([pfn, page]) => {
    const copy = Uint8Array.from(page);
    if (copy.every((b) => b === 0)) return { pfn, type: RECORD_ZERO, body: new Uint8Array(0), page: copy };
    const held = model.pages.get(pfn);
    let n: number;
    if (held === undefined) {
      out[0] = XBZRLE_FULL;
      out.set(copy, 1);
      n = 1 + ps;
    } else {
      n = encodeXbzrleBody(copy, 0, held, 0, ps, out, 0);
    }
    return { pfn, type: RECORD_XBZRLE, body: out.slice(0, n), page: copy };
  });
}

/** The changes of one epoch: touched, unchanged, zeroed and new pages, distinct pfns. */
function epochChanges(model: SenderModel, rng: Prng, count: number, resync: boolean): Array<[number, Uint8Array]> {
  const ps = model.pageSize;
  const held = [...model.pages.keys()];
  const picked = new Set<number>();
  const changes: Array<[number, Uint8Array]> = [];
  if (resync) {
    // A RESYNC epoch sends the whole image (some pages changed).
    for (const pfn of held) {
      const page = model.pages.get(pfn) as Uint8Array;
      changes.push([pfn, rng.below(3) === 0 ? rng.touch(page, 1 + rng.below(4)) : page]);
      picked.add(pfn);
    }
  }
  for (let i = 0; i < count; i++) {
    const kind = rng.below(8);
    let pfn: number;
    if (kind < 5 && held.length > 0 && !resync) {
      pfn = held[rng.below(held.length)];
      if (picked.has(pfn)) continue;
      const page = model.pages.get(pfn) as Uint8Array;
      const next = kind === 0 ? Uint8Array.from(page) : kind === 1 ? new Uint8Array(ps) : kind === 2 ? rng.page(ps) : rng.touch(page, 1 + rng.below(20));
      changes.push([pfn, next]);
    } else {
      pfn = rng.below(4) === 0 ? 2 ** 33 + rng.below(1000) : rng.below(5000);
      if (picked.has(pfn)) continue;
      changes.push([pfn, kind === 7 ? new Uint8Array(ps) : rng.page(ps)]);
    }
    picked.add(pfn);
  }
  return changes;
}

type Fault = 'none' | 'flip-sealed' | 'flip' | 'drop' | 'restart' | 'restart-bad' | 'abort' | 'cut' | 'repeat' | 'out-of-turn';
const FAULTS: Fault[] = ['none', 'none', 'flip-sealed', 'flip', 'drop', 'restart', 'restart-bad', 'abort', 'cut', 'repeat', 'out-of-turn'];

interface Step {
  codec: number;
  pages: number;
  perFrame: number;
  resync: boolean;
  fault: Fault;
  at: number;
  seed: number;
}

const stepArb: fc.Arbitrary<Step> = fc.record({
  codec: fc.constantFrom(CODEC_REMUS, CODEC_XBZRLE, CODEC_REMUS_ZSTD),
  pages: fc.nat({ max: 150 }),
  perFrame: fc.integer({ min: 1, max: 80 }),
  resync: fc.boolean(),
  fault: fc.constantFrom(...FAULTS),
  at: fc.nat(),
  seed: fc.nat(),
});

/** The frames of one epoch of `records` under `codec`, about `perFrame` records a frame (codec 3: partitioned chunks, frames in any order). */
function framesOf(records: RecordSpec[], codec: number, epoch: number, resync: boolean, perFrame: number, rng: Prng): Uint8Array[] {
  const options = { epoch, pageSize: PAGE, resync, recordsPerFrame: perFrame, codec };
  if (codec !== CODEC_REMUS_ZSTD) return epochFrames(records, options);
  // Partitions (index mod p) cut into chunks of up to `perFrame` pages, spread over frames in a shuffled order.
  const partitions = 1 + rng.below(4);
  const chunks: number[][] = [];
  for (let p = 0; p < partitions; p++) {
    const mine = records.map((_, i) => i).filter((i) => i % partitions === p);
    for (let k = 0; k < mine.length; k += perFrame) chunks.push(mine.slice(k, k + perFrame));
  }
  for (let i = chunks.length - 1; i > 0; i--) {
    const j = rng.below(i + 1);
    [chunks[i], chunks[j]] = [chunks[j], chunks[i]];
  }
  const frames = Math.max(1, Math.min(chunks.length, 1 + rng.below(4)));
  const layout: number[][][] = Array.from({ length: frames }, () => []);
  chunks.forEach((c, i) => layout[i % frames].push(c));
  return chunkedEpochFrames(records, layout, options);
}

function flipped(frame: Uint8Array, at: number, seal: boolean): Uint8Array {
  const copy = Uint8Array.from(frame);
  // Resealed flips stay clear of payloadLength (bytes 20..23), which would only make a truncated frame.
  const pos = seal ? (at % 2 === 0 && copy.length > FRAME_HEADER_BYTES ? FRAME_HEADER_BYTES + (at % (copy.length - FRAME_HEADER_BYTES)) : at % 20) : at % copy.length;
  copy[pos] ^= 1 + (at % 255);
  return seal ? reseal(copy) : copy;
}

/** The frames a step sends, fault included. */
function faulted(frames: Uint8Array[], step: Step, epoch: number, codec: number, resync: boolean): Uint8Array[] {
  const k = step.at % frames.length;
  const abort = (): Uint8Array =>
    encodeAbortFrame(epoch, k, pageShiftOf(PAGE), resync ? FLAG_RESYNC : 0, 'WORKER_DIED', 'a worker died', codec);
  switch (step.fault) {
    case 'none':
      return frames;
    case 'flip-sealed':
      return frames.map((f, i) => (i === k ? flipped(f, step.seed, true) : f));
    case 'flip':
      return frames.map((f, i) => (i === k ? flipped(f, step.seed, false) : f));
    case 'drop':
      return frames.filter((_, i) => i !== k);
    case 'restart':
      return [...frames.slice(0, k + 1), ...frames];
    case 'restart-bad':
      return [...frames.slice(0, k + 1), flipped(frames[0], step.seed, true), ...frames];
    case 'abort':
      return [...frames.slice(0, k), abort(), ...frames];
    case 'cut':
      return frames.map((f, i) => (i === k ? f.slice(0, FRAME_HEADER_BYTES + (step.seed % Math.max(1, f.length - FRAME_HEADER_BYTES))) : f));
    case 'repeat':
      return [...frames.slice(0, k + 1), frames[k], ...frames.slice(k + 1)];
    case 'out-of-turn':
      return frames.map((f) => {
        const copy = Uint8Array.from(f);
        new DataView(copy.buffer).setUint32(8, (epoch + 2) >>> 0, true);
        return reseal(copy);
      });
  }
}

type FrameOutcome = { result: unknown } | { name: string; code: string; message: string; status: number };

function apply(rx: Receiver, frame: Uint8Array): FrameOutcome {
  try {
    return { result: rx.applyFrame(frame) };
  } catch (err) {
    if (!(err instanceof FrameError)) throw err;
    return { name: err.name, code: err.code, message: err.message, status: err.statusCode };
  }
}

function state(rx: Receiver) {
  return { committed: rx.committedEpoch, staging: rx.stagingState, pages: rx.pageCount };
}

/** Run `steps` against a wasm and a js receiver over `image(kernel)`; every outcome and state must be the same, and the image the model's. */
function runBoth(steps: Step[], image: (k: ReceiverKernel) => ImageStore = () => new MemoryImage(PAGE)): { codes: Set<string>; commits: number } {
  const rxs = (['wasm', 'js'] as const).map((k) => new Receiver({ pageSize: PAGE, image: image(k), kernel: k }));
  const model = new SenderModel(PAGE);
  const codes = new Set<string>();
  let commits = 0;
  try {
    for (const step of steps) {
      const rng = new Prng(step.seed + 1);
      const resync = model.epoch < 0 || step.resync;
      const epoch = resync ? (model.epoch + 1 + (step.seed % 3)) >>> 0 : (model.epoch + 1) >>> 0;
      // A RESYNC epoch is encoded against nothing: every page FULL or ZERO.
      const encoder = resync ? new SenderModel(PAGE) : model;
      const changes = epochChanges(model, rng, step.pages, resync);
      const records = step.codec === CODEC_XBZRLE ? xbzrleRecords(encoder, changes) : encoder.records(changes);
      const frames = faulted(framesOf(records, step.codec, epoch, resync, step.perFrame, rng), step, epoch, step.codec, resync);
      let committed = false;
      for (const frame of frames) {
        const [w, j] = rxs.map((rx) => apply(rx, frame));
        expect(w).toEqual(j);
        if ('code' in w) codes.add(w.code);
        else if ((w.result as { committed: boolean }).committed) committed = (w.result as { epoch: number }).epoch === epoch;
        expect(state(rxs[0])).toEqual(state(rxs[1]));
      }
      if (committed) {
        commits++;
        model.commit(epoch, records, resync);
      }
      expect(rxs[0].committedEpoch).toBe(model.epoch < 0 ? null : model.epoch);
      const digest = rxs[0].imageDigest().toString('hex');
      expect(rxs[1].imageDigest().toString('hex')).toBe(digest);
      expect(digest).toBe(model.imageDigest().toString('hex'));
    }
    for (const rx of rxs) {
      if (model.epoch >= 0) expectImage(rx, model);
      else expect(rx.pageCount).toBe(0);
    }
  } finally {
    for (const rx of rxs) rx.close();
  }
  return { codes, commits };
}

describe('Receiver: kernel wasm and kernel js give the same results', () => {
  it('over random epochs of the three codecs, with refused, dropped, repeated, restarted and aborted frames', () => {
    const codes = new Set<string>();
    let commits = 0;
    fc.assert(
      fc.property(fc.array(stepArb, { minLength: 1, maxLength: 8 }), (steps) => {
        const r = runBoth(steps);
        for (const c of r.codes) codes.add(c);
        commits += r.commits;
      }),
      { numRuns: 120 },
    );
    expect(commits).toBeGreaterThan(100);
    for (const code of ['FRAME_BAD_CRC', 'FRAME_BAD_RECORD', 'FRAME_UNEXPECTED_SEQUENCE', 'FRAME_UNEXPECTED_EPOCH', 'FRAME_DIGEST_MISMATCH', 'FRAME_TRUNCATED']) {
      expect(codes).toContain(code);
    }
  });

  it('with file images too', () => {
    const dir = mkdtempSync(join(tmpdir(), 'rx-kernel-'));
    try {
      let n = 0;
      fc.assert(
        fc.property(fc.array(stepArb, { minLength: 1, maxLength: 5 }), (steps) => {
          n++;
          runBoth(steps, (k) => FileImage.open(join(dir, `${k}-${n}`), PAGE));
        }),
        { numRuns: 25 },
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ------------------------------------------------------------- memory bound

/** An arena that refuses to grow past `limit` bytes, as a full 4 GiB memory would. */
class TightArena extends PageArena {
  limit = Number.POSITIVE_INFINITY;

  override alloc(bytes: number): number {
    if (Math.ceil(this.allocated / 64) * 64 + bytes > this.limit) return -1;
    return super.alloc(bytes);
  }
}

/** `count` pages at pfns base, base + 1, ...: one in 50 random, the others zero (so that their frames stay small). */
function sparsePages(rng: Prng, ps: number, base: number, count: number): Array<[number, Uint8Array]> {
  const zero = new Uint8Array(ps);
  return Array.from({ length: count }, (_, i) => [base + i, i % 50 === 0 ? rng.page(ps) : zero]);
}

/** A memory image whose chunk allocations fail while `fail` is set, as a process out of memory would. */
class FailingImage extends MemoryImage {
  fail = false;

  protected override allocateChunk(bytes: number): Buffer {
    if (this.fail) throw new RangeError('Array buffer allocation failed');
    return super.allocateChunk(bytes);
  }
}

describe('Receiver: the memory bound', () => {
  for (const kernelChoice of ['wasm', 'js'] as const) {
    it(`refuses with FRAME_MEMORY_FULL when staging cannot grow, and changes nothing (${kernelChoice})`, () => {
      const ps = 4096;
      const arena = new TightArena();
      const rx = new Receiver({ pageSize: ps, image: new MemoryImage(ps, arena), kernel: kernelChoice });
      const model = new SenderModel(ps);
      const rng = new Prng(5);
      const r1 = model.records(Array.from({ length: 10 }, (_, i) => [i, rng.page(ps)] as [number, Uint8Array]));
      for (const f of epochFrames(r1, { epoch: 1, pageSize: ps, resync: true })) rx.applyFrame(f);
      model.commit(1, r1, true);
      // 300 records: past the first 1 MiB staging block (256 pages) with the second frame.
      const r2 = model.records(Array.from({ length: 300 }, (_, i) => [i, rng.page(ps)] as [number, Uint8Array]));
      const frames = epochFrames(r2, { epoch: 2, pageSize: ps, recordsPerFrame: 150 });
      rx.applyFrame(frames[0]);
      arena.limit = arena.allocated;
      const before = receiverSnapshot(rx);
      const err = refusal(rx, frames[1]);
      expect(err.code).toBe('FRAME_MEMORY_FULL');
      expect(err.statusCode).toBe(507);
      expect(err.message).toMatch(/epoch 2 frame 1: the receiver's memory cannot hold .* of its 4294967296 bytes \(wasm32\)/);
      expect(receiverSnapshot(rx)).toEqual(before);
      arena.limit = Number.POSITIVE_INFINITY;
      for (const f of frames.slice(1)) rx.applyFrame(f);
      model.commit(2, r2, false);
      expectImage(rx, model);
    });

    it(`refuses a LAST frame whose pages the process cannot allocate in the memory image, staging as before it (${kernelChoice})`, () => {
      // 64 KiB pages: 256 to an image chunk.
      const ps = 65536;
      const image = new FailingImage(ps);
      const rx = new Receiver({ pageSize: ps, image, kernel: kernelChoice });
      const model = new SenderModel(ps);
      const rng = new Prng(9);
      const r1 = model.records(sparsePages(rng, ps, 0, 250));
      for (const f of epochFrames(r1, { epoch: 1, pageSize: ps, resync: true, recordsPerFrame: 64 })) rx.applyFrame(f);
      model.commit(1, r1, true);
      // 20 new pfns: the image needs a second chunk.
      const r2 = model.records(Array.from({ length: 20 }, (_, i) => [1000 + i, rng.page(ps)] as [number, Uint8Array]));
      const frames = epochFrames(r2, { epoch: 2, pageSize: ps, recordsPerFrame: 10 });
      rx.applyFrame(frames[0]);
      image.fail = true;
      const before = receiverSnapshot(rx);
      const err = refusal(rx, frames[1]);
      expect(err.code).toBe('FRAME_MEMORY_FULL');
      expect(err.statusCode).toBe(507);
      expect(err.message).toMatch(/epoch 2 frame 1: the process cannot allocate room in the memory image for the epoch's 20 pages \(250 pages held in 16777216 bytes of chunks/);
      expect(receiverSnapshot(rx)).toEqual(before);
      // A restart of the epoch in one LAST frame over the staged frame 0: refused by its trial, the older staging kept.
      const [whole] = epochFrames(r2, { epoch: 2, pageSize: ps });
      expect(refusal(rx, whole).code).toBe('FRAME_MEMORY_FULL');
      expect(receiverSnapshot(rx)).toEqual(before);
      image.fail = false;
      rx.applyFrame(frames[1]);
      model.commit(2, r2, false);
      expectImage(rx, model);
    });

    it(`holds more memory image pages than its arena has room left for: only staging and scratch are in the arena (${kernelChoice})`, () => {
      // 64 KiB pages: 256 to a 16 MiB image chunk, 64 to a 4 MiB staging block.
      const ps = 65536;
      const arena = new TightArena();
      const image = new MemoryImage(ps, arena);
      const rx = new Receiver({ pageSize: ps, image, kernel: kernelChoice });
      const model = new SenderModel(ps);
      const rng = new Prng(11);
      const r1 = model.records(sparsePages(rng, ps, 0, 250));
      for (const f of epochFrames(r1, { epoch: 1, pageSize: ps, resync: true, recordsPerFrame: 64 })) rx.applyFrame(f);
      model.commit(1, r1, true);
      // Frame 0 of epoch 2 sizes the frame copy; from then on the arena has no room left at all.
      const r2 = model.records(Array.from({ length: 20 }, (_, i) => [1000 + i, rng.page(ps)] as [number, Uint8Array]));
      const frames2 = epochFrames(r2, { epoch: 2, pageSize: ps, recordsPerFrame: 10 });
      rx.applyFrame(frames2[0]);
      arena.limit = arena.allocated;
      const allocated = arena.allocated;
      // The LAST frame's 20 new pfns take the image to a second chunk, outside the arena.
      rx.applyFrame(frames2[1]);
      model.commit(2, r2, false);
      expectImage(rx, model);
      // Two more epochs of 250 new pfns each (mostly zero pages, so the frames fit the frame copy), the
      // second one restarted by a whole LAST frame over its staged frame 0: 770 pages, four chunks.
      const r3 = model.records(sparsePages(rng, ps, 2000, 250));
      for (const f of epochFrames(r3, { epoch: 3, pageSize: ps, recordsPerFrame: 64 })) rx.applyFrame(f);
      model.commit(3, r3, false);
      const r4 = model.records(sparsePages(rng, ps, 3000, 250));
      rx.applyFrame(epochFrames(r4, { epoch: 4, pageSize: ps, recordsPerFrame: 64 })[0]);
      const [whole] = epochFrames(r4, { epoch: 4, pageSize: ps });
      expect(rx.applyFrame(whole).committed).toBe(true);
      model.commit(4, r4, false);
      expectImage(rx, model);
      expect(image.size).toBe(770);
      expect(image.chunkBytes).toBe(4 * 16 * 2 ** 20);
      expect(arena.allocated).toBe(allocated);
      // Staging still cannot grow: a 300-page epoch needs a fifth staging block.
      const zero = new Uint8Array(ps);
      const r5 = model.records(Array.from({ length: 300 }, (_, i) => [i, zero] as [number, Uint8Array]));
      const before = receiverSnapshot(rx);
      expect(refusal(rx, epochFrames(r5, { epoch: 5, pageSize: ps })[0]).code).toBe('FRAME_MEMORY_FULL');
      expect(receiverSnapshot(rx)).toEqual(before);
    });
  }

  it('refuses with FRAME_MEMORY_FULL when the wasm kernel has no room for its frame copy', () => {
    const arena = new TightArena();
    const rx = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE, arena), kernel: 'wasm' });
    arena.limit = arena.allocated;
    const model = new SenderModel(PAGE);
    const r1 = model.records([[1, new Prng(1).page(PAGE)]]);
    const [f] = epochFrames(r1, { epoch: 1, pageSize: PAGE, resync: true });
    const before = receiverSnapshot(rx);
    expect(refusal(rx, f).code).toBe('FRAME_MEMORY_FULL');
    expect(receiverSnapshot(rx)).toEqual(before);
    arena.limit = Number.POSITIVE_INFINITY;
    rx.applyFrame(f);
    model.commit(1, r1, true);
    expectImage(rx, model);
  });

  it('takes maxEpochBytes up to MAX_RECEIVER_EPOCH_BYTES, and a valid kernel, else throws at construction', () => {
    expect(MAX_RECEIVER_EPOCH_BYTES).toBe(3 * 2 ** 30);
    expect(new Receiver({ pageSize: 4096, image: new MemoryImage(4096), maxEpochBytes: MAX_RECEIVER_EPOCH_BYTES }).committedEpoch).toBeNull();
    expect(() => new Receiver({ pageSize: 4096, image: new MemoryImage(4096), maxEpochBytes: MAX_RECEIVER_EPOCH_BYTES + 4096 })).toThrow(/wasm32 memory/);
    expect(() => new Receiver({ pageSize: 4096, image: new MemoryImage(4096), kernel: 'simd' as ReceiverKernel })).toThrow(RangeError);
  });

  it('receive: --max-epoch-bytes past the bound and an unknown --kernel are usage errors', async () => {
    let err = '';
    const io = { stdout: { write: () => true }, stderr: { write: (s: string) => ((err += s), true) } } as unknown as Parameters<typeof runReceive>[1];
    expect(await runReceive(['--image', '/nonexistent/x', '--max-epoch-bytes', String(MAX_RECEIVER_EPOCH_BYTES + 1)], io)).toBe(2);
    expect(err).toContain('--max-epoch-bytes must be in');
    err = '';
    expect(await runReceive(['--image', '/nonexistent/x', '--kernel', 'simd'], io)).toBe(2);
    expect(err).toContain("--kernel: 'simd' is not one of wasm, js");
  });
});
