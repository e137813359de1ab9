/**
 * The verifying receiver (docs/FORMAT.md "Receiver rules"): it applies frames
 * to a memory image and trusts nothing. A frame is checked whole before any of
 * it is staged; an epoch reaches the image only when its LAST frame's count
 * and digest match what was staged.
 *
 * The staged pages live in one shared WebAssembly memory per receiver (a
 * PageArena, src/page-arena.ts), with the codec 3 chunk scratch, the trial
 * page and (wasm kernel, codecs 1 and 2) a copy of the frame being applied.
 * The wasm kernel (src/codec/remus-wasm.ts) decodes each record straight
 * into its staging slot. A MemoryImage keeps its pages outside that memory,
 * in Buffer chunks in the process's memory (so an image is bounded by the
 * process's memory, not by wasm32's 4 GiB): the committed page a delta
 * applies to is copied into staging, and a committed epoch's pages into the
 * image, by the image's read() and write(), one memcpy each (copyInto: the
 * same under both kernels; each makes one short-lived view of its source).
 * A FileImage's pages go through fs into and out of the arena.
 */
import * as fs from 'node:fs';
import { decodeRemusPage, FULL_PAGE } from './codec/remus.js';
import { instantiateRemusWasm, type RemusWasmKernel } from './codec/remus-wasm.js';
import { ChunkReader, MAX_CHUNK_RAW_BYTES, type OpenChunk } from './codec/chunk.js';
import { decodeXbzrleBody, XBZRLE_DELTA, XBZRLE_FULL, XBZRLE_UNCHANGED } from './codec/xbzrle.js';
import { DIGEST_BYTES, DIGEST_GROUP_PAGES, digestGroupCount, foldEpochDigest, hashDigestGroup, hashImage } from './digest.js';
import { readPfn, writePfn } from './epoch-record.js';
import { ARENA_MAX_BYTES, PageArena } from './page-arena.js';
import { PfnTable, pfnHigh, pfnLow, pfnOf } from './pfn-table.js';
import { CodecError, FrameError, ServiceError } from './errors.js';
import { copyInto } from './shared-copy.js';
import { computeFrameCrc, FRAME_FIELD, hasFrameMagic, readFrameHeader, readU32, writeU32, type FrameHeader } from './frames.js';
import {
  CODEC_REMUS_ZSTD,
  CODEC_XBZRLE,
  FLAG_ABORT,
  FLAG_LAST,
  FLAG_RESYNC,
  FRAME_HEADER_BYTES,
  FRAME_VERSION,
  KNOWN_FLAGS,
  MAX_FRAME_BYTES,
  MAX_PFN_BYTES,
  PFN_LIMIT,
  RECORD_CHUNK,
  RECORD_REMUS,
  RECORD_ZERO,
  isKnownCodecByte,
  knownCodecsText,
  pageShiftOf,
} from './wire.js';

/** Default bound on the page bytes one epoch may stage. */
export const DEFAULT_MAX_EPOCH_BYTES = 1024 * 1024 * 1024;
/**
 * The largest epoch bound a receiver takes: its staging and its scratch
 * (trial page, chunk scratch, frame copy) share one wasm32 memory of at most
 * 4 GiB (src/page-arena.ts), so 3 GiB of staging leaves about 1 GiB for the
 * rest; what does not fit is refused as FRAME_MEMORY_FULL. An image's pages
 * are not in that memory (a MemoryImage keeps them in Buffer chunks, a
 * FileImage on disk).
 */
export const MAX_RECEIVER_EPOCH_BYTES = 3 * 1024 * 1024 * 1024;
/** Staging starts this big (at least one 64-page digest group) and doubles on demand, so small epochs stay small. */
const INITIAL_STAGING_BYTES = 1024 * 1024;
/** MemoryImage allocates its pages in Buffer chunks of this size (a power of two: 256 pages or more). */
const MEMORY_CHUNK_BYTES = 16 * 1024 * 1024;
/** The frame copy of the wasm path starts this big and doubles up to maxFrameBytes. */
const MIN_FRAME_COPY_BYTES = 64 * 1024;
/** HTTP 507 Insufficient Storage: the receiver's memory cannot hold what the frame needs. */
const STATUS_MEMORY_FULL = 507;
/** The smallest record: type byte and a one-byte pfn (a ZERO record). */
const MIN_RECORD_BYTES = 2;
const PFN_BYTES = 8;
/** log2(DIGEST_GROUP_PAGES): the digest group of a slot. */
const DIGEST_GROUP_SHIFT = Math.log2(DIGEST_GROUP_PAGES);
const ULEB_PAYLOAD_MASK = 0x7f;
const ULEB_CONTINUE = 0x80;
const ULEB_RADIX = 0x80;
/**
 * Codec 3 indices are below 2^28 (docs/FORMAT.md "Codec 3"). Chunk indices
 * are read against this format bound, not the epoch bound, so that an index
 * past the epoch bound is refused as FRAME_EPOCH_TOO_LARGE, as codec 1 and 2
 * refuse an epoch of too many records, rather than as a malformed record.
 */
const CHUNK_INDEX_LIMIT = 2 ** 28;
/** HTTP status for frames that are well formed but out of turn, and for image files in an unusable state. */
const STATUS_CONFLICT = 409;

/**
 * Where the receiver keeps the committed image. Pages are addressed by pfn
 * (sparse, up to 2^48); the receiver writes to a store only while committing
 * an epoch, then calls commit(epoch).
 */
export interface ImageStore {
  readonly pageSize: number;
  /** The epoch passed to the last commit(), restored when a persistent store is reopened; null before any. */
  readonly committedEpoch?: number | null;
  has(pfn: number): boolean;
  /** Copy the page into dst[dstOffset..+pageSize); false (dst untouched) when the store lacks it. */
  read(pfn: number, dst: Uint8Array, dstOffset: number): boolean;
  write(pfn: number, src: Uint8Array, srcOffset: number): void;
  /** Forget every page (a RESYNC epoch is about to replace them). */
  clear(): void;
  /** The pfns held, ascending. */
  pfns(): number[];
  readonly size: number;
  /** Make the writes since the last commit durable as epoch `epoch`. Synchronous: a frame is applied in one go. */
  commit?(epoch: number): void;
  close?(): void;
}

function checkPageSize(pageSize: number, who: string): void {
  if (pageShiftOf(pageSize) < 0) throw new RangeError(`${who}: pageSize ${pageSize} is not a power of two in 512..65536`);
}

/**
 * What the two stores share: pages live in numbered slots, handed out in
 * order and never freed one by one (the format cannot remove a page; only
 * clear() empties the image), found through a pfn → slot map (pfns are
 * sparse, so no table indexed by pfn).
 */
abstract class SlotImage implements ImageStore {
  readonly pageSize: number;
  protected readonly slots: PfnTable;
  protected used: number;
  protected epoch: number | null;

  protected constructor(pageSize: number, slots: PfnTable, epoch: number | null) {
    this.pageSize = pageSize;
    this.slots = slots;
    this.used = slots.size;
    this.epoch = epoch;
  }

  get committedEpoch(): number | null {
    return this.epoch;
  }

  get size(): number {
    return this.slots.size;
  }

  has(pfn: number): boolean {
    return this.slots.has(pfn);
  }

  pfns(): number[] {
    return this.slots.pfns().sort((a, b) => a - b);
  }

  clear(): void {
    this.slots.clear();
    this.used = 0;
  }

  /**
   * The slot of the pfn of halves (low, high) (see src/pfn-table.ts), given
   * the next free one (and announced to `slotAdded`, which may refuse it)
   * when the image lacks it.
   */
  protected slotFor(low: number, high: number): number {
    let slot = this.slots.getParts(low, high);
    if (slot < 0) {
      slot = this.used;
      this.slotAdded(slot, low, high);
      this.used++;
      this.slots.setParts(low, high, slot);
    }
    return slot;
  }

  protected abstract slotAdded(slot: number, low: number, high: number): void;
  abstract read(pfn: number, dst: Uint8Array, dstOffset: number): boolean;
  abstract write(pfn: number, src: Uint8Array, srcOffset: number): void;
}

