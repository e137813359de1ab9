/**
 * `remus-compress inspect FILE`: what is in an RMTR trace (../shared/TRACE.md)
 * or a frame stream (docs/FORMAT.md), for people. The kind of file is told
 * from its magic ("RMTR" or "RMFR"), never from its name.
 */
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { KIND_RAW } from './epoch-record.js';
import { CodecError, FrameError } from './errors.js';
import { FRAME_FIELD, FrameSplitter, computeFrameCrc, readFrameHeader, readU32 } from './frames.js';
import { openTrace, TRACE_MAGIC } from './trace.js';
import { ChunkReader, type OpenChunk } from './codec/chunk.js';
import {
  CODEC_REMUS,
  CODEC_REMUS_ZSTD,
  CODEC_XBZRLE,
  FLAG_ABORT,
  FLAG_LAST,
  FLAG_RESYNC,
  FRAME_HEADER_BYTES,
  FRAME_MAGIC,
  FRAME_VERSION,
  MAX_FRAME_BYTES,
  MAX_PFN_BYTES,
  RECORD_CHUNK,
  RECORD_REMUS,
  RECORD_ZERO,
  isKnownCodecByte,
} from './wire.js';

export interface TraceEpochRow {
  epoch: number;
  pages: number;
  rawPages: number;
  zeroPages: number;
  /** Lowest and highest pfn of the epoch (null for an empty epoch). */
  pfnMin: number | null;
  pfnMax: number | null;
}

export interface TraceReport {
  kind: 'trace';
  file: string;
  pageSize: number;
  epochs: TraceEpochRow[];
  totals: { epochs: number; pages: number; pageBytes: number; rawPages: number; zeroPages: number };
}

/** Records of a frame by type: ZERO records, and REMUS records split by body (FULL page, EMPTY = unchanged, word-run delta). */
export interface RecordCounts {
  zero: number;
  full: number;
  empty: number;
  delta: number;
}

export interface FrameRow {
  /** Byte offset of the frame in the file. */
  offset: number;
  epoch: number;
  sequence: number;
  flags: string[];
  pageSize: number;
  /** The frame's codec byte (1 remus, 2 xbzrle, 3 remus-zstd). */
  codec: number;
  /** Records in the frame's payload: page records, or under codec 3 chunks of them (`records` counts the pages inside). */
  recordCount: number;
  payloadBytes: number;
  crcOk: boolean;
  /** Header problems other than the CRC (version, codec, unknown flags). */
  problems: string[];
  records: RecordCounts;
  /** LAST frames: the epoch's record count and digest (hex). */
  epochPageCount?: number;
  epochDigest?: string;
  /** ABORT frames: the sender's reason. */
  abort?: { code?: string; message?: string };
  /** Why the payload's records could not all be read, if they could not. */
  recordError?: string;
}

export interface FramesReport {
  kind: 'frames';
  file: string;
  frames: FrameRow[];
  totals: { frames: number; bytes: number; epochsClosed: number; aborts: number; badCrc: number; records: RecordCounts };
  /** Set when the stream could not be split any further (bad magic, truncated, oversized). */
  error?: string;
}

export type InspectReport = TraceReport | FramesReport;

/** Read the first bytes and dispatch on the magic. */
export async function inspectFile(file: string): Promise<InspectReport> {
  const head = Buffer.alloc(4);
  const handle = await open(file, 'r');
  let got: number;
  try {
    ({ bytesRead: got } = await handle.read(head, 0, 4, 0));
  } finally {
    await handle.close();
  }
  const magic = head.subarray(0, got).toString('latin1');
  if (magic === TRACE_MAGIC) return inspectTrace(file);
  if (magic === FRAME_MAGIC) return inspectFrames(file);
  throw new InspectError(
    `${file}: not a trace ("${TRACE_MAGIC}") nor a frame stream ("${FRAME_MAGIC}"): it starts with 0x${head.subarray(0, got).toString('hex') || '(empty file)'}`,
  );
}

export class InspectError extends Error {
  readonly code = 'INSPECT_UNKNOWN_FILE';
}

