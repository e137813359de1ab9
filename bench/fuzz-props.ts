/**
 * Fuzz properties shared by test/fuzz.test.ts (a few hundred runs in the
 * suite) and bench/fuzz.ts (as many as fit in --seconds):
 *
 * - the sender's epoch body reader (src/epoch-body.ts), fed random and
 *   mutated RMTR epoch records in random chunks, against an independent
 *   oracle (the trace parser): it accepts exactly the bodies the oracle
 *   accepts, throws nothing but ServiceError (TraceError is one), and never
 *   writes outside the slab it was given;
 * - the receiver, fed mutated multi-frame streams through FrameSplitter:
 *   nothing but FrameError / CodecError / ServiceError, and the image is
 *   either exactly the next epoch's or exactly what it was.
 */
import fc from 'fast-check';
import { EpochBodyReader, type InputSlabProvider } from '../src/epoch-body.js';
import { epochLayout } from '../src/epoch-record.js';
import { ServiceError } from '../src/errors.js';
import { FrameSplitter } from '../src/frames.js';
import { MemoryImage, Receiver } from '../src/receiver.js';
import { encodeEpochRecord, parseEpochRecord } from '../src/trace.js';
import { MAX_FRAME_BYTES, PFN_LIMIT } from '../src/wire.js';
import { Prng, SenderModel, concat, epochFrames, type RecordSpec } from '../test/receiver-frames.js';

/** The documented error types: ServiceError and its subclasses (TraceError, FrameError, CodecError). */
export function isDocumentedError(err: unknown): err is ServiceError {
  return err instanceof ServiceError && typeof err.code === 'string' && err.code.length > 0 && typeof err.statusCode === 'number';
}

// ---------------------------------------------------------------- epoch bodies

const FUZZ_PAGE = 512;
const EXPECTED_EPOCH = 3;
const GUARD = 64;
const GUARD_BYTE = 0xa5;

/** An input slab provider whose slabs are exactly as long as asked, followed by a guard area that must stay untouched. */
class GuardedSlabs implements InputSlabProvider {
  backing: Uint8Array | null = null;
  size = 0;

  inputSlab(bytes: number): Uint8Array {
    this.backing = new Uint8Array(bytes + GUARD).fill(GUARD_BYTE);
    this.size = bytes;
    return this.backing.subarray(0, bytes);
  }

  pfnScratch(count: number): Float64Array {
    return new Float64Array(count);
  }

  guardIntact(): boolean {
    if (this.backing === null) return true;
    for (let i = this.size; i < this.backing.length; i++) if (this.backing[i] !== GUARD_BYTE) return false;
    return true;
  }
}

export interface BodyCase {
  body: Uint8Array;
  chunks: number[];
  declared: 'none' | 'honest' | 'off';
  maxEpochBytes: number;
}

const mutation = fc.record({ at: fc.nat(), xor: fc.integer({ min: 1, max: 255 }) });

/** A valid record (epoch 3, or a neighbour), then byte flips, a cut or a tail. */
const mutatedBody: fc.Arbitrary<Uint8Array> = fc
  .record({
    pfns: fc.uniqueArray(fc.oneof(fc.nat({ max: 4096 }), fc.constantFrom(PFN_LIMIT - 1, PFN_LIMIT, 2 ** 32)), { maxLength: 10 }),
    raw: fc.array(fc.boolean(), { maxLength: 10 }),
    epoch: fc.constantFrom(EXPECTED_EPOCH, EXPECTED_EPOCH, EXPECTED_EPOCH, EXPECTED_EPOCH - 1, EXPECTED_EPOCH + 1),
    fill: fc.nat({ max: 255 }),
    mutations: fc.oneof({ arbitrary: fc.constant([]), weight: 2 }, { arbitrary: fc.array(mutation, { minLength: 1, maxLength: 4 }), weight: 3 }),
    headerMutations: fc.oneof({ arbitrary: fc.constant([]), weight: 4 }, { arbitrary: fc.array(fc.record({ at: fc.nat({ max: 15 }), xor: fc.integer({ min: 1, max: 255 }) }), { minLength: 1, maxLength: 1 }), weight: 1 }),
    cut: fc.oneof({ arbitrary: fc.constant(undefined), weight: 3 }, { arbitrary: fc.nat(), weight: 1 }),
    tail: fc.oneof({ arbitrary: fc.constant(new Uint8Array(0)), weight: 4 }, { arbitrary: fc.uint8Array({ minLength: 1, maxLength: 24 }), weight: 1 }),
  })
  .map((c) => {
    const count = c.pfns.length;
    const pages = new Uint8Array(count * FUZZ_PAGE).fill(c.fill);
    const kinds = Uint8Array.from({ length: count }, (_, i) => (c.raw[i] ? 1 : 0));
    // The encoder refuses what the parser would refuse; such a record is written by hand below.
    let record: Uint8Array;
    try {
      record = Uint8Array.from(encodeEpochRecord(c.epoch, Float64Array.from(c.pfns), kinds, pages, FUZZ_PAGE));
    } catch {
      record = Uint8Array.from(encodeEpochRecord(c.epoch, Float64Array.from(c.pfns.map((_, i) => i)), kinds, pages, FUZZ_PAGE));
      const view = new DataView(record.buffer);
      const layout = epochLayout(count, FUZZ_PAGE);
      c.pfns.forEach((pfn, i) => {
        view.setUint32(layout.pfnOffset + 8 * i, pfn % 2 ** 32, true);
        view.setUint32(layout.pfnOffset + 8 * i + 4, Math.floor(pfn / 2 ** 32), true);
      });
    }
    for (const m of [...c.headerMutations, ...c.mutations]) if (record.length > 0) record[m.at % record.length] ^= m.xor;
    if (c.cut !== undefined) record = record.subarray(0, c.cut % (record.length + 1));
    return c.tail.length > 0 && c.cut === undefined ? concat([record, c.tail]) : record;
  });