/**
 * Pages in memory, in page slots grouped in fixed-size Buffer chunks
 * (MEMORY_CHUNK_BYTES each, allocated as the image grows) in the process's
 * memory, outside any wasm memory (and the V8 heap): the image is bounded by
 * the process's memory only. A Receiver over this image stages its epochs
 * in the image's PageArena and moves pages between the arena and the chunks
 * through read() and write(), one memcpy each.
 */
export class MemoryImage extends SlotImage {
  /** The wasm memory a Receiver over this image stages in (one of its own unless given); the image's pages are not in it. */
  readonly arena: PageArena;
  /** The page chunks, MEMORY_CHUNK_BYTES each. */
  private readonly chunks: Buffer[] = [];
  private readonly pagesPerChunk: number;
  private readonly chunkShift: number;

  constructor(pageSize: number, arena: PageArena = new PageArena()) {
    checkPageSize(pageSize, 'MemoryImage');
    super(pageSize, new PfnTable(), null);
    this.arena = arena;
    this.pagesPerChunk = MEMORY_CHUNK_BYTES / pageSize;
    this.chunkShift = Math.log2(this.pagesPerChunk);
  }

  /** Bytes held in page chunks (kept across clear()). */
  get chunkBytes(): number {
    return this.chunks.length * MEMORY_CHUNK_BYTES;
  }

  /** The chunk that holds `slot`'s page. */
  private chunkOf(slot: number): Buffer {
    return this.chunks[slot >>> this.chunkShift];
  }

  /** Where `slot`'s page starts in its chunk. */
  private offsetInChunk(slot: number): number {
    return (slot & (this.pagesPerChunk - 1)) * this.pageSize;
  }

  /** has() of the pfn of halves (low, high). */
  hasParts(low: number, high: number): boolean {
    return this.slots.hasParts(low, high);
  }

  /**
   * Make room for `incoming` pages about to be written: replacing the image
   * (a RESYNC: clear() comes first) or added to it, `fresh()` of them pfns
   * the image lacks (asked only when the chunks in hand may not do). False
   * when the process cannot allocate that many chunks; chunks added on the
   * way are kept.
   */
  makeRoom(incoming: number, replacing: boolean, fresh: () => number): boolean {
    const capacity = this.chunks.length * this.pagesPerChunk;
    let total = replacing ? incoming : this.used + incoming;
    if (total <= capacity) return true;
    if (!replacing) total = this.used + fresh();
    while (this.chunks.length * this.pagesPerChunk < total) {
      if (!this.addChunk()) return false;
    }
    return true;
  }

  /** One more chunk; false when the process cannot allocate it (a RangeError from the allocation). */
  private addChunk(): boolean {
    let chunk: Buffer;
    try {
      chunk = this.allocateChunk(MEMORY_CHUNK_BYTES);
    } catch (err) {
      if (err instanceof RangeError) return false;
      throw err;
    }
    this.chunks.push(chunk);
    return true;
  }

  /** A zeroed chunk of `bytes` bytes (a seam for tests of a failed allocation). */
  protected allocateChunk(bytes: number): Buffer {
    return Buffer.alloc(bytes);
  }

  read(pfn: number, dst: Uint8Array, dstOffset: number): boolean {
    const slot = this.slots.get(pfn);
    if (slot < 0) return false;
    const at = this.offsetInChunk(slot);
    copyInto(dst, dstOffset, this.chunkOf(slot).subarray(at, at + this.pageSize));
    return true;
  }

  protected slotAdded(slot: number): void {
    // Chunks are kept across clear(): a RESYNC refills about as many pages as it dropped.
    if (slot >>> this.chunkShift >= this.chunks.length && !this.addChunk()) {
      throw new ServiceError(
        'IMAGE_MEMORY_FULL',
        `memory image: page slot ${slot} needs another ${MEMORY_CHUNK_BYTES}-byte chunk, which the process cannot allocate (${this.chunkBytes} bytes held)`,
        STATUS_MEMORY_FULL,
      );
    }
  }

  /** After makeRoom (the Receiver's commit) the slot's chunk exists: nothing is allocated. */
  write(pfn: number, src: Uint8Array, srcOffset: number): void {
    const slot = this.slotFor(pfnLow(pfn), pfnHigh(pfn));
    copyInto(this.chunkOf(slot), this.offsetInChunk(slot), src.subarray(srcOffset, srcOffset + this.pageSize));
  }

  commit(epoch: number): void {
    this.epoch = epoch;
  }
}

/** A FileImage at `path` keeps its index in `path` + INDEX_SUFFIX. */
export const INDEX_SUFFIX = '.index';
const INDEX_MAGIC = 'RMIX';
const INDEX_VERSION = 1;
/** Index header: magic, version u32, pageSize u32, hasEpoch u32 (0/1), epoch u32, entry count u32. */
const INDEX_HEADER_BYTES = 24;
const INDEX_OFF_VERSION = 4;
const INDEX_OFF_PAGE_SIZE = 8;
const INDEX_OFF_HAS_EPOCH = 12;
const INDEX_OFF_EPOCH = 16;
const INDEX_OFF_COUNT = 20;
/** Index entry: pfn u64 then slot u32. */
const INDEX_ENTRY_BYTES = 12;
const INDEX_ENTRY_SLOT = 8;
const INITIAL_SLOT_CAPACITY = 1024;

/**
 * An image on disk, for images larger than memory: `<path>` holds page slots
 * (slot s at byte s x pageSize), `<path>.index` the committed epoch and the
 * pfn → slot entries, which are kept in memory as a Map.
 *
 * Crash consistency is limited, by design of the in-place layout: commit()
 * makes data durable before the index and the index before the header, so a
 * crash between commits loses nothing, but a crash in the middle of a commit
 * can leave pages of the new epoch under the old epoch number (pages are
 * overwritten in place): the image is torn and the sender must resync it.
 */
export class FileImage extends SlotImage {
  readonly path: string;
  private readonly dataFd: number;
  private readonly indexFd: number;
  /** pfn of each slot, in slot order: slots are allocated in order, so index entries are appended in this order. */
  private slotPfns: Float64Array;
  /** Slots whose index entries are on disk. */
  private persisted: number;
  /** clear() since the last commit: the index must be rewritten whole. */
  private rewriteIndex = false;
  private closed = false;

  private constructor(
    path: string,
    pageSize: number,
    dataFd: number,
    indexFd: number,
    slots: PfnTable,
    slotPfns: Float64Array,
    epoch: number | null,
  ) {
    super(pageSize, slots, epoch);
    this.path = path;
    this.dataFd = dataFd;
    this.indexFd = indexFd;
    this.slotPfns = slotPfns;
    this.persisted = slots.size;
  }

  /**
   * Open the image at `path`, creating it if neither `path` nor
   * `<path>.index` exists, else resuming it with its committed epoch. Throws
   * ServiceError IMAGE_PAGE_SIZE_MISMATCH when the existing image has another
   * page size, IMAGE_INDEX_CORRUPT when its index cannot be read back,
   * IMAGE_INDEX_MISSING when `path` is a file without an index (it is not
   * ours to overwrite).
   */
  static open(path: string, pageSize: number): FileImage {
    checkPageSize(pageSize, 'FileImage.open');
    const indexPath = `${path}${INDEX_SUFFIX}`;
    if (!fs.existsSync(indexPath)) {
      if (fs.existsSync(path)) {
        throw new ServiceError('IMAGE_INDEX_MISSING', `${path} exists but ${indexPath} does not: not an image, left alone`, STATUS_CONFLICT);
      }
      const dataFd = fs.openSync(path, 'wx+');
      const indexFd = fs.openSync(indexPath, 'w+');
      const image = new FileImage(path, pageSize, dataFd, indexFd, new PfnTable(), new Float64Array(INITIAL_SLOT_CAPACITY), null);
      image.writeIndexHeader();
      return image;
    }
    const index = fs.readFileSync(indexPath);
    const { slots, slotPfns, epoch } = parseIndex(index, indexPath, pageSize);
    const dataFd = fs.openSync(path, fs.existsSync(path) ? 'r+' : 'w+');
    const dataBytes = fs.fstatSync(dataFd).size;
    if (slots.size * pageSize > dataBytes) {
      fs.closeSync(dataFd);
      throw new ServiceError(
        'IMAGE_INDEX_CORRUPT',
        `${indexPath} names ${slots.size} page slots but ${path} holds ${Math.floor(dataBytes / pageSize)}`,
        STATUS_CONFLICT,
      );
    }
    const indexFd = fs.openSync(indexPath, 'r+');
    return new FileImage(path, pageSize, dataFd, indexFd, slots, slotPfns, epoch);
  }

