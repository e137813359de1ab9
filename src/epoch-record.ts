import { TraceError } from './errors.js';

/**
 * Layout of an RMTR epoch record (../shared/TRACE.md), which is also the body
 * of `POST /v1/streams/:id/epochs`:
 *
 *   0  4  magic "EPCH"   4  4  epoch   8  4  count   12  4  reserved 0
 *   16     count x u64 pfn
 *          count x u8 kind (0 normal, 1 raw)
 *          zero padding to a multiple of 8 from the record start
 *          count x pageSize bytes of page contents
 */
export const EPOCH_MAGIC = 'EPCH';
export const EPOCH_HEADER_BYTES = 16;
export const KIND_NORMAL = 0;
export const KIND_RAW = 1;

export interface EpochLayout {
  /** Offset of the first pfn (u64 LE). */
  readonly pfnOffset: number;
  /** Offset of the first kind byte. */
  readonly kindOffset: number;
  /** Offset where the zero padding starts. */
  readonly paddingOffset: number;
  /** Offset of the first page (a multiple of 8). */
  readonly pageOffset: number;
  /** Length of the whole record. */
  readonly totalBytes: number;
}

export function epochLayout(count: number, pageSize: number): EpochLayout {
  const pfnOffset = EPOCH_HEADER_BYTES;
  const kindOffset = pfnOffset + 8 * count;
  const paddingOffset = kindOffset + count;
  const pageOffset = Math.ceil(paddingOffset / 8) * 8;
  return { pfnOffset, kindOffset, paddingOffset, pageOffset, totalBytes: pageOffset + count * pageSize };
}

/** Read the u64 LE pfn at `offset` as a Number (exact below 2^53). */
export function readPfn(bytes: Uint8Array, offset: number): number {
  const lo = bytes[offset] | (bytes[offset + 1] << 8) | (bytes[offset + 2] << 16) | (bytes[offset + 3] << 24);
  const hi = bytes[offset + 4] | (bytes[offset + 5] << 8) | (bytes[offset + 6] << 16) | (bytes[offset + 7] << 24);
  return (hi >>> 0) * 0x1_0000_0000 + (lo >>> 0);
}

/** Write `pfn` (an integer below 2^53) as u64 LE at `offset`. */
export function writePfn(bytes: Uint8Array, offset: number, pfn: number): void {
  const lo = pfn % 0x1_0000_0000;
  const hi = Math.floor(pfn / 0x1_0000_0000);
  bytes[offset] = lo & 0xff;
  bytes[offset + 1] = (lo >>> 8) & 0xff;
  bytes[offset + 2] = (lo >>> 16) & 0xff;
  bytes[offset + 3] = (lo >>> 24) & 0xff;
  bytes[offset + 4] = hi & 0xff;
  bytes[offset + 5] = (hi >>> 8) & 0xff;
  bytes[offset + 6] = (hi >>> 16) & 0xff;
  bytes[offset + 7] = (hi >>> 24) & 0xff;
}

/**
 * Check an epoch record's pfn list, kinds and padding (everything between
 * the header and the pages) before any page is encoded: every pfn below
 * `pfnLimit` and unique, every kind 0 or 1, padding zero. Duplicates are
 * found by sorting a copy in `scratch` (at least `count` long), so nothing is
 * allocated per page. Errors name the byte offset, counted from
 * `recordOffset` (the record's position in its file, 0 for a request body).
 */
export function validateEpochMetadata(
  bytes: Uint8Array,
  count: number,
  layout: EpochLayout,
  pfnLimit: number,
  scratch: Float64Array,
  recordOffset = 0,
): void {
  for (let i = 0; i < count; i++) {
    const pfn = readPfn(bytes, layout.pfnOffset + 8 * i);
    if (pfn >= pfnLimit) {
      throw new TraceError('TRACE_PFN_RANGE', `pfn ${pfn} of page ${i} is not below the limit ${pfnLimit}`, recordOffset + layout.pfnOffset + 8 * i);
    }
    scratch[i] = pfn;
  }
  const sorted = scratch.subarray(0, count).sort();
  for (let i = 1; i < count; i++) {
    if (sorted[i] === sorted[i - 1]) {
      const pfn = sorted[i];
      let second = -1;
      for (let j = 0, seen = 0; j < count; j++) {
        if (readPfn(bytes, layout.pfnOffset + 8 * j) === pfn && ++seen === 2) {
          second = j;
          break;
        }
      }
      throw new TraceError('TRACE_DUPLICATE_PFN', `pfn ${pfn} appears twice in the epoch`, recordOffset + layout.pfnOffset + 8 * second);
    }
  }
  for (let i = 0; i < count; i++) {
    const kind = bytes[layout.kindOffset + i];
    if (kind !== KIND_NORMAL && kind !== KIND_RAW) {
      throw new TraceError('TRACE_BAD_KIND', `kind ${kind} of page ${i} is neither 0 (normal) nor 1 (raw)`, recordOffset + layout.kindOffset + i);
    }
  }
  for (let at = layout.paddingOffset; at < layout.pageOffset; at++) {
    if (bytes[at] !== 0) throw new TraceError('TRACE_BAD_PADDING', 'padding byte is not zero', recordOffset + at);
  }
}

/** Read and check an epoch record header (magic and reserved word) at `offset`. */
export function parseEpochHeader(bytes: Uint8Array, offset: number, recordOffset = offset): { epoch: number; count: number } {
  for (let i = 0; i < 4; i++) {
    if (bytes[offset + i] !== EPOCH_MAGIC.charCodeAt(i)) {
      throw new TraceError('TRACE_BAD_MAGIC', `epoch record magic is not "${EPOCH_MAGIC}"`, recordOffset);
    }
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, EPOCH_HEADER_BYTES);
  if (view.getUint32(12, true) !== 0) {
    throw new TraceError('TRACE_BAD_RESERVED', 'epoch record reserved word is not zero', recordOffset + 12);
  }
  return { epoch: view.getUint32(4, true), count: view.getUint32(8, true) };
}
