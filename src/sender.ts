import { availableParallelism } from 'node:os';
import { ServiceError } from './errors.js';
import { minFrameBytes } from './frames.js';
import { CACHE_POLICIES, isCachePolicyName, type CachePolicyName } from '../workers/cache-policy.js';
import { DEFAULT_BATCH_BYTES, Stream, type StreamConfig, type StreamHost } from './stream.js';
import { WorkerPool } from './worker-pool.js';
import type { KernelChoice } from '../workers/protocol.js';
import { CODEC_NAMES, MAX_FRAME_BYTES, PFN_LIMIT, isCodecName, pageShiftOf, type CodecName } from './wire.js';

export interface SenderOptions {
  /** Encoding worker threads shared by all streams (default: cores, at most 4). */
  workers?: number;
  /** Streams open at once (default 64). */
  maxStreams?: number;
  /** Largest epoch body a stream may accept, and its default (default 1 GiB). */
  maxEpochBytes?: number;
  /**
   * Service-wide memory budget in bytes: every stream's cache budget plus its
   * slabs (Stream.slabBytes). A stream or an epoch that would take the total
   * past it is refused with 503 MEMORY_BUDGET_EXCEEDED (default 4 GiB).
   */
  memoryBudgetBytes?: number;
  /** Epochs in flight at once, all streams together; past it, 503 OVERLOADED (default 2 x workers). */
  maxConcurrentEpochs?: number;
  /** Let tests make a worker exit (never in production). */
  allowFaults?: boolean;
  /**
   * Page codecs the workers run: 'wasm' (default), the WebAssembly SIMD
   * kernel (src/codec/remus-wasm.ts), or 'js', the portable TypeScript
   * codecs. Both send the same bytes.
   */
  kernel?: KernelChoice;
  /**
   * Input bytes per encode batch (default 8 MiB, DEFAULT_BATCH_BYTES; at
   * least one 64-page digest group): a batch is encoded as soon as its pages
   * have arrived, one task per partition. Smaller batches send the first
   * frames sooner; larger ones amortise the task round trips. Each stream
   * reserves two batches of record regions.
   */
  batchBytes?: number;
}

/** Largest batchBytes: more buys nothing, and two batches of record regions are reserved per stream. */
export const MAX_BATCH_BYTES = 256 * 1024 * 1024;

export const KERNEL_CHOICES: readonly KernelChoice[] = ['wasm', 'js'];
export const DEFAULT_KERNEL: KernelChoice = 'wasm';

export function isKernelChoice(value: unknown): value is KernelChoice {
  return value === 'wasm' || value === 'js';
}

export const DEFAULT_PAGE_SIZE = 4096;
/** The seed's cache: 8192 pages of 4 KiB. */
export const DEFAULT_CACHE_BYTES = 32 * 1024 * 1024;
/** Small enough that the first frame leaves early, large enough to amortise headers. */
export const DEFAULT_FRAME_BYTES = 1024 * 1024;
export const DEFAULT_MAX_EPOCH_BYTES = 1024 * 1024 * 1024;
export const DEFAULT_MAX_STREAMS = 64;
export const MAX_PARTITIONS = 64;
export const DEFAULT_MEMORY_BUDGET_BYTES = 4 * 1024 * 1024 * 1024;
/** Epochs in flight per worker thread, by default: one encoding while the next one's body arrives. */
export const DEFAULT_EPOCHS_PER_WORKER = 2;
/** Retry-After (seconds) on OVERLOADED: an epoch takes milliseconds to a few seconds. */
export const OVERLOADED_RETRY_AFTER_S = 1;
/** Retry-After (seconds) on MEMORY_BUDGET_EXCEEDED: memory comes back only when a stream is deleted. */
export const MEMORY_RETRY_AFTER_S = 5;

/**
 * Streams use the seed's records in zstd chunks unless they ask otherwise: on
 * every real trace we measured it sends less than half the seed's bytes
 * (docs/PERFORMANCE.md "Wire size"). 'remus' stays for receivers that
 * speak only the seed's format.
 */
export const DEFAULT_CODEC: CodecName = 'remus-zstd';

/**
 * W-TinyLFU unless a stream asks for the seed's LRU: on the redis trace it
 * keeps the pages dirtied again and again that a whole-image epoch 0 pushes
 * out of an LRU (hit rate at 32 MiB 0.887 -> 0.992; docs/PERFORMANCE.md).
 */
export const DEFAULT_CACHE_POLICY: CachePolicyName = 'tinylfu';

export type StreamRequest = Partial<Omit<StreamConfig, 'partitions'>> & { workers?: number };

/**
 * The compression side of the service: one pool of encoding workers shared by
 * every stream, and the open streams. A stream's partitions are spread over
 * the workers starting at a rotating offset, so streams share the cores.
 */