  read(pfn: number, dst: Uint8Array, dstOffset: number): boolean {
    const slot = this.slots.get(pfn);
    if (slot < 0) return false;
    let done = 0;
    while (done < this.pageSize) {
      const n = fs.readSync(this.dataFd, dst, dstOffset + done, this.pageSize - done, slot * this.pageSize + done);
      if (n === 0) throw new ServiceError('IMAGE_INDEX_CORRUPT', `${this.path}: slot ${slot} of pfn ${pfn} lies past the end of the data file`, 500);
      done += n;
    }
    return true;
  }

  protected slotAdded(slot: number, low: number, high: number): void {
    if (slot === this.slotPfns.length) {
      const grown = new Float64Array(this.slotPfns.length * 2);
      grown.set(this.slotPfns);
      this.slotPfns = grown;
    }
    this.slotPfns[slot] = pfnOf(low, high);
  }

  write(pfn: number, src: Uint8Array, srcOffset: number): void {
    const slot = this.slotFor(pfnLow(pfn), pfnHigh(pfn));
    let done = 0;
    while (done < this.pageSize) {
      done += fs.writeSync(this.dataFd, src, srcOffset + done, this.pageSize - done, slot * this.pageSize + done);
    }
  }

  override clear(): void {
    super.clear();
    this.persisted = 0;
    this.rewriteIndex = true;
  }

  commit(epoch: number): void {
    fs.fdatasyncSync(this.dataFd);
    if (this.rewriteIndex) {
      // The data file shrinks too, so a RESYNC to a smaller image frees space.
      fs.ftruncateSync(this.dataFd, this.used * this.pageSize);
      fs.ftruncateSync(this.indexFd, INDEX_HEADER_BYTES + this.used * INDEX_ENTRY_BYTES);
    }
    const fresh = this.used - this.persisted;
    if (fresh > 0) {
      const entries = Buffer.alloc(fresh * INDEX_ENTRY_BYTES);
      for (let i = 0; i < fresh; i++) {
        const slot = this.persisted + i;
        writePfn(entries, i * INDEX_ENTRY_BYTES, this.slotPfns[slot]);
        writeU32(entries, i * INDEX_ENTRY_BYTES + INDEX_ENTRY_SLOT, slot);
      }
      writeAll(this.indexFd, entries, INDEX_HEADER_BYTES + this.persisted * INDEX_ENTRY_BYTES);
      fs.fdatasyncSync(this.indexFd);
    }
    this.epoch = epoch;
    this.persisted = this.used;
    this.rewriteIndex = false;
    this.writeIndexHeader();
    fs.fdatasyncSync(this.indexFd);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.dataFd);
    fs.closeSync(this.indexFd);
  }

  private writeIndexHeader(): void {
    const header = Buffer.alloc(INDEX_HEADER_BYTES);
    header.write(INDEX_MAGIC, 0, 'latin1');
    writeU32(header, INDEX_OFF_VERSION, INDEX_VERSION);
    writeU32(header, INDEX_OFF_PAGE_SIZE, this.pageSize);
    writeU32(header, INDEX_OFF_HAS_EPOCH, this.epoch === null ? 0 : 1);
    writeU32(header, INDEX_OFF_EPOCH, this.epoch ?? 0);
    writeU32(header, INDEX_OFF_COUNT, this.persisted);
    writeAll(this.indexFd, header, 0);
  }
}

function writeAll(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) done += fs.writeSync(fd, bytes, done, bytes.length - done, position + done);
}

function parseIndex(
  index: Buffer,
  indexPath: string,
  pageSize: number,
): { slots: PfnTable; slotPfns: Float64Array; epoch: number | null } {
  const corrupt = (why: string): ServiceError => new ServiceError('IMAGE_INDEX_CORRUPT', `${indexPath}: ${why}`, STATUS_CONFLICT);
  if (index.length < INDEX_HEADER_BYTES || index.toString('latin1', 0, INDEX_MAGIC.length) !== INDEX_MAGIC) {
    throw corrupt(`not an image index (no "${INDEX_MAGIC}" header)`);
  }
  const version = readU32(index, INDEX_OFF_VERSION);
  if (version !== INDEX_VERSION) throw corrupt(`index version ${version}, expected ${INDEX_VERSION}`);
  const storedPageSize = readU32(index, INDEX_OFF_PAGE_SIZE);
  if (storedPageSize !== pageSize) {
    throw new ServiceError('IMAGE_PAGE_SIZE_MISMATCH', `${indexPath}: the image has pageSize ${storedPageSize}, not ${pageSize}`);
  }
  const count = readU32(index, INDEX_OFF_COUNT);
  if (INDEX_HEADER_BYTES + count * INDEX_ENTRY_BYTES > index.length) {
    throw corrupt(`header names ${count} entries, the file holds ${Math.floor((index.length - INDEX_HEADER_BYTES) / INDEX_ENTRY_BYTES)}`);
  }
  const slots = new PfnTable(count);
  const slotPfns = new Float64Array(Math.max(INITIAL_SLOT_CAPACITY, count));
  for (let i = 0; i < count; i++) {
    const at = INDEX_HEADER_BYTES + i * INDEX_ENTRY_BYTES;
    const pfn = readPfn(index, at);
    const slot = readU32(index, at + INDEX_ENTRY_SLOT);
    if (slot !== i || pfn >= PFN_LIMIT || slots.has(pfn)) throw corrupt(`bad entry ${i} at byte ${at} (pfn ${pfn}, slot ${slot})`);
    slots.set(pfn, slot);
    slotPfns[slot] = pfn;
  }
  const epoch = readU32(index, INDEX_OFF_HAS_EPOCH) === 1 ? readU32(index, INDEX_OFF_EPOCH) : null;
  return { slots, slotPfns, epoch };
}

export interface ReceiverOptions {
  pageSize: number;
  image: ImageStore;
  /** Largest frame accepted, header included (default and ceiling MAX_FRAME_BYTES). */
  maxFrameBytes?: number;
  /** Bound on the page bytes staged for one epoch (default DEFAULT_MAX_EPOCH_BYTES, at most MAX_RECEIVER_EPOCH_BYTES). */
  maxEpochBytes?: number;
  /**
   * Who decodes records and copies pages: 'wasm' (default), the WebAssembly
   * SIMD kernel (src/codec/remus-wasm.ts, made by `npm run build`), or
   * 'js', the portable TypeScript codecs over the same memory. Same images,
   * same refusals.
   */
  kernel?: ReceiverKernel;
}

/** The receiver's decoders: the wasm kernel or the portable TypeScript codecs. */
export type ReceiverKernel = 'wasm' | 'js';
export const RECEIVER_KERNELS: readonly ReceiverKernel[] = ['wasm', 'js'];
export const DEFAULT_RECEIVER_KERNEL: ReceiverKernel = 'wasm';

export function isReceiverKernel(value: unknown): value is ReceiverKernel {
  return value === 'wasm' || value === 'js';
}

/** What an ABORT frame said. */
export interface AbortReport {
  code: 'FRAME_ABORTED';
  /** The sender's error code and message, from the frame's payload. */
  senderCode: string;
  senderMessage: string;
  message: string;
}

export interface ApplyResult {
  epoch: number;
  sequence: number;
  /** Page records this frame staged. */
  records: number;
  /** The frame was LAST and its epoch is now the image. */
  committed: boolean;
  aborted: boolean;
  abort?: AbortReport;
}

/** The staged part of an epoch, for callers that report progress (and for tests). */
export interface StagingState {
  epoch: number;
  resync: boolean;
  /** The sequence number the next frame of the epoch must carry. */
  nextSequence: number;
  records: number;
}

/**
 * The epoch being staged: page bytes in slot order in blocks of the
 * receiver's PageArena, the pfns both as numbers and as the u64 LE bytes the
 * digest hashes, and a pfn → slot map. Blocks hold a power-of-two number of
 * pages, a multiple of the 64-page digest group, so each group's pages are
 * contiguous and hashed straight from a view of the memory. Capacity starts
 * at INITIAL_STAGING_BYTES and doubles up to the epoch bound, as blocks are
 * added (nothing is copied); blocks survive between epochs.
 */
