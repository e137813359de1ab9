/**
 * The seed's page encoding (src/codec/remus.ts) as a WebAssembly SIMD kernel
 * over a shared memory: same bytes, same cache updates, same decode checks
 * and CodecError codes, several times faster where pages change sparsely.
 * The same module has QEMU's XBZRLE encoder (src/codec/xbzrle.ts
 * encodeXbzrleBody), byte for byte, and its decoder (decodeXbzrleBody, same
 * checks and CodecErrors), which the receiver uses. The kernel's source is
 * assembly/remus.ts and assembly/xbzrle.ts (AssemblyScript); `npm run
 * build` compiles them into dist/wasm/kernel.wasm (`npm run build:wasm`
 * alone).
 *
 * Use, once per thread:
 *
 *   const memory = createKernelMemory(bytes);           // or one received from another thread
 *   const k = instantiateRemusWasm(memory);             // the module is compiled once per thread
 *   const end = k.encodeDelta(curOff, cachedOff, 4096, outOff);
 *
 * The module imports its memory (`env.memory`, which must be shared) and
 * holds nothing in it: several threads can instantiate it over one memory
 * that also holds the caller's slabs (input pages, record regions, cache
 * slots). Every offset is a byte offset in that memory. The bound functions
 * check their arguments (integers, ranges inside the memory) and allocate
 * nothing on success; ranges that overlap are the caller's bug and are not
 * detected.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CodecError } from '../errors.js';
import { packageRoot } from '../package-root.js';
import { remusMaxEncodedBytes } from './remus.js';
import { xbzrleDeltaLimit, xbzrleLengthBytes } from './xbzrle.js';

/** The compiled kernel (made by `npm run build`). */
export const KERNEL_WASM_FILE = join(packageRoot(), 'dist', 'wasm', 'kernel.wasm');
/** Bytes of one WebAssembly memory page. */
export const WASM_PAGE_BYTES = 65536;
/** The most memory the module accepts, in wasm pages (4 GiB: wasm32's whole address space). */
export const KERNEL_MAX_MEMORY_PAGES = 65536;
/**
 * Highest end of any range the kernel is given: positions come back as u32
 * (i32 results read with >>> 0) and the highest u32 values are error codes
 * (-1 .. -3), so no position may reach them.
 */
const MAX_END = 0xffff_fffc;

/*
 * The few WebAssembly JS API types used here. The project's libs (ES2023 +
 * Node) do not declare the WebAssembly namespace (only lib.dom does), so it
 * is typed locally rather than pulling the DOM types in.
 */
/** A WebAssembly.Memory: the kernel needs a shared one. */
export interface KernelMemory {
  readonly buffer: ArrayBuffer | SharedArrayBuffer;
  grow(deltaPages: number): number;
}
/** A compiled WebAssembly.Module (opaque). */
export type WasmModule = object;
interface WasmApi {
  Module: new (bytes: Uint8Array) => WasmModule;
  Instance: new (module: WasmModule, imports: Record<string, Record<string, unknown>>) => { readonly exports: Record<string, unknown> };
  Memory: new (descriptor: { initial: number; maximum?: number; shared?: boolean }) => KernelMemory;
}
const wasm = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

/** decodePage's error returns (i32). */
const ERR_TRUNCATED = -1;
const ERR_RUN_PAST_END = -3;

/** What the module exports (assembly/remus.ts); i32 results arrive signed. */
interface KernelExports {
  encodeDelta(cur: number, cached: number, pageSize: number, out: number): number;
  encodeFull(src: number, pageSize: number, out: number): number;
  encodeFullOrZero(src: number, pageSize: number, out: number, cache: number): number;
  encodeDeltaOrZero(cur: number, cached: number, pageSize: number, out: number): number;
  isZeroPage(off: number, bytes: number): number;
  copyBytes(dst: number, src: number, n: number): void;
  fillBytes(dst: number, value: number, n: number): void;
  decodePage(pos: number, end: number, page: number, pageSize: number): number;
  errorInfo(field: number): number;
  xbzrleDecodeBody(pos: number, end: number, page: number, pageSize: number): number;
  xbzrleErrorInfo(field: number): number;
  xbzrleEncode(cur: number, old: number, pageSize: number, out: number, limit: number): number;
  xbzrleEncodeBody(cur: number, old: number, pageSize: number, out: number, limit: number, reserved: number): number;
}

