/**
 * The verifying receiver (docs/FORMAT.md "Receiver rules"): it applies frames
 * to a memory image and trusts nothing. A frame is checked whole before any of
 * it is staged; an epoch reaches the image only when its LAST frame's count
 * and digest match what was staged.
 */
import * as fs from 'node:fs';
import { decodeRemusPage, FULL_PAGE } from './codec/remus.js';
import { ChunkReader, type OpenChunk } from './codec/chunk.js';
import { decodeXbzrleBody, XBZRLE_DELTA, XBZRLE_FULL, XBZRLE_UNCHANGED } from './codec/xbzrle.js';
import { DIGEST_BYTES, DIGEST_GROUP_PAGES, digestGroupCount, foldEpochDigest, hashDigestGroup, hashImage } from './digest.js';
import { readPfn, writePfn } from './epoch-record.js';
import { CodecError, FrameError, ServiceError } from './errors.js';
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
/** Staging starts this big and doubles on demand, so small epochs stay small. */
const INITIAL_STAGING_BYTES = 1024 * 1024;
/** MemoryImage allocates its pages in chunks of this size (the last chunk may hold fewer pages for big pages). */
const MEMORY_CHUNK_BYTES = 16 * 1024 * 1024;
/** The smallest record: type byte and a one-byte pfn (a ZERO record). */
const MIN_RECORD_BYTES = 2;
const PFN_BYTES = 8;
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

/** Byte copy without views: the apply loop must not allocate per page. */
function copyBytes(src: Uint8Array, srcOffset: number, dst: Uint8Array, dstOffset: number, length: number): void {
  const delta = dstOffset - srcOffset;
  const end = srcOffset + length;
  for (let i = srcOffset; i < end; i++) dst[i + delta] = src[i];
}

/**
 * What the two stores share: pages live in numbered slots, handed out in
 * order and never freed one by one (the format cannot remove a page; only
 * clear() empties the image), found through a pfn → slot map (pfns are
 * sparse, so no table indexed by pfn).
 */
abstract class SlotImage implements ImageStore {
  readonly pageSize: number;
  protected readonly slots: Map<number, number>;
  protected used: number;
  protected epoch: number | null;

  protected constructor(pageSize: number, slots: Map<number, number>, epoch: number | null) {
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
    return [...this.slots.keys()].sort((a, b) => a - b);
  }

  clear(): void {
    this.slots.clear();
    this.used = 0;
  }

  /** The slot of `pfn`, given the next free one (and announced to `slotAdded`) when the image lacks it. */
  protected slotFor(pfn: number): number {
    let slot = this.slots.get(pfn);
    if (slot === undefined) {
      slot = this.used++;
      this.slotAdded(slot, pfn);
      this.slots.set(pfn, slot);
    }
    return slot;
  }

  protected abstract slotAdded(slot: number, pfn: number): void;
  abstract read(pfn: number, dst: Uint8Array, dstOffset: number): boolean;
  abstract write(pfn: number, src: Uint8Array, srcOffset: number): void;
}

/** Pages in memory, in page slots grouped in fixed-size chunks. */
export class MemoryImage extends SlotImage {
  private readonly chunks: Uint8Array[] = [];
  private readonly pagesPerChunk: number;

  constructor(pageSize: number) {
    checkPageSize(pageSize, 'MemoryImage');
    super(pageSize, new Map(), null);
    this.pagesPerChunk = Math.max(1, Math.floor(MEMORY_CHUNK_BYTES / pageSize));
  }

  read(pfn: number, dst: Uint8Array, dstOffset: number): boolean {
    const slot = this.slots.get(pfn);
    if (slot === undefined) return false;
    const chunk = this.chunks[Math.floor(slot / this.pagesPerChunk)];
    copyBytes(chunk, (slot % this.pagesPerChunk) * this.pageSize, dst, dstOffset, this.pageSize);
    return true;
  }