class Staging {
  epoch: number | null = null;
  resync = false;
  /** Codec byte of the staged epoch's frames (every frame of an epoch carries the same). */
  codec = 0;
  nextSequence = 0;
  count = 0;
  /** Slots 0..slotEnd-1 hold pages in request order (codecs 1 and 2 fill them in arrival order; codec 3 chunks say each page's slot). */
  slotEnd = 0;
  pfnBytes: Uint8Array;
  pfns: Float64Array;
  /** 1 where a slot holds a staged page. */
  private filled: Uint8Array;
  /** The slot of each staged record, in arrival order: what truncate undoes. */
  private order: Int32Array;
  /** pfn → slot of the staged records. */
  readonly index = new PfnTable();
  /**
   * Digest groups are hashed as soon as their 64 slots are filled, while
   * their pages are still in cache: per group, its filled slots, and 1 once
   * its hash in groupHashes is that of its final pages (a rolled back
   * record clears it).
   */
  private groupFill: Uint8Array;
  private groupHashed: Uint8Array;
  private groupHashes: Uint8Array;
  private readonly arena: PageArena;
  private readonly pageSize: number;
  private readonly maxRecords: number;
  /** Arena offsets of the page blocks: block b holds slots [b * blockPages, (b + 1) * blockPages). */
  private readonly blocks: number[] = [];
  private readonly blockPages: number;
  private readonly blockShift: number;
  /** Slots that have page room (the blocks' pages). */
  private backed = 0;
  /** The first capacity: one block, or the epoch bound when smaller. */
  private readonly initial: number;

  constructor(arena: PageArena, pageSize: number, maxRecords: number) {
    this.arena = arena;
    this.pageSize = pageSize;
    this.maxRecords = maxRecords;
    this.blockPages = Math.max(DIGEST_GROUP_PAGES, INITIAL_STAGING_BYTES / pageSize);
    this.blockShift = Math.log2(this.blockPages);
    this.initial = Math.min(maxRecords, this.blockPages);
    this.pfnBytes = new Uint8Array(this.initial * PFN_BYTES);
    this.pfns = new Float64Array(this.initial);
    this.filled = new Uint8Array(this.initial);
    this.order = new Int32Array(this.initial);
    const groups = digestGroupCount(this.initial);
    this.groupFill = new Uint8Array(groups);
    this.groupHashed = new Uint8Array(groups);
    this.groupHashes = new Uint8Array(groups * DIGEST_BYTES);
  }

  /** Arena offset of `slot`'s page (slot below the reserved capacity). */
  pageOffset(slot: number): number {
    return this.blocks[slot >>> this.blockShift] + (slot & (this.blockPages - 1)) * this.pageSize;
  }

  /**
   * Make room for slots 0..slots-1 (the caller has checked the epoch bound).
   * False when the arena cannot grow that far; the staged records are
   * untouched either way.
   */
  reserve(slots: number): boolean {
    if (slots <= this.backed) return true;
    let capacity = Math.max(this.backed, this.initial);
    while (capacity < slots) capacity *= 2;
    capacity = Math.min(capacity, this.maxRecords);
    let ok = true;
    while (this.backed < capacity) {
      const pages = Math.min(this.blockPages, this.maxRecords - this.backed);
      const offset = this.arena.alloc(pages * this.pageSize);
      if (offset < 0) {
        ok = false;
        break;
      }
      this.blocks.push(offset);
      this.backed += pages;
    }
    // The per-slot arrays cover every slot that has page room.
    if (this.backed > this.pfns.length) this.growSlotArrays(this.backed);
    return ok;
  }

  private growSlotArrays(capacity: number): void {
    const used = this.slotEnd;
    const pfnBytes = new Uint8Array(capacity * PFN_BYTES);
    pfnBytes.set(this.pfnBytes.subarray(0, used * PFN_BYTES));
    const pfns = new Float64Array(capacity);
    pfns.set(this.pfns.subarray(0, used));
    const filled = new Uint8Array(capacity);
    filled.set(this.filled.subarray(0, used));
    const order = new Int32Array(capacity);
    order.set(this.order.subarray(0, this.count));
    const groups = digestGroupCount(capacity);
    const groupFill = new Uint8Array(groups);
    groupFill.set(this.groupFill);
    const groupHashed = new Uint8Array(groups);
    groupHashed.set(this.groupHashed);
    const groupHashes = new Uint8Array(groups * DIGEST_BYTES);
    groupHashes.set(this.groupHashes);
    this.pfnBytes = pfnBytes;
    this.pfns = pfns;
    this.filled = filled;
    this.order = order;
    this.groupFill = groupFill;
    this.groupHashed = groupHashed;
    this.groupHashes = groupHashes;
  }

  /** The slot the next record of a codec 1 or 2 frame goes to. */
  get nextSlot(): number {
    return this.count;
  }

  isFilled(slot: number): boolean {
    return this.filled[slot] === 1;
  }

  /** Record that `slot` (reserved, not filled) now holds the page of the pfn of halves (low, high), whose decoding is done. */
  add(low: number, high: number, slot: number): void {
    this.order[this.count++] = slot;
    this.filled[slot] = 1;
    if (slot >= this.slotEnd) this.slotEnd = slot + 1;
    this.pfns[slot] = pfnOf(low, high);
    // The pfn as u64 LE (writePfn's bytes), from its halves.
    const bytes = this.pfnBytes;
    const at = slot * PFN_BYTES;
    bytes[at] = low;
    bytes[at + 1] = low >>> 8;
    bytes[at + 2] = low >>> 16;
    bytes[at + 3] = low >>> 24;
    bytes[at + 4] = high;
    bytes[at + 5] = high >>> 8;
    bytes[at + 6] = 0;
    bytes[at + 7] = 0;
    this.index.setParts(low, high, slot);
    const group = slot >>> DIGEST_GROUP_SHIFT;
    if (++this.groupFill[group] === DIGEST_GROUP_PAGES) this.hashGroup(group, DIGEST_GROUP_PAGES);
    // A partial group hashed by digest() before a refusal rolled back its LAST frame.
    else this.groupHashed[group] = 0;
  }

  /** Hash group `group`'s first `pages` slots (all filled) into groupHashes. */
  private hashGroup(group: number, pages: number): void {
    const first = group * DIGEST_GROUP_PAGES;
    // A group never straddles two blocks (blockPages is a multiple of DIGEST_GROUP_PAGES).
    const at = this.pageOffset(first);
    hashDigestGroup(
      this.pfnBytes.subarray(first * PFN_BYTES, (first + pages) * PFN_BYTES),
      this.arena.bytes.subarray(at, at + pages * this.pageSize),
      this.groupHashes,
      group * DIGEST_BYTES,
    );
    this.groupHashed[group] = 1;
  }

  /** Drop the records staged after the first `count` (a rejected frame's). */
  truncate(count: number): void {
    for (let k = count; k < this.count; k++) {
      const slot = this.order[k];
      const pfn = this.pfns[slot];
      this.index.deleteParts(pfnLow(pfn), pfnHigh(pfn));
      this.filled[slot] = 0;
      const group = slot >>> DIGEST_GROUP_SHIFT;
      this.groupFill[group]--;
      this.groupHashed[group] = 0;
    }
    this.count = count;
    let end = 0;
    for (let k = 0; k < count; k++) end = Math.max(end, this.order[k] + 1);
    this.slotEnd = end;
  }

  reset(): void {
    this.index.clear();
    this.filled.fill(0, 0, this.slotEnd);
    const groups = digestGroupCount(this.slotEnd);
    this.groupFill.fill(0, 0, groups);
    this.groupHashed.fill(0, 0, groups);
    this.slotEnd = 0;
    this.count = 0;
    this.epoch = null;
    this.resync = false;
    this.codec = 0;
    this.nextSequence = 0;
  }

  /** The epoch digest of slots 0..count-1 (all filled: the caller checked slotEnd === count). */
  digest(): Buffer {
    const groups = digestGroupCount(this.count);
    // Full groups were hashed as they filled; the last one may be partial.
    for (let g = 0; g < groups; g++) {
      if (this.groupHashed[g] === 0) this.hashGroup(g, Math.min(DIGEST_GROUP_PAGES, this.count - g * DIGEST_GROUP_PAGES));
    }
    return foldEpochDigest(this.groupHashes, groups, this.epoch as number, this.resync);
  }
}