let compiled: WasmModule | null = null;

/** The kernel module, read and compiled synchronously on first use in this thread. */
export function remusWasmModule(): WasmModule {
  if (compiled === null) {
    let bytes: Buffer;
    try {
      bytes = readFileSync(KERNEL_WASM_FILE);
    } catch (err) {
      throw new Error(`remus wasm kernel: cannot read ${KERNEL_WASM_FILE} (run npm run build): ${(err as Error).message}`);
    }
    compiled = new wasm.Module(bytes);
  }
  return compiled;
}

/**
 * A shared memory for the kernel of at least `bytes` bytes (rounded up to
 * wasm pages), growable to `maximumBytes` (default: exactly its size). Its
 * `buffer` is a SharedArrayBuffer that can be posted to other threads with
 * the memory itself.
 */
export function createKernelMemory(bytes: number, maximumBytes = bytes): KernelMemory {
  const initial = Math.max(1, Math.ceil(bytes / WASM_PAGE_BYTES));
  const maximum = Math.max(initial, Math.ceil(maximumBytes / WASM_PAGE_BYTES));
  if (!Number.isSafeInteger(initial) || maximum > KERNEL_MAX_MEMORY_PAGES) {
    throw new RangeError(`createKernelMemory: ${bytes} / ${maximumBytes} bytes: at most ${KERNEL_MAX_MEMORY_PAGES * WASM_PAGE_BYTES}`);
  }
  return new wasm.Memory({ initial, maximum, shared: true });
}

/** The kernel bound to one memory, in this thread. */
export class RemusWasmKernel {
  readonly memory: KernelMemory;
  private readonly x: KernelExports;
  /** Bytes of the memory when last looked at (memory only grows: looked at again when a check fails). */
  private limit: number;
  private lastPageSize = -1;
  private lastMaxEncoded = 0;
  private xbzrlePageSize = -1;
  private xbzrleLimit = 0;
  private xbzrleReserved = 0;

  constructor(memory: KernelMemory) {
    if (!(memory.buffer instanceof SharedArrayBuffer)) {
      throw new TypeError('remus wasm kernel: the memory must be shared (new WebAssembly.Memory({ initial, maximum, shared: true }))');
    }
    const instance = new wasm.Instance(remusWasmModule(), { env: { memory } });
    this.memory = memory;
    this.x = instance.exports as unknown as KernelExports;
    this.limit = memory.buffer.byteLength;
  }

  /** True when [off, off + n) lies inside the memory (off, n non-negative integers). */
  private inside(off: number, n: number): boolean {
    if (!(off >= 0 && n >= 0 && Number.isInteger(off) && Number.isInteger(n) && off + n <= MAX_END)) return false;
    if (off + n <= this.limit) return true;
    this.limit = this.memory.buffer.byteLength;
    return off + n <= this.limit;
  }

  private checkPageSize(fn: string, pageSize: number): void {
    if (!(pageSize >= 4 && (pageSize & 3) === 0 && pageSize <= 0x7fff_ffff)) {
      throw new RangeError(`${fn}: page size ${pageSize} is not a positive multiple of 4`);
    }
  }

  private maxEncoded(pageSize: number): number {
    if (pageSize !== this.lastPageSize) {
      this.lastMaxEncoded = remusMaxEncodedBytes(pageSize);
      this.lastPageSize = pageSize;
    }
    return this.lastMaxEncoded;
  }

  /**
   * encodeRemusDelta: encode the page at curOff against its cached copy at
   * cachedOff, writing EMPTY or the run sequence at outOff; returns the end.
   * Copies every changed word into the cached copy (afterwards it equals
   * the page). outOff needs remusMaxEncodedBytes(pageSize) bytes of room
   * (checked); only the bytes up to the returned end are written.
   */
  encodeDelta(curOff: number, cachedOff: number, pageSize: number, outOff: number): number {
    this.checkPageSize('encodeDelta', pageSize);
    if (!this.inside(curOff, pageSize) || !this.inside(cachedOff, pageSize) || !this.inside(outOff, this.maxEncoded(pageSize))) {
      throw new RangeError(`encodeDelta: page ${curOff} / cache ${cachedOff} / output ${outOff} (${pageSize}-byte page) outside the memory`);
    }
    return this.x.encodeDelta(curOff, cachedOff, pageSize, outOff) >>> 0;
  }

