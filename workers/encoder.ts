import { workerData } from 'piscina';
import { CachePartition, exerciseCachePartitions } from './cache-partition.js';
import type { EncodeResult, EncodeTask, InvalidateTask, WorkerData, WorkerTask } from './protocol.js';
import { encodeRemusDelta, encodeRemusFull, isZeroPage } from '../src/codec/remus.js';
import { DIGEST_BYTES, DIGEST_GROUP_PAGES, hashDigestGroup } from '../src/digest.js';
import { readPfn, KIND_RAW } from '../src/epoch-record.js';
import { encodeXbzrleBody, XBZRLE_FULL, XBZRLE_UNCHANGED } from '../src/codec/xbzrle.js';
import { CHUNK_OVERHEAD_BYTES, CODEC_XBZRLE, RECORD_REMUS, RECORD_ZERO, writeUleb128 } from '../src/wire.js';
import { ChunkWriter, CHUNK_INDEX_RESERVE_BYTES, CHUNK_TARGET_BYTES, chunkHasRoom } from '../src/codec/chunk.js';
import { maxRecordBytes } from '../src/frames.js';
import { instantiateRemusWasm, type KernelMemory, type RemusWasmKernel } from '../src/codec/remus-wasm.js';

/**
 * The piscina worker. Each worker runs in a single-thread pool of its own and
 * owns, for every stream, the cache partitions mapped to it; tasks for one
 * partition therefore run one after the other, in submission order.
 */
const partitions = new Map<string, CachePartition>();
/** The kernel instance per stream (over that stream's arena), made on the stream's first task in this thread. */
const kernels = new Map<string, RemusWasmKernel>();
/** Codec 3 without an arena (the kernel bench): this thread's scratch the page records gather in before a chunk is written. */
const SCRATCH_BYTES = CHUNK_INDEX_RESERVE_BYTES + CHUNK_TARGET_BYTES;
const chunkWriter = new ChunkWriter();
let ownScratch: Uint8Array | null = null;
const { allowFaults } = (workerData ?? { allowFaults: false }) as WorkerData;
/** Exit status of a worker killed by fault injection (EX_SOFTWARE). */
const EXIT_INJECTED_FAULT = 70;

// Before the first task: every path of the cache bookkeeping, so that V8
// never optimizes the encode loop around a branch it has not seen (see
// exerciseCachePartitions).
exerciseCachePartitions();

function partitionKey(stream: string, partition: number): string {
  return `${stream}/${partition}`;
}

function partitionFor(task: EncodeTask, arena: SharedArrayBuffer | null): CachePartition {
  const key = partitionKey(task.stream, task.partition);
  let part = partitions.get(key);
  const words = task.pageSize / 4;
  const cacheOffset = arena === null ? -1 : (task.cacheOffset ?? 0);
  if (
    part === undefined || part.slotCount !== task.slotCount || part.wordsPerPage !== words ||
    part.cacheOffset !== cacheOffset || part.policy !== task.cachePolicy
  ) {
    // In the arena, the slab is fixed for the stream's life: a view made
    // once. A partition that restarts (worker replaced, drop) starts with an
    // empty map over the same bytes; every slot is written whole before use.
    const slab = arena === null ? undefined : new Uint32Array(arena, cacheOffset, task.slotCount * words);
    part = new CachePartition(task.pageSize, task.slotCount, task.cachePolicy, slab, cacheOffset);
    partitions.set(key, part);
  }
  return part;
}

/** The kernel over the task's arena: instantiated once per stream, again when the arena grew past what this instance knows. */
function kernelFor(task: EncodeTask, memory: KernelMemory): RemusWasmKernel {
  let k = kernels.get(task.stream);
  if (k === undefined || k.memory.buffer.byteLength < task.input.byteLength) {
    k = instantiateRemusWasm(memory);
    kernels.set(task.stream, k);
  }
  return k;
}

