/**
 * RMTR v1 dirty-page traces (../shared/TRACE.md): reading, validating and
 * writing them, and replaying them into a memory image that tests and replay
 * tools compare a receiver against.
 */
import { open, type FileHandle } from 'node:fs/promises';
import {
  EPOCH_HEADER_BYTES,
  EPOCH_MAGIC,
  KIND_NORMAL,
  KIND_RAW,
  epochLayout,
  parseEpochHeader,
  readPfn,
  validateEpochMetadata,
  writePfn,
  type EpochLayout,
} from './epoch-record.js';
import { TraceError } from './errors.js';
import { PFN_LIMIT, pageShiftOf } from './wire.js';

export const TRACE_MAGIC = 'RMTR';
export const TRACE_VERSION = 1;
export const TRACE_HEADER_BYTES = 16;

/** Largest epoch and count an epoch record can carry (u32 fields). */
const U32_MAX = 0xffff_ffff;
/** Node refuses single reads and writes above 2 GiB, and records may be larger. */
const MAX_IO_BYTES = 1 << 30;

export interface TraceEpoch {
  epoch: number;
  count: number;
  /** Page frame numbers; each below PFN_LIMIT, so exact as Numbers. */
  pfns: Float64Array;
  /** 0 normal, 1 raw; a view into `record`. */
  kinds: Uint8Array;
  /** count * pageSize bytes, in pfn order; a view into `record`. */
  pages: Uint8Array;
  /** The epoch record exactly as in the file, which is also the HTTP body of the epoch. */
  record: Uint8Array;
}

export interface TraceReader {
  readonly pageSize: number;
  /** Every call starts again from the first epoch; reads are positional, so iterations do not disturb each other. */
  epochs(): AsyncGenerator<TraceEpoch, void, void>;
  close(): Promise<void>;
}

export interface TraceSummary {
  epochs: number;
  /** Pages over all epochs. */
  totalPages: number;
  /** Bytes of page contents over all epochs: what an uncompressed sender would ship. */
  pageBytes: number;
  /** Pages in epoch 0, normally the full image. */
  imagePages: number;
  /** Pages per epoch over epochs 1.., the dirty epochs; all 0 when there are none. */
  dirtyPages: { min: number; mean: number; max: number };
  rawPages: number;
  zeroPages: number;
}

/** A page shape the sender and receiver must both accept: a power of two, 512..65536. */
export function isValidPageSize(pageSize: number): boolean {
  return pageShiftOf(pageSize) >= 0;
}

function u16(bytes: Uint8Array, at: number): number {
  return bytes[at] | (bytes[at + 1] << 8);
}

function u32(bytes: Uint8Array, at: number): number {
  return (bytes[at] | (bytes[at + 1] << 8) | (bytes[at + 2] << 16) | (bytes[at + 3] << 24)) >>> 0;
}

function hasMagic(bytes: Uint8Array, at: number, magic: string): boolean {
  for (let i = 0; i < magic.length; i++) {
    if (bytes[at + i] !== magic.charCodeAt(i)) return false;
  }
  return true;
}

function hex(bytes: Uint8Array, at: number, length: number): string {
  return Buffer.from(bytes.subarray(at, at + length)).toString('hex');
}

export function parseTraceHeader(bytes: Uint8Array): { pageSize: number } {
  if (bytes.length >= TRACE_MAGIC.length && !hasMagic(bytes, 0, TRACE_MAGIC)) {
    throw new TraceError('TRACE_BAD_MAGIC', `not an RMTR trace: magic is 0x${hex(bytes, 0, 4)}, expected "${TRACE_MAGIC}"`, 0);
  }
  if (bytes.length < TRACE_HEADER_BYTES) {
    throw new TraceError(
      'TRACE_TRUNCATED',
      `trace header truncated: ${TRACE_HEADER_BYTES} bytes needed, ${bytes.length} available`,
      0,
    );
  }
  const version = u16(bytes, 4);
  if (version !== TRACE_VERSION) {
    throw new TraceError('TRACE_BAD_VERSION', `unsupported trace version ${version}, expected ${TRACE_VERSION}`, 4);
  }
  if (u16(bytes, 6) !== 0) {
    throw new TraceError('TRACE_BAD_RESERVED', `reserved trace header field is 0x${hex(bytes, 6, 2)}, must be 0`, 6);
  }
  const pageSize = u32(bytes, 8);
  if (!isValidPageSize(pageSize)) {
    throw new TraceError('TRACE_BAD_PAGE_SIZE', `page size ${pageSize} is not a power of two in 512..65536`, 8);
  }
  if (u32(bytes, 12) !== 0) {
    throw new TraceError('TRACE_BAD_RESERVED', `reserved trace header field is 0x${hex(bytes, 12, 4)}, must be 0`, 12);
  }
  return { pageSize };
}