  protected slotAdded(slot: number): void {
    // Chunks are kept across clear(): a RESYNC refills about as many pages as it dropped.
    if (Math.floor(slot / this.pagesPerChunk) === this.chunks.length) {
      this.chunks.push(new Uint8Array(this.pagesPerChunk * this.pageSize));
    }
  }

  write(pfn: number, src: Uint8Array, srcOffset: number): void {
    const slot = this.slotFor(pfn);
    const chunk = this.chunks[Math.floor(slot / this.pagesPerChunk)];
    copyBytes(src, srcOffset, chunk, (slot % this.pagesPerChunk) * this.pageSize, this.pageSize);
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
    slots: Map<number, number>,
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
      const image = new FileImage(path, pageSize, dataFd, indexFd, new Map(), new Float64Array(INITIAL_SLOT_CAPACITY), null);
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
    if (slot === undefined) return false;
    let done = 0;
    while (done < this.pageSize) {
      const n = fs.readSync(this.dataFd, dst, dstOffset + done, this.pageSize - done, slot * this.pageSize + done);
      if (n === 0) throw new ServiceError('IMAGE_INDEX_CORRUPT', `${this.path}: slot ${slot} of pfn ${pfn} lies past the end of the data file`, 500);
      done += n;
    }
    return true;
  }

  protected slotAdded(slot: number, pfn: number): void {
    if (slot === this.slotPfns.length) {
      const grown = new Float64Array(this.slotPfns.length * 2);
      grown.set(this.slotPfns);
      this.slotPfns = grown;
    }
    this.slotPfns[slot] = pfn;
  }