export class Sender implements StreamHost {
  readonly pool: WorkerPool;
  readonly maxStreams: number;
  readonly maxEpochBytes: number;
  readonly memoryBudgetBytes: number;
  readonly maxConcurrentEpochs: number;
  readonly kernel: KernelChoice;
  readonly batchBytes: number;
  private readonly streams = new Map<string, Stream>();
  private nextId = 1;
  private nextFirstWorker = 0;
  private running = 0;
  /** Requests refused by load shedding, by code (OVERLOADED, MEMORY_BUDGET_EXCEEDED). */
  readonly shed: Record<string, number> = { OVERLOADED: 0, MEMORY_BUDGET_EXCEEDED: 0 };

  constructor(options: SenderOptions = {}) {
    const workers = options.workers ?? Math.min(availableParallelism(), 4);
    if (!Number.isInteger(workers) || workers < 1 || workers > MAX_PARTITIONS) {
      throw new ServiceError('INVALID_CONFIG', `workers must be an integer from 1 to ${MAX_PARTITIONS}, got ${workers}`);
    }
    const kernel = options.kernel ?? DEFAULT_KERNEL;
    if (!isKernelChoice(kernel)) {
      throw new ServiceError('INVALID_CONFIG', `kernel must be one of ${KERNEL_CHOICES.map((k) => `'${k}'`).join(', ')}, got ${JSON.stringify(kernel)}`);
    }
    this.kernel = kernel;
    const batchBytes = options.batchBytes ?? DEFAULT_BATCH_BYTES;
    if (!Number.isSafeInteger(batchBytes) || batchBytes < 1 || batchBytes > MAX_BATCH_BYTES) {
      throw new ServiceError('INVALID_CONFIG', `batchBytes must be an integer from 1 to ${MAX_BATCH_BYTES}, got ${batchBytes}`);
    }
    this.batchBytes = batchBytes;
    this.pool = new WorkerPool({ workers, allowFaults: options.allowFaults });
    this.maxStreams = options.maxStreams ?? DEFAULT_MAX_STREAMS;
    this.maxEpochBytes = options.maxEpochBytes ?? DEFAULT_MAX_EPOCH_BYTES;
    this.memoryBudgetBytes = options.memoryBudgetBytes ?? DEFAULT_MEMORY_BUDGET_BYTES;
    this.maxConcurrentEpochs = options.maxConcurrentEpochs ?? DEFAULT_EPOCHS_PER_WORKER * workers;
    if (!Number.isSafeInteger(this.memoryBudgetBytes) || this.memoryBudgetBytes < 1) {
      throw new ServiceError('INVALID_CONFIG', `memoryBudgetBytes must be a positive integer, got ${this.memoryBudgetBytes}`);
    }
    if (!Number.isInteger(this.maxConcurrentEpochs) || this.maxConcurrentEpochs < 1) {
      throw new ServiceError('INVALID_CONFIG', `maxConcurrentEpochs must be a positive integer, got ${this.maxConcurrentEpochs}`);
    }
  }

  /** Bytes counted against the memory budget now: every stream's cache budget and slabs. */
  get memoryInUse(): number {
    let total = 0;
    for (const s of this.streams.values()) total += s.config.cacheBytes + s.slabBytes;
    return total;
  }

  /** Epochs running now, all streams together. */
  get epochsInFlight(): number {
    return this.running;
  }

  // StreamHost: called by the streams before a slab grows and around each epoch.
  reserveSlab(stream: Stream, bytes: number, what: string): void {
    const used = this.memoryInUse;
    if (used + bytes <= this.memoryBudgetBytes) return;
    this.shed.MEMORY_BUDGET_EXCEEDED++;
    throw new ServiceError(
      'MEMORY_BUDGET_EXCEEDED',
      `stream ${stream.id} needs ${bytes} more bytes for its ${what}; ${used} of the service's ${this.memoryBudgetBytes}-byte memory budget are in use ` +
        `(${this.streams.size} streams: cache budgets and slabs); retry later, delete a stream, or raise --memory-budget`,
      503,
      { 'retry-after': String(MEMORY_RETRY_AFTER_S) },
    );
  }

  enterEpoch(stream: Stream): void {
    if (this.running >= this.maxConcurrentEpochs) {
      this.shed.OVERLOADED++;
      throw new ServiceError(
        'OVERLOADED',
        `${this.running} epochs are in flight, the service limit is ${this.maxConcurrentEpochs}; epoch of stream ${stream.id} not started, retry after ${OVERLOADED_RETRY_AFTER_S} s`,
        503,
        { 'retry-after': String(OVERLOADED_RETRY_AFTER_S) },
      );
    }
    this.running++;
  }

  leaveEpoch(): void {
    this.running--;
  }