/**
 * Applies frames to an image. Not reentrant: one frame at a time, whole
 * (see FrameSplitter for byte streams). Every refusal is a FrameError with
 * a FRAME_ code, after which the image is as it was and the staging as it was
 * before the frame, except for an epoch count or digest mismatch on a LAST
 * frame, which discards the staged epoch.
 */
export class Receiver {
  readonly pageSize: number;
  readonly kernel: ReceiverKernel;
  private readonly pageShift: number;
  private readonly image: ImageStore;
  private readonly maxFrameBytes: number;
  private readonly maxEpochRecords: number;
  /** Page memory: staging and scratch (a MemoryImage's arena, else one of its own), see the file comment. */
  private readonly arena: PageArena;
  /** The image when it is a MemoryImage: a commit first asks it for room (makeRoom), so that no write allocates. */
  private readonly memImage: MemoryImage | null;
  /** The wasm kernel over `arena`; null with kernel 'js'. */
  private readonly wasm: RemusWasmKernel | null;
  private readonly staging: Staging;
  /** Where a restarting frame (sequence 0) is trial-decoded while an older staging is kept (see applyFrame): an arena offset. */
  private readonly scratchPage: number;
  /** Codec 3 chunk scratch, an arena region (offset, and a view of it for the ChunkReader). */
  private readonly chunkScratch: number;
  private readonly chunkScratchView: Uint8Array;
  /** wasm kernel, codecs 1 and 2: the frame being applied is copied here (arena offset, -1 before the first). */
  private frameCopy = -1;
  private frameCopyBytes = 0;
  /** Codec 3: one past the highest index a trial decode saw, for the room the frame will need. */
  private trialSlotEnd = 0;
  private readonly scratchPfns = new Set<number>();
  /**
   * Codec 3: the indices a trial decode has seen, so that a restarting frame
   * with a duplicate index is refused by the trial, before the older staging
   * is dropped, and its pages are counted against the epoch bound as a
   * staged frame's would be.
   */
  private readonly scratchSlots = new Set<number>();
  /** Decompresses codec 3 chunks (one zstd context; its scratch is chunkScratch). */
  private readonly chunks: ChunkReader;
  private committed: number | null;

  constructor(options: ReceiverOptions) {
    const { pageSize, image } = options;
    checkPageSize(pageSize, 'Receiver');
    if (image.pageSize !== pageSize) throw new RangeError(`Receiver: image pageSize ${image.pageSize} differs from pageSize ${pageSize}`);
    const maxFrameBytes = options.maxFrameBytes ?? MAX_FRAME_BYTES;
    if (!Number.isInteger(maxFrameBytes) || maxFrameBytes <= FRAME_HEADER_BYTES || maxFrameBytes > MAX_FRAME_BYTES) {
      throw new RangeError(`Receiver: maxFrameBytes ${maxFrameBytes} outside (${FRAME_HEADER_BYTES}, ${MAX_FRAME_BYTES}]`);
    }
    const maxEpochBytes = options.maxEpochBytes ?? DEFAULT_MAX_EPOCH_BYTES;
    if (!Number.isInteger(maxEpochBytes) || maxEpochBytes < pageSize) {
      throw new RangeError(`Receiver: maxEpochBytes ${maxEpochBytes} is below one page (${pageSize})`);
    }
    if (maxEpochBytes > MAX_RECEIVER_EPOCH_BYTES) {
      throw new RangeError(
        `Receiver: maxEpochBytes ${maxEpochBytes} is over ${MAX_RECEIVER_EPOCH_BYTES}: the staged epoch and the receiver's scratch share one ${ARENA_MAX_BYTES}-byte wasm32 memory`,
      );
    }
    const kernel = options.kernel ?? DEFAULT_RECEIVER_KERNEL;
    if (!isReceiverKernel(kernel)) throw new RangeError(`Receiver: kernel ${JSON.stringify(kernel)} is not one of ${RECEIVER_KERNELS.join(', ')}`);
    this.pageSize = pageSize;
    this.kernel = kernel;
    this.pageShift = pageShiftOf(pageSize);
    this.image = image;
    this.maxFrameBytes = maxFrameBytes;
    this.maxEpochRecords = Math.floor(maxEpochBytes / pageSize);
    this.memImage = image instanceof MemoryImage ? image : null;
    this.arena = this.memImage?.arena ?? new PageArena();
    this.wasm = kernel === 'wasm' ? instantiateRemusWasm(this.arena.memory) : null;
    this.staging = new Staging(this.arena, pageSize, this.maxEpochRecords);
    this.scratchPage = this.fixedRegion(pageSize);
    this.chunkScratch = this.fixedRegion(MAX_CHUNK_RAW_BYTES);
    // A view over the memory as it is now: the region never moves, so the view stays valid as the memory grows.
    this.chunkScratchView = new Uint8Array(this.arena.bytes.buffer, this.chunkScratch, MAX_CHUNK_RAW_BYTES);
    this.chunks = new ChunkReader(this.chunkScratchView);
    this.committed = image.committedEpoch ?? null;
  }

  private fixedRegion(bytes: number): number {
    const offset = this.arena.alloc(bytes);
    if (offset < 0) {
      throw new ServiceError(
        'RECEIVER_MEMORY_FULL',
        `Receiver: no room for ${bytes} bytes of scratch in the receiver's memory (${this.arena.allocated} of at most ${ARENA_MAX_BYTES} bytes in use)`,
        STATUS_MEMORY_FULL,
      );
    }
    return offset;
  }

  get committedEpoch(): number | null {
    return this.committed;
  }

  get stagingEpoch(): number | null {
    return this.staging.epoch;
  }

  get stagingState(): StagingState | null {
    const st = this.staging;
    if (st.epoch === null) return null;
    return { epoch: st.epoch, resync: st.resync, nextSequence: st.nextSequence, records: st.count };
  }

  get pageCount(): number {
    return this.image.size;
  }

  /** Copy the committed page into dst[0..pageSize); false when the image lacks it. */
  readPage(pfn: number, dst: Uint8Array): boolean {
    return this.image.read(pfn, dst, 0);
  }

  /** The committed image's digest (docs/FORMAT.md "Image digest"). */
  imageDigest(): Buffer {
    return hashImage(this.image.pfns(), this.pageSize, (pfn, dst) => this.image.read(pfn, dst, 0));
  }

  close(): void {
    this.image.close?.();
  }

  applyFrame(frame: Uint8Array): ApplyResult {
    const h = this.checkHeader(frame);
    if ((h.flags & FLAG_ABORT) !== 0) return this.applyAbort(frame, h);
    const resync = (h.flags & FLAG_RESYNC) !== 0;
    this.checkTurn(h, resync);

    const st = this.staging;
    const restart = h.sequence === 0;
    const last = (h.flags & FLAG_LAST) !== 0;
    const base = restart ? 0 : st.count;
    if (base + h.recordCount > this.maxEpochRecords) {
      throw new FrameError(
        'FRAME_EPOCH_TOO_LARGE',
        `epoch ${h.epoch} frame ${h.sequence}: ${base + h.recordCount} records of ${this.pageSize} bytes exceed the ${this.maxEpochRecords * this.pageSize}-byte epoch bound`,
      );
    }
    let slots = base + h.recordCount;
    if (restart && st.count > 0) {
      // Sequence 0 restarts the epoch, but a frame that turns out bad must
      // leave the older staging as it was: trial-decode it first, and make
      // the room it needs (its staging slots; for a LAST frame its image
      // pages) before the older staging is dropped.
      this.decodeRecords(frame, h, true);
      if (h.codec === CODEC_REMUS_ZSTD) slots = Math.max(slots, this.trialSlotEnd);
      const pages = this.scratchPfns.size;
      if (last && !this.imageRoom(pages, resync, () => this.freshPfns(this.scratchPfns))) throw this.imageFull(h, pages);
    }
    if (!st.reserve(slots)) throw this.memoryFull(h, `${slots} staged pages`);
    const saved = { epoch: st.epoch, resync: st.resync, codec: st.codec, nextSequence: st.nextSequence, count: st.count };
    if (restart) st.reset();
    try {
      this.decodeRecords(frame, h, false);
    } catch (err) {
      this.rollBack(base, restart, saved);
      throw err;
    }
    st.epoch = h.epoch;
    st.resync = resync;
    st.codec = h.codec;
    st.nextSequence = h.sequence + 1;

    // Page records staged, counted from the staging: under codec 3 recordCount counts chunks.
    const result: ApplyResult = { epoch: h.epoch, sequence: h.sequence, records: st.count - base, committed: false, aborted: false };
    if (last) {
      this.verifyStaged(h);
      if (!this.imageRoom(st.count, st.resync, () => this.freshStaged())) {
        // Refused whole, as any frame: the staging goes back to what it was before this frame.
        const err = this.imageFull(h, st.count);
        this.rollBack(base, restart, saved);
        throw err;
      }
      this.writeStaged(h);
      result.committed = true;
    }
    return result;
  }