function encode(task: EncodeTask): EncodeResult {
  const started = process.hrtime.bigint();
  // The service passes its arena (a shared wasm memory whose buffer is both
  // `input` and `work`, holding the cache slabs and chunk scratch too); the
  // kernel bench's 'ours' row passes bare buffers and runs the TypeScript codecs.
  const arena = task.memory !== undefined && task.work === task.input && task.cacheOffset !== undefined ? task.input : null;
  const k = arena !== null && task.kernel !== 'js' ? kernelFor(task, task.memory as KernelMemory) : null;
  const part = partitionFor(task, arena);
  const input8 = new Uint8Array(task.input);
  const input32 = new Uint32Array(task.input);
  // The service passes one arena for both (so FULL pages copy natively); the kernel bench may not.
  const work8: Uint8Array = task.work === task.input ? input8 : new Uint8Array(task.work);
  const indices = new Int32Array(task.indices, task.indexStart * 4, task.indexCount);
  const records = new Int32Array(task.records);
  const { pageSize, pfnOffset, kindOffset, pageOffset } = task;
  const words = pageSize / 4;
  const slab = part.slab;
  // Byte offset of the cache slab in the arena (the kernel's addresses).
  const cacheAt = part.cacheOffset;
  // One byte view of the cache per task, for the byte-granular XBZRLE codec.
  const xbzrle = task.codec === CODEC_XBZRLE;
  const slab8 = new Uint8Array(slab.buffer, slab.byteOffset, slab.byteLength);
  const result: EncodeResult = {
    end: 0, cacheHits: 0, cacheMisses: 0, zeroPages: 0, rawPages: 0,
    unchangedPages: 0, overflows: 0, cachedPages: 0, busyNs: 0,
  };

  // Codecs 1 and 2 write page records straight into the task's region.
  // Codec 3 gathers them in a chunk scratch (the partition's, in the arena;
  // else this thread's) and writes each full chunk, compressed, into the
  // region at `regionPos`. Positions are in out8, where the scratch starts
  // at scratchAt.
  const chunked = task.chunkBytes > 0;
  let out8: Uint8Array = work8;
  let scratch8: Uint8Array = work8;
  let scratchAt = 0;
  if (chunked) {
    if (arena !== null) {
      scratchAt = task.scratchOffset ?? -1;
      scratch8 = new Uint8Array(arena, scratchAt, SCRATCH_BYTES);
    } else {
      ownScratch ??= new Uint8Array(SCRATCH_BYTES);
      out8 = scratch8 = ownScratch;
    }
  }
  const recordLimit = chunked ? scratchAt + SCRATCH_BYTES : task.outLimit;
  const recordsStart = scratchAt + CHUNK_INDEX_RESERVE_BYTES;
  const worstRecord = maxRecordBytes(pageSize);
  // Codec 3: records gather after the room for the chunk's index section.
  let pos = chunked ? recordsStart : task.outStart;
  let regionPos = task.outStart;
  /** Position in `indices` of the open chunk's first page. */
  let chunkFirst = 0;

  const crashAt = allowFaults ? (task.crashAfterPages ?? -1) : -1;
  for (let n = 0; n < indices.length; n++) {
    // A death half way through a task, after some cache slots moved: the
    // case the stream's invalidation exists for.
    if (n === crashAt) process.exit(EXIT_INJECTED_FAULT);
    const i = indices[n];
    if (chunked && n > chunkFirst && !chunkHasRoom(pos - recordsStart, n - chunkFirst, worstRecord, task.chunkBytes)) {
      regionPos = writeChunk(task, scratch8, work8, records, indices, regionPos, pos - scratchAt, chunkFirst, n);
      pos = recordsStart;
      chunkFirst = n;
    }
    const pfn = readPfn(input8, pfnOffset + 8 * i);
    const pageByte = pageOffset + i * pageSize;
    const pageWord = pageByte >>> 2;
    const recordStart = pos;
    const typePos = pos++;
    pos = writeUleb128(out8, pos, pfn);

    // Every codec shares the cache, zero-page, raw-page and miss logic; a
    // FULL body (0x80, then the page) is the same bytes under all. Only a
    // cache hit is encoded differently. The record type of a page body is 1
    // under all (RECORD_REMUS = RECORD_XBZRLE). Each page operation runs in
    // the wasm kernel (k, byte offsets in the arena) or in TypeScript.
    if (input8[kindOffset + i] === KIND_RAW) {
      // Raw pages (page tables) are sent as they are and leave the cache,
      // exactly as the seed invalidates them.
      part.remove(pfn);
      out8[typePos] = RECORD_REMUS;
      pos = k !== null ? k.encodeFull(pageByte, pageSize, pos) : encodeRemusFull(input8, pageByte, pageSize, out8, pos);
      result.rawPages++;
    } else if (k !== null) {
      // The kernel's path: one pass over the page where it can. A miss, and
      // a hit of the seed's encoding, both encode the page and find it all
      // zero (end 0) in that pass; the page's record is then ZERO and its
      // slot holds the zeros, as on the portable path below, whose order of
      // policy calls this keeps (a lookup, an insert on a miss).
      let slot = part.lookup(pfn);
      const hit = slot >= 0;
      if (!hit) slot = part.insert(pfn);
      const cached = cacheAt + slot * pageSize;
      let end: number;
      if (!hit) {
        end = slot >= 0 ? k.encodeFullOrZero(pageByte, pageSize, pos, cached) : k.isZeroPage(pageByte, pageSize) ? 0 : k.encodeFull(pageByte, pageSize, pos);
      } else if (!xbzrle) {
        end = k.encodeDeltaOrZero(pageByte, cached, pageSize, pos);
      } else if (k.isZeroPage(pageByte, pageSize)) {
        k.fill(cached, 0, pageSize);
        end = 0;
      } else {
        // QEMU's save_xbzrle_page: the encoder leaves the cached copy alone;
        // it becomes the new page whenever the page changed (a delta, or an
        // overflow sent FULL), which is what the receiver then holds.
        end = k.encodeXbzrleBody(pageByte, cached, pageSize, pos);
        if (out8[pos] !== XBZRLE_UNCHANGED) k.copy(cached, pageByte, pageSize);
      }
      if (end === 0) {
        out8[typePos] = RECORD_ZERO;
        result.zeroPages++;
      } else {
        out8[typePos] = RECORD_REMUS;
        if (hit) {
          result.cacheHits++;
          const kind = out8[pos];
          if (xbzrle ? kind === XBZRLE_UNCHANGED : end - pos === 1) result.unchangedPages++;
          else if (xbzrle ? kind === XBZRLE_FULL : end - pos >= pageSize + 1) result.overflows++;
        } else {
          result.cacheMisses++;
        }
        pos = end;
      }
    } else if (isZeroPage(input32, pageWord, words)) {
      // One byte on the wire whatever the cache holds; the cache learns the
      // zeros so the page's next delta is taken against them.
      out8[typePos] = RECORD_ZERO;
      let slot = part.lookup(pfn);
      if (slot < 0) slot = part.insert(pfn);
      if (slot >= 0) slab.fill(0, slot * words, slot * words + words);
      result.zeroPages++;
    } else {
      out8[typePos] = RECORD_REMUS;
      let slot = part.lookup(pfn);
      const bodyStart = pos;
      if (slot >= 0 && xbzrle) {
        // As on the kernel's path above.
        pos = encodeXbzrleBody(input8, pageByte, slab8, slot * pageSize, pageSize, out8, pos);
        result.cacheHits++;
        const kind = out8[bodyStart];
        if (kind === XBZRLE_UNCHANGED) {
          result.unchangedPages++;
        } else {
          copyWords(input32, pageWord, slab, slot * words, words);
          if (kind === XBZRLE_FULL) result.overflows++;
        }
      } else if (slot >= 0) {
        pos = encodeRemusDelta(input32, pageWord, slab, slot * words, words, out8, pos);
        result.cacheHits++;
        if (pos - bodyStart === 1) result.unchangedPages++;
        else if (pos - bodyStart >= pageSize + 1) result.overflows++;
      } else {
        slot = part.insert(pfn);
        if (slot >= 0) copyWords(input32, pageWord, slab, slot * words, words);
        pos = encodeRemusFull(input8, pageByte, pageSize, out8, pos);
        result.cacheMisses++;
      }
    }
    if (pos > recordLimit) {
      // The main thread sizes every region for the worst case; reaching here
      // is a bug, and failing the epoch is the only safe answer.
      throw new Error(`encode region overflow: ${pos} > ${recordLimit}`);
    }
    if (chunked) {
      records[2 * i] = 0;
      records[2 * i + 1] = 0;
    } else {
      records[2 * i] = recordStart;
      records[2 * i + 1] = pos - recordStart;
    }
  }
  if (chunked && indices.length > chunkFirst) {
    regionPos = writeChunk(task, scratch8, work8, records, indices, regionPos, pos - scratchAt, chunkFirst, indices.length);
  }

  hashGroups(task, input8);
  result.end = chunked ? regionPos : pos;
  result.cachedPages = part.size;
  result.busyNs = Number(process.hrtime.bigint() - started);
  return result;
}

