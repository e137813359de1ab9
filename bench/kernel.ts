/**
 * Single-thread kernel benchmark: our page codec against the compressors a
 * user would pick instead, on the same pages, in one process, one thread,
 * no HTTP and no workers.
 *
 *   npm run build && node dist/bench/kernel.js [options]      (--help lists them)
 *
 * Codecs, each run over every epoch of a trace in order:
 *  - ours: what an encoding worker does per page (workers/encoder.ts called
 *    directly, not through piscina): one cache partition with the seed's
 *    32 MiB budget, zero-page check, FULL on miss or raw, Remus delta on hit.
 *    The cache is carried from epoch to epoch as in the service. Its decode is
 *    decodeRemusPage of each record onto the bench's copy of the previous
 *    image (the receiver's kernel; the receiver also copies each delta page
 *    into staging first, which is not counted here).
 *  - ours-wasm: the same per-page loop (same cache policy: the worker's
 *    CachePartition, same records byte for byte, checked after the warm-up
 *    when ours runs too) with the page work done by the WebAssembly SIMD
 *    kernel (src/codec/remus-wasm.ts) over one shared wasm memory that holds
 *    the epoch records, the cache slots, the records and the decode image, as
 *    the service's workers hold them. Every codec reads its input from that
 *    memory's epoch records (copied in once, before any timing), as the C
 *    harness's codecs all read one copy of the trace.
 *    As 'xbzrle-wasm', the same with the kernel's XBZRLE encoder against
 *    'xbzrle' (decoded here by the TypeScript decodeXbzrleBody; the
 *    receiver decodes with the kernel's, measured by bench/receiver.ts).
 *    As 'ours-zstd-wasm', codec 3 (the service's default) on the same
 *    path against 'ours-zstd': the kernel's records in zstd chunks, the
 *    same chunks byte for byte; decoded chunk by chunk in TypeScript.
 *  - baselines, stateless, on every dirty page whole: zstd level 1 (libzstd
 *    via zstd-napi) and LZ4 (liblz4 via lz4), into and out of preallocated
 *    slabs; zlib deflate level 1 (node:zlib deflateRawSync / inflateRawSync:
 *    Node has no public synchronous call that reuses a zlib engine, its sync
 *    calls build and free one per call); zstd level 1 over each epoch's pages
 *    as one buffer (no per-page records: what batching would buy); and a
 *    plain copy of each page into a slab (TypedArray#set: the memory
 *    bandwidth reference).
 *
 * Throughput is input (dirty page) bytes per second, GB = 1e9 bytes, for
 * epoch 0 (normally the whole image) and for the later epochs together. One
 * warm-up pass checks that every decode gives the input back and fixes each
 * codec's output sizes; each timed pass must produce the same sizes again.
 * Passes interleave the codecs (in rotating order) so that the machine's
 * noise hits them alike.
 */
