import { DIGEST_BYTES, DIGEST_GROUP_PAGES, digestGroupCount, foldEpochDigest } from './digest.js';
import { EpochBodyReader, type EpochBodySource, type EpochMetadata, type InputSlabProvider } from './epoch-body.js';
import { ServiceError } from './errors.js';
import { encodeAbortFrame, recordRegionBytes } from './frames.js';
import { FrameAssembler, type FrameSink } from './merge.js';
import { BatchSharder } from './sharding.js';
import type { WorkerPool } from './worker-pool.js';
import { addEncodeCounters, emptyEncodeCounters, type EncodeCounters, type EncodeResult, type EncodeTask, type KernelChoice } from '../workers/protocol.js';
import { FLAG_RESYNC, codecByte, pageShiftOf, type CodecName } from './wire.js';
import { CHUNK_INDEX_RESERVE_BYTES, CHUNK_TARGET_BYTES, chunkLimitBytes } from './codec/chunk.js';
import type { CachePolicyName } from '../workers/cache-policy.js';
import { createKernelMemory, instantiateRemusWasm, KERNEL_MAX_MEMORY_PAGES, WASM_PAGE_BYTES, type KernelMemory, type RemusWasmKernel } from './codec/remus-wasm.js';

export interface StreamConfig {
  pageSize: number;
  /** Delta cache budget in bytes, split evenly over the partitions. */
  cacheBytes: number;
  /** Cache partitions, one per worker: the degree of parallelism. */
  partitions: number;
  /** Largest frame, header included. */
  frameBytes: number;
  /** pfns must be below this (the machine's page count, Xen's p2m_size). */
  pfnLimit: number;
  /** Largest epoch body accepted. */
  maxEpochBytes: number;
  /** Page encoding of the stream's frames: the seed's (remus, codec 1), QEMU's XBZRLE (codec 2), or the seed's records in zstd chunks (remus-zstd, codec 3). */
  codec: CodecName;
  /** Which cached page gives up its slot: 'tinylfu' (W-TinyLFU, the default) or 'lru' (the seed's). */
  cachePolicy: CachePolicyName;
}

/** QEMU's XBZRLE counters, plus ours. */
export interface StreamStats {
  epochsCommitted: number;
  epochsAborted: number;
  pages: number;
  bytesIn: number;
  bytesOut: number;
  cacheHits: number;
  cacheMisses: number;
  cacheMissRate: number;
  overflows: number;
  zeroPages: number;
  rawPages: number;
  unchangedPages: number;
  cachedPages: number;
  /** Summed worker time in encode tasks. */
  encodeNs: number;
  /** Dirty bytes per second of worker encode time. */
  encodingRate: number;
}

export interface EpochSummary {
  epoch: number;
  pages: number;
  bytesIn: number;
  bytesOut: number;
  frames: number;
  resync: boolean;
  /** From the first page dispatched to the digest known. */
  encodeWallNs: number;
  /** From the request's start to the last frame released by the sink. */
  wallNs: number;
}

/**
 * What a stream asks of the service that holds it: room in the service-wide
 * memory budget before a slab grows, and a place among the epochs in flight.
 * Both throw a 503 ServiceError (with Retry-After) to refuse; a refusal comes
 * before any page reaches a worker, so it changes nothing.
 */
export interface StreamHost {
  /** The stream is about to allocate `bytes` more bytes of slab (`what` names the slab, for the message). */
  reserveSlab(stream: Stream, bytes: number, what: string): void;
  /** An epoch is starting on `stream`. */
  enterEpoch(stream: Stream): void;
  /** That epoch has ended (committed, refused or aborted). */
  leaveEpoch(stream: Stream): void;
}

/** Batches in flight at once: one merging while the next encodes. */
const BATCH_RING = 2;
/** Frame slabs per stream: frames on the wire while the next fills. */
const FRAME_SLABS = 3;
/**
 * Input bytes per batch, by default: large enough to amortise a task round
 * trip, small enough that frames leave early. 8 MiB rather than 4: with the
 * workers' pools posting the next task ahead (worker-pool.ts), 2 workers
 * encode 1.48-1.77x what 1 does in steady state (remus-zstd; remus
 * 1.34-1.55x) against 1.33-1.40x with 4 MiB batches and no task ahead
 * (docs/PERFORMANCE.md, Scaling); over HTTP the two are within noise. The
 * Sender's batchBytes option sets it.
 */
export const DEFAULT_BATCH_BYTES = 8 * 1024 * 1024;