  /** Undo a refused frame's staging (its records, and the epoch fields when they were the frame's). */
  private rollBack(base: number, restart: boolean, saved: { epoch: number | null; resync: boolean; codec: number; nextSequence: number; count: number }): void {
    const st = this.staging;
    st.truncate(base);
    // A restart over staged records passed the trial and had its room made
    // first, so only an I/O failure of the image gets here; the older
    // staging is then gone.
    if (!restart || saved.count === 0) {
      st.epoch = saved.epoch;
      st.resync = saved.resync;
      st.codec = saved.codec;
      st.nextSequence = saved.nextSequence;
    }
  }

  /** Copy the frame into the arena, for the wasm kernel (the region grows by doubling up to maxFrameBytes). */
  private copyFrameIn(frame: Uint8Array, h: FrameHeader): void {
    if (frame.length > this.frameCopyBytes) {
      let bytes = Math.max(MIN_FRAME_COPY_BYTES, this.frameCopyBytes);
      while (bytes < frame.length) bytes *= 2;
      bytes = Math.max(frame.length, Math.min(bytes, this.maxFrameBytes));
      const offset = this.arena.alloc(bytes);
      if (offset < 0) throw this.memoryFull(h, `a copy of the ${frame.length}-byte frame`);
      this.frameCopy = offset;
      this.frameCopyBytes = bytes;
    }
    copyInto(this.arena.bytes, this.frameCopy, frame);
  }

  /** Room in a MemoryImage for `pages` pages about to be committed (always, for other stores); false when the process cannot allocate it. */
  private imageRoom(pages: number, resync: boolean, fresh: () => number): boolean {
    return this.memImage === null || this.memImage.makeRoom(pages, resync, fresh);
  }

  /** How many of `pfns` the image lacks. */
  private freshPfns(pfns: Set<number>): number {
    let n = 0;
    for (const pfn of pfns) if (!this.image.has(pfn)) n++;
    return n;
  }

  /** How many of the staged pfns the image lacks. */
  private freshStaged(): number {
    const st = this.staging;
    let n = 0;
    const held = this.memImage as MemoryImage;
    for (let i = 0; i < st.count; i++) {
      const pfn = st.pfns[i];
      if (!held.hasParts(pfnLow(pfn), pfnHigh(pfn))) n++;
    }
    return n;
  }

  /** The arena (staging, scratch, frame copy) cannot give `what` its room. */
  private memoryFull(h: FrameHeader, what: string): FrameError {
    return new FrameError(
      'FRAME_MEMORY_FULL',
      `epoch ${h.epoch} frame ${h.sequence}: the receiver's memory cannot hold ${what}: ${this.arena.allocated} of its ${ARENA_MAX_BYTES} bytes (wasm32) are in use by the staged epoch and scratch`,
      STATUS_MEMORY_FULL,
    );
  }

  /**
   * The process could not allocate the chunks a MemoryImage needs for the
   * epoch's `pages` pages (its only bound): refused whole, as a full arena
   * is, before anything is written.
   */
  private imageFull(h: FrameHeader, pages: number): FrameError {
    const held = this.memImage as MemoryImage;
    return new FrameError(
      'FRAME_MEMORY_FULL',
      `epoch ${h.epoch} frame ${h.sequence}: the process cannot allocate room in the memory image for the epoch's ${pages} pages (${held.size} pages held in ${held.chunkBytes} bytes of chunks; a larger image needs a file image)`,
      STATUS_MEMORY_FULL,
    );
  }

  /** Magic through CRC, in the order of FORMAT.md "Receiver rules"; returns the header. */
  private checkHeader(frame: Uint8Array): FrameHeader {
    if (frame.length < FRAME_HEADER_BYTES) {
      throw new FrameError('FRAME_TRUNCATED', `frame of ${frame.length} bytes is shorter than the ${FRAME_HEADER_BYTES}-byte header`);
    }
    if (!hasFrameMagic(frame, 0)) throw new FrameError('FRAME_BAD_MAGIC', `bytes 0..3 are not the magic "RMFR"`);
    const version = frame[FRAME_FIELD.version];
    if (version !== FRAME_VERSION) {
      throw new FrameError('FRAME_BAD_VERSION', `version ${version} at byte ${FRAME_FIELD.version}, expected ${FRAME_VERSION}`);
    }
    const h = readFrameHeader(frame, 0);
    if ((h.flags & ~KNOWN_FLAGS) !== 0) {
      throw new FrameError('FRAME_BAD_FLAGS', `flags 0x${h.flags.toString(16)} at byte ${FRAME_FIELD.flags} set unknown bits`);
    }
    if ((h.flags & FLAG_ABORT) !== 0 && (h.flags & FLAG_LAST) !== 0) {
      throw new FrameError('FRAME_BAD_FLAGS', `flags 0x${h.flags.toString(16)} at byte ${FRAME_FIELD.flags} set both ABORT and LAST`);
    }
    if (!isKnownCodecByte(h.codec)) {
      throw new FrameError(
        'FRAME_BAD_CODEC',
        `codec ${h.codec} at byte ${FRAME_FIELD.codec} is not supported by this receiver: expected one of ${knownCodecsText()}`,
      );
    }
    if (h.pageShift !== this.pageShift) {
      throw new FrameError(
        'FRAME_PAGE_SIZE_MISMATCH',
        `pageShift ${h.pageShift} at byte ${FRAME_FIELD.pageShift}, but the image has pageSize ${this.pageSize} (shift ${this.pageShift})`,
      );
    }
    const total = FRAME_HEADER_BYTES + h.payloadLength;
    if (total > this.maxFrameBytes) {
      throw new FrameError(
        'FRAME_TOO_LARGE',
        `payloadLength ${h.payloadLength} at byte ${FRAME_FIELD.payloadLength} makes a ${total}-byte frame, over the ${this.maxFrameBytes}-byte limit`,
      );
    }
    if (frame.length < total) {
      throw new FrameError('FRAME_TRUNCATED', `frame of ${frame.length} bytes, but payloadLength ${h.payloadLength} at byte ${FRAME_FIELD.payloadLength} needs ${total}`);
    }
    if (frame.length > total) {
      throw new FrameError('FRAME_BAD_LENGTH', `frame of ${frame.length} bytes, but payloadLength ${h.payloadLength} at byte ${FRAME_FIELD.payloadLength} makes it ${total}`);
    }
    const stored = readU32(frame, FRAME_FIELD.crc);
    // The wasm kernel reads records from its memory: codecs 1 and 2 from a
    // copy of the frame (codec 3 from the chunk scratch). The copy is made
    // first and the CRC taken over it, while it is in cache: one read of
    // the frame from memory instead of two.
    let computed: number;
    if (this.wasm !== null && h.codec !== CODEC_REMUS_ZSTD && (h.flags & FLAG_ABORT) === 0) {
      this.copyFrameIn(frame, h);
      computed = computeFrameCrc(this.arena.bytes, this.frameCopy);
    } else {
      computed = computeFrameCrc(frame, 0);
    }
    if (stored !== computed) {
      throw new FrameError('FRAME_BAD_CRC', `crc32 0x${stored.toString(16)} at byte ${FRAME_FIELD.crc}, computed 0x${computed.toString(16)}`);
    }
    if ((h.flags & FLAG_LAST) === 0 && (h.epochPageCount !== 0 || h.epochDigest.some((b) => b !== 0))) {
      throw new FrameError(
        'FRAME_BAD_HEADER',
        `epochPageCount (byte ${FRAME_FIELD.epochPageCount}) and epochDigest (byte ${FRAME_FIELD.epochDigest}) must be zero on a frame that is not LAST`,
      );
    }
    return h;
  }