/**
 * Codec 3: write the records gathered in `scratch` (up to `recordsEnd`, an
 * offset in it), those of the pages indices[first, end), as one chunk at
 * work[regionPos..], and give it to its first page's index; returns the end.
 */
function writeChunk(
  task: EncodeTask, scratch: Uint8Array, work8: Uint8Array, records: Int32Array, indices: Int32Array,
  regionPos: number, recordsEnd: number, first: number, end: number,
): number {
  // Index section at its largest (4 + 3 per further page), as the region was sized.
  const rawMax = recordsEnd - CHUNK_INDEX_RESERVE_BYTES + CHUNK_OVERHEAD_BYTES + 3 * (end - first - 1);
  if (regionPos + rawMax > task.outLimit) {
    throw new Error(`encode region overflow: chunk of up to ${rawMax} bytes at ${regionPos} > ${task.outLimit}`);
  }
  const chunkEnd = chunkWriter.write(scratch, recordsEnd, indices, first, end, work8, regionPos);
  records[2 * indices[first]] = regionPos;
  records[2 * indices[first] + 1] = chunkEnd - regionPos;
  return chunkEnd;
}

/** Copy a page into a cache slot word by word: no view objects, no allocation. */
function copyWords(src: Uint32Array, srcWord: number, dst: Uint32Array, dstWord: number, words: number): void {
  for (let w = 0; w < words; w++) dst[dstWord + w] = src[srcWord + w];
}