interface Batch {
  first: number;
  end: number;
  tasks: Promise<(EncodeResult | null)[]>;
}

interface CompletedEpoch {
  epoch: number;
  count: number;
  resync: boolean;
}

/**
 * One protected machine's compression stream: its configuration, its cache
 * partitions (held by the workers), its slabs, and the epoch state machine.
 * Epochs run one at a time; an epoch either completes (every frame handed to
 * the sink) or is aborted, and an aborted epoch's pages leave every partition
 * before the stream accepts anything else, so the sender's caches never hold
 * a page the receiver did not get.
 */
export class Stream implements InputSlabProvider {
  readonly id: string;
  readonly config: StreamConfig;
  private readonly pool: WorkerPool;
  /** Partition k lives on worker workerOf[k], for the stream's whole life. */
  private readonly workerOf: number[];
  private readonly pageShift: number;
  private readonly batchPages: number;
  /** Record region bytes reserved per page: the largest record plus a chunk header (codec 3 chunks hold at least one page). */
  private readonly regionBytesPerPage: number;
  private readonly sharder: BatchSharder;

  /**
   * The arena: one shared WebAssembly.Memory holding the batch record
   * regions and the frame slabs (the first `workBytes`), every partition's
   * cache slab and (codec 3) chunk scratch, then the input slab (the epoch
   * record as received), from `inputStart` to the end. One memory, so that
   * the workers' wasm kernel reads input pages, compares and updates cache
   * slots and writes records in one address space, and the merge copies
   * records into frames with the kernel's memmove (`mover`), no view per
   * page. Only the input slab grows (memory.grow, in place, between epochs).
   */
  private readonly memory: KernelMemory;
  /** This thread's instance of the kernel over `memory`, for the merge's copies. */
  private readonly mover: RemusWasmKernel;
  /** The memory's buffer as of the last grow. */
  private arena: SharedArrayBuffer;
  private arena8: Uint8Array;
  private readonly layout: SlabLayout;
  /** The input slab: the arena from `layout.inputStart` on. */
  private input8: Uint8Array;
  /** Which codecs the workers run: the wasm kernel or the TypeScript ones (same bytes). */
  readonly kernel: KernelChoice;
  private readonly frameSlabStarts: number[];
  private readonly indices: SharedArrayBuffer;
  private readonly indices32: Int32Array;
  private records = new SharedArrayBuffer(0);
  private records32 = new Int32Array(this.records);
  private groupHashes = new SharedArrayBuffer(0);
  private scratch = new Float64Array(0);
  /** The last completed epoch's pfns (u64 LE), kept so it can still be aborted. */
  private lastPfns = new SharedArrayBuffer(0);

  private nextEpochNumber = 0;
  private resyncPending = true;
  private lastCompleted: CompletedEpoch | null = null;
  private running: { epoch: number | null; controller: AbortController; done: Promise<unknown> } | null = null;
  private maintenance: Promise<void> | null = null;
  private closed = false;
  readonly stats: StreamStats = {
    epochsCommitted: 0, epochsAborted: 0, pages: 0, bytesIn: 0, bytesOut: 0,
    cacheHits: 0, cacheMisses: 0, cacheMissRate: 0, overflows: 0, zeroPages: 0,
    rawPages: 0, unchangedPages: 0, cachedPages: 0, encodeNs: 0, encodingRate: 0,
  };
  lastEpoch: EpochSummary | null = null;
  private readonly cachedPerPartition: number[];
  private readonly host: StreamHost | null;
  /** The running epoch's frame assembler, for the in-flight frame count. */
  private assembler: FrameAssembler | null = null;