  /** Validate a request against the service limits and fill in the defaults. */
  resolveConfig(request: StreamRequest): StreamConfig {
    const config: StreamConfig = {
      pageSize: request.pageSize ?? DEFAULT_PAGE_SIZE,
      cacheBytes: request.cacheBytes ?? DEFAULT_CACHE_BYTES,
      partitions: request.workers ?? this.pool.size,
      frameBytes: request.frameBytes ?? DEFAULT_FRAME_BYTES,
      pfnLimit: request.pfnLimit ?? PFN_LIMIT,
      maxEpochBytes: request.maxEpochBytes ?? this.maxEpochBytes,
      codec: request.codec ?? DEFAULT_CODEC,
      cachePolicy: request.cachePolicy ?? DEFAULT_CACHE_POLICY,
    };
    const bad = (field: string, why: string): never => {
      throw new ServiceError('INVALID_CONFIG', `${field} ${why}`);
    };
    if (pageShiftOf(config.pageSize) < 0) bad('pageSize', `must be a power of two from 512 to 65536, got ${config.pageSize}`);
    if (!Number.isInteger(config.cacheBytes) || config.cacheBytes < 0) bad('cacheBytes', `must be a non-negative integer, got ${config.cacheBytes}`);
    if (!Number.isInteger(config.partitions) || config.partitions < 1 || config.partitions > MAX_PARTITIONS) {
      bad('workers', `must be an integer from 1 to ${MAX_PARTITIONS}, got ${config.partitions}`);
    }
    const minFrame = minFrameBytes(config.pageSize);
    if (!Number.isInteger(config.frameBytes) || config.frameBytes < minFrame || config.frameBytes > MAX_FRAME_BYTES) {
      bad('frameBytes', `must be from ${minFrame} (one worst-case record of a ${config.pageSize}-byte page) to ${MAX_FRAME_BYTES}, got ${config.frameBytes}`);
    }
    if (!Number.isInteger(config.pfnLimit) || config.pfnLimit < 1 || config.pfnLimit > PFN_LIMIT) {
      bad('pfnLimit', `must be an integer from 1 to 2^48, got ${config.pfnLimit}`);
    }
    if (!Number.isInteger(config.maxEpochBytes) || config.maxEpochBytes < 16 || config.maxEpochBytes > this.maxEpochBytes) {
      bad('maxEpochBytes', `must be from 16 to the service limit ${this.maxEpochBytes}, got ${config.maxEpochBytes}`);
    }
    if (!isCachePolicyName(config.cachePolicy)) {
      bad('cachePolicy', `must be one of ${CACHE_POLICIES.map((c) => `'${c}'`).join(', ')}, got ${JSON.stringify(config.cachePolicy)}`);
    }
    if (!isCodecName(config.codec)) {
      bad('codec', `must be one of ${CODEC_NAMES.map((c) => `'${c}'`).join(', ')}, got ${JSON.stringify(config.codec)}`);
    }
    return config;
  }

  create(request: StreamRequest): Stream {
    const config = this.resolveConfig(request);
    if (this.streams.size >= this.maxStreams) {
      throw new ServiceError('TOO_MANY_STREAMS', `${this.streams.size} streams are open, the limit is ${this.maxStreams}; delete one first`, 503);
    }
    const needed = config.cacheBytes + Stream.initialSlabBytes(config, this.batchBytes);
    const used = this.memoryInUse;
    if (used + needed > this.memoryBudgetBytes) {
      this.shed.MEMORY_BUDGET_EXCEEDED++;
      throw new ServiceError(
        'MEMORY_BUDGET_EXCEEDED',
        `a stream of this configuration needs ${needed} bytes (cacheBytes ${config.cacheBytes} + ${needed - config.cacheBytes} of slabs); ` +
          `${used} of the service's ${this.memoryBudgetBytes}-byte memory budget are in use by ${this.streams.size} streams; ` +
          'delete a stream, ask for a smaller cacheBytes, or raise --memory-budget',
        503,
        { 'retry-after': String(MEMORY_RETRY_AFTER_S) },
      );
    }
    // All of a stream's caches and slabs share one wasm memory (4 GiB at most).
    const problem = Stream.configProblem(config, this.batchBytes);
    if (problem !== null) throw new ServiceError('INVALID_CONFIG', problem);
    const id = `s${this.nextId++}`;
    const stream = new Stream(id, config, this.pool, this.nextFirstWorker, this, this.kernel, this.batchBytes);
    this.nextFirstWorker = (this.nextFirstWorker + config.partitions) % this.pool.size;
    this.streams.set(id, stream);
    return stream;
  }

  /** The stream `id`, or undefined. */
  find(id: string): Stream | undefined {
    return this.streams.get(id);
  }

  get(id: string): Stream {
    const stream = this.find(id);
    if (stream === undefined) throw new ServiceError('STREAM_NOT_FOUND', `no stream ${id}`, 404);
    return stream;
  }

  list(): Stream[] {
    return [...this.streams.values()];
  }

  async delete(id: string): Promise<void> {
    const stream = this.get(id);
    this.streams.delete(id);
    await stream.close();
  }

  async close(): Promise<void> {
    await Promise.all([...this.streams.values()].map((s) => s.close()));
    this.streams.clear();
    await this.pool.close();
  }
}