  private accepts(epoch: number, resync: boolean): boolean {
    if (resync) return true;
    return this.committed !== null && epoch === ((this.committed + 1) >>> 0);
  }

  private expectedEpochs(): string {
    return this.committed === null ? 'only a RESYNC epoch (nothing committed yet)' : `epoch ${(this.committed + 1) >>> 0} or a RESYNC epoch`;
  }

  /** Epoch and sequence against the committed epoch and the staging. */
  private checkTurn(h: FrameHeader, resync: boolean): void {
    const st = this.staging;
    const stagedHere = st.epoch === h.epoch;
    if (!this.accepts(h.epoch, resync) && !(stagedHere && h.sequence > 0)) {
      throw new FrameError(
        'FRAME_UNEXPECTED_EPOCH',
        `${resync ? 'RESYNC ' : ''}epoch ${h.epoch} at byte ${FRAME_FIELD.epoch}: the receiver accepts ${this.expectedEpochs()}`,
        STATUS_CONFLICT,
      );
    }
    if (h.sequence === 0) return;
    if (!stagedHere) {
      throw new FrameError(
        'FRAME_UNEXPECTED_SEQUENCE',
        `sequence ${h.sequence} at byte ${FRAME_FIELD.sequence} of epoch ${h.epoch}, but no frame 0 of that epoch is staged`,
        STATUS_CONFLICT,
      );
    }
    if (h.sequence !== st.nextSequence) {
      throw new FrameError(
        'FRAME_UNEXPECTED_SEQUENCE',
        `sequence ${h.sequence} at byte ${FRAME_FIELD.sequence} of epoch ${h.epoch}, expected ${st.nextSequence}`,
        STATUS_CONFLICT,
      );
    }
    if (h.codec !== st.codec) {
      throw new FrameError(
        'FRAME_BAD_CODEC',
        `codec ${h.codec} at byte ${FRAME_FIELD.codec} on frame ${h.sequence} of epoch ${h.epoch}, but ${st.codec} on its frame 0: every frame of an epoch carries the same codec`,
      );
    }
    if (resync !== st.resync) {
      throw new FrameError(
        'FRAME_BAD_FLAGS',
        `RESYNC bit at byte ${FRAME_FIELD.flags} is ${resync ? 'set' : 'clear'} on frame ${h.sequence} of epoch ${h.epoch} but ${st.resync ? 'set' : 'clear'} on its frame 0`,
      );
    }
  }

  /**
   * Decode every record of the frame. Staging mode appends to the staging
   * (the caller rolls back on a throw); trial mode decodes each page into a
   * scratch page and checks duplicates within the frame only, changing
   * nothing the receiver keeps.
   */
  private decodeRecords(frame: Uint8Array, h: FrameHeader, trial: boolean): void {
    const end = FRAME_HEADER_BYTES + h.payloadLength;
    const where = `epoch ${h.epoch} frame ${h.sequence}`;
    if (h.recordCount * MIN_RECORD_BYTES > h.payloadLength) {
      throw new FrameError(
        'FRAME_BAD_RECORD',
        `${where}: recordCount ${h.recordCount} at byte ${FRAME_FIELD.recordCount} cannot fit payloadLength ${h.payloadLength} (a record takes at least ${MIN_RECORD_BYTES} bytes)`,
      );
    }
    if (trial) {
      this.scratchPfns.clear();
      this.scratchSlots.clear();
      this.trialSlotEnd = 0;
    }
    let pos = FRAME_HEADER_BYTES;
    if (h.codec !== CODEC_REMUS_ZSTD) {
      pos = this.decodePageRecords(frame, pos, end, h.recordCount, h.codec === CODEC_XBZRLE, where, trial, null, this.frameCopy);
    } else {
      // Codec 3: every top-level record is a chunk of codec 1 page records.
      for (let r = 0; r < h.recordCount; r++) {
        const chunkStart = pos;
        if (pos >= end) {
          throw new FrameError('FRAME_BAD_RECORD', `${where}: the payload ends at byte ${pos} after ${r} of recordCount ${h.recordCount} chunks`);
        }
        if (frame[pos] !== RECORD_CHUNK) {
          throw new FrameError('FRAME_BAD_RECORD', `${where}: record ${r} at byte ${pos} has type ${frame[pos]}; codec ${CODEC_REMUS_ZSTD} frames hold only chunks (type ${RECORD_CHUNK})`);
        }
        let opened: OpenChunk;
        try {
          opened = this.chunks.open(frame, pos, end, CHUNK_INDEX_LIMIT);
        } catch (err) {
          if (err instanceof CodecError) throw new FrameError('FRAME_BAD_RECORD', `${where}: chunk ${r} at byte ${chunkStart}: ${err.code}: ${err.message}`);
          throw err;
        }
        const { header: chunk, raw, recordsStart } = opened;
        // A stored chunk is a view of the frame: the wasm kernel reads it from the scratch.
        if (this.wasm !== null && raw.buffer !== this.chunkScratchView.buffer) copyInto(this.chunkScratchView, 0, raw);
        const slots = this.chunks.indices;
        // The frame's recordCount counts chunks: the pages are known only now.
        const staged = trial ? this.scratchSlots.size : this.staging.count;
        // Indices increase within a chunk: the last is the highest. An index
        // past the bound means an epoch of more records than the bound.
        const highest = slots[chunk.records - 1];
        if (staged + chunk.records > this.maxEpochRecords || highest >= this.maxEpochRecords) {
          throw new FrameError(
            'FRAME_EPOCH_TOO_LARGE',
            `${where}: chunk ${r} at byte ${chunkStart} brings the epoch to ${staged + chunk.records} records, up to index ${highest}, of ${this.pageSize} bytes, over the ${this.maxEpochRecords * this.pageSize}-byte epoch bound`,
          );
        }
        if (trial) {
          this.trialSlotEnd = Math.max(this.trialSlotEnd, highest + 1);
        } else if (!this.staging.reserve(highest + 1)) {
          throw this.memoryFull(h, `${highest + 1} staged pages`);
        }
        const inner = `${where} chunk ${r} (at byte ${chunkStart}; byte offsets within its ${chunk.rawLength} raw bytes)`;
        const innerEnd = this.decodePageRecords(raw, recordsStart, chunk.rawLength, chunk.records, false, inner, trial, slots, this.chunkScratch);
        if (innerEnd !== chunk.rawLength) {
          throw new FrameError('FRAME_TRAILING_BYTES', `${inner}: ${chunk.rawLength - innerEnd} bytes after the last of its ${chunk.records} records, from byte ${innerEnd}`);
        }
        pos = chunk.end;
      }
    }
    if (pos !== end) {
      throw new FrameError('FRAME_TRAILING_BYTES', `${where}: ${end - pos} bytes after the last of ${h.recordCount} records, from byte ${pos}`);
    }
  }