  /** encodeRemusFull: FULL_PAGE then the page at srcOff, written at outOff; returns the end. */
  encodeFull(srcOff: number, pageSize: number, outOff: number): number {
    if (!this.inside(srcOff, pageSize) || !this.inside(outOff, pageSize + 1)) {
      throw new RangeError(`encodeFull: page ${srcOff} / output ${outOff} (${pageSize} bytes) outside the memory`);
    }
    return this.x.encodeFull(srcOff, pageSize, outOff) >>> 0;
  }

  /**
   * A cache hit in one pass over the page: encodeDelta, except that it
   * returns 0 when the page is all zero (the bytes at outOff are then not a
   * record; the cached copy equals the page either way).
   */
  encodeDeltaOrZero(curOff: number, cachedOff: number, pageSize: number, outOff: number): number {
    this.checkPageSize('encodeDeltaOrZero', pageSize);
    if (!this.inside(curOff, pageSize) || !this.inside(cachedOff, pageSize) || !this.inside(outOff, this.maxEncoded(pageSize))) {
      throw new RangeError(`encodeDeltaOrZero: page ${curOff} / cache ${cachedOff} / output ${outOff} (${pageSize}-byte page) outside the memory`);
    }
    return this.x.encodeDeltaOrZero(curOff, cachedOff, pageSize, outOff) >>> 0;
  }

  /**
   * A cache miss in one pass over the page: encodeFull of the page at srcOff
   * at outOff and the page copied into its cache slot at cacheOff; returns
   * the end, or 0 when the page is all zero (the slot then holds the zeros;
   * the bytes at outOff are not a record).
   */
  encodeFullOrZero(srcOff: number, pageSize: number, outOff: number, cacheOff: number): number {
    if (!this.inside(srcOff, pageSize) || !this.inside(outOff, pageSize + 1) || !this.inside(cacheOff, pageSize)) {
      throw new RangeError(`encodeFullOrZero: page ${srcOff} / output ${outOff} / cache ${cacheOff} (${pageSize} bytes) outside the memory`);
    }
    return this.x.encodeFullOrZero(srcOff, pageSize, outOff, cacheOff) >>> 0;
  }

  /** True when the `bytes` bytes at off are all zero (isZeroPage). */
  isZeroPage(off: number, bytes: number): boolean {
    if (!this.inside(off, bytes)) throw new RangeError(`isZeroPage: ${bytes} bytes at ${off} outside the memory`);
    return this.x.isZeroPage(off, bytes) !== 0;
  }

  /** Copy n bytes from src to dst (memmove: a FULL page into a cache slot, say). */
  copy(dst: number, src: number, n: number): void {
    if (!this.inside(dst, n) || !this.inside(src, n)) throw new RangeError(`copy: ${n} bytes ${src} -> ${dst} outside the memory`);
    this.x.copyBytes(dst, src, n);
  }

  /** Set n bytes at dst to `value` (0..255). */
  fill(dst: number, value: number, n: number): void {
    if (!this.inside(dst, n)) throw new RangeError(`fill: ${n} bytes at ${dst} outside the memory`);
    this.x.fillBytes(dst, value, n);
  }

  /**
   * decodeRemusPage: apply the record starting at inOff (readable input ends
   * at inEnd) to the page at pageOff; returns the offset after the record.
   * Throws the CodecError decodeRemusPage would (REMUS_TRUNCATED,
   * REMUS_ZERO_RUN, REMUS_RUN_PAST_END, same message), its offset a byte
   * offset in the memory less `base` (a caller whose input array starts at
   * `base` gets the offset decodeRemusPage would give). Never writes outside
   * the page; runs before a bad one have been applied.
   */
  decodePage(inOff: number, inEnd: number, pageOff: number, pageSize: number, base = 0): number {
    if (!(inOff >= 0 && Number.isInteger(inOff) && this.inside(0, inEnd))) {
      throw new RangeError(`decodePage: input range [${inOff}, ${inEnd}) outside the memory`);
    }
    this.checkPageSize('decodePage', pageSize);
    if (!this.inside(pageOff, pageSize)) throw new RangeError(`decodePage: page [${pageOff}, ${pageOff + pageSize}) outside the memory`);
    const r = this.x.decodePage(inOff, inEnd, pageOff, pageSize);
    if (r < 0 && r >= ERR_RUN_PAST_END) throw this.decodeError(r, base);
    return r >>> 0;
  }