async function inspectTrace(file: string): Promise<TraceReport> {
  const trace = await openTrace(file);
  const { pageSize } = trace;
  const zeroPage = Buffer.alloc(pageSize);
  const rows: TraceEpochRow[] = [];
  try {
    for await (const e of trace.epochs()) {
      let raw = 0;
      let zero = 0;
      let min = Infinity;
      let max = -Infinity;
      const pages = Buffer.from(e.pages.buffer, e.pages.byteOffset, e.pages.byteLength);
      for (let i = 0; i < e.count; i++) {
        if (e.kinds[i] === KIND_RAW) raw++;
        if (zeroPage.equals(pages.subarray(i * pageSize, (i + 1) * pageSize))) zero++;
        const pfn = e.pfns[i];
        if (pfn < min) min = pfn;
        if (pfn > max) max = pfn;
      }
      rows.push({ epoch: e.epoch, pages: e.count, rawPages: raw, zeroPages: zero, pfnMin: e.count === 0 ? null : min, pfnMax: e.count === 0 ? null : max });
    }
  } finally {
    await trace.close();
  }
  const sum = (f: (r: TraceEpochRow) => number): number => rows.reduce((a, r) => a + f(r), 0);
  const pages = sum((r) => r.pages);
  return {
    kind: 'trace',
    file,
    pageSize,
    epochs: rows,
    totals: { epochs: rows.length, pages, pageBytes: pages * pageSize, rawPages: sum((r) => r.rawPages), zeroPages: sum((r) => r.zeroPages) },
  };
}

function flagNames(flags: number): string[] {
  const names: string[] = [];
  if (flags & FLAG_LAST) names.push('LAST');
  if (flags & FLAG_RESYNC) names.push('RESYNC');
  if (flags & FLAG_ABORT) names.push('ABORT');
  const unknown = flags & ~(FLAG_LAST | FLAG_RESYNC | FLAG_ABORT);
  if (unknown !== 0) names.push(`0x${unknown.toString(16)}?`);
  return names;
}

/** Decompresses codec 3 chunks for countRecords; made on first use. */
let chunkReader: ChunkReader | null = null;
/** Indices are ULEB128 of at most 4 bytes: any value below 2^28 is well formed here. */
const MAX_CHUNK_INDEX = 2 ** 28;

/**
 * Walk a frame's records (docs/FORMAT.md "Page records") and count the page
 * records by type; under codec 3, the page records inside each chunk.
 */
export function countRecords(payload: Uint8Array, recordCount: number, pageSize: number, codec = 1): { counts: RecordCounts; error?: string } {
  if (codec !== CODEC_REMUS_ZSTD) return countPageRecords(payload, recordCount, pageSize, codec, { zero: 0, full: 0, empty: 0, delta: 0 });
  const counts: RecordCounts = { zero: 0, full: 0, empty: 0, delta: 0 };
  chunkReader ??= new ChunkReader();
  let pos = 0;
  for (let n = 0; n < recordCount; n++) {
    if (pos >= payload.length) return { counts, error: `chunk ${n} at payload byte ${pos}: payload ends before the chunk` };
    if (payload[pos] !== RECORD_CHUNK) return { counts, error: `chunk ${n} at payload byte ${pos}: record type ${payload[pos]}, expected a chunk (${RECORD_CHUNK})` };
    let opened: OpenChunk;
    try {
      opened = chunkReader.open(payload, pos, payload.length, MAX_CHUNK_INDEX);
    } catch (err) {
      const code = err instanceof CodecError ? `${err.code}: ` : '';
      return { counts, error: `chunk ${n} at payload byte ${pos}: ${code}${(err as Error).message}` };
    }
    const { header, raw, recordsStart } = opened;
    const inner = countPageRecords(raw.subarray(recordsStart), header.records, pageSize, CODEC_REMUS, counts);
    if (inner.error !== undefined) return { counts, error: `chunk ${n} at payload byte ${pos}: ${inner.error}` };
    pos = header.end;
  }
  if (pos !== payload.length) return { counts, error: `${payload.length - pos} bytes after the last chunk` };
  return { counts };
}