  /**
   * Decode `count` page records (RECORD_REMUS or RECORD_ZERO) from
   * bytes[pos, end): the body of a codec 1 or 2 frame, staged in arrival
   * order, or a codec 3 chunk's records, staged at slots[0, count). Returns
   * the position after the last one. The wasm kernel reads the same bytes
   * from the arena, where bytes[0] is at `inBase` (the frame copy, or the
   * chunk scratch); the staging has its room already.
   */
  private decodePageRecords(
    bytes: Uint8Array, pos: number, end: number, count: number, xbzrle: boolean, where: string, trial: boolean,
    slots: Int32Array | null, inBase: number,
  ): number {
    const st = this.staging;
    const ps = this.pageSize;
    const memory = this.arena.bytes;
    const wasm = this.wasm;
    for (let r = 0; r < count; r++) {
      const recordStart = pos;
      if (pos >= end) {
        throw new FrameError('FRAME_BAD_RECORD', `${where}: the payload ends at byte ${pos} after ${r} of ${count} records`);
      }
      const type = bytes[pos++];
      if (type !== RECORD_REMUS && type !== RECORD_ZERO) {
        throw new FrameError('FRAME_BAD_RECORD', `${where}: record ${r} at byte ${recordStart} has unknown type ${type}`);
      }
      let pfn = 0;
      let scale = 1;
      for (let n = 1; ; n++) {
        if (pos >= end) throw new FrameError('FRAME_BAD_RECORD', `${where}: record ${r} at byte ${recordStart}: the payload ends inside its pfn`);
        const b = bytes[pos++];
        pfn += (b & ULEB_PAYLOAD_MASK) * scale;
        if ((b & ULEB_CONTINUE) === 0) break;
        if (n === MAX_PFN_BYTES) {
          throw new FrameError('FRAME_PFN_RANGE', `${where}: record ${r} at byte ${recordStart}: pfn ULEB128 is longer than ${MAX_PFN_BYTES} bytes`);
        }
        scale *= ULEB_RADIX;
      }
      if (pfn >= PFN_LIMIT) {
        throw new FrameError('FRAME_PFN_RANGE', `${where}: record ${r} at byte ${recordStart}: pfn ${pfn} is not below 2^48`);
      }
      // The pfn goes to other functions as two int32 halves, never boxed.
      const low = pfnLow(pfn);
      const high = pfnHigh(pfn);
      if (trial ? this.scratchPfns.has(pfn) : st.index.hasParts(low, high)) {
        throw new FrameError('FRAME_DUPLICATE_PFN', `${where}: record ${r} at byte ${recordStart}: pfn ${pfn} already has a record in this epoch`);
      }
      const slot = slots === null ? st.nextSlot : slots[r];
      if (trial ? slots !== null && this.scratchSlots.has(slot) : st.isFilled(slot)) {
        throw new FrameError('FRAME_BAD_RECORD', `${where}: record ${r} at byte ${recordStart}: index ${slot} of the epoch already has a record`);
      }
      const dstOffset = trial ? this.scratchPage : st.pageOffset(slot);
      if (type === RECORD_ZERO) {
        memory.fill(0, dstOffset, dstOffset + ps);
      } else {
        if (pos >= end) throw new FrameError('FRAME_BAD_RECORD', `${where}: record ${r} at byte ${recordStart}: the payload ends before its body`);
        const kind = bytes[pos];
        if (xbzrle && kind !== XBZRLE_UNCHANGED && kind !== XBZRLE_DELTA && kind !== XBZRLE_FULL) {
          throw new FrameError(
            'FRAME_BAD_RECORD',
            `${where}: record ${r} (pfn ${pfn}) at byte ${recordStart}: XBZRLE_BAD_KIND: kind 0x${kind.toString(16)} at byte ${pos}, expected 0x00, 0x01 or 0x80`,
          );
        }
        // Anything but FULL (0x80 under both codecs) is a delta against the
        // committed page, which is copied into staging first so the image
        // stays untouched.
        if (kind !== FULL_PAGE) {
          if (!this.image.read(pfn, memory, dstOffset)) {
            throw new FrameError(
              'FRAME_DELTA_WITHOUT_BASE',
              `${where}: record ${r} at byte ${recordStart} is a delta for pfn ${pfn}, which the image does not hold`,
            );
          }
        }
        try {
          if (wasm !== null) {
            const inEnd = inBase + end;
            pos = (xbzrle ? wasm.decodeXbzrleBody(inBase + pos, inEnd, dstOffset, ps, inBase) : wasm.decodePage(inBase + pos, inEnd, dstOffset, ps, inBase)) - inBase;
          } else {
            pos = xbzrle ? decodeXbzrleBody(bytes, pos, end, memory, dstOffset, ps) : decodeRemusPage(bytes, pos, end, memory, dstOffset, ps);
          }
        } catch (err) {
          if (err instanceof CodecError) {
            throw new FrameError('FRAME_BAD_RECORD', `${where}: record ${r} (pfn ${pfn}) at byte ${recordStart}: ${err.code}: ${err.message}`);
          }
          throw err;
        }
      }
      if (trial) {
        this.scratchPfns.add(pfn);
        if (slots !== null) this.scratchSlots.add(slot);
      } else {
        st.add(low, high, slot);
      }
    }
    return pos;
  }

  /** The LAST frame is staged: check the epoch's count and digest (a mismatch discards the staged epoch). */
  private verifyStaged(h: FrameHeader): void {
    const st = this.staging;
    if (h.epochPageCount !== st.count) {
      const message = `epoch ${h.epoch}: epochPageCount ${h.epochPageCount} at byte ${FRAME_FIELD.epochPageCount}, but its frames 0..${h.sequence} hold ${st.count} records; the staged epoch is discarded`;
      st.reset();
      throw new FrameError('FRAME_COUNT_MISMATCH', message);
    }
    if (st.slotEnd !== st.count) {
      const message = `epoch ${h.epoch}: its ${st.count} records name indices up to ${st.slotEnd - 1}, so some index below ${st.count} has no record; the staged epoch is discarded`;
      st.reset();
      throw new FrameError('FRAME_COUNT_MISMATCH', message);
    }
    const digest = st.digest();
    if (!digest.equals(h.epochDigest)) {
      st.reset();
      throw new FrameError(
        'FRAME_DIGEST_MISMATCH',
        `epoch ${h.epoch}: epochDigest at byte ${FRAME_FIELD.epochDigest} is ${Buffer.from(h.epochDigest).toString('hex')}, the staged pages hash to ${digest.toString('hex')}; the staged epoch is discarded`,
      );
    }
  }

  /** Write the verified staged epoch to the image (room made) and commit it. */
  private writeStaged(h: FrameHeader): void {
    const st = this.staging;
    if (st.resync) this.image.clear();
    // A memory image has its chunks already (makeRoom): no write allocates one.
    const memory = this.arena.bytes;
    for (let i = 0; i < st.count; i++) this.image.write(st.pfns[i], memory, st.pageOffset(i));
    this.image.commit?.(h.epoch);
    this.committed = h.epoch;
    st.reset();
  }

  /**
   * An ABORT drops what was staged of its epoch. Its sequence is not checked
   * against the staging: the sender may abort after frames this receiver
   * never got (a cut connection), and the abort must still clear the way.
   */
  private applyAbort(frame: Uint8Array, h: FrameHeader): ApplyResult {
    const where = `ABORT frame of epoch ${h.epoch}`;
    if (h.recordCount !== 0 || h.epochPageCount !== 0 || h.epochDigest.some((b) => b !== 0)) {
      throw new FrameError(
        'FRAME_BAD_HEADER',
        `${where}: recordCount (byte ${FRAME_FIELD.recordCount}), epochPageCount and epochDigest must be zero`,
      );
    }
    const resync = (h.flags & FLAG_RESYNC) !== 0;
    if (this.staging.epoch !== h.epoch && !this.accepts(h.epoch, resync)) {
      throw new FrameError(
        'FRAME_UNEXPECTED_EPOCH',
        `${where}: epoch ${h.epoch} at byte ${FRAME_FIELD.epoch} is neither staged nor one the receiver accepts (${this.expectedEpochs()})`,
        STATUS_CONFLICT,
      );
    }
    const { code, message } = parseAbortPayload(frame, where);
    if (this.staging.epoch === h.epoch) this.staging.reset();
    return {
      epoch: h.epoch,
      sequence: h.sequence,
      records: 0,
      committed: false,
      aborted: true,
      abort: { code: 'FRAME_ABORTED', senderCode: code, senderMessage: message, message: `the sender aborted epoch ${h.epoch}: ${code}: ${message}` },
    };
  }
}

function parseAbortPayload(frame: Uint8Array, where: string): { code: string; message: string } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(frame.buffer, frame.byteOffset + FRAME_HEADER_BYTES, frame.length - FRAME_HEADER_BYTES).toString('utf8'));
  } catch {
    parsed = undefined;
  }
  if (typeof parsed === 'object' && parsed !== null) {
    const { code, message } = parsed as Record<string, unknown>;
    if (typeof code === 'string' && typeof message === 'string') return { code, message };
  }
  throw new FrameError('FRAME_BAD_ABORT', `${where}: the payload from byte ${FRAME_HEADER_BYTES} is not a JSON object with string "code" and "message"`);
}