  /**
   * decodeXbzrleBody (src/codec/xbzrle.ts): apply the codec-2 record body
   * starting at inOff (readable input ends at inEnd) to the page at pageOff,
   * which holds the old page unless the kind is FULL; returns the offset
   * after the body. Throws the CodecError decodeXbzrleBody would (same code,
   * same message), its offset a byte offset in the memory less `base`, as
   * decodePage. Never writes outside the page; runs before a bad one have
   * been applied. The input and the page must not overlap.
   */
  decodeXbzrleBody(inOff: number, inEnd: number, pageOff: number, pageSize: number, base = 0): number {
    if (!(inOff >= 0 && Number.isInteger(inOff) && this.inside(0, inEnd))) {
      throw new RangeError(`decodeXbzrleBody: input range [${inOff}, ${inEnd}) outside the memory`);
    }
    if (!(pageSize >= 1 && pageSize <= 0x7fff_ffff && Number.isInteger(pageSize)) || !this.inside(pageOff, pageSize)) {
      throw new RangeError(`decodeXbzrleBody: page [${pageOff}, ${pageOff + pageSize}) outside the memory`);
    }
    const r = this.x.xbzrleDecodeBody(inOff, inEnd, pageOff, pageSize);
    if (r === -1) throw xbzrleDecodeError(this.x, pageSize, base);
    return r >>> 0;
  }

  /**
   * QEMU's xbzrle_encode_buffer (xbzrleEncode): the page at curOff against
   * its old copy at oldOff into [outOff, outOff + limit); returns the end
   * (outOff when unchanged) or -1 when the encoding does not fit. Never
   * writes the old page, nor past outOff + limit.
   */
  xbzrleEncode(curOff: number, oldOff: number, pageSize: number, outOff: number, limit: number): number {
    if (!(pageSize >= 0 && pageSize <= 0x7fff_ffff) || !this.inside(curOff, pageSize) || !this.inside(oldOff, pageSize) ||
      !this.inside(outOff, limit)) {
      throw new RangeError(`xbzrleEncode: page ${curOff} / old ${oldOff} (${pageSize} bytes) / ${limit} output bytes at ${outOff} outside the memory`);
    }
    const r = this.x.xbzrleEncode(curOff, oldOff, pageSize, outOff, limit);
    return r === -1 ? -1 : r >>> 0;
  }

  /**
   * encodeXbzrleBody: one codec-2 record body at outOff (UNCHANGED, DELTA +
   * length + delta, or FULL + page when the delta is over
   * xbzrleDeltaLimit(pageSize)); returns the end, the kind is the byte at
   * outOff. The old page is not written: unless the kind is UNCHANGED the
   * caller copies the page into its cache (copy()). outOff needs
   * xbzrleMaxEncodedBytes(pageSize) = 1 + pageSize bytes of room (checked).
   */
  encodeXbzrleBody(curOff: number, oldOff: number, pageSize: number, outOff: number): number {
    if (pageSize !== this.xbzrlePageSize) {
      if (!(pageSize >= 1 && pageSize <= 0x7fff_ffff && Number.isInteger(pageSize))) {
        throw new RangeError(`encodeXbzrleBody: page size ${pageSize} is not a positive integer`);
      }
      this.xbzrleLimit = xbzrleDeltaLimit(pageSize);
      this.xbzrleReserved = xbzrleLengthBytes(this.xbzrleLimit);
      this.xbzrlePageSize = pageSize;
    }
    if (!this.inside(curOff, pageSize) || !this.inside(oldOff, pageSize) || !this.inside(outOff, pageSize + 1)) {
      throw new RangeError(`encodeXbzrleBody: page ${curOff} / old ${oldOff} / output ${outOff} (${pageSize}-byte page) outside the memory`);
    }
    return this.x.xbzrleEncodeBody(curOff, oldOff, pageSize, outOff, this.xbzrleLimit, this.xbzrleReserved) >>> 0;
  }