/** Count `recordCount` page records of codec 1 or 2 in `payload` into `counts`. */
function countPageRecords(payload: Uint8Array, recordCount: number, pageSize: number, codec: number, counts: RecordCounts): { counts: RecordCounts; error?: string } {
  const pageWords = pageSize / 4;
  let pos = 0;
  const fail = (n: number, why: string): { counts: RecordCounts; error: string } => ({ counts, error: `record ${n} at payload byte ${pos}: ${why}` });
  for (let n = 0; n < recordCount; n++) {
    if (pos >= payload.length) return fail(n, 'payload ends before the record');
    const type = payload[pos++];
    // ULEB128 pfn, at most 7 bytes.
    let bytes = 0;
    for (;;) {
      if (pos >= payload.length) return fail(n, 'payload ends inside the pfn');
      const b = payload[pos++];
      bytes++;
      if ((b & 0x80) === 0) break;
      if (bytes === MAX_PFN_BYTES) return fail(n, `pfn longer than ${MAX_PFN_BYTES} bytes`);
    }
    if (type === RECORD_ZERO) {
      counts.zero++;
      continue;
    }
    if (type !== RECORD_REMUS) return fail(n, `unknown record type ${type}`);
    if (pos >= payload.length) return fail(n, 'payload ends before the page body');
    const first = payload[pos];
    if (first === 0x00) {
      pos++;
      counts.empty++;
      continue;
    }
    if (first === 0x80) {
      pos += 1 + pageSize;
      if (pos > payload.length) return fail(n, 'FULL page runs past the payload');
      counts.full++;
      continue;
    }
    if (codec === CODEC_XBZRLE) {
      // XBZRLE (docs/FORMAT.md "Codec 2: xbzrle"): kind 0x01, ULEB128 length, the delta.
      if (first !== 0x01) return fail(n, `unknown XBZRLE record kind 0x${first.toString(16)}`);
      pos++;
      let length = 0;
      let scale = 1;
      for (;;) {
        if (pos >= payload.length) return fail(n, 'payload ends inside the delta length');
        const b = payload[pos++];
        length += (b & 0x7f) * scale;
        if ((b & 0x80) === 0) break;
        scale *= 0x80;
        if (scale > 0x80 ** 3) return fail(n, 'delta length longer than 3 bytes');
      }
      if (length === 0 || length > pageSize) return fail(n, `delta length ${length} outside 1..${pageSize}`);
      pos += length;
      if (pos > payload.length) return fail(n, 'delta runs past the payload');
      counts.delta++;
      continue;
    }
    let words = 0;
    while (words < pageWords) {
      if (pos >= payload.length) return fail(n, 'payload ends inside a delta');
      const header = payload[pos++];
      const length = header & 0x7f;
      if (length === 0) return fail(n, 'a delta run of length 0');
      if ((header & 0x80) === 0) pos += 4 * length;
      words += length;
    }
    if (words !== pageWords || pos > payload.length) return fail(n, 'delta runs do not cover the page exactly');
    counts.delta++;
  }
  if (pos !== payload.length) return { counts, error: `${payload.length - pos} bytes after the last record` };
  return { counts };
}

function describeFrame(frame: Uint8Array, offset: number): FrameRow {
  const h = readFrameHeader(frame, 0);
  const pageSize = 2 ** h.pageShift;
  const payload = frame.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + h.payloadLength);
  const problems: string[] = [];
  const version = frame[FRAME_FIELD.version];
  if (version !== FRAME_VERSION) problems.push(`version ${version}`);
  if (!isKnownCodecByte(h.codec)) problems.push(`codec ${h.codec}`);
  if (h.pageShift < 9 || h.pageShift > 16) problems.push(`pageShift ${h.pageShift}`);
  const row: FrameRow = {
    offset,
    epoch: h.epoch,
    sequence: h.sequence,
    codec: h.codec,
    flags: flagNames(h.flags),
    pageSize,
    recordCount: h.recordCount,
    payloadBytes: h.payloadLength,
    crcOk: computeFrameCrc(frame, 0) === readU32(frame, FRAME_FIELD.crc),
    problems,
    records: { zero: 0, full: 0, empty: 0, delta: 0 },
  };
  if (h.flags & FLAG_LAST) {
    row.epochPageCount = h.epochPageCount;
    row.epochDigest = Buffer.from(h.epochDigest).toString('hex');
  }
  if (h.flags & FLAG_ABORT) {
    try {
      row.abort = JSON.parse(Buffer.from(payload).toString('utf8')) as { code?: string; message?: string };
    } catch {
      row.recordError = 'ABORT payload is not JSON';
    }
    return row;
  }
  if (problems.length === 0) {
    const { counts, error } = countRecords(payload, h.recordCount, pageSize, h.codec);
    row.records = counts;
    if (error !== undefined) row.recordError = error;
  }
  return row;
}