/** Random bytes, sometimes behind a plausible header (magic and a small count). */
const randomBody: fc.Arbitrary<Uint8Array> = fc
  .record({ bytes: fc.uint8Array({ maxLength: 3000 }), header: fc.boolean(), count: fc.nat({ max: 6 }), epoch: fc.constantFrom(EXPECTED_EPOCH, 0) })
  .map((c) => {
    if (!c.header) return c.bytes;
    const head = new Uint8Array(16);
    head.set(Buffer.from('EPCH', 'latin1'), 0);
    new DataView(head.buffer).setUint32(4, c.epoch, true);
    new DataView(head.buffer).setUint32(8, c.count, true);
    return concat([head, c.bytes]);
  });

export const bodyCase: fc.Arbitrary<BodyCase> = fc.record({
  body: fc.oneof({ arbitrary: mutatedBody, weight: 4 }, { arbitrary: randomBody, weight: 1 }),
  chunks: fc.array(fc.integer({ min: 1, max: 900 }), { minLength: 1, maxLength: 6 }),
  declared: fc.constantFrom('none' as const, 'honest' as const, 'honest' as const, 'off' as const),
  maxEpochBytes: fc.constantFrom(1024 ** 3, 1024 ** 3, 1024 ** 3, 4096, 1200),
});

/** Whether the trace parser (an independent implementation) takes `body` as exactly one epoch record. */
function oracleAccepts(c: BodyCase, declared: number | null): boolean {
  if (declared !== null && declared > c.maxEpochBytes) return false;
  try {
    const parsed = parseEpochRecord(c.body, 0, FUZZ_PAGE, EXPECTED_EPOCH);
    const total = epochLayout(parsed.count, FUZZ_PAGE).totalBytes;
    return total === c.body.length && total <= c.maxEpochBytes && (declared === null || declared === total);
  } catch (err) {
    if (err instanceof ServiceError) return false;
    throw err;
  }
}

async function* chunked(body: Uint8Array, sizes: number[]): AsyncGenerator<Uint8Array> {
  let at = 0;
  let i = 0;
  while (at < body.length) {
    const n = sizes[i++ % sizes.length];
    yield body.slice(at, at + n);
    at += n;
  }
}

/** Feed one body to a fresh EpochBodyReader; throws (an assertion failure) when a property does not hold. */
export async function checkBodyCase(c: BodyCase): Promise<'accepted' | 'refused'> {
  const declared = c.declared === 'none' ? null : c.declared === 'honest' ? c.body.length : c.body.length + 1;
  const slabs = new GuardedSlabs();
  let accepted = false;
  let pumping: Promise<void> | null = null;
  try {
    const reader = new EpochBodyReader({ pageSize: FUZZ_PAGE, pfnLimit: PFN_LIMIT, maxEpochBytes: c.maxEpochBytes, expectedEpoch: EXPECTED_EPOCH, declaredLength: declared }, slabs);
    pumping = reader.pump(chunked(c.body, c.chunks));
    const meta = await reader.metadata();
    await reader.waitForPages(meta.count);
    await reader.finished();
    accepted = true;
    const input = meta.input.subarray(0, c.body.length);
    if (!Buffer.from(input).equals(Buffer.from(c.body))) throw new Error('accepted body differs from the input slab');
  } catch (err) {
    if (!isDocumentedError(err)) throw new Error(`undocumented error from the body reader: ${String(err)}`, { cause: err });
  } finally {
    await pumping;
  }
  if (!slabs.guardIntact()) throw new Error('the body reader wrote past the end of its slab');
  const expected = oracleAccepts(c, declared);
  if (accepted !== expected) throw new Error(`body reader ${accepted ? 'accepted' : 'refused'} a body the trace parser ${expected ? 'accepts' : 'refuses'}`);
  return accepted ? 'accepted' : 'refused';
}

export function bodyReaderProperty(): fc.IAsyncPropertyWithHooks<[BodyCase]> {
  return fc.asyncProperty(bodyCase, async (c) => {
    await checkBodyCase(c);
  });
}

// ---------------------------------------------------------------- receiver frame streams

const RX_PAGE = 512;