  /** The CodecError of the last failed decodePage, message as decodeRemusPage words it. */
  private decodeError(code: number, base: number): CodecError {
    const info = this.x;
    const where = info.errorInfo(0);
    const offset = (info.errorInfo(1) >>> 0) - base;
    const word = info.errorInfo(2);
    const a = info.errorInfo(3);
    const b = info.errorInfo(4);
    if (code === ERR_TRUNCATED) {
      switch (where) {
        case 1:
          return truncated('record header', offset, 1, 0);
        case 2:
          return truncated('FULL page', offset, a, b);
        case 3:
          return truncated(`run header at word ${word}`, offset, 1, 0);
        default:
          return truncated(`copy run of ${a} words at word ${word}`, offset, a * 4, b);
      }
    }
    if (code === ERR_RUN_PAST_END) {
      return new CodecError('REMUS_RUN_PAST_END', `run of ${a} words at word ${word} passes the page end (${b} words)`, offset);
    }
    return new CodecError('REMUS_ZERO_RUN', `zero-length ${(a & 0x80) !== 0 ? 'skip' : 'copy'} run at word ${word}`, offset);
  }
}

function truncated(what: string, offset: number, need: number, have: number): CodecError {
  return new CodecError(
    'REMUS_TRUNCATED',
    `input ends inside ${what}: needs ${need} byte${need === 1 ? '' : 's'}, ${have} left`,
    offset,
  );
}

/**
 * The CodecError of the last failed xbzrleDecodeBody, worded as
 * src/codec/xbzrle.ts words each check (assembly/xbzrle.ts X_ numbers them).
 */
function xbzrleDecodeError(x: KernelExports, pageSize: number, base: number): CodecError {
  const where = x.xbzrleErrorInfo(0);
  const offset = x.xbzrleErrorInfo(1) - base;
  const d = x.xbzrleErrorInfo(2);
  const value = x.xbzrleErrorInfo(3);
  const extra = x.xbzrleErrorInfo(4);
  const truncatedInside = (what: string): CodecError => new CodecError('XBZRLE_TRUNCATED', `input ends inside ${what}`, offset);
  const overPage = (run: string): CodecError =>
    new CodecError('XBZRLE_BAD_LENGTH', `${run} run length ${value} at page byte ${d} is over the page size ${pageSize}`, offset);
  const pastEnd = (run: string): CodecError =>
    new CodecError('XBZRLE_RUN_PAST_END', `${run} run of ${value} bytes at page byte ${d} passes the page end (${pageSize} bytes)`, offset);
  switch (where) {
    case 1:
      return truncatedInside('the record kind');
    case 2:
      return new CodecError('XBZRLE_TRUNCATED', `input ends inside a FULL page: needs ${pageSize} bytes, ${extra} left`, offset);
    case 3:
      return new CodecError('XBZRLE_BAD_KIND', `record kind 0x${extra.toString(16)}: expected 0x00 (unchanged), 0x01 (delta) or 0x80 (FULL)`, offset);
    case 4:
      return truncatedInside('the delta length');
    case 5: {
      const maxBytes = xbzrleLengthBytes(pageSize);
      return new CodecError('XBZRLE_BAD_LENGTH', `ULEB128 length longer than ${maxBytes} bytes, more than a ${pageSize}-byte page needs`, offset);
    }
    case 6:
      return new CodecError('XBZRLE_BAD_LENGTH', `delta length ${value}: must be from 1 to the page size ${pageSize}`, offset);
    case 7:
      return new CodecError('XBZRLE_TRUNCATED', `input ends inside a ${value}-byte delta: ${extra} left`, offset);
    case 8:
      return truncatedInside(`the zero-run length at page byte ${d}`);
    case 9:
      return overPage('zero');
    case 10:
      return new CodecError('XBZRLE_BAD_LENGTH', `zero-length zero run at page byte ${d}: only the first zero run may be empty`, offset);
    case 11:
      return pastEnd('zero');
    case 12:
      return new CodecError('XBZRLE_TRUNCATED', `input ends after a zero run at page byte ${d}: a non-zero run must follow`, offset);
    case 13:
      return truncatedInside(`the non-zero-run length at page byte ${d}`);
    case 14:
      return overPage('non-zero');
    case 15:
      return new CodecError('XBZRLE_BAD_LENGTH', `zero-length non-zero run at page byte ${d}`, offset);
    case 16:
      return pastEnd('non-zero');
    default:
      return new CodecError('XBZRLE_TRUNCATED', `input ends inside a non-zero run of ${value} bytes at page byte ${d}: ${extra} left`, offset);
  }
}

/** The kernel over `memory` (shared) in this thread. */
export function instantiateRemusWasm(memory: KernelMemory): RemusWasmKernel {
  return new RemusWasmKernel(memory);
}