function hashGroups(task: EncodeTask, input8: Uint8Array): void {
  if (task.groupFirst >= task.groupEnd) return;
  const hashes = new Uint8Array(task.groupHashes);
  for (let g = task.groupFirst; g < task.groupEnd; g += task.groupStep) {
    const first = g * DIGEST_GROUP_PAGES;
    const last = Math.min(first + DIGEST_GROUP_PAGES, task.pageCount);
    hashDigestGroup(
      input8.subarray(task.pfnOffset + 8 * first, task.pfnOffset + 8 * last),
      input8.subarray(task.pageOffset + first * task.pageSize, task.pageOffset + last * task.pageSize),
      hashes,
      g * DIGEST_BYTES,
    );
  }
}

function invalidate(task: InvalidateTask): void {
  const part = partitions.get(partitionKey(task.stream, task.partition));
  if (part === undefined) return;
  const input8 = new Uint8Array(task.input);
  for (let i = 0; i < task.count; i++) part.remove(readPfn(input8, task.pfnOffset + 8 * i));
}

function drop(stream: string): void {
  kernels.delete(stream);
  const prefix = `${stream}/`;
  for (const key of [...partitions.keys()]) {
    if (key.startsWith(prefix)) partitions.delete(key);
  }
}

export default function run(task: WorkerTask): EncodeResult | null {
  switch (task.op) {
    case 'encode':
      return encode(task);
    case 'invalidate':
      invalidate(task);
      return null;
    case 'drop':
      drop(task.stream);
      return null;
  }
}