  write(pfn: number, src: Uint8Array, srcOffset: number): void {
    const slot = this.slotFor(pfn);
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
): { slots: Map<number, number>; slotPfns: Float64Array; epoch: number | null } {
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
  const slots = new Map<number, number>();
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
  /** Bound on the page bytes staged for one epoch (default DEFAULT_MAX_EPOCH_BYTES). */
  maxEpochBytes?: number;
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
 * The epoch being staged: page bytes in record order in one slab, the pfns
 * both as numbers and as the u64 LE bytes the digest hashes, and a pfn →
 * record index map. Digest groups are hashed straight from slab views. Slabs
 * survive between epochs and grow by doubling up to the epoch bound.
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
  pages: Uint8Array;
  pfnBytes: Uint8Array;
  pfns: Float64Array;
  /** 1 where a slot holds a staged page. */
  private filled: Uint8Array;
  /** The slot of each staged record, in arrival order: what truncate undoes. */
  private order: Int32Array;
  readonly index = new Map<number, number>();
  private groupHashes = new Uint8Array(0);
  private readonly pageSize: number;
  private readonly maxRecords: number;

  constructor(pageSize: number, maxRecords: number) {
    this.pageSize = pageSize;
    this.maxRecords = maxRecords;
    const initial = Math.max(1, Math.min(maxRecords, Math.floor(INITIAL_STAGING_BYTES / pageSize)));
    this.pages = new Uint8Array(initial * pageSize);
    this.pfnBytes = new Uint8Array(initial * PFN_BYTES);
    this.pfns = new Float64Array(initial);
    this.filled = new Uint8Array(initial);
    this.order = new Int32Array(initial);
  }

  get capacity(): number {
    return this.pfns.length;
  }

  /** Make room for slots 0..slots-1 (the caller has checked the epoch bound). */
  reserve(slots: number): void {
    if (slots <= this.capacity) return;
    let capacity = this.capacity;
    while (capacity < slots) capacity *= 2;
    capacity = Math.min(capacity, this.maxRecords);
    const used = this.slotEnd;
    const pages = new Uint8Array(capacity * this.pageSize);
    pages.set(this.pages.subarray(0, used * this.pageSize));
    const pfnBytes = new Uint8Array(capacity * PFN_BYTES);
    pfnBytes.set(this.pfnBytes.subarray(0, used * PFN_BYTES));
    const pfns = new Float64Array(capacity);
    pfns.set(this.pfns.subarray(0, used));
    const filled = new Uint8Array(capacity);
    filled.set(this.filled.subarray(0, used));
    const order = new Int32Array(capacity);
    order.set(this.order.subarray(0, this.count));
    this.pages = pages;
    this.pfnBytes = pfnBytes;
    this.pfns = pfns;
    this.filled = filled;
    this.order = order;
  }

  /** The slot the next record of a codec 1 or 2 frame goes to. */
  get nextSlot(): number {
    return this.count;
  }

  isFilled(slot: number): boolean {
    return this.filled[slot] === 1;
  }

  /** Record that `slot` (reserved, not filled) now holds pfn's page. */
  add(pfn: number, slot: number): void {
    this.order[this.count++] = slot;
    this.filled[slot] = 1;
    if (slot >= this.slotEnd) this.slotEnd = slot + 1;
    this.pfns[slot] = pfn;
    writePfn(this.pfnBytes, slot * PFN_BYTES, pfn);
    this.index.set(pfn, slot);
  }

  /** Drop the records staged after the first `count` (a rejected frame's). */
  truncate(count: number): void {
    for (let k = count; k < this.count; k++) {
      const slot = this.order[k];
      this.index.delete(this.pfns[slot]);
      this.filled[slot] = 0;
    }
    this.count = count;
    let end = 0;
    for (let k = 0; k < count; k++) end = Math.max(end, this.order[k] + 1);
    this.slotEnd = end;
  }

  reset(): void {
    this.index.clear();
    this.filled.fill(0, 0, this.slotEnd);
    this.slotEnd = 0;
    this.count = 0;
    this.epoch = null;
    this.resync = false;
    this.codec = 0;
    this.nextSequence = 0;
  }

  digest(): Buffer {
    const groups = digestGroupCount(this.count);
    if (this.groupHashes.length < groups * DIGEST_BYTES) this.groupHashes = new Uint8Array(groups * DIGEST_BYTES);
    for (let g = 0; g < groups; g++) {
      const first = g * DIGEST_GROUP_PAGES;
      const last = Math.min(first + DIGEST_GROUP_PAGES, this.count);
      hashDigestGroup(
        this.pfnBytes.subarray(first * PFN_BYTES, last * PFN_BYTES),
        this.pages.subarray(first * this.pageSize, last * this.pageSize),
        this.groupHashes,
        g * DIGEST_BYTES,
      );
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
  private readonly pageShift: number;
  private readonly image: ImageStore;
  private readonly maxFrameBytes: number;
  private readonly maxEpochRecords: number;
  private readonly staging: Staging;
  /** Where a restarting frame (sequence 0) is trial-decoded while an older staging is kept (see applyFrame). */
  private readonly scratchPage: Uint8Array;
  private readonly scratchPfns = new Set<number>();
  /**
   * Codec 3: the indices a trial decode has seen, so that a restarting frame
   * with a duplicate index is refused by the trial, before the older staging
   * is dropped, and its pages are counted against the epoch bound as a
   * staged frame's would be.
   */
  private readonly scratchSlots = new Set<number>();
  /** Decompresses codec 3 chunks (one zstd context and a MAX_CHUNK_RAW_BYTES scratch). */
  private readonly chunks = new ChunkReader();
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
    this.pageSize = pageSize;
    this.pageShift = pageShiftOf(pageSize);
    this.image = image;
    this.maxFrameBytes = maxFrameBytes;
    this.maxEpochRecords = Math.floor(maxEpochBytes / pageSize);
    this.staging = new Staging(pageSize, this.maxEpochRecords);
    this.scratchPage = new Uint8Array(pageSize);
    this.committed = image.committedEpoch ?? null;
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
    const base = restart ? 0 : st.count;
    if (base + h.recordCount > this.maxEpochRecords) {
      throw new FrameError(
        'FRAME_EPOCH_TOO_LARGE',
        `epoch ${h.epoch} frame ${h.sequence}: ${base + h.recordCount} records of ${this.pageSize} bytes exceed the ${this.maxEpochRecords * this.pageSize}-byte epoch bound`,
      );
    }
    if (restart && st.count > 0) {
      // Sequence 0 restarts the epoch, but a frame that turns out bad must
      // leave the older staging as it was: trial-decode it first.
      this.decodeRecords(frame, h, true);
    }
    const saved = { epoch: st.epoch, resync: st.resync, codec: st.codec, nextSequence: st.nextSequence, count: st.count };
    if (restart) st.reset();
    st.reserve(base + h.recordCount);
    try {
      this.decodeRecords(frame, h, false);
    } catch (err) {
      st.truncate(base);
      // A restart over staged records passed the trial above, so only an
      // I/O failure of the image gets here; the older staging is then gone.
      if (!restart || saved.count === 0) {
        st.epoch = saved.epoch;
        st.resync = saved.resync;
        st.codec = saved.codec;
        st.nextSequence = saved.nextSequence;
      }
      throw err;
    }
    st.epoch = h.epoch;
    st.resync = resync;
    st.codec = h.codec;
    st.nextSequence = h.sequence + 1;

    // Page records staged, counted from the staging: under codec 3 recordCount counts chunks.
    const result: ApplyResult = { epoch: h.epoch, sequence: h.sequence, records: st.count - base, committed: false, aborted: false };
    if ((h.flags & FLAG_LAST) !== 0) {
      this.commitStaged(h);
      result.committed = true;
    }
    return result;
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
    const computed = computeFrameCrc(frame, 0);
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
    }
    let pos = FRAME_HEADER_BYTES;
    if (h.codec !== CODEC_REMUS_ZSTD) {
      pos = this.decodePageRecords(frame, pos, end, h.recordCount, h.codec === CODEC_XBZRLE, where, trial);
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
        if (!trial) this.staging.reserve(highest + 1);
        const inner = `${where} chunk ${r} (at byte ${chunkStart}; byte offsets within its ${chunk.rawLength} raw bytes)`;
        const innerEnd = this.decodePageRecords(raw, recordsStart, chunk.rawLength, chunk.records, false, inner, trial, slots);
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
   * the position after the last one.
   */
  private decodePageRecords(
    bytes: Uint8Array, pos: number, end: number, count: number, xbzrle: boolean, where: string, trial: boolean,
    slots: Int32Array | null = null,
  ): number {
    const st = this.staging;
    const ps = this.pageSize;
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
      if (trial ? this.scratchPfns.has(pfn) : st.index.has(pfn)) {
        throw new FrameError('FRAME_DUPLICATE_PFN', `${where}: record ${r} at byte ${recordStart}: pfn ${pfn} already has a record in this epoch`);
      }
      const slot = slots === null ? st.nextSlot : slots[r];
      if (trial ? slots !== null && this.scratchSlots.has(slot) : st.isFilled(slot)) {
        throw new FrameError('FRAME_BAD_RECORD', `${where}: record ${r} at byte ${recordStart}: index ${slot} of the epoch already has a record`);
      }
      const dst = trial ? this.scratchPage : st.pages;
      const dstOffset = trial ? 0 : slot * ps;
      if (type === RECORD_ZERO) {
        dst.fill(0, dstOffset, dstOffset + ps);
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
        if (kind !== FULL_PAGE && !this.image.read(pfn, dst, dstOffset)) {
          throw new FrameError(
            'FRAME_DELTA_WITHOUT_BASE',
            `${where}: record ${r} at byte ${recordStart} is a delta for pfn ${pfn}, which the image does not hold`,
          );
        }
        try {
          pos = xbzrle ? decodeXbzrleBody(bytes, pos, end, dst, dstOffset, ps) : decodeRemusPage(bytes, pos, end, dst, dstOffset, ps);
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
        st.add(pfn, slot);
      }
    }
    return pos;
  }

  /** The LAST frame is staged: check the epoch's count and digest, then write it to the image. */
  private commitStaged(h: FrameHeader): void {
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
    if (st.resync) this.image.clear();
    for (let i = 0; i < st.count; i++) this.image.write(st.pfns[i], st.pages, i * this.pageSize);
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
