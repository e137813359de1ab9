/**
 * Messages between the main thread and the encoding workers. Page data never
 * travels in a message: tasks name regions of SharedArrayBuffer slabs that
 * both sides see.
 */
import type { CachePolicyName } from './cache-policy.js';
import type { KernelMemory } from '../src/codec/remus-wasm.js';

/** Which page codecs a worker runs: the WebAssembly SIMD kernel, or the portable TypeScript ones (same bytes). */
export type KernelChoice = 'wasm' | 'js';

/** Encode one shard's pages of one batch, and hash the digest groups assigned to this task. */
export interface EncodeTask {
  op: 'encode';
  stream: string;
  partition: number;
  pageSize: number;
  /** Codec byte of the stream (CODEC_REMUS, CODEC_XBZRLE or CODEC_REMUS_ZSTD): how the page records are encoded. */
  codec: number;
  /** Cache pages this partition may hold (fixed for the stream's life). */
  slotCount: number;
  /** The epoch record as received (TRACE.md layout). */
  input: SharedArrayBuffer;
  pfnOffset: number;
  kindOffset: number;
  pageOffset: number;
  /** Int32 page indices of this shard's pages, in request order. */
  indices: SharedArrayBuffer;
  indexStart: number;
  indexCount: number;
  /** Records are written to work[outStart, outLimit). */
  work: SharedArrayBuffer;
  outStart: number;
  outLimit: number;
  /** The partition's eviction policy (fixed for the stream's life). */
  cachePolicy: CachePolicyName;
  /** Codec 3: the raw-bytes limit of a chunk (chunkLimitBytes of the stream's frame size); 0 under the other codecs. */
  chunkBytes: number;
  /** Int32 pairs per page index: record offset in `work`, record length (codec 3: a chunk's at its first page, 0 for its other pages). */
  records: SharedArrayBuffer;
  /** 32-byte group hashes, indexed by group number. */
  groupHashes: SharedArrayBuffer;
  /** Hash groups groupFirst, groupFirst + groupStep, ... below groupEnd. */
  groupFirst: number;
  groupEnd: number;
  groupStep: number;
  /** Pages in the whole epoch (the last group may be short). */
  pageCount: number;
  /**
   * The stream's arena as a shared WebAssembly.Memory (the service always
   * sends it; `input` and `work` are then its buffer). With it, the
   * partition's cache slab lives in the arena at `cacheOffset`
   * (slotCount pages), and codec 3's chunk scratch at `scratchOffset`
   * (CHUNK_INDEX_RESERVE_BYTES + CHUNK_TARGET_BYTES). Without it (the kernel
   * bench's 'ours' row) the worker keeps the slab and the scratch itself
   * and runs the TypeScript codecs.
   */
  memory?: KernelMemory;
  cacheOffset?: number;
  scratchOffset?: number;
  /** Codecs to run over `memory` (default 'wasm'); ignored without `memory`. */
  kernel?: KernelChoice;
  /** Fault injection for tests: the worker exits after encoding this many pages. Honoured only when the pool allows faults. */
  crashAfterPages?: number;
}

/** Forget the given pfns (an aborted epoch's pages) so they go FULL next time. */
export interface InvalidateTask {
  op: 'invalidate';
  stream: string;
  partition: number;
  input: SharedArrayBuffer;
  pfnOffset: number;
  count: number;
}

/** Free every partition of a stream held by this worker (stream deleted or reset). */
export interface DropTask {
  op: 'drop';
  stream: string;
}

export type WorkerTask = EncodeTask | InvalidateTask | DropTask;

/** Counters of one encode task; QEMU's XBZRLE counters plus ours. */
export interface EncodeResult {
  /** End of the bytes written in `work`. */
  end: number;
  cacheHits: number;
  cacheMisses: number;
  zeroPages: number;
  rawPages: number;
  /** Hits whose page had not changed (one-byte EMPTY record). */
  unchangedPages: number;
  /** Hits whose delta was not smaller than a FULL record (remus), or that XBZRLE could not encode within its limit and sent FULL. */
  overflows: number;
  /** Pages held by this partition after the task. */
  cachedPages: number;
  /** Time spent in the task, in nanoseconds. */
  busyNs: number;
}

/** The counters of an encode task that add up over tasks and epochs. */
export type EncodeCounters = Pick<EncodeResult, 'cacheHits' | 'cacheMisses' | 'zeroPages' | 'rawPages' | 'unchangedPages' | 'overflows' | 'busyNs'>;

export function emptyEncodeCounters(): EncodeCounters {
  return { cacheHits: 0, cacheMisses: 0, zeroPages: 0, rawPages: 0, unchangedPages: 0, overflows: 0, busyNs: 0 };
}

/** Add `from`'s counters into `into`. */
export function addEncodeCounters(into: EncodeCounters, from: EncodeCounters): void {
  into.cacheHits += from.cacheHits;
  into.cacheMisses += from.cacheMisses;
  into.zeroPages += from.zeroPages;
  into.rawPages += from.rawPages;
  into.unchangedPages += from.unchangedPages;
  into.overflows += from.overflows;
  into.busyNs += from.busyNs;
}

export interface WorkerData {
  allowFaults: boolean;
}