  constructor(
    id: string, config: StreamConfig, pool: WorkerPool, firstWorker: number, host: StreamHost | null = null, kernel: KernelChoice = 'wasm',
    batchBytes = DEFAULT_BATCH_BYTES,
  ) {
    this.id = id;
    this.config = config;
    this.pool = pool;
    this.host = host;
    this.pageShift = pageShiftOf(config.pageSize);
    this.workerOf = Array.from({ length: config.partitions }, (_, k) => (firstWorker + k) % pool.size);
    this.cachedPerPartition = new Array<number>(config.partitions).fill(0);
    this.kernel = kernel;
    const layout = slabLayout(config, batchBytes);
    const problem = arenaProblem(config, layout);
    if (problem !== null) throw new ServiceError('INVALID_CONFIG', problem);
    this.layout = layout;
    this.batchPages = layout.batchPages;
    this.regionBytesPerPage = layout.regionBytesPerPage;
    this.sharder = new BatchSharder(config.partitions, this.batchPages);
    this.memory = createKernelMemory(layout.inputStart, layout.maxArenaBytes);
    this.arena = this.memory.buffer as SharedArrayBuffer;
    this.mover = instantiateRemusWasm(this.memory);
    this.arena8 = new Uint8Array(this.arena);
    this.input8 = new Uint8Array(this.arena, layout.inputStart, 0);
    this.frameSlabStarts = Array.from({ length: FRAME_SLABS }, (_, i) => layout.framesStart + i * layout.slabStride);
    this.indices = new SharedArrayBuffer(layout.indexBytes);
    this.indices32 = new Int32Array(this.indices);
  }

  /**
   * The slab bytes a stream of this configuration allocates when it is
   * created (before its first epoch), besides its cache pages: those are
   * counted as the config's cacheBytes (see slabBytes).
   */
  static initialSlabBytes(config: StreamConfig, batchBytes = DEFAULT_BATCH_BYTES): number {
    const layout = slabLayout(config, batchBytes);
    return layout.inputStart - layout.cacheSlotBytes + layout.indexBytes;
  }

  /** Why a stream of this configuration cannot be made (its arena would pass wasm32's 4 GiB), or null. */
  static configProblem(config: StreamConfig, batchBytes = DEFAULT_BATCH_BYTES): string | null {
    return arenaProblem(config, slabLayout(config, batchBytes));
  }

  /** Frames handed to the socket whose write has not completed yet (at most the 3 frame slabs). */
  get framesInFlight(): number {
    return this.assembler?.inFlight ?? 0;
  }

  /** Frames the running epoch has handed to its sink so far (0 when idle). */
  get framesSent(): number {
    return this.assembler?.framesWritten ?? 0;
  }

  /** Cache pages per partition: the byte budget split as evenly as whole pages allow. */
  slotCount(partition: number): number {
    return slotCountOf(this.config, partition);
  }

  get nextEpoch(): number {
    return this.nextEpochNumber;
  }

  get busy(): boolean {
    return this.running !== null;
  }

  /**
   * Bytes of memory this stream holds in slabs, for budgets and metrics: the
   * arena without its cache pages (counted once, as config.cacheBytes, which
   * they never exceed), and the main thread's other slabs.
   */
  get slabBytes(): number {
    return (
      this.arena.byteLength - this.layout.cacheSlotBytes + this.indices.byteLength + this.records.byteLength +
      this.groupHashes.byteLength + this.scratch.byteLength + this.lastPfns.byteLength
    );
  }

  /**
   * Ask the host for `wanted - current` more bytes before a slab grows. When
   * the rounded-up size `wanted` does not fit, the exact size `needed` is
   * tried before giving up. Returns the size to allocate.
   */
  private reserve(current: number, needed: number, wanted: number, what: string): number {
    if (this.host === null) return wanted;
    try {
      this.host.reserveSlab(this, wanted - current, what);
      return wanted;
    } catch (err) {
      if (needed === wanted) throw err;
      this.host.reserveSlab(this, needed - current, what);
      return needed;
    }
  }

  // InputSlabProvider: called by the body reader once the epoch header has
  // been accepted, before any page is read: an epoch the memory budget cannot
  // hold is refused there and changes nothing.
  // The arena grows (in place, whole wasm pages) between epochs only: no
  // task of the previous epoch is running, and its views stay valid.
  inputSlab(bytes: number): Uint8Array {
    const capacity = this.input8.byteLength;
    if (capacity < bytes) {
      const { inputStart, maxArenaBytes } = this.layout;
      const room = maxArenaBytes - inputStart;
      if (bytes > room) {
        throw new ServiceError(
          'EPOCH_TOO_LARGE',
          `epoch record of ${bytes} bytes does not fit stream ${this.id}'s arena: its caches and slabs take ${inputStart} bytes of the ${maxArenaBytes} a stream may hold, leaving ${room}`,
          413,
        );
      }
      const needed = alignUp(bytes, WASM_PAGE_BYTES);
      const wanted = Math.min(room, alignUp(Math.max(bytes, Math.min(growTo(bytes), this.config.maxEpochBytes)), WASM_PAGE_BYTES));
      const size = this.reserve(capacity, needed, wanted, 'input slab');
      this.memory.grow((size - capacity) / WASM_PAGE_BYTES);
      this.arena = this.memory.buffer as SharedArrayBuffer;
      this.arena8 = new Uint8Array(this.arena);
      this.input8 = new Uint8Array(this.arena, inputStart, size);
    }
    return this.input8;
  }