import { writeFile, readFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import zstd from 'zstd-napi/binding.js';
import runEncoderTask from '../workers/encoder.js';
import { addEncodeCounters, emptyEncodeCounters, type EncodeCounters, type EncodeResult, type EncodeTask, type InvalidateTask } from '../workers/protocol.js';
import { decodeRemusPage } from '../src/codec/remus.js';
import {
  createKernelMemory, instantiateRemusWasm, KERNEL_MAX_MEMORY_PAGES, WASM_PAGE_BYTES, type KernelMemory, type RemusWasmKernel,
} from '../src/codec/remus-wasm.js';
import { decodeXbzrleBody } from '../src/codec/xbzrle.js';
import { recordRegionBytes } from '../src/frames.js';
import { epochLayout, type EpochLayout } from '../src/epoch-record.js';
import { packageRoot } from '../src/package-root.js';
import { parseTrace } from '../src/trace.js';
import { generateTrace, type TraceProfile } from '../src/trace-gen.js';
import { CODEC_REMUS, CODEC_REMUS_ZSTD, CODEC_XBZRLE, RECORD_ZERO } from '../src/wire.js';
import { CHUNK_INDEX_RESERVE_BYTES, CHUNK_TARGET_BYTES, ChunkReader, chunkLimitBytes } from '../src/codec/chunk.js';
import { DEFAULT_FRAME_BYTES } from '../src/sender.js';
import { median } from './stats.js';

/** The lz4 package ships no types; the two block calls of its C binding that we use. */
interface Lz4Binding {
  /** LZ4_compress_default(input, output + start, input.length, end - start); returns bytes written (0 = no room). */
  encodeBlock(input: Uint8Array, output: Uint8Array, start: number, end: number): number;
  /** LZ4_decompress_safe(input + start, output, end - start, output.length); returns bytes written (< 0 = bad input). */
  decodeBlock(input: Uint8Array, output: Uint8Array, start: number, end: number): number;
  encodeBound(size: number): number;
}
const lz4 = createRequire(import.meta.url)('lz4') as Lz4Binding;

/** The seed's cache budget: 8192 pages of 4 KiB. */
export const SEED_CACHE_BYTES = 32 * 1024 * 1024;
/** The seed's eviction policy: our rows use it too, so they do the same work per page as the C originals (the service's default is W-TinyLFU). */
const SEED_CACHE_POLICY = 'lru';
export const DEFAULT_TRACE = join(packageRoot(), '..', 'shared', 'traces', 'python-small.rmtr');
const ZSTD_LEVEL = 1;
const DEFLATE_OPTIONS = { level: 1 } as const;

/** One epoch of a trace, laid out once before any timing. */
export interface PreparedEpoch {
  count: number;
  pfns: Float64Array;
  /** Where the epoch record starts in the trace's memory (a multiple of 64). */
  at: number;
  layout: EpochLayout;
  /** count * pageSize bytes, a view into the trace's memory: what every codec reads. */
  pages: Uint8Array;
  /** One view per page into `pages`, made once so that no codec allocates one per page. */
  pageViews: Uint8Array[];
}

export interface PreparedTrace {
  name: string;
  pageSize: number;
  epochs: PreparedEpoch[];
  /** Largest page count of an epoch. */
  maxCount: number;
  /**
   * One shared wasm memory holding every epoch record, which every codec
   * reads: the wasm rows grow it by their own regions (cache, records, image)
   * rather than copy the records into a memory of their own. All codecs then
   * read the same input bytes, as the C harness's codecs do; with a copy per
   * row, the wasm rows would start each pass on input the other rows had
   * evicted from the processor's caches while theirs stayed warm.
   */
  memory: KernelMemory;
  /** The memory's buffer as it was made (the records' bytes; the memory only grows). */
  input: SharedArrayBuffer;
}

/** Copy each epoch record of an RMTR trace into one shared wasm memory. */
export function prepareTrace(name: string, bytes: Uint8Array): PreparedTrace {
  const { pageSize, epochs } = parseTrace(bytes);
  let total = 0;
  const at = epochs.map((e) => {
    const start = total;
    total = align64(total + e.record.length);
    return start;
  });
  const memory = createKernelMemory(total, KERNEL_MAX_MEMORY_PAGES * WASM_PAGE_BYTES);
  const input = memory.buffer as SharedArrayBuffer;
  const whole = new Uint8Array(input);
  let maxCount = 0;
  const prepared = epochs.map((e, n): PreparedEpoch => {
    whole.set(e.record, at[n]);
    const layout = epochLayout(e.count, pageSize);
    const pages = whole.subarray(at[n] + layout.pageOffset, at[n] + layout.pageOffset + e.count * pageSize);
    const pageViews: Uint8Array[] = [];
    for (let i = 0; i < e.count; i++) pageViews.push(pages.subarray(i * pageSize, (i + 1) * pageSize));
    maxCount = Math.max(maxCount, e.count);
    return { count: e.count, pfns: e.pfns, at: at[n], layout, pages, pageViews };
  });
  return { name, pageSize, epochs: prepared, maxCount, memory, input };
}

/**
 * A codec under test. reset() empties its state (cache, image) untimed;
 * encode(e) and decode(e) are the timed calls and must run for e = 0, 1, ...
 * in order after a reset, all encodes before the decodes (so the receiver's
 * side does not find the records still in the processor's caches).
 */
export interface KernelCodec {
  readonly name: string;
  readonly description: string;
  readonly decodes: boolean;
  reset(): void;
  /** Encodes epoch e; returns its output bytes. */
  encode(e: number): number;
  /** Decodes epoch e's output from the last encode(e). */
  decode(e: number): void;
  /** Untimed, right after decode(e): page i of epoch e as decoded. */
  decodedPage(e: number, i: number): Uint8Array;
}

export const CODEC_NAMES = ['ours', 'ours-wasm', 'ours-zstd', 'ours-zstd-wasm', 'xbzrle', 'xbzrle-wasm', 'zstd-1', 'lz4', 'deflate-1', 'zstd-1/epoch', 'copy'] as const;
export type CodecName = (typeof CODEC_NAMES)[number];

let streamSerial = 0;

/** Untimed: every page of the trace leaves the stream's partition 0 (an invalidate task per epoch, as the service sends them). */
function forgetEveryPage(stream: string, trace: PreparedTrace): void {
  for (const e of trace.epochs) {
    const task: InvalidateTask = { op: 'invalidate', stream, partition: 0, input: trace.input, pfnOffset: e.at + e.layout.pfnOffset, count: e.count };
    runEncoderTask(task);
  }
}

/**
 * Our path: the worker's encode task on one partition, then decodeRemusPage
 * onto an image; as 'xbzrle', the same task with the stream codec set to
 * QEMU's XBZRLE (same cache, zero and raw logic) and decodeXbzrleBody; as
 * 'ours-zstd', the default codec 3 (the same records in zstd chunks of up to
 * 256 KiB, as with the default 1 MiB frames), decoded chunk by chunk.
 */
class OursCodec implements KernelCodec {
  readonly name: 'ours' | 'xbzrle' | 'ours-zstd';
  readonly description: string;
  readonly decodes = true;
  /** Per-epoch counters of the last encode. */
  readonly counters: EncodeResult[] = [];
  private readonly stream = `kernel-bench-${process.pid}-${streamSerial++}`;
  private readonly slotCount: number;
  private readonly indices: SharedArrayBuffer;
  private readonly records: SharedArrayBuffer;
  private readonly groupHashes = new SharedArrayBuffer(0);
  private readonly work: SharedArrayBuffer;
  private readonly work8: Uint8Array;
  private readonly outStart: number[] = [];
  private readonly outLimit: number[] = [];
  private readonly outEnd: number[] = [];
  /** The receiver's image: one slot per distinct pfn of the trace. */
  private readonly image: Uint8Array;
  /** Image slot of each page of each epoch (the receiver's pfn index, looked up beforehand). */
  private readonly slots: Int32Array[];

  private readonly chunks = new ChunkReader();

  constructor(private readonly trace: PreparedTrace, cacheBytes: number, name: 'ours' | 'xbzrle' | 'ours-zstd' = 'ours') {
    const { pageSize, epochs, maxCount } = trace;
    this.name = name;
    this.slotCount = Math.floor(cacheBytes / pageSize);
    this.description = {
      ours: `worker encode loop, ${this.slotCount}-page cache; decodeRemusPage onto the previous image`,
      xbzrle: `worker encode loop with codec xbzrle (QEMU XBZRLE), ${this.slotCount}-page cache; decodeXbzrleBody onto the previous image`,
      'ours-zstd': `worker encode loop with codec remus-zstd (records in zstd chunks, level 2), ${this.slotCount}-page cache; zstd then decodeRemusPage`,
    }[name];
    this.indices = new SharedArrayBuffer(4 * maxCount);
    const indices = new Int32Array(this.indices);
    for (let i = 0; i < maxCount; i++) indices[i] = i;
    this.records = new SharedArrayBuffer(8 * maxCount);
    // Every epoch keeps its records (the decode pass runs after all encodes),
    // each in a region sized for the worst case as the stream sizes them.
    const worst = recordRegionBytes(pageSize);
    let total = 0;
    for (const e of epochs) {
      this.outStart.push(total);
      total += e.count * worst;
      this.outLimit.push(total);
      this.outEnd.push(0);
    }
    this.work = new SharedArrayBuffer(total);
    this.work8 = new Uint8Array(this.work);
    const { slots, distinct } = imageSlots(trace);
    this.slots = slots;
    this.image = new Uint8Array(distinct * pageSize);
  }

  reset(): void {
    // Forget every page rather than drop the partition: a new partition would
    // make the next epoch 0 pay for first touches of a fresh 32 MiB slab, a
    // cost a stream pays once in its life.
    forgetEveryPage(this.stream, this.trace);
    this.image.fill(0);
    this.counters.length = 0;
  }

  encode(e: number): number {
    const ep = this.trace.epochs[e];
    const task: EncodeTask = {
      op: 'encode',
      stream: this.stream,
      partition: 0,
      pageSize: this.trace.pageSize,
      codec: { ours: CODEC_REMUS, xbzrle: CODEC_XBZRLE, 'ours-zstd': CODEC_REMUS_ZSTD }[this.name],
      slotCount: this.slotCount,
      cachePolicy: SEED_CACHE_POLICY,
      input: this.trace.input,
      pfnOffset: ep.at + ep.layout.pfnOffset,
      kindOffset: ep.at + ep.layout.kindOffset,
      pageOffset: ep.at + ep.layout.pageOffset,
      indices: this.indices,
      indexStart: 0,
      indexCount: ep.count,
      work: this.work,
      outStart: this.outStart[e],
      outLimit: this.outLimit[e],
      chunkBytes: this.name === 'ours-zstd' ? chunkLimitBytes(DEFAULT_FRAME_BYTES) : 0,
      records: this.records,
      groupHashes: this.groupHashes,
      groupFirst: 0,
      groupEnd: 0,
      groupStep: 1,
      pageCount: ep.count,
    };
    const result = runEncoderTask(task) as EncodeResult;
    this.counters[e] = result;
    this.outEnd[e] = result.end;
    return result.end - this.outStart[e];
  }

  decode(e: number): void {
    const { pageSize } = this.trace;
    const count = this.trace.epochs[e].count;
    const input = this.work8;
    const image = this.image;
    const slots = this.slots[e];
    const end = this.outEnd[e];
    let pos = this.outStart[e];
    if (this.name === 'ours-zstd') {
      decodeChunks(this.chunks, this.work8, pos, end, slots, this.image, 0, pageSize);
      return;
    }
    for (let i = 0; i < count; i++) {
      const type = input[pos++];
      while ((input[pos++] & 0x80) !== 0); // the pfn, ULEB128; its image slot was looked up beforehand
      const at = slots[i] * pageSize;
      if (type === RECORD_ZERO) image.fill(0, at, at + pageSize);
      else if (this.name === 'xbzrle') pos = decodeXbzrleBody(input, pos, end, image, at, pageSize);
      else pos = decodeRemusPage(input, pos, end, image, at, pageSize);
    }
    if (pos !== end) throw new Error(`${this.name}: epoch ${e} decode ended at ${pos}, records end at ${end}`);
  }

  decodedPage(e: number, i: number): Uint8Array {
    const at = this.slots[e][i] * this.trace.pageSize;
    return this.image.subarray(at, at + this.trace.pageSize);
  }

  /** Untimed: the records of the last encode(e). */
  recordBytes(e: number): Uint8Array {
    return this.work8.subarray(this.outStart[e], this.outEnd[e]);
  }
}

/** Image slot of each page of each epoch: one slot per distinct pfn of the trace, in order of first appearance. */
function imageSlots(trace: PreparedTrace): { slots: Int32Array[]; distinct: number } {
  const slotOf = new Map<number, number>();
  const slots = trace.epochs.map((e) => {
    const s = new Int32Array(e.count);
    for (let i = 0; i < e.count; i++) {
      let slot = slotOf.get(e.pfns[i]);
      if (slot === undefined) {
        slot = slotOf.size;
        slotOf.set(e.pfns[i], slot);
      }
      s[i] = slot;
    }
    return s;
  });
  return { slots, distinct: slotOf.size };
}

/** Offsets in the wasm memory start on 64-byte boundaries (a cache line). */
function align64(n: number): number {
  return Math.ceil(n / 64) * 64;
}

/**
 * Codec 3's decode, as a receiver does it: each chunk of the records in
 * work[pos, end) decompressed, then each record applied (decodeRemusPage)
 * to the image at imageAt + slot * pageSize, the slot of the page the
 * chunk's index section names.
 */
function decodeChunks(
  chunks: ChunkReader, work: Uint8Array, pos: number, end: number, slots: Int32Array,
  image: Uint8Array, imageAt: number, pageSize: number,
): void {
  while (pos < end) {
    const { header: chunk, raw, recordsStart } = chunks.open(work, pos, end, slots.length);
    const indices = chunks.indices;
    let p = recordsStart;
    for (let k = 0; k < chunk.records; k++) {
      const type = raw[p++];
      while ((raw[p++] & 0x80) !== 0); // the pfn; the image slot comes from the page's index
      const at = imageAt + slots[indices[k]] * pageSize;
      if (type === RECORD_ZERO) image.fill(0, at, at + pageSize);
      else p = decodeRemusPage(raw, p, raw.length, image, at, pageSize);
    }
    if (p !== raw.length) throw new Error(`codec 3: a chunk's records end at ${p} of ${raw.length}`);
    pos = chunk.end;
  }
}

/**
 * ours with the WebAssembly kernel: the worker's own encode task
 * (workers/encoder.ts, called directly) over an arena as a stream gives it,
 * the trace's shared wasm memory, which holds the epoch records and grows
 * by this row's cache slab, record regions and image, so the worker takes
 * its wasm path; decode is the kernel's decodePage (XBZRLE:
 * decodeXbzrleBody) onto the image.
 */
type WasmRowName = 'ours-wasm' | 'ours-zstd-wasm' | 'xbzrle-wasm';

class OursWasmCodec implements KernelCodec {
  readonly name: WasmRowName;
  readonly description: string;
  readonly decodes = true;
  readonly counters: EncodeResult[] = [];
  private readonly stream = `kernel-bench-wasm-${process.pid}-${streamSerial++}`;
  private readonly slotCount: number;
  private readonly memory: KernelMemory;
  private readonly arena: SharedArrayBuffer;
  private readonly k: RemusWasmKernel;
  private readonly mem8: Uint8Array;
  private readonly indices: SharedArrayBuffer;
  private readonly records: SharedArrayBuffer;
  private readonly groupHashes = new SharedArrayBuffer(0);
  private readonly cacheAt: number;
  private readonly imageAt: number;
  private readonly imageEnd: number;
  private readonly outStart: number[] = [];
  private readonly outLimit: number[] = [];
  private readonly outEnd: number[] = [];
  private readonly slots: Int32Array[];
  /** Codec 3: the chunk scratch in the arena (else -1), and the chunk reader of its decode. */
  private readonly scratchAt: number = -1;
  private readonly chunks = new ChunkReader();

  constructor(private readonly trace: PreparedTrace, cacheBytes: number, name: WasmRowName = 'ours-wasm') {
    const { pageSize, epochs, maxCount } = trace;
    this.name = name;
    this.slotCount = Math.floor(cacheBytes / pageSize);
    this.description = {
      'ours-wasm': `worker encode loop on its wasm path (the WebAssembly SIMD kernel over a shared-memory arena), ${this.slotCount}-page cache; ` +
        "the kernel's decodePage onto the previous image",
      'ours-zstd-wasm': `worker encode loop with codec remus-zstd on its wasm path (the service's default), ${this.slotCount}-page cache; ` +
        'zstd then decodeRemusPage (TypeScript) onto the previous image',
      'xbzrle-wasm': `worker encode loop with codec xbzrle on its wasm path, ${this.slotCount}-page cache; decodeXbzrleBody (TypeScript) onto the previous image`,
    }[name];
    this.indices = new SharedArrayBuffer(4 * maxCount);
    const indices = new Int32Array(this.indices);
    for (let i = 0; i < maxCount; i++) indices[i] = i;
    this.records = new SharedArrayBuffer(8 * maxCount);
    const { slots, distinct } = imageSlots(trace);
    this.slots = slots;
    const worst = recordRegionBytes(pageSize);
    // This row's regions go after everything already in the trace's memory
    // (the epoch records, another wasm row's regions), which grows to hold them.
    const memory = trace.memory;
    const base = memory.buffer.byteLength;
    let at = base;
    this.cacheAt = at;
    at = align64(at + this.slotCount * pageSize);
    if (name === 'ours-zstd-wasm') {
      // As a stream's partition has it: room for a chunk's index section and its records.
      this.scratchAt = at;
      at = align64(at + CHUNK_INDEX_RESERVE_BYTES + CHUNK_TARGET_BYTES);
    }
    for (const e of epochs) {
      this.outStart.push(at);
      at += e.count * worst;
      this.outLimit.push(at);
      this.outEnd.push(at);
      at = align64(at);
    }
    this.imageAt = at;
    at += distinct * pageSize;
    const maxBytes = KERNEL_MAX_MEMORY_PAGES * WASM_PAGE_BYTES;
    if (at > maxBytes) {
      // The records and both wasm rows share one wasm32 memory (4 GiB).
      throw new RangeError(`${name}: the trace's records and the wasm rows' regions need ${at} bytes, over wasm32's ${maxBytes}; use a shorter trace`);
    }
    memory.grow(Math.ceil((at - base) / WASM_PAGE_BYTES));
    this.memory = memory;
    this.arena = memory.buffer as SharedArrayBuffer;
    this.imageEnd = at;
    this.k = instantiateRemusWasm(this.memory);
    this.mem8 = new Uint8Array(this.arena);
  }

  reset(): void {
    // As ours: forget every page (a slot is written whole before it is used again).
    forgetEveryPage(this.stream, this.trace);
    this.k.fill(this.imageAt, 0, this.imageEnd - this.imageAt);
    this.counters.length = 0;
  }

  encode(e: number): number {
    const ep = this.trace.epochs[e];
    const base = ep.at;
    const task: EncodeTask = {
      op: 'encode',
      stream: this.stream,
      partition: 0,
      pageSize: this.trace.pageSize,
      codec: { 'ours-wasm': CODEC_REMUS, 'ours-zstd-wasm': CODEC_REMUS_ZSTD, 'xbzrle-wasm': CODEC_XBZRLE }[this.name],
      slotCount: this.slotCount,
      cachePolicy: SEED_CACHE_POLICY,
      input: this.arena,
      pfnOffset: base + ep.layout.pfnOffset,
      kindOffset: base + ep.layout.kindOffset,
      pageOffset: base + ep.layout.pageOffset,
      indices: this.indices,
      indexStart: 0,
      indexCount: ep.count,
      work: this.arena,
      outStart: this.outStart[e],
      outLimit: this.outLimit[e],
      chunkBytes: this.scratchAt >= 0 ? chunkLimitBytes(DEFAULT_FRAME_BYTES) : 0,
      records: this.records,
      groupHashes: this.groupHashes,
      groupFirst: 0,
      groupEnd: 0,
      groupStep: 1,
      pageCount: ep.count,
      memory: this.memory,
      cacheOffset: this.cacheAt,
      ...(this.scratchAt >= 0 ? { scratchOffset: this.scratchAt } : {}),
      kernel: 'wasm',
    };
    const result = runEncoderTask(task) as EncodeResult;
    this.counters[e] = result;
    this.outEnd[e] = result.end;
    return result.end - this.outStart[e];
  }

  decode(e: number): void {
    const { pageSize } = this.trace;
    const count = this.trace.epochs[e].count;
    const m = this.mem8;
    const k = this.k;
    const imageAt = this.imageAt;
    const slots = this.slots[e];
    const end = this.outEnd[e];
    const xbzrle = this.name === 'xbzrle-wasm';
    let pos = this.outStart[e];
    if (this.scratchAt >= 0) {
      decodeChunks(this.chunks, m, pos, end, slots, m, imageAt, pageSize);
      return;
    }
    for (let i = 0; i < count; i++) {
      const type = m[pos++];
      while ((m[pos++] & 0x80) !== 0); // the pfn, ULEB128; its image slot was looked up beforehand
      const at = imageAt + slots[i] * pageSize;
      if (type === RECORD_ZERO) k.fill(at, 0, pageSize);
      else if (xbzrle) pos = decodeXbzrleBody(m, pos, end, m, at, pageSize);
      else pos = k.decodePage(pos, end, at, pageSize);
    }
    if (pos !== end) throw new Error(`${this.name}: epoch ${e} decode ended at ${pos}, records end at ${end}`);
  }

  decodedPage(e: number, i: number): Uint8Array {
    const at = this.imageAt + this.slots[e][i] * this.trace.pageSize;
    return this.mem8.subarray(at, at + this.trace.pageSize);
  }

  /** Untimed: the records of the last encode(e). */
  recordBytes(e: number): Uint8Array {
    return this.mem8.subarray(this.outStart[e], this.outEnd[e]);
  }
}

/** Output slabs with one fixed-size slot per page, and the decode target. */
class PerPageSlabs {
  readonly bound: number;
  readonly out: Uint8Array[];
  readonly outViews: Uint8Array[][];
  readonly sizes: Int32Array[];
  readonly target: Uint8Array;
  readonly targetViews: Uint8Array[] = [];

  constructor(trace: PreparedTrace, bound: number) {
    this.bound = bound;
    this.out = trace.epochs.map((e) => new Uint8Array(e.count * bound));
    this.outViews = this.out.map((slab, e) => {
      const views: Uint8Array[] = [];
      for (let i = 0; i < trace.epochs[e].count; i++) views.push(slab.subarray(i * bound, (i + 1) * bound));
      return views;
    });
    this.sizes = trace.epochs.map((e) => new Int32Array(e.count));
    this.target = new Uint8Array(trace.maxCount * trace.pageSize);
    for (let i = 0; i < trace.maxCount; i++) this.targetViews.push(this.target.subarray(i * trace.pageSize, (i + 1) * trace.pageSize));
  }
}

class ZstdPageCodec implements KernelCodec {
  readonly name = 'zstd-1';
  readonly description = `libzstd ${zstd.versionString()} (zstd-napi) level ${ZSTD_LEVEL}, one frame per page`;
  readonly decodes = true;
  private readonly cctx = new zstd.CCtx();
  private readonly dctx = new zstd.DCtx();
  private readonly slabs: PerPageSlabs;
  /** Decode inputs: each page's frame exactly, made on the first decode (sizes never change after). */
  private readonly frames: Uint8Array[][] = [];

  constructor(private readonly trace: PreparedTrace) {
    this.slabs = new PerPageSlabs(trace, zstd.compressBound(trace.pageSize));
  }

  reset(): void {}

  encode(e: number): number {
    const { pageViews, count } = this.trace.epochs[e];
    const outViews = this.slabs.outViews[e];
    const sizes = this.slabs.sizes[e];
    let total = 0;
    for (let i = 0; i < count; i++) {
      const n = this.cctx.compress(outViews[i], pageViews[i], ZSTD_LEVEL);
      sizes[i] = n;
      total += n;
    }
    return total;
  }

  decode(e: number): void {
    const { count } = this.trace.epochs[e];
    let frames = this.frames[e];
    if (frames === undefined) {
      frames = [];
      for (let i = 0; i < count; i++) frames.push(this.slabs.outViews[e][i].subarray(0, this.slabs.sizes[e][i]));
      this.frames[e] = frames;
    }
    const targets = this.slabs.targetViews;
    const pageSize = this.trace.pageSize;
    for (let i = 0; i < count; i++) {
      if (this.dctx.decompress(targets[i], frames[i]) !== pageSize) throw new Error(`zstd-1: page ${i} of epoch ${e} decoded short`);
    }
  }

  decodedPage(_e: number, i: number): Uint8Array {
    return this.slabs.targetViews[i];
  }
}

class Lz4PageCodec implements KernelCodec {
  readonly name = 'lz4';
  readonly description = 'liblz4 1.9 (lz4 package) LZ4_compress_default / LZ4_decompress_safe, one block per page';
  readonly decodes = true;
  private readonly slabs: PerPageSlabs;

  constructor(private readonly trace: PreparedTrace) {
    this.slabs = new PerPageSlabs(trace, lz4.encodeBound(trace.pageSize));
  }

  reset(): void {}

  encode(e: number): number {
    const { pageViews, count } = this.trace.epochs[e];
    const out = this.slabs.out[e];
    const sizes = this.slabs.sizes[e];
    const bound = this.slabs.bound;
    let total = 0;
    for (let i = 0; i < count; i++) {
      const n = lz4.encodeBlock(pageViews[i], out, i * bound, (i + 1) * bound);
      if (n <= 0) throw new Error(`lz4: page ${i} of epoch ${e} did not fit ${bound} bytes`);
      sizes[i] = n;
      total += n;
    }
    return total;
  }

  decode(e: number): void {
    const { count } = this.trace.epochs[e];
    const out = this.slabs.out[e];
    const sizes = this.slabs.sizes[e];
    const bound = this.slabs.bound;
    const targets = this.slabs.targetViews;
    const pageSize = this.trace.pageSize;
    for (let i = 0; i < count; i++) {
      const start = i * bound;
      if (lz4.decodeBlock(out, targets[i], start, start + sizes[i]) !== pageSize) {
        throw new Error(`lz4: page ${i} of epoch ${e} did not decode to a whole page`);
      }
    }
  }

  decodedPage(_e: number, i: number): Uint8Array {
    return this.slabs.targetViews[i];
  }
}

class DeflatePageCodec implements KernelCodec {
  readonly name = 'deflate-1';
  readonly description = `zlib ${process.versions.zlib} (node:zlib deflateRawSync / inflateRawSync) level 1, one raw stream per page`;
  readonly decodes = true;
  private readonly outputs: Buffer[][];
  private readonly target: Uint8Array;

  constructor(private readonly trace: PreparedTrace) {
    this.outputs = trace.epochs.map((e) => new Array<Buffer>(e.count));
    this.target = new Uint8Array(trace.maxCount * trace.pageSize);
  }

  reset(): void {}

  encode(e: number): number {
    const { pageViews, count } = this.trace.epochs[e];
    const outputs = this.outputs[e];
    let total = 0;
    for (let i = 0; i < count; i++) {
      const out = deflateRawSync(pageViews[i], DEFLATE_OPTIONS);
      outputs[i] = out;
      total += out.length;
    }
    return total;
  }

  decode(e: number): void {
    const { count } = this.trace.epochs[e];
    const outputs = this.outputs[e];
    const pageSize = this.trace.pageSize;
    for (let i = 0; i < count; i++) {
      const page = inflateRawSync(outputs[i]);
      if (page.length !== pageSize) throw new Error(`deflate-1: page ${i} of epoch ${e} decoded to ${page.length} bytes`);
      this.target.set(page, i * pageSize);
    }
  }

  decodedPage(_e: number, i: number): Uint8Array {
    return this.target.subarray(i * this.trace.pageSize, (i + 1) * this.trace.pageSize);
  }
}

class ZstdEpochCodec implements KernelCodec {
  readonly name = 'zstd-1/epoch';
  readonly description = `libzstd ${zstd.versionString()} level ${ZSTD_LEVEL}, one frame per epoch (all its pages)`;
  readonly decodes = true;
  private readonly cctx = new zstd.CCtx();
  private readonly dctx = new zstd.DCtx();
  private readonly out: Uint8Array[];
  private readonly sizes: number[];
  private readonly frames: Uint8Array[] = [];
  private readonly targets: Uint8Array[];

  constructor(private readonly trace: PreparedTrace) {
    this.out = trace.epochs.map((e) => new Uint8Array(zstd.compressBound(e.pages.length)));
    this.sizes = trace.epochs.map(() => 0);
    const target = new Uint8Array(trace.maxCount * trace.pageSize);
    this.targets = trace.epochs.map((e) => target.subarray(0, e.pages.length));
  }

  reset(): void {}

  encode(e: number): number {
    const n = this.cctx.compress(this.out[e], this.trace.epochs[e].pages, ZSTD_LEVEL);
    if (n !== this.sizes[e]) {
      this.sizes[e] = n;
      this.frames[e] = this.out[e].subarray(0, n);
    }
    return n;
  }

  decode(e: number): void {
    const n = this.dctx.decompress(this.targets[e], this.frames[e]);
    if (n !== this.targets[e].length) throw new Error(`zstd-1/epoch: epoch ${e} decoded to ${n} bytes`);
  }

  decodedPage(e: number, i: number): Uint8Array {
    return this.targets[e].subarray(i * this.trace.pageSize, (i + 1) * this.trace.pageSize);
  }
}

class CopyCodec implements KernelCodec {
  readonly name = 'copy';
  readonly description = 'TypedArray#set of each page into a slab (memcpy): the memory bandwidth reference';
  readonly decodes = false;
  private readonly target: Uint8Array;

  constructor(private readonly trace: PreparedTrace) {
    this.target = new Uint8Array(trace.maxCount * trace.pageSize);
  }

  reset(): void {}

  encode(e: number): number {
    const { pageViews, count } = this.trace.epochs[e];
    const pageSize = this.trace.pageSize;
    for (let i = 0; i < count; i++) this.target.set(pageViews[i], i * pageSize);
    return count * pageSize;
  }

  decode(): void {}

  decodedPage(_e: number, i: number): Uint8Array {
    return this.target.subarray(i * this.trace.pageSize, (i + 1) * this.trace.pageSize);
  }
}

export function createCodec(name: CodecName, trace: PreparedTrace, cacheBytes = SEED_CACHE_BYTES): KernelCodec {
  switch (name) {
    case 'ours':
      return new OursCodec(trace, cacheBytes);
    case 'ours-wasm':
    case 'xbzrle-wasm':
    case 'ours-zstd-wasm':
      return new OursWasmCodec(trace, cacheBytes, name);
    case 'xbzrle':
      return new OursCodec(trace, cacheBytes, 'xbzrle');
    case 'ours-zstd':
      return new OursCodec(trace, cacheBytes, 'ours-zstd');
    case 'zstd-1':
      return new ZstdPageCodec(trace);
    case 'lz4':
      return new Lz4PageCodec(trace);
    case 'deflate-1':
      return new DeflatePageCodec(trace);
    case 'zstd-1/epoch':
      return new ZstdEpochCodec(trace);
    case 'copy':
      return new CopyCodec(trace);
  }
}

export interface Speed {
  /** Fastest pass, GB/s (1e9 bytes) of input. */
  bestGBps: number;
  medianGBps: number;
  /** Every timed pass, in order. */
  passesGBps: number[];
}

export interface PhaseFigures {
  epochs: number;
  pages: number;
  bytesIn: number;
  bytesOut: number;
  /** bytesOut / bytesIn. */
  ratio: number;
  encode: Speed | null;
  /** null for a codec that does not decode (copy), or when there is nothing to time. */
  decode: Speed | null;
}

export type OursCounters = EncodeCounters;

export interface CodecResult {
  codec: CodecName;
  description: string;
  /** Every decoded page of the warm-up pass equalled its input page. */
  roundTripChecked: boolean;
  epoch0: PhaseFigures;
  /** Epochs 1 .. last together. */
  dirty: PhaseFigures;
  /** Only for ours: the worker's counters for epoch 0 and the later epochs. */
  counters?: { epoch0: OursCounters; dirty: OursCounters };
}

export interface KernelResult {
  source: string;
  pageSize: number;
  epochs: number;
  passes: number;
  cacheBytes: number;
  codecs: CodecResult[];
}

export interface MeasureOptions {
  /** Timed passes after the warm-up pass (default 5). */
  passes?: number;
  codecs?: readonly CodecName[];
  /** Our cache budget (default the seed's 32 MiB). */
  cacheBytes?: number;
}

function speed(bytes: number, nsPerPass: number[]): Speed | null {
  if (bytes === 0 || nsPerPass.length === 0) return null;
  const passesGBps = nsPerPass.map((ns) => bytes / Math.max(ns, 1));
  return { bestGBps: Math.max(...passesGBps), medianGBps: median(passesGBps), passesGBps };
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** Untimed: every page of epoch e as the codec decoded it equals the input page. */
function checkEpoch(codec: KernelCodec, trace: PreparedTrace, e: number): void {
  const ep = trace.epochs[e];
  for (let i = 0; i < ep.count; i++) {
    if (!equalBytes(codec.decodedPage(e, i), ep.pageViews[i])) {
      throw new Error(`${codec.name}: page ${i} (pfn ${ep.pfns[i]}) of epoch ${e} of ${trace.name} does not decode to its input`);
    }
  }
}

function sumCounters(list: EncodeResult[]): OursCounters {
  const c = emptyEncodeCounters();
  for (const r of list) addEncodeCounters(c, r);
  return c;
}

/** Runs every codec over the whole trace: one checked warm-up pass, then `passes` timed passes. */
export function measureKernel(trace: PreparedTrace, options: MeasureOptions = {}): KernelResult {
  const passes = options.passes ?? 5;
  const cacheBytes = options.cacheBytes ?? SEED_CACHE_BYTES;
  const names = options.codecs ?? CODEC_NAMES;
  if (!Number.isInteger(passes) || passes < 1) throw new RangeError(`passes ${passes} is not a positive integer`);
  const codecs = names.map((n) => createCodec(n, trace, cacheBytes));
  const epochCount = trace.epochs.length;
  const gc = (globalThis as { gc?: () => void }).gc;

  // Warm-up pass: checks each decode page by page and fixes the output sizes.
  const outBytes = codecs.map(() => new Array<number>(epochCount).fill(0));
  for (const [k, codec] of codecs.entries()) {
    codec.reset();
    for (let e = 0; e < epochCount; e++) outBytes[k][e] = codec.encode(e);
    if (!codec.decodes) continue;
    for (let e = 0; e < epochCount; e++) {
      codec.decode(e);
      checkEpoch(codec, trace, e);
    }
  }
  // The wasm paths must send exactly what the TypeScript ones send: compare their records epoch by epoch.
  for (const [tsName, wasmName] of [['ours', 'ours-wasm'], ['ours-zstd', 'ours-zstd-wasm'], ['xbzrle', 'xbzrle-wasm']] as const) {
    const tsPath = codecs.find((c) => c instanceof OursCodec && c.name === tsName) as OursCodec | undefined;
    const wasmPath = codecs.find((c) => c instanceof OursWasmCodec && c.name === wasmName) as OursWasmCodec | undefined;
    if (tsPath === undefined || wasmPath === undefined) continue;
    for (let e = 0; e < epochCount; e++) {
      if (!equalBytes(tsPath.recordBytes(e), wasmPath.recordBytes(e))) {
        throw new Error(`${wasmName}: the records of epoch ${e} of ${trace.name} differ from ${tsName}'s`);
      }
    }
  }
  const counters = codecs.map((c) => (c instanceof OursCodec || c instanceof OursWasmCodec ? [...c.counters] : null));

  const encodeNs = codecs.map(() => ({ epoch0: [] as number[], dirty: [] as number[] }));
  const decodeNs = codecs.map(() => ({ epoch0: [] as number[], dirty: [] as number[] }));
  for (let pass = 0; pass < passes; pass++) {
    for (let j = 0; j < codecs.length; j++) {
      const k = (j + pass) % codecs.length;
      const codec = codecs[k];
      codec.reset();
      gc?.();
      let e0 = 0;
      let rest = 0;
      for (let e = 0; e < epochCount; e++) {
        const t0 = process.hrtime.bigint();
        const n = codec.encode(e);
        const ns = Number(process.hrtime.bigint() - t0);
        if (e === 0) e0 = ns;
        else rest += ns;
        if (n !== outBytes[k][e]) throw new Error(`${codec.name}: epoch ${e} gave ${n} bytes in pass ${pass + 1}, ${outBytes[k][e]} in the warm-up`);
      }
      encodeNs[k].epoch0.push(e0);
      encodeNs[k].dirty.push(rest);
      if (!codec.decodes) continue;
      e0 = 0;
      rest = 0;
      for (let e = 0; e < epochCount; e++) {
        const t0 = process.hrtime.bigint();
        codec.decode(e);
        const ns = Number(process.hrtime.bigint() - t0);
        if (e === 0) e0 = ns;
        else rest += ns;
      }
      decodeNs[k].epoch0.push(e0);
      decodeNs[k].dirty.push(rest);
    }
  }

  const e0 = trace.epochs.slice(0, 1);
  const later = trace.epochs.slice(1);
  const pagesOf = (list: PreparedEpoch[]): number => list.reduce((s, e) => s + e.count, 0);
  const phase = (k: number, list: PreparedEpoch[], out: number, enc: number[], dec: number[] | null): PhaseFigures => {
    const bytesIn = pagesOf(list) * trace.pageSize;
    return {
      epochs: list.length,
      pages: pagesOf(list),
      bytesIn,
      bytesOut: out,
      ratio: bytesIn === 0 ? 0 : out / bytesIn,
      encode: speed(bytesIn, enc),
      decode: dec === null ? null : speed(bytesIn, dec),
    };
  };
  const results = codecs.map((codec, k): CodecResult => {
    const out0 = epochCount > 0 ? outBytes[k][0] : 0;
    const outRest = outBytes[k].slice(1).reduce((s, n) => s + n, 0);
    const result: CodecResult = {
      codec: names[k],
      description: codec.description,
      roundTripChecked: codec.decodes,
      epoch0: phase(k, e0, out0, encodeNs[k].epoch0, codec.decodes ? decodeNs[k].epoch0 : null),
      dirty: phase(k, later, outRest, encodeNs[k].dirty, codec.decodes ? decodeNs[k].dirty : null),
    };
    const list = counters[k];
    if (list !== null) result.counters = { epoch0: sumCounters(list.slice(0, 1)), dirty: sumCounters(list.slice(1)) };
    return result;
  });
  return { source: trace.name, pageSize: trace.pageSize, epochs: epochCount, passes, cacheBytes, codecs: results };
}

// ---------------------------------------------------------------------------
// Command line

const PROFILES: readonly TraceProfile[] = ['sparse', 'mixed', 'rewrite', 'zeros'];

const HELP = `Single-thread kernel benchmark: our codec against zstd, lz4, deflate and memcpy.

usage: node dist/bench/kernel.js [options]

  --trace PATH       RMTR trace to measure (repeatable)
  --profile NAME     synthetic trace from src/trace-gen.ts (repeatable): ${PROFILES.join(', ')}
  --pages N          image pages of synthetic traces (default 4096)
  --epochs N         epochs of synthetic traces (default 20)
  --seed N           seed of synthetic traces (default 1)
  --passes N         timed passes after the warm-up pass (default 5)
  --quick            2 timed passes (for npm run bench)
  --codec NAME       measure only these codecs (repeatable; default all):
                     ${CODEC_NAMES.join(', ')}
  --json-out PATH    also write the results as JSON
  --help             this text

With neither --trace nor --profile: the real trace
${DEFAULT_TRACE}
and the 'mixed' profile. Run with node --expose-gc to collect garbage
between codecs.`;

interface CliOptions {
  traces: string[];
  profiles: TraceProfile[];
  pages: number;
  epochs: number;
  seed: number;
  passes: number;
  /** Codecs to measure (all when empty). */
  codecs: CodecName[];
  jsonOut: string | null;
}

function parseArgs(argv: string[]): CliOptions | null {
  const opts: CliOptions = { traces: [], profiles: [], pages: 4096, epochs: 20, seed: 1, passes: 5, codecs: [], jsonOut: null };
  let quick = false;
  let passesGiven = false;
  const int = (flag: string, value: string | undefined, min: number): number => {
    const n = Number(value);
    if (value === undefined || !Number.isSafeInteger(n) || n < min) throw new Error(`${flag} needs an integer >= ${min}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${arg} needs a value`);
      return v;
    };
    switch (arg) {
      case '--help':
      case '-h':
        return null;
      case '--trace':
        opts.traces.push(value());
        break;
      case '--profile': {
        const p = value();
        if (!(PROFILES as readonly string[]).includes(p)) throw new Error(`unknown profile ${p}; known: ${PROFILES.join(', ')}`);
        opts.profiles.push(p as TraceProfile);
        break;
      }
      case '--pages':
        opts.pages = int(arg, argv[++i], 1);
        break;
      case '--epochs':
        opts.epochs = int(arg, argv[++i], 1);
        break;
      case '--seed':
        opts.seed = int(arg, argv[++i], 0);
        break;
      case '--passes':
        opts.passes = int(arg, argv[++i], 1);
        passesGiven = true;
        break;
      case '--quick':
        quick = true;
        break;
      case '--codec': {
        const c = value();
        if (!(CODEC_NAMES as readonly string[]).includes(c)) throw new Error(`unknown codec ${c}; known: ${CODEC_NAMES.join(', ')}`);
        opts.codecs.push(c as CodecName);
        break;
      }
      case '--json-out':
        opts.jsonOut = value();
        break;
      default:
        throw new Error(`unknown argument ${arg} (--help lists the options)`);
    }
  }
  if (quick && !passesGiven) opts.passes = 2;
  if (opts.traces.length === 0 && opts.profiles.length === 0) {
    opts.traces.push(DEFAULT_TRACE);
    opts.profiles.push('mixed');
  }
  return opts;
}

function gbps(s: Speed | null): string {
  return s === null ? '–' : `${s.bestGBps.toFixed(2)} (${s.medianGBps.toFixed(2)})`;
}

function pct(ratio: number, bytesIn: number): string {
  return bytesIn === 0 ? '–' : `${(ratio * 100).toFixed(2)}%`;
}

/** One markdown table per trace: ratio and GB/s best (median) for epoch 0 and for the dirty epochs. */
export function formatTable(r: KernelResult): string {
  const first = r.codecs[0];
  const lines = [
    `### ${r.source}`,
    '',
    `page ${r.pageSize} B, ${r.epochs} epochs; epoch 0: ${first.epoch0.pages} pages (${(first.epoch0.bytesIn / 1e6).toFixed(1)} MB); ` +
      `epochs 1-${r.epochs - 1}: ${first.dirty.pages} pages (${(first.dirty.bytesIn / 1e6).toFixed(1)} MB); ` +
      `GB/s of input, best (median) of ${r.passes} passes`,
    '',
    '| codec | e0 out/in | e0 encode GB/s | e0 decode GB/s | dirty out/in | dirty encode GB/s | dirty decode GB/s |',
    '|---|--:|--:|--:|--:|--:|--:|',
  ];
  for (const c of r.codecs) {
    lines.push(
      `| ${c.codec} | ${c.codec === 'copy' ? '100%' : pct(c.epoch0.ratio, c.epoch0.bytesIn)} | ${gbps(c.epoch0.encode)} | ${gbps(c.epoch0.decode)} | ` +
        `${c.codec === 'copy' ? '100%' : pct(c.dirty.ratio, c.dirty.bytesIn)} | ${gbps(c.dirty.encode)} | ${gbps(c.dirty.decode)} |`,
    );
  }
  const ours = r.codecs.find((c) => c.counters !== undefined);
  if (ours?.counters !== undefined) {
    const d = ours.counters.dirty;
    lines.push(
      '',
      `ours, epochs 1-${r.epochs - 1}: ${d.cacheHits} cache hits (${d.unchangedPages} unchanged, ${d.overflows} deltas >= FULL), ` +
        `${d.cacheMisses} misses, ${d.zeroPages} zero pages, ${d.rawPages} raw pages. ` +
        'Our out/in counts each record as sent (type byte, ULEB128 pfn, body); the baselines carry no pfn.',
    );
  }
  return lines.join('\n');
}

async function main(argv: string[]): Promise<void> {
  let opts: CliOptions | null;
  try {
    opts = parseArgs(argv);
  } catch (err) {
    console.error(`kernel bench: ${(err as Error).message}`);
    process.exitCode = 2;
    return;
  }
  if (opts === null) {
    console.log(HELP);
    return;
  }
  const started = Date.now();
  const loadBefore = loadavg();
  const results: KernelResult[] = [];
  const sources: { name: string; load: () => Promise<Uint8Array> }[] = [
    ...opts.traces.map((path) => ({ name: path, load: () => readFile(path) })),
    ...opts.profiles.map((profile) => ({
      name: `synthetic ${profile}, ${opts.pages} pages, ${opts.epochs} epochs, seed ${opts.seed}`,
      load: async () => generateTrace({ seed: opts.seed, epochs: opts.epochs, pages: opts.pages, profile }),
    })),
  ];
  for (const source of sources) {
    const trace = prepareTrace(source.name, await source.load());
    const result = measureKernel(trace, { passes: opts.passes, codecs: opts.codecs.length > 0 ? opts.codecs : CODEC_NAMES });
    results.push(result);
    console.log(formatTable(result) + '\n');
  }
  const seconds = (Date.now() - started) / 1000;
  console.log(
    `node ${process.version}, ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}; load average ${loadBefore[0].toFixed(2)} -> ${loadavg()[0].toFixed(2)}; ${seconds.toFixed(1)} s`,
  );
  if (opts.jsonOut !== null) {
    const doc = {
      bench: 'kernel',
      date: new Date().toISOString(),
      node: process.version,
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? null,
      loadAverage: { before: loadBefore, after: loadavg() },
      seconds,
      options: { ...opts },
      results,
    };
    await writeFile(opts.jsonOut, JSON.stringify(doc, null, 2) + '\n');
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main(process.argv.slice(2));
}