/**
 * Validates the 16-byte record header at `offset`; `base` is the absolute
 * position of bytes[offset]. Split out so the streaming reader can size a
 * record from a trusted count before reading it.
 */
function checkEpochHeader(
  bytes: Uint8Array,
  offset: number,
  expectedEpoch: number | null,
  base: number,
): { epoch: number; count: number } {
  const available = bytes.length - offset;
  if (available >= EPOCH_MAGIC.length && !hasMagic(bytes, offset, EPOCH_MAGIC)) {
    throw new TraceError(
      'TRACE_BAD_MAGIC',
      `epoch record magic is 0x${hex(bytes, offset, 4)}, expected "${EPOCH_MAGIC}"`,
      base,
    );
  }
  if (available < EPOCH_HEADER_BYTES) {
    throw new TraceError(
      'TRACE_TRUNCATED',
      `epoch record truncated in its header: ${EPOCH_HEADER_BYTES} bytes needed, ${available} available`,
      base,
    );
  }
  const header = parseEpochHeader(bytes, offset, base);
  if (expectedEpoch !== null && header.epoch !== expectedEpoch) {
    throw new TraceError('TRACE_BAD_EPOCH', `epoch ${header.epoch} where epoch ${expectedEpoch} was expected`, base + 4);
  }
  return header;
}

/** Names the first item of the record that is not wholly present. */
function truncatedRecord(layout: EpochLayout, count: number, pageSize: number, available: number, base: number): TraceError {
  let part: string;
  let at: number;
  if (available < layout.kindOffset) {
    const i = Math.floor((available - layout.pfnOffset) / 8);
    part = `pfn ${i} of ${count}`;
    at = layout.pfnOffset + 8 * i;
  } else if (available < layout.paddingOffset) {
    part = `kind ${available - layout.kindOffset} of ${count}`;
    at = available;
  } else if (available < layout.pageOffset) {
    part = 'padding';
    at = available;
  } else {
    const i = Math.floor((available - layout.pageOffset) / pageSize);
    part = `page ${i} of ${count}`;
    at = layout.pageOffset + i * pageSize;
  }
  return new TraceError(
    'TRACE_TRUNCATED',
    `epoch record truncated in ${part}: ${layout.totalBytes} bytes needed, ${available} available`,
    base + at,
  );
}

/**
 * Parse and validate the epoch record at `offset` of `bytes`. `fileOffset` is
 * the absolute position of bytes[offset] (by default `offset`, as when
 * `bytes` is the whole file); errors name fileOffset + the position in the
 * record. The result's arrays other than `pfns` view `bytes`.
 */
export function parseEpochRecord(
  bytes: Uint8Array,
  offset: number,
  pageSize: number,
  expectedEpoch: number | null,
  fileOffset = offset,
): TraceEpoch {
  const { epoch, count } = checkEpochHeader(bytes, offset, expectedEpoch, fileOffset);
  const layout = epochLayout(count, pageSize);
  const available = bytes.length - offset;
  if (available < layout.totalBytes) throw truncatedRecord(layout, count, pageSize, available, fileOffset);
  const record = bytes.subarray(offset, offset + layout.totalBytes);

  validateEpochMetadata(record, count, layout, PFN_LIMIT, new Float64Array(count), fileOffset);
  const pfns = new Float64Array(count);
  for (let i = 0; i < count; i++) pfns[i] = readPfn(record, layout.pfnOffset + 8 * i);
  const kinds = record.subarray(layout.kindOffset, layout.paddingOffset);
  return { epoch, count, pfns, kinds, pages: record.subarray(layout.pageOffset), record };
}