  pfnScratch(count: number): Float64Array {
    if (this.scratch.length < count) {
      const size = this.reserve(this.scratch.byteLength, count * 8, growTo(count) * 8, 'pfn scratch');
      this.scratch = new Float64Array(size / 8);
    }
    return this.scratch;
  }

  /**
   * Run one epoch: read its body from `source`, encode it on the partitions'
   * workers, and write its frames to `sink` as they are merged. Rejects with a
   * ServiceError when the epoch fails; by then the epoch's pages have left
   * every partition, and if frames had already gone out an ABORT frame has
   * followed them.
   */
  async runEpoch(source: EpochBodySource, declaredLength: number | null, sink: FrameSink, signal?: AbortSignal): Promise<EpochSummary> {
    this.checkOpen();
    if (this.running !== null || this.maintenance !== null) {
      throw new ServiceError('EPOCH_IN_PROGRESS', `stream ${this.id} is busy with another epoch; epochs of one stream run one at a time`, 409);
    }
    const controller = new AbortController();
    const onOuterAbort = (): void => controller.abort(signal?.reason);
    signal?.addEventListener('abort', onOuterAbort, { once: true });
    try {
      this.host?.enterEpoch(this);
    } catch (err) {
      signal?.removeEventListener('abort', onOuterAbort);
      throw err;
    }
    const running = { epoch: null as number | null, controller, done: Promise.resolve() as Promise<unknown> };
    this.running = running;
    const work = this.execute(source, declaredLength, sink, controller.signal, running);
    running.done = work.catch(() => undefined);
    try {
      return await work;
    } finally {
      signal?.removeEventListener('abort', onOuterAbort);
      this.running = null;
      this.assembler = null;
      this.host?.leaveEpoch(this);
    }
  }