interface ReceiverBase {
  /** Frames of RESYNC epoch 1, to apply first. */
  f1: Uint8Array[];
  /** Epoch 2's frames as one byte stream. */
  stream2: Uint8Array;
  /** Frame boundaries in stream2. */
  boundaries: number[];
  digest1: string;
  digest2: string;
}

function receiverBase(): ReceiverBase {
  const rng = new Prng(2024);
  const model = new SenderModel(RX_PAGE);
  const pfns = Array.from({ length: 30 }, (_, i) => i * 5 + (i % 3));
  const r1 = model.records(pfns.map((pfn, i) => [pfn, i % 7 === 3 ? new Uint8Array(RX_PAGE) : rng.page(RX_PAGE)]));
  const f1 = epochFrames(r1, { epoch: 1, pageSize: RX_PAGE, resync: true, recordsPerFrame: 8 });
  model.commit(1, r1, true);
  const digest1 = model.imageDigest().toString('hex');
  const changes: Array<[number, Uint8Array]> = pfns
    .filter((_, i) => i % 2 === 0)
    .map((pfn, i) => [pfn, i % 5 === 4 ? new Uint8Array(RX_PAGE) : rng.touch(model.pages.get(pfn) as Uint8Array, 1 + (i % 9))]);
  changes.push([999, rng.page(RX_PAGE)], [2 ** 40, rng.page(RX_PAGE)]);
  const r2: RecordSpec[] = model.records(changes);
  const f2 = epochFrames(r2, { epoch: 2, pageSize: RX_PAGE, recordsPerFrame: 4 });
  model.commit(2, r2, false);
  const boundaries: number[] = [];
  let at = 0;
  for (const f of f2) {
    at += f.length;
    boundaries.push(at);
  }
  return { f1, stream2: concat(f2), boundaries, digest1, digest2: model.imageDigest().toString('hex') };
}

let base: ReceiverBase | null = null;

export interface StreamCase {
  flips: { at: number; xor: number }[];
  deletions: { at: number; length: number }[];
  insertions: { at: number; bytes: Uint8Array }[];
  cut: number | undefined;
  chunks: number[];
}

export const streamCase: fc.Arbitrary<StreamCase> = fc.record({
  flips: fc.array(mutation, { maxLength: 4 }),
  deletions: fc.array(fc.record({ at: fc.nat(), length: fc.integer({ min: 1, max: 80 }) }), { maxLength: 1 }),
  insertions: fc.array(fc.record({ at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 80 }) }), { maxLength: 1 }),
  cut: fc.option(fc.nat(), { nil: undefined }),
  chunks: fc.array(fc.integer({ min: 1, max: 4000 }), { minLength: 1, maxLength: 5 }),
});

/** Apply a mutated epoch-2 byte stream after epoch 1; throws when a property does not hold. */
export function checkStreamCase(c: StreamCase): 'committed' | 'refused' | 'incomplete' {
  base ??= receiverBase();
  let bytes: Uint8Array = Uint8Array.from(base.stream2);
  for (const m of c.flips) bytes[m.at % bytes.length] ^= m.xor;
  for (const d of c.deletions) {
    const at = d.at % bytes.length;
    bytes = concat([bytes.subarray(0, at), bytes.subarray(Math.min(bytes.length, at + d.length))]);
  }
  for (const ins of c.insertions) {
    const at = ins.at % (bytes.length + 1);
    bytes = concat([bytes.subarray(0, at), ins.bytes, bytes.subarray(at)]);
  }
  if (c.cut !== undefined) bytes = bytes.subarray(0, c.cut % (bytes.length + 1));

  const rx = new Receiver({ pageSize: RX_PAGE, image: new MemoryImage(RX_PAGE) });
  for (const f of base.f1) rx.applyFrame(f);
  const splitter = new FrameSplitter(MAX_FRAME_BYTES);
  let refused = false;
  try {
    let at = 0;
    let i = 0;
    while (at < bytes.length) {
      const n = c.chunks[i++ % c.chunks.length];
      for (const frame of splitter.push(bytes.subarray(at, at + n))) rx.applyFrame(frame);
      at += n;
    }
    splitter.end();
  } catch (err) {
    if (!isDocumentedError(err)) throw new Error(`undocumented error from the receiver: ${String(err)}`, { cause: err });
    refused = true;
  }
  const digest = rx.imageDigest().toString('hex');
  if (rx.committedEpoch === 2) {
    if (digest !== base.digest2) throw new Error('the receiver committed epoch 2 with an image that differs from the sender model');
    return 'committed';
  }
  if (rx.committedEpoch !== 1 || digest !== base.digest1) {
    throw new Error(`the receiver's image changed without a commit of epoch 2 (committed ${rx.committedEpoch})`);
  }
  // The untouched stream must commit: otherwise the property proves nothing.
  if (c.flips.length + c.deletions.length + c.insertions.length === 0 && c.cut === undefined) throw new Error('the unmutated stream did not commit');
  return refused ? 'refused' : 'incomplete';
}

export function receiverStreamProperty(): fc.IPropertyWithHooks<[StreamCase]> {
  return fc.property(streamCase, (c) => {
    checkStreamCase(c);
  });
}