/** Fills as much of `target` as the file holds from `position`; returns the bytes read. */
async function readAt(handle: FileHandle, target: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < target.length) {
    const { bytesRead } = await handle.read(target, done, Math.min(target.length - done, MAX_IO_BYTES), position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

async function writeAt(handle: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await handle.write(data, done, Math.min(data.length - done, MAX_IO_BYTES), position + done);
    done += bytesWritten;
  }
}

async function* readEpochs(handle: FileHandle, pageSize: number): AsyncGenerator<TraceEpoch, void, void> {
  const header = Buffer.alloc(EPOCH_HEADER_BYTES);
  let position = TRACE_HEADER_BYTES;
  for (let expected = 0; ; expected++) {
    const headerBytes = await readAt(handle, header, position);
    if (headerBytes === 0) return;
    const { count } = checkEpochHeader(header.subarray(0, headerBytes), 0, expected, position);
    const { totalBytes } = epochLayout(count, pageSize);
    // A corrupt count must cost a truncation error, not an allocation of
    // whatever the count claims.
    const { size } = await handle.stat();
    const record = Buffer.allocUnsafeSlow(Math.min(totalBytes, Math.max(0, size - position)));
    const recordBytes = await readAt(handle, record, position);
    yield parseEpochRecord(record.subarray(0, recordBytes), 0, pageSize, expected, position);
    position += totalBytes;
  }
}

/** Open a trace and validate its header; epochs are streamed one record at a time, so a trace may exceed memory. */
export async function openTrace(path: string): Promise<TraceReader> {
  const handle = await open(path, 'r');
  try {
    const header = Buffer.alloc(TRACE_HEADER_BYTES);
    const headerBytes = await readAt(handle, header, 0);
    const { pageSize } = parseTraceHeader(header.subarray(0, headerBytes));
    return { pageSize, epochs: () => readEpochs(handle, pageSize), close: () => handle.close() };
  } catch (err) {
    await handle.close();
    throw err;
  }
}

/** Stream the epochs of the trace at `path`; the file is closed when the iteration ends, however it ends. */
export async function* readTrace(path: string): AsyncGenerator<TraceEpoch, void, void> {
  const trace = await openTrace(path);
  try {
    yield* trace.epochs();
  } finally {
    await trace.close();
  }
}

/** Parse a whole trace held in memory; the epochs view `bytes`. */
export function parseTrace(bytes: Uint8Array): { pageSize: number; epochs: TraceEpoch[] } {
  const { pageSize } = parseTraceHeader(bytes);
  const epochs: TraceEpoch[] = [];
  for (let offset = TRACE_HEADER_BYTES; offset < bytes.length; ) {
    const epoch = parseEpochRecord(bytes, offset, pageSize, epochs.length);
    epochs.push(epoch);
    offset += epoch.record.length;
  }
  return { pageSize, epochs };
}

export function encodeTraceHeader(pageSize: number): Buffer {
  if (!isValidPageSize(pageSize)) throw new RangeError(`page size ${pageSize} is not a power of two in 512..65536`);
  const header = Buffer.alloc(TRACE_HEADER_BYTES);
  header.write(TRACE_MAGIC, 0, 'latin1');
  header.writeUInt16LE(TRACE_VERSION, 4);
  header.writeUInt32LE(pageSize, 8);
  return header;
}

/**
 * Build a valid epoch record. Invalid input is a caller bug, so it throws a
 * RangeError rather than producing a record every reader would refuse.
 */
export function encodeEpochRecord(
  epoch: number,
  pfns: ArrayLike<number>,
  kinds: ArrayLike<number>,
  pages: Uint8Array,
  pageSize: number,
): Buffer {
  if (!isValidPageSize(pageSize)) throw new RangeError(`page size ${pageSize} is not a power of two in 512..65536`);
  if (!Number.isInteger(epoch) || epoch < 0 || epoch > U32_MAX) throw new RangeError(`epoch ${epoch} is not a u32`);
  const count = pfns.length;
  if (count > U32_MAX) throw new RangeError(`${count} pages do not fit one epoch record`);
  if (kinds.length !== count) throw new RangeError(`${kinds.length} kinds for ${count} pfns`);
  if (pages.length !== count * pageSize) {
    throw new RangeError(`${pages.length} page bytes for ${count} pages of ${pageSize} bytes`);
  }
  const layout = epochLayout(count, pageSize);
  const record = Buffer.alloc(layout.totalBytes);
  record.write(EPOCH_MAGIC, 0, 'latin1');
  record.writeUInt32LE(epoch, 4);
  record.writeUInt32LE(count, 8);
  const seen = new Set<number>();
  for (let i = 0; i < count; i++) {
    const pfn = pfns[i];
    if (!Number.isInteger(pfn) || pfn < 0 || pfn >= PFN_LIMIT) throw new RangeError(`pfn ${pfn} of entry ${i} is not an integer in 0..2^48-1`);
    if (seen.has(pfn)) throw new RangeError(`pfn ${pfn} appears twice`);
    seen.add(pfn);
    writePfn(record, layout.pfnOffset + 8 * i, pfn);
    const kind = kinds[i];
    if (kind !== KIND_NORMAL && kind !== KIND_RAW) throw new RangeError(`kind ${kind} of entry ${i} is neither 0 nor 1`);
    record[layout.kindOffset + i] = kind;
  }
  record.set(pages, layout.pageOffset);
  return record;
}

/** Writes a trace file, numbering epochs 0, 1, 2, ... in the order they are written. */
export class TraceWriter {
  readonly pageSize: number;
  private readonly handle: FileHandle;
  private position = TRACE_HEADER_BYTES;
  private nextEpoch = 0;

  private constructor(handle: FileHandle, pageSize: number) {
    this.handle = handle;
    this.pageSize = pageSize;
  }

  static async create(path: string, pageSize: number): Promise<TraceWriter> {
    const header = encodeTraceHeader(pageSize);
    const handle = await open(path, 'w');
    try {
      await writeAt(handle, header, 0);
    } catch (err) {
      await handle.close();
      throw err;
    }
    return new TraceWriter(handle, pageSize);
  }

  async writeEpoch(pfns: ArrayLike<number>, kinds: ArrayLike<number>, pages: Uint8Array): Promise<void> {
    const record = encodeEpochRecord(this.nextEpoch, pfns, kinds, pages, this.pageSize);
    // Claimed before the first await so that overlapping calls still land
    // in call order.
    const position = this.position;
    this.position += record.length;
    this.nextEpoch++;
    await writeAt(this.handle, record, position);
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

/** The memory image after applying epochs in order: pfn -> latest page contents. Raw pages are pages too. */
export class TraceImage {
  readonly pageSize: number;
  private readonly pages = new Map<number, Buffer>();

  constructor(pageSize: number) {
    if (!isValidPageSize(pageSize)) throw new RangeError(`page size ${pageSize} is not a power of two in 512..65536`);
    this.pageSize = pageSize;
  }

  /** Copies every page, because records are reused or freed and pages handed out by get() must not change under their holder. */
  apply(epoch: { readonly pfns: ArrayLike<number>; readonly pages: Uint8Array }): void {
    const { pageSize } = this;
    if (epoch.pages.length !== epoch.pfns.length * pageSize) {
      throw new RangeError(`${epoch.pages.length} page bytes for ${epoch.pfns.length} pages of ${pageSize} bytes`);
    }
    for (let i = 0; i < epoch.pfns.length; i++) {
      this.pages.set(epoch.pfns[i], Buffer.from(epoch.pages.subarray(i * pageSize, (i + 1) * pageSize)));
    }
  }

  get(pfn: number): Uint8Array | undefined {
    return this.pages.get(pfn);
  }

  get size(): number {
    return this.pages.size;
  }

  pfns(): number[] {
    return [...this.pages.keys()].sort((a, b) => a - b);
  }
}

function isZeroPage(pages: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    if (pages[i] !== 0) return false;
  }
  return true;
}

/** Size a trace up: accepts parseTrace().epochs as well as readTrace(). */
export async function summarizeTrace(epochs: Iterable<TraceEpoch> | AsyncIterable<TraceEpoch>): Promise<TraceSummary> {
  const summary: TraceSummary = {
    epochs: 0,
    totalPages: 0,
    pageBytes: 0,
    imagePages: 0,
    dirtyPages: { min: 0, mean: 0, max: 0 },
    rawPages: 0,
    zeroPages: 0,
  };
  let dirtyMin = Infinity;
  let dirtyMax = 0;
  let dirtyTotal = 0;
  for await (const e of epochs) {
    if (summary.epochs === 0) {
      summary.imagePages = e.count;
    } else {
      dirtyMin = Math.min(dirtyMin, e.count);
      dirtyMax = Math.max(dirtyMax, e.count);
      dirtyTotal += e.count;
    }
    summary.epochs++;
    summary.totalPages += e.count;
    summary.pageBytes += e.pages.length;
    const pageSize = e.count === 0 ? 0 : e.pages.length / e.count;
    for (let i = 0; i < e.count; i++) {
      if (e.kinds[i] === KIND_RAW) summary.rawPages++;
      if (isZeroPage(e.pages, i * pageSize, (i + 1) * pageSize)) summary.zeroPages++;
    }
  }
  if (summary.epochs > 1) {
    summary.dirtyPages = { min: dirtyMin, mean: dirtyTotal / (summary.epochs - 1), max: dirtyMax };
  }
  return summary;
}