  private async execute(
    source: EpochBodySource,
    declaredLength: number | null,
    sink: FrameSink,
    signal: AbortSignal,
    running: { epoch: number | null },
  ): Promise<EpochSummary> {
    const started = process.hrtime.bigint();
    const { pageSize } = this.config;
    const reader = new EpochBodyReader(
      { pageSize, pfnLimit: this.config.pfnLimit, maxEpochBytes: this.config.maxEpochBytes, expectedEpoch: this.nextEpochNumber, declaredLength },
      this,
    );
    const abortReader = (): void => reader.abort(abortError(signal));
    signal.addEventListener('abort', abortReader, { once: true });
    const pumping = reader.pump(source);
    const resync = this.resyncPending;
    const inFlight: Batch[] = [];
    let meta: EpochMetadata | null = null;
    let assembler: FrameAssembler | null = null;
    /** Whether a page went to a worker: until then the cache has not moved and a failure changes nothing. */
    let dispatched = false;
    const onAbort = (): void => assembler?.abort(abortError(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      meta = await reader.metadata();
      running.epoch = meta.epoch;
      const { count } = meta;
      this.ensureEpochSlabs(count);
      // Counters of this epoch, added to the stream's only when it commits.
      const pass = emptyEncodeCounters();
      assembler = new FrameAssembler(this.arena8, this.mover, this.frameSlabStarts, this.config.frameBytes, sink, {
        epoch: meta.epoch,
        pageShift: this.pageShift,
        flags: resync ? FLAG_RESYNC : 0,
        codec: codecByte(this.config.codec),
      });
      this.assembler = assembler;
      const encodeStarted = process.hrtime.bigint();
      for (let first = 0, ring = 0; first < count; first += this.batchPages, ring = (ring + 1) % BATCH_RING) {
        const end = Math.min(first + this.batchPages, count);
        // Merge the oldest batch when its ring slot is needed, and also
        // while the next batch's pages are still on the wire: frames leave
        // as soon as their pages are encoded, not when the body has ended.
        while (inFlight.length === BATCH_RING || (inFlight.length > 0 && !reader.hasPages(end))) {
          await this.mergeBatch(inFlight.shift() as Batch, assembler, pass, reader);
        }
        await reader.waitForPages(end);
        if (!dispatched) {
          // The cache is about to move past the previous epoch: from here on
          // it can no longer be aborted (the controller has moved on).
          this.lastCompleted = null;
          dispatched = true;
        }
        inFlight.push({ first, end, tasks: this.dispatch(meta, first, end, ring) });
        if (signal.aborted) throw abortError(signal);
      }
      while (inFlight.length > 0) await this.mergeBatch(inFlight.shift() as Batch, assembler, pass, reader);
      await reader.finished();
      const digest = foldEpochDigest(new Uint8Array(this.groupHashes), digestGroupCount(count), meta.epoch, resync);
      const encodeWallNs = Number(process.hrtime.bigint() - encodeStarted);
      await assembler.finish(count, digest);
      if (signal.aborted) throw abortError(signal);

      this.commit(meta, resync, pass, assembler.bytesWritten);
      const summary: EpochSummary = {
        epoch: meta.epoch,
        pages: count,
        bytesIn: count * pageSize,
        bytesOut: assembler.bytesWritten,
        frames: assembler.framesWritten,
        resync,
        encodeWallNs,
        wallNs: Number(process.hrtime.bigint() - started),
      };
      this.lastEpoch = summary;
      this.rememberCompleted(meta, resync);
      return summary;
    } catch (err) {
      const failure = asServiceError(err, signal);
      reader.abort(failure);
      // Wait for every task of the epoch before touching the partitions
      // again: a task still running could re-insert a page after its
      // invalidation otherwise.
      await Promise.allSettled(inFlight.map((b) => b.tasks));
      // An epoch that failed before any page reached a worker (a bad or
      // short body, an abort while waiting for it) left the stream as it
      // was; one that got further is aborted and its pages leave the cache.
      if (meta !== null && dispatched) {
        await this.invalidate(this.arena, this.layout.inputStart + meta.layout.pfnOffset, meta.count);
        this.stats.epochsAborted++;
      }
      if (assembler !== null && assembler.started && meta !== null) {
        await this.sendAbortFrame(assembler, sink, meta.epoch, resync, failure);
      }
      throw failure;
    } finally {
      signal.removeEventListener('abort', abortReader);
      signal.removeEventListener('abort', onAbort);
      await pumping;
    }
  }

  private ensureEpochSlabs(count: number): void {
    if (this.records.byteLength < count * 8) {
      this.records = new SharedArrayBuffer(this.reserve(this.records.byteLength, count * 8, growTo(count * 8), 'record index'));
      this.records32 = new Int32Array(this.records);
    }
    const hashBytes = digestGroupCount(count) * DIGEST_BYTES;
    if (this.groupHashes.byteLength < hashBytes) {
      this.groupHashes = new SharedArrayBuffer(this.reserve(this.groupHashes.byteLength, hashBytes, growTo(hashBytes), 'digest groups'));
    }
  }

  /** Shard pages [first, end) across the partitions and start their tasks. */
  private dispatch(meta: EpochMetadata, first: number, end: number, ring: number): Promise<(EncodeResult | null)[]> {
    const { partitions, pageSize } = this.config;
    const indexBase = ring * this.batchPages;
    this.sharder.plan(this.input8, meta.layout.pfnOffset, first, end, this.indices32, indexBase);
    const regionStart = ring * this.batchPages * this.regionBytesPerPage;
    const groupStart = first / DIGEST_GROUP_PAGES;
    const groupEnd = digestGroupCount(end);
    const tasks: Promise<EncodeResult | null>[] = [];
    const base = this.layout.inputStart;
    for (let p = 0; p < partitions; p++) {
      const indexStart = this.sharder.starts[p];
      const indexCount = this.sharder.counts[p];
      // Digest groups are spread over the partitions too, round robin.
      const groupFirst = groupStart + ((p - (groupStart % partitions)) + partitions) % partitions;
      if (indexCount === 0 && groupFirst >= groupEnd) continue;
      const outStart = regionStart + (indexStart - indexBase) * this.regionBytesPerPage;
      const task: EncodeTask = {
        op: 'encode',
        stream: this.id,
        partition: p,
        pageSize,
        codec: codecByte(this.config.codec),
        slotCount: this.slotCount(p),
        // Offsets in the arena: the input slab starts after the work regions and the caches.
        input: this.arena,
        pfnOffset: base + meta.layout.pfnOffset,
        kindOffset: base + meta.layout.kindOffset,
        pageOffset: base + meta.layout.pageOffset,
        indices: this.indices,
        indexStart,
        indexCount,
        work: this.arena,
        outStart,
        outLimit: outStart + indexCount * this.regionBytesPerPage,
        chunkBytes: this.config.codec === 'remus-zstd' ? chunkLimitBytes(this.config.frameBytes) : 0,
        cachePolicy: this.config.cachePolicy,
        records: this.records,
        groupHashes: this.groupHashes,
        groupFirst,
        groupEnd,
        groupStep: partitions,
        pageCount: meta.count,
        memory: this.memory,
        cacheOffset: this.layout.cacheOffsets[p],
        scratchOffset: this.layout.scratchOffsets[p],
        kernel: this.kernel,
      };
      tasks.push(this.pool.run(this.workerOf[p], task).then((r) => {
        if (r !== null) this.cachedPerPartition[p] = r.cachedPages;
        return r;
      }));
    }
    const all = Promise.all(tasks);
    // The batch is awaited only when its turn to merge comes; a failure
    // before then must not count as an unhandled rejection.
    all.catch(() => undefined);
    return all;
  }

  /**
   * Wait for a batch's tasks, then copy its records into frames in request
   * order; not when the epoch has failed meanwhile (no frame of an epoch
   * already known to be lost).
   */
  private async mergeBatch(batch: Batch, assembler: FrameAssembler, pass: EncodeCounters, reader: EpochBodyReader): Promise<void> {
    const results = await batch.tasks;
    reader.check();
    for (const result of results) if (result !== null) addEncodeCounters(pass, result);
    const records = this.records32;
    for (let i = batch.first; i < batch.end; i++) {
      const offset = records[2 * i];
      const length = records[2 * i + 1];
      // Codec 3: a chunk sits at its first page's index, its other pages have none.
      if (length === 0) continue;
      if (!assembler.tryAppend(offset, length)) {
        await assembler.openFrame();
        assembler.tryAppend(offset, length);
      }
    }
  }

  private rememberCompleted(meta: EpochMetadata, resync: boolean): void {
    const bytes = meta.count * 8;
    // Not refused (the epoch has been sent), but counted in slabBytes: it is
    // at most 1/512 of the input slab, so it cannot overshoot the budget much.
    if (this.lastPfns.byteLength < bytes) this.lastPfns = new SharedArrayBuffer(growTo(bytes));
    new Uint8Array(this.lastPfns).set(this.input8.subarray(meta.layout.pfnOffset, meta.layout.pfnOffset + bytes));
    this.lastCompleted = { epoch: meta.epoch, count: meta.count, resync };
  }

  private commit(meta: EpochMetadata, resync: boolean, pass: EncodeCounters, bytesOut: number): void {
    const s = this.stats;
    this.nextEpochNumber = meta.epoch + 1;
    if (resync) this.resyncPending = false;
    s.epochsCommitted++;
    s.pages += meta.count;
    s.bytesIn += meta.count * this.config.pageSize;
    s.bytesOut += bytesOut;
    s.cacheHits += pass.cacheHits;
    s.cacheMisses += pass.cacheMisses;
    s.overflows += pass.overflows;
    s.zeroPages += pass.zeroPages;
    s.rawPages += pass.rawPages;
    s.unchangedPages += pass.unchangedPages;
    s.encodeNs += pass.busyNs;
    const lookups = s.cacheHits + s.cacheMisses;
    s.cacheMissRate = lookups === 0 ? 0 : s.cacheMisses / lookups;
    s.encodingRate = s.encodeNs === 0 ? 0 : s.bytesIn / (s.encodeNs / 1e9);
    s.cachedPages = this.cachedPerPartition.reduce((a, b) => a + b, 0);
  }

  /**
   * Remove the given pfns from every partition. A partition whose worker
   * cannot do it is dropped whole instead; if even that fails the worker is
   * gone, and its replacement starts empty. Either way no partition keeps a
   * page the receiver may not hold.
   */
  private async invalidate(pfns: SharedArrayBuffer, pfnOffset: number, count: number): Promise<void> {
    await Promise.all(
      this.workerOf.map(async (worker, partition) => {
        try {
          await this.pool.run(worker, { op: 'invalidate', stream: this.id, partition, input: pfns, pfnOffset, count });
        } catch {
          await this.pool.run(worker, { op: 'drop', stream: this.id }).catch(() => undefined);
        }
      }),
    );
  }

  private async sendAbortFrame(assembler: FrameAssembler, sink: FrameSink, epoch: number, resync: boolean, failure: ServiceError): Promise<void> {
    // Wait for the frames already out, whatever stopped the epoch (an abort
    // request included): the ABORT frame goes after them, and the slabs are
    // reused only once they are released.
    if (!(await assembler.settle())) return; // the client is gone: nobody to tell
    const frame = encodeAbortFrame(epoch, assembler.framesWritten, this.pageShift, resync ? FLAG_RESYNC : 0, failure.code, failure.message, codecByte(this.config.codec));
    await new Promise<void>((resolve) => sink.write(frame, () => resolve()));
  }

  /**
   * Abort epoch `epoch`: the one running now (it stops and its pages leave
   * the cache), or the last completed one, when the receiver did not commit
   * it (its pages leave the cache and the stream expects that epoch number
   * again). Any other epoch cannot be aborted.
   */
  async abortEpoch(epoch: number): Promise<'running' | 'completed'> {
    this.checkOpen();
    const running = this.running;
    if (running !== null && (running.epoch === epoch || (running.epoch === null && epoch === this.nextEpochNumber))) {
      running.controller.abort(new ServiceError('EPOCH_ABORTED', `epoch ${epoch} was aborted by request`, 409));
      await running.done;
      return 'running';
    }
    const last = this.lastCompleted;
    if (running === null && this.maintenance === null && last !== null && last.epoch === epoch) {
      await this.exclusive(async () => {
        await this.invalidate(this.lastPfns, 0, last.count);
        this.nextEpochNumber = last.epoch;
        if (last.resync) this.resyncPending = true;
        this.lastCompleted = null;
        this.stats.epochsCommitted--;
        this.stats.epochsAborted++;
      });
      return 'completed';
    }
    throw new ServiceError(
      'EPOCH_NOT_ABORTABLE',
      `epoch ${epoch} is neither running nor the last completed epoch of stream ${this.id} (next epoch: ${this.nextEpochNumber})`,
      409,
    );
  }

  /**
   * Forget every cached page: the next epoch is a RESYNC epoch that replaces
   * the receiver's image. Used when the receiver lost its image or refused a
   * frame.
   */
  async reset(): Promise<void> {
    this.checkOpen();
    if (this.running !== null || this.maintenance !== null) {
      throw new ServiceError('EPOCH_IN_PROGRESS', `stream ${this.id} is busy; abort the running epoch before a reset`, 409);
    }
    await this.exclusive(async () => {
      await this.dropPartitions();
      this.resyncPending = true;
      this.lastCompleted = null;
    });
  }

  /** Free the partitions; the stream accepts nothing afterwards. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.running !== null) {
      this.running.controller.abort(new ServiceError('STREAM_DELETED', `stream ${this.id} was deleted`, 410));
      await this.running.done;
    }
    await this.maintenance;
    await this.dropPartitions();
  }

  private async dropPartitions(): Promise<void> {
    const workers = [...new Set(this.workerOf)];
    await Promise.all(workers.map((w) => this.pool.run(w, { op: 'drop', stream: this.id }).catch(() => undefined)));
    this.cachedPerPartition.fill(0);
    this.stats.cachedPages = 0;
  }

  private async exclusive(work: () => Promise<void>): Promise<void> {
    const task = work();
    this.maintenance = task;
    try {
      await task;
    } finally {
      this.maintenance = null;
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new ServiceError('STREAM_NOT_FOUND', `stream ${this.id} was deleted`, 404);
  }

  /** The stream's state, for the stats route. */
  describe(): { id: string; config: StreamConfig; nextEpoch: number; busy: boolean; resyncPending: boolean; stats: StreamStats; lastEpoch: EpochSummary | null } {
    return {
      id: this.id,
      config: this.config,
      nextEpoch: this.nextEpochNumber,
      busy: this.busy,
      resyncPending: this.resyncPending,
      stats: this.stats,
      lastEpoch: this.lastEpoch,
    };
  }
}


function abortError(signal: AbortSignal): ServiceError {
  const reason: unknown = signal.reason;
  if (reason instanceof ServiceError) return reason;
  return new ServiceError('EPOCH_ABORTED', `epoch aborted: ${reason instanceof Error ? reason.message : String(reason)}`, 409);
}

function asServiceError(err: unknown, signal: AbortSignal): ServiceError {
  if (signal.aborted) return abortError(signal);
  if (err instanceof ServiceError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new ServiceError('EPOCH_FAILED', `epoch failed: ${message}; its pages were dropped from the cache`, 500);
}

interface SlabLayout {
  batchPages: number;
  regionBytesPerPage: number;
  framesStart: number;
  slabStride: number;
  workBytes: number;
  indexBytes: number;
  /** Byte offset in the arena of partition k's cache slab (slotCount(k) pages). */
  cacheOffsets: number[];
  /** Bytes of all the cache slabs' pages: what config.cacheBytes stands for. */
  cacheSlotBytes: number;
  /** Byte offset of partition k's codec 3 chunk scratch (-1 under the other codecs). */
  scratchOffsets: number[];
  /** Start of the input slab: the arena's size before any epoch (whole wasm pages). */
  inputStart: number;
  /** The most the arena may grow to: room for an epoch of maxEpochBytes, within wasm32. */
  maxArenaBytes: number;
}

/** Codec 3's per-partition chunk scratch: the index section reserve and a chunk's records. */
const CHUNK_SCRATCH_BYTES = CHUNK_INDEX_RESERVE_BYTES + CHUNK_TARGET_BYTES;
/**
 * The largest arena: wasm32's 4 GiB less one wasm page, so that no range the
 * kernel is given ends at 2^32 (its positions are u32 and the top values are
 * error codes).
 */
const ARENA_LIMIT_BYTES = (KERNEL_MAX_MEMORY_PAGES - 1) * WASM_PAGE_BYTES;

/** Cache pages of partition k: the byte budget split as evenly as whole pages allow. */
function slotCountOf(config: StreamConfig, partition: number): number {
  const total = Math.floor(config.cacheBytes / config.pageSize);
  const { partitions } = config;
  return Math.floor(total / partitions) + (partition < total % partitions ? 1 : 0);
}

function arenaProblem(config: StreamConfig, layout: SlabLayout): string | null {
  if (layout.inputStart + WASM_PAGE_BYTES <= ARENA_LIMIT_BYTES) return null;
  return `cacheBytes ${config.cacheBytes} is too large: a stream's caches and slabs (${layout.inputStart} bytes here) and its input slab ` +
    `share one WebAssembly memory of at most ${ARENA_LIMIT_BYTES} bytes`;
}

/**
 * The arena's layout for batches of about `batchBytes` of input (at least one
 * digest group of pages): batch record regions, then the frame slabs, the
 * partitions' cache slabs and chunk scratches, then the input slab; and the
 * batch index's size.
 */
function slabLayout(config: StreamConfig, batchBytes: number): SlabLayout {
  const groupAligned = Math.floor(batchBytes / config.pageSize / DIGEST_GROUP_PAGES) * DIGEST_GROUP_PAGES;
  const batchPages = Math.max(DIGEST_GROUP_PAGES, groupAligned);
  const recordBytes = recordRegionBytes(config.pageSize);
  const regionBytes = batchPages * recordBytes;
  // Frame slabs start on 4 KiB boundaries so page payloads copied into them
  // keep a page-friendly alignment.
  const framesStart = alignUp(BATCH_RING * regionBytes, 4096);
  const slabStride = alignUp(config.frameBytes, 4096);
  const workBytes = framesStart + FRAME_SLABS * slabStride;
  // Cache slabs on 64-byte boundaries (a cache line; pages are 512 bytes or more).
  let at = alignUp(workBytes, 64);
  const cacheOffsets: number[] = [];
  let cacheSlotBytes = 0;
  for (let k = 0; k < config.partitions; k++) {
    const bytes = slotCountOf(config, k) * config.pageSize;
    cacheOffsets.push(at);
    cacheSlotBytes += bytes;
    at = alignUp(at + bytes, 64);
  }
  const scratchOffsets: number[] = [];
  for (let k = 0; k < config.partitions; k++) {
    if (config.codec === 'remus-zstd') {
      scratchOffsets.push(at);
      at = alignUp(at + CHUNK_SCRATCH_BYTES, 64);
    } else {
      scratchOffsets.push(-1);
    }
  }
  const inputStart = alignUp(at, WASM_PAGE_BYTES);
  return {
    batchPages,
    regionBytesPerPage: recordBytes,
    framesStart,
    slabStride,
    workBytes,
    indexBytes: BATCH_RING * batchPages * 4,
    cacheOffsets,
    cacheSlotBytes,
    scratchOffsets,
    inputStart,
    maxArenaBytes: Math.min(ARENA_LIMIT_BYTES, alignUp(inputStart + config.maxEpochBytes, WASM_PAGE_BYTES)),
  };
}

function alignUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** Capacity to allocate for `n`: the next power of two, so growth is rare. */
function growTo(n: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(n, 64)));
}