async function inspectFrames(file: string): Promise<FramesReport> {
  const splitter = new FrameSplitter(MAX_FRAME_BYTES);
  const frames: FrameRow[] = [];
  let offset = 0;
  let error: string | undefined;
  try {
    for await (const chunk of createReadStream(file)) {
      for (const frame of splitter.push(chunk as Buffer)) {
        frames.push(describeFrame(frame, offset));
        offset += frame.length;
      }
    }
    splitter.end();
  } catch (err) {
    if (!(err instanceof FrameError)) throw err;
    error = `${err.code}: ${err.message}`;
  }
  const records: RecordCounts = { zero: 0, full: 0, empty: 0, delta: 0 };
  for (const f of frames) for (const k of Object.keys(records) as (keyof RecordCounts)[]) records[k] += f.records[k];
  return {
    kind: 'frames',
    file,
    frames,
    totals: {
      frames: frames.length,
      bytes: offset,
      epochsClosed: frames.filter((f) => f.flags.includes('LAST')).length,
      aborts: frames.filter((f) => f.flags.includes('ABORT')).length,
      badCrc: frames.filter((f) => !f.crcOk).length,
      records,
    },
    ...(error === undefined ? {} : { error }),
  };
}

/** True when the report found something wrong (a bad CRC, an unreadable record, a stream that cannot be split). */
export function reportHasErrors(report: InspectReport): boolean {
  if (report.kind === 'trace') return false;
  return report.error !== undefined || report.frames.some((f) => !f.crcOk || f.problems.length > 0 || f.recordError !== undefined);
}

const col = (cols: (string | number)[], widths: number[]): string => cols.map((c, i) => String(c).padStart(widths[i])).join(' ');

/** The report as text for people. */
export function formatInspect(report: InspectReport): string {
  const lines: string[] = [];
  if (report.kind === 'trace') {
    const t = report.totals;
    lines.push(`${report.file}: RMTR trace, page size ${report.pageSize}, ${t.epochs} epochs, ${t.pages} pages (${t.pageBytes} bytes of page contents)`);
    const w = [7, 10, 10, 10, 16, 16];
    lines.push(col(['epoch', 'pages', 'raw', 'zero', 'lowest pfn', 'highest pfn'], w));
    for (const e of report.epochs) lines.push(col([e.epoch, e.pages, e.rawPages, e.zeroPages, e.pfnMin ?? '-', e.pfnMax ?? '-'], w));
    lines.push(col(['total', t.pages, t.rawPages, t.zeroPages, '', ''], w));
    return lines.join('\n');
  }
  const t = report.totals;
  lines.push(
    `${report.file}: frame stream, ${t.frames} frames, ${t.bytes} bytes; ${t.epochsClosed} LAST, ${t.aborts} ABORT, ${t.badCrc} bad CRC`,
  );
  const w = [10, 7, 5, 12, 8, 9, 4, 7, 7, 7, 7];
  lines.push(col(['offset', 'epoch', 'seq', 'flags', 'records', 'payload', 'crc', 'ZERO', 'FULL', 'EMPTY', 'delta'], w));
  for (const f of report.frames) {
    const r = f.records;
    lines.push(
      col([f.offset, f.epoch, f.sequence, f.flags.join('|') || '-', f.recordCount, f.payloadBytes, f.crcOk ? 'ok' : 'BAD', r.zero, r.full, r.empty, r.delta], w),
    );
    if (f.epochPageCount !== undefined) lines.push(`           LAST: ${f.epochPageCount} records in the epoch, digest ${f.epochDigest}`);
    if (f.abort !== undefined) lines.push(`           ABORT: ${f.abort.code ?? '?'}: ${f.abort.message ?? ''}`);
    if (f.problems.length > 0) lines.push(`           header: ${f.problems.join(', ')}`);
    if (f.recordError !== undefined) lines.push(`           records: ${f.recordError}`);
  }
  const r = t.records;
  lines.push(col(['total', '', '', '', r.zero + r.full + r.empty + r.delta, '', '', r.zero, r.full, r.empty, r.delta], w));
  if (report.error !== undefined) lines.push(`stream error after byte ${t.bytes}: ${report.error}`);
  return lines.join('\n');
}
