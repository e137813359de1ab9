/**
 * Dirty-page capture from a live Linux process: a checkpoint controller in
 * miniature, and this project's source of real memory traces.
 *
 * Each checkpoint pauses the process (SIGSTOP, then waits until every thread
 * shows state T in /proc), reads every readable page of its writable
 * mappings through /proc/PID/mem, resumes it (SIGCONT, always, in a finally)
 * and keeps the pages whose contents differ from the previous checkpoint.
 * Soft-dirty bits are not available on the kernels we run on, so the
 * capturer keeps the last captured copy of every page and compares.
 *
 * Unmapped pages: RMTR (../shared/TRACE.md) has no "unmap" record, so a page
 * that disappears from the process stays in any image built from the trace
 * (a replay's receiver, TraceImage) with its last contents. The capturer
 * keeps such a page too, exactly as that image does, so its page store is
 * always the trace's image so far: a page that is mapped again is sent only
 * when its contents differ from the retained copy, and a service's receiver
 * can be checked against the store's digest. Retained pages count toward
 * `maxPages`.
 */
import { closeSync, openSync, readdirSync, readFileSync, readSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { ReceiverClient, SenderClient, type StreamConfigRequest } from './client.js';
import { hashImage } from './digest.js';
import { KIND_NORMAL } from './epoch-record.js';
import { encodeEpochRecord, isValidPageSize, TraceWriter } from './trace.js';

export const DEFAULT_PAGE_SIZE = 4096;
/** 1 GiB of 4 KiB pages. */
export const DEFAULT_MAX_PAGES = 262_144;

/** One pread of /proc/PID/mem: large enough to amortise the syscall, small enough to stay in cache while it is compared. */
const READ_CHUNK_BYTES = 1 << 20;
/** Pages per slab of the page store: slabs are added as the image grows, so nothing is copied on growth. */
const STORE_CHUNK_PAGES = 1024;
/** How often /proc is polled while waiting for SIGSTOP to take effect. */
const STOP_POLL_MS = 1;
/** A thread stuck in an uninterruptible sleep (D) may delay the stop; past this the checkpoint fails (and the process is resumed). */
const STOP_TIMEOUT_MS = 5000;
/** Kernel-provided mappings that are not the process's memory (and may not be readable through /proc/PID/mem). */
const SKIPPED_MAPPINGS = new Set(['[vvar]', '[vvar_vclock]', '[vsyscall]']);
/** Concurrent page requests when checking a receiver page by page. */
const VERIFY_CONCURRENCY = 8;
/** Largest pid Linux hands out (PID_MAX_LIMIT on 64-bit). */
const PID_MAX = 4_194_304;

/** Thread states in /proc/PID/stat: stopped by a signal, stopped by a tracer, and gone. */
const STATE_STOPPED = 'T';
const STATE_TRACE_STOPPED = 't';
const STATE_ZOMBIE = 'Z';
const STATE_DEAD = 'X';

export interface CaptureOptions {
  pid: number;
  /** Checkpoints to take; the first is the full image. */
  epochs: number;
  /** Time from the start of one checkpoint to the start of the next; a checkpoint that runs late starts the next at once. */
  intervalMs: number;
  /** Bytes per page (default 4096); every writable mapping must be aligned to it. */
  pageSize?: number;
  /** Refuse an image (mapped pages plus retained unmapped pages) larger than this; default 262144 (1 GiB of 4 KiB pages). */
  maxPages?: number;
  /** Called with each epoch as soon as it is captured, e.g. for a progress line. */
  onEpoch?: (epoch: CapturedEpoch) => void;
}

export interface CapturedEpoch {
  epoch: number;
  /** Ascending virtual page numbers (virtual address / pageSize). */
  pfns: Float64Array;
  /** Always KIND_NORMAL: a process has no page-table pages to mark raw. */
  kinds: Uint8Array;
  /** pfns.length * pageSize bytes, in pfn order. */
  pages: Uint8Array;
  /** From SIGSTOP to SIGCONT. */
  pausedMs: number;
  /** Readable pages of writable mappings at this checkpoint. */
  mappedPages: number;
  /** Pages in this epoch that were not mapped at the previous checkpoint (every page, in epoch 0). */
  newPages: number;
  /** Pages mapped at both checkpoints whose contents changed. */
  changedPages: number;
  /** Pages mapped at the previous checkpoint and not at this one: absent from the epoch, retained by the trace's image. */
  unmappedPages: number;
  /** Pages of writable mappings that could not be read (EIO/EFAULT, e.g. a file mapping past the end of its file): left out, as if unmapped. */
  unreadablePages: number;
}

/** A capture failure; `code` is stable, the message names the pid and what to do. */
export class CaptureError extends Error {
  readonly code: string;

  constructor(code: string, message: string) {
    super(message);
    this.name = 'CaptureError';
    this.code = code;
  }
}

export interface Mapping {
  start: number;
  end: number;
  perms: string;
  name: string;
}

/**
 * The mappings of /proc/PID/maps text that a checkpoint copies: every mapping
 * with write permission, private or shared, except the kernel's own
 * ([vvar], [vsyscall]), mappings that cannot be read, and kernel addresses
 * (above 2^53; any user address divided by a page size of 512 or more is a
 * pfn below 2^48).
 */
export function parseWritableMappings(maps: string): Mapping[] {
  const mappings: Mapping[] = [];
  for (const line of maps.split('\n')) {
    // start-end perms offset dev inode [name, which may contain spaces]
    const match = /^([0-9a-f]+)-([0-9a-f]+)\s+(\S+)\s+\S+\s+\S+\s+\S+\s*(.*)$/.exec(line);
    if (match === null) continue;
    const [, startHex, endHex, perms, name] = match;
    if (!perms.includes('w') || !perms.startsWith('r') || SKIPPED_MAPPINGS.has(name)) continue;
    const start = BigInt(`0x${startHex}`);
    const end = BigInt(`0x${endHex}`);
    if (end > BigInt(Number.MAX_SAFE_INTEGER)) continue;
    mappings.push({ start: Number(start), end: Number(end), perms, name });
  }
  return mappings;
}

/**
 * The last captured contents of every page ever captured (the trace's image
 * so far): pfn → slot, slots in fixed-size slabs, and per slot the
 * checkpoint generation that last saw the page mapped.
 */
class PageStore {
  private readonly slots = new Map<number, number>();
  private readonly slabs: Buffer[] = [];
  private readonly lastSeen: Uint32Array[] = [];
  private readonly slotPfns: number[] = [];

  constructor(private readonly pageSize: number) {}

  get size(): number {
    return this.slotPfns.length;
  }

  slotOf(pfn: number): number | undefined {
    return this.slots.get(pfn);
  }

  add(pfn: number): number {
    const slot = this.slotPfns.length;
    if (slot % STORE_CHUNK_PAGES === 0) {
      this.slabs.push(Buffer.allocUnsafeSlow(STORE_CHUNK_PAGES * this.pageSize));
      this.lastSeen.push(new Uint32Array(STORE_CHUNK_PAGES));
    }
    this.slots.set(pfn, slot);
    this.slotPfns.push(pfn);
    return slot;
  }

  pfnOf(slot: number): number {
    return this.slotPfns[slot];
  }

  /** Generation of the last checkpoint that found the page mapped; 0 for never. */
  seenAt(slot: number): number {
    return this.lastSeen[Math.floor(slot / STORE_CHUNK_PAGES)][slot % STORE_CHUNK_PAGES];
  }

  markSeen(slot: number, generation: number): void {
    this.lastSeen[Math.floor(slot / STORE_CHUNK_PAGES)][slot % STORE_CHUNK_PAGES] = generation;
  }

  equals(slot: number, src: Buffer, srcOffset: number): boolean {
    const { slab, offset } = this.locate(slot);
    return slab.compare(src, srcOffset, srcOffset + this.pageSize, offset, offset + this.pageSize) === 0;
  }

  write(slot: number, src: Buffer, srcOffset: number): void {
    const { slab, offset } = this.locate(slot);
    src.copy(slab, offset, srcOffset, srcOffset + this.pageSize);
  }

  read(slot: number, dst: Uint8Array, dstOffset: number): void {
    const { slab, offset } = this.locate(slot);
    dst.set(slab.subarray(offset, offset + this.pageSize), dstOffset);
  }

  pfns(): number[] {
    return [...this.slotPfns].sort((a, b) => a - b);
  }

  private locate(slot: number): { slab: Buffer; offset: number } {
    return { slab: this.slabs[Math.floor(slot / STORE_CHUNK_PAGES)], offset: (slot % STORE_CHUNK_PAGES) * this.pageSize };
  }
}

function errnoOf(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

function exitedError(pid: number): CaptureError {
  return new CaptureError('CAPTURE_PROCESS_EXITED', `process ${pid} exited (or exec'd a new program) during the capture`);
}

function checkWholeNumber(name: string, value: number, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new CaptureError('CAPTURE_BAD_OPTION', `${name} must be a whole number from ${min} to ${max}, not ${value}`);
  }
}

/** The state letter of /proc/.../stat; the command name before it is in parentheses and may contain anything. */
function stateOf(stat: string): string {
  return stat.charAt(stat.lastIndexOf(')') + 2);
}

/**
 * Takes checkpoints of one process on demand; `captureEpochs` drives it on a
 * timer, tests drive it step by step. Epoch n of its output is the n-th
 * successful snapshot().
 */
export class Capturer {
  readonly pid: number;
  readonly pageSize: number;
  readonly maxPages: number;
  private readonly store: PageStore;
  private readonly scratch: Buffer;
  private memFd: number | null;
  private generation = 0;
  private livePages = 0;
  private busy = false;
  /** Set when a snapshot failed after the store started to move: the store no longer matches what was emitted. */
  private failure: Error | null = null;

  private constructor(pid: number, pageSize: number, maxPages: number, memFd: number) {
    this.pid = pid;
    this.pageSize = pageSize;
    this.maxPages = maxPages;
    this.memFd = memFd;
    this.store = new PageStore(pageSize);
    this.scratch = Buffer.allocUnsafeSlow(READ_CHUNK_BYTES);
  }

  /** Check the options and that the process exists and may be read; opens /proc/PID/mem once for the capturer's life. */
  static open(options: Pick<CaptureOptions, 'pid' | 'pageSize' | 'maxPages'>): Capturer {
    const { pid } = options;
    const pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE;
    const maxPages = options.maxPages ?? DEFAULT_MAX_PAGES;
    checkWholeNumber('pid', pid, 1, PID_MAX);
    if (!isValidPageSize(pageSize)) {
      throw new CaptureError('CAPTURE_BAD_OPTION', `pageSize must be a power of two from 512 to 65536, not ${pageSize}`);
    }
    checkWholeNumber('maxPages', maxPages, 1, Number.MAX_SAFE_INTEGER);
    if (pid === process.pid) {
      throw new CaptureError('CAPTURE_SELF', `process ${pid} is this process: it cannot stop itself and go on reading its memory`);
    }
    try {
      process.kill(pid, 0);
    } catch (err) {
      throw Capturer.accessError(pid, 'signal', err);
    }
    try {
      return new Capturer(pid, pageSize, maxPages, openSync(`/proc/${pid}/mem`, 'r'));
    } catch (err) {
      throw Capturer.accessError(pid, 'read the memory of', err);
    }
  }

  private static accessError(pid: number, action: string, err: unknown): Error {
    const code = errnoOf(err);
    switch (code) {
      case 'ESRCH':
      case 'ENOENT':
        return new CaptureError('CAPTURE_NO_SUCH_PROCESS', `no process with pid ${pid}`);
      case 'EPERM':
      case 'EACCES':
        return new CaptureError(
          'CAPTURE_PERMISSION',
          `not allowed to ${action} process ${pid} (${code}): a capture needs ptrace access, as the process's owner ` +
            `(with kernel.yama.ptrace_scope 0) or as root; even root may be refused by an init process or another namespace`,
        );
      default:
        return err as Error;
    }
  }

  /** Pages the store holds: the trace's image so far, mapped or retained. */
  get imagePages(): number {
    return this.store.size;
  }

  /** The image's pfns, ascending. */
  imagePfns(): number[] {
    return this.store.pfns();
  }

  /** Copy the image's page `pfn` into `dst`; false when the image has no such page. */
  readPage(pfn: number, dst: Uint8Array, dstOffset = 0): boolean {
    const slot = this.store.slotOf(pfn);
    if (slot === undefined) return false;
    this.store.read(slot, dst, dstOffset);
    return true;
  }

  /** Take one checkpoint: the full image the first time, the changed and newly mapped pages after that. */
  async snapshot(): Promise<CapturedEpoch> {
    if (this.memFd === null) throw new CaptureError('CAPTURE_CLOSED', `the capturer of process ${this.pid} is closed`);
    if (this.failure !== null) {
      throw new CaptureError('CAPTURE_FAILED', `an earlier checkpoint of process ${this.pid} failed part-way (${this.failure.message}); start a new capture`);
    }
    if (this.busy) throw new CaptureError('CAPTURE_BUSY', `a checkpoint of process ${this.pid} is already running`);
    this.busy = true;
    const generation = this.generation + 1;
    let storeMoved = false;
    try {
      const started = performance.now();
      let read: ReadResult;
      try {
        this.stop();
        await this.waitStopped();
        const mappings = parseWritableMappings(this.readProc('maps'));
        this.checkMappings(mappings);
        storeMoved = true;
        read = this.readMappings(mappings, generation);
      } finally {
        this.resume();
      }
      const pausedMs = performance.now() - started;
      // Gathered after SIGCONT: copying out of the store does not need the process paused.
      const count = read.dirtySlots.length;
      const pfns = new Float64Array(count);
      const pages = new Uint8Array(count * this.pageSize);
      for (let i = 0; i < count; i++) {
        pfns[i] = this.store.pfnOf(read.dirtySlots[i]);
        this.store.read(read.dirtySlots[i], pages, i * this.pageSize);
      }
      const unmappedPages = this.livePages - (read.mappedPages - read.newlyMapped);
      this.generation = generation;
      this.livePages = read.mappedPages;
      return {
        epoch: generation - 1,
        pfns,
        kinds: new Uint8Array(count).fill(KIND_NORMAL),
        pages,
        pausedMs,
        mappedPages: read.mappedPages,
        newPages: read.newPages,
        changedPages: read.changedPages,
        unmappedPages,
        unreadablePages: read.unreadablePages,
      };
    } catch (err) {
      if (storeMoved) this.failure = err as Error;
      throw err;
    } finally {
      this.busy = false;
    }
  }

  close(): void {
    if (this.memFd === null) return;
    closeSync(this.memFd);
    this.memFd = null;
  }

  private stop(): void {
    try {
      process.kill(this.pid, 'SIGSTOP');
    } catch (err) {
      throw errnoOf(err) === 'ESRCH' ? exitedError(this.pid) : Capturer.accessError(this.pid, 'signal', err);
    }
  }

  /** SIGCONT whatever happened; a process that is gone needs no resuming. */
  private resume(): void {
    try {
      process.kill(this.pid, 'SIGCONT');
    } catch (err) {
      if (errnoOf(err) !== 'ESRCH') throw err;
    }
  }

  private readProc(file: string): string {
    try {
      return readFileSync(`/proc/${this.pid}/${file}`, 'utf8');
    } catch (err) {
      if (errnoOf(err) === 'ENOENT' || errnoOf(err) === 'ESRCH') throw exitedError(this.pid);
      throw err;
    }
  }

  /** The leader's state is not enough: SIGSTOP stops each thread of the group on its own, so every task must show it. */
  private async waitStopped(): Promise<void> {
    const deadline = performance.now() + STOP_TIMEOUT_MS;
    for (;;) {
      let tasks: string[];
      try {
        tasks = readdirSync(`/proc/${this.pid}/task`);
      } catch (err) {
        if (errnoOf(err) === 'ENOENT') throw exitedError(this.pid);
        throw err;
      }
      const states: string[] = [];
      for (const tid of tasks) {
        try {
          states.push(stateOf(readFileSync(`/proc/${this.pid}/task/${tid}/stat`, 'utf8')));
        } catch (err) {
          // A thread that exits between the listing and the read is not running either.
          if (errnoOf(err) !== 'ENOENT' && errnoOf(err) !== 'ESRCH') throw err;
        }
      }
      const gone = (s: string): boolean => s === STATE_ZOMBIE || s === STATE_DEAD;
      const stopped = (s: string): boolean => s === STATE_STOPPED || s === STATE_TRACE_STOPPED;
      if (states.every(gone)) throw exitedError(this.pid);
      if (states.every((s) => stopped(s) || gone(s))) return;
      if (performance.now() > deadline) {
        throw new CaptureError(
          'CAPTURE_STOP_TIMEOUT',
          `process ${this.pid} did not stop within ${STOP_TIMEOUT_MS} ms of SIGSTOP (thread states: ${states.join('')})`,
        );
      }
      await sleep(STOP_POLL_MS);
    }
  }

  /** Everything that can refuse a checkpoint is checked here, before the store moves. */
  private checkMappings(mappings: Mapping[]): void {
    let mapped = 0;
    for (const m of mappings) {
      if (m.start % this.pageSize !== 0 || m.end % this.pageSize !== 0) {
        throw new CaptureError(
          'CAPTURE_MISALIGNED',
          `mapping ${m.start.toString(16)}-${m.end.toString(16)} ${m.name} of process ${this.pid} is not aligned to pageSize ${this.pageSize}; use the system page size`,
        );
      }
      mapped += (m.end - m.start) / this.pageSize;
    }
    const tooLarge = (what: string): CaptureError =>
      new CaptureError('CAPTURE_TOO_LARGE', `process ${this.pid}: ${what}, more than maxPages ${this.maxPages}`);
    // Checked first so that a huge mapping is refused without a look at each of its pages.
    if (mapped > this.maxPages) throw tooLarge(`${mapped} pages in writable mappings`);
    let added = 0;
    for (const m of mappings) {
      for (let pfn = m.start / this.pageSize; pfn < m.end / this.pageSize; pfn++) {
        if (this.store.slotOf(pfn) === undefined) added++;
      }
    }
    if (this.store.size + added > this.maxPages) {
      throw tooLarge(`the image would hold ${this.store.size + added} pages (pages unmapped since are retained, as the trace's image retains them)`);
    }
  }

  private readMappings(mappings: Mapping[], generation: number): ReadResult {
    const result: ReadResult = { dirtySlots: [], mappedPages: 0, newlyMapped: 0, newPages: 0, changedPages: 0, unreadablePages: 0 };
    const { pageSize, scratch } = this;
    for (const m of mappings) {
      let address = m.start;
      while (address < m.end) {
        const want = Math.min(m.end - address, scratch.length);
        let got: number;
        try {
          got = readSync(this.memFd as number, scratch, 0, want, address);
        } catch (err) {
          const code = errnoOf(err);
          if (code !== 'EIO' && code !== 'EFAULT') throw err;
          got = -1;
        }
        // 0 bytes means the address space is gone; an error or a short read
        // ends at a page that cannot be read, which is skipped on its own.
        if (got === 0) throw exitedError(this.pid);
        const whole = got < 0 ? 0 : got - (got % pageSize);
        if (whole === 0) {
          result.unreadablePages++;
          address += pageSize;
          continue;
        }
        this.comparePages(address / pageSize, whole / pageSize, generation, result);
        address += whole;
      }
    }
    return result;
  }

  private comparePages(firstPfn: number, count: number, generation: number, result: ReadResult): void {
    const { store, scratch, pageSize } = this;
    for (let i = 0; i < count; i++) {
      const pfn = firstPfn + i;
      const offset = i * pageSize;
      let slot = store.slotOf(pfn);
      const wasMapped = slot !== undefined && store.seenAt(slot) === generation - 1;
      if (slot === undefined) {
        slot = store.add(pfn);
        store.write(slot, scratch, offset);
        result.dirtySlots.push(slot);
        result.newPages++;
      } else if (!store.equals(slot, scratch, offset)) {
        store.write(slot, scratch, offset);
        result.dirtySlots.push(slot);
        if (wasMapped) result.changedPages++;
        else result.newPages++;
      }
      if (!wasMapped) result.newlyMapped++;
      store.markSeen(slot, generation);
      result.mappedPages++;
    }
  }
}

interface ReadResult {
  /** Store slots of the epoch's pages, in ascending pfn order (mappings are listed in address order). */
  dirtySlots: number[];
  mappedPages: number;
  /** Mapped now and not at the previous checkpoint, whether or not the contents differ from a retained copy. */
  newlyMapped: number;
  newPages: number;
  changedPages: number;
  unreadablePages: number;
}

function checkSchedule(options: CaptureOptions): void {
  checkWholeNumber('epochs', options.epochs, 1, 0xffff_ffff);
  if (!Number.isFinite(options.intervalMs) || options.intervalMs < 0) {
    throw new CaptureError('CAPTURE_BAD_OPTION', `intervalMs must be a number of milliseconds, 0 or more, not ${options.intervalMs}`);
  }
}

/** Drive an open capturer on the options' schedule. */
async function* scheduledEpochs(capturer: Capturer, options: CaptureOptions): AsyncGenerator<CapturedEpoch, void, void> {
  let nextStart = performance.now();
  for (let i = 0; i < options.epochs; i++) {
    const wait = nextStart - performance.now();
    if (wait > 0) await sleep(wait);
    nextStart = performance.now() + options.intervalMs;
    const epoch = await capturer.snapshot();
    options.onEpoch?.(epoch);
    yield epoch;
  }
}

/** Checkpoint `options.pid` every `intervalMs`, `epochs` times; the process is resumed after each checkpoint, however it ends. */
export async function* captureEpochs(options: CaptureOptions): AsyncGenerator<CapturedEpoch, void, void> {
  checkSchedule(options);
  const capturer = Capturer.open(options);
  try {
    yield* scheduledEpochs(capturer, options);
  } finally {
    capturer.close();
  }
}

/** Capture into an RMTR trace at `path`. The process is checked before the file is created, so a bad pid leaves no file behind. */
export async function captureToFile(path: string, options: CaptureOptions): Promise<{ epochs: number; pages: number }> {
  checkSchedule(options);
  const capturer = Capturer.open(options);
  try {
    const writer = await TraceWriter.create(path, capturer.pageSize);
    let epochs = 0;
    let pages = 0;
    // The previous epoch's write runs while the schedule goes on: awaited
    // inside it, writing epoch 0 (the whole image) made epoch 1 cover 2-3
    // intervals. TraceWriter keeps overlapping writes in call order; one
    // write is outstanding at most, so a disk slower than the checkpoints
    // still holds the schedule back rather than piling up epochs in memory.
    let writing: Promise<void> = Promise.resolve();
    try {
      for await (const epoch of scheduledEpochs(capturer, options)) {
        await writing;
        writing = writer.writeEpoch(epoch.pfns, epoch.kinds, epoch.pages);
        // Its failure is reported by the next await of `writing`.
        writing.catch(() => undefined);
        epochs++;
        pages += epoch.pfns.length;
      }
      await writing;
    } finally {
      await writing.catch(() => undefined);
      await writer.close();
    }
    return { epochs, pages };
  } finally {
    capturer.close();
  }
}

export interface ServiceCaptureOptions extends CaptureOptions {
  senderUrl: string;
  receiverUrl: string;
  /** Stream settings other than the page size, which is the capture's. */
  stream?: Omit<StreamConfigRequest, 'pageSize'>;
}

export interface ServiceEpochStats {
  epoch: number;
  pages: number;
  bytesIn: number;
  bytesOut: number;
  /** bytesOut / bytesIn */
  ratio: number;
  pausedMs: number;
  /** From posting the epoch to the sender to the receiver's commit. */
  shipMs: number;
  /** The epoch's pages read back from the receiver and compared with the capture. */
  pagesVerified: number;
  /** Pages of this epoch the receiver holds with other contents, or not at all. */
  mismatches: number;
}

export interface ServiceCaptureResult {
  streamId: string;
  /** Left on the receiver for inspection; the stream is deleted at the end. */
  imageId: string;
  epochs: ServiceEpochStats[];
  /** Pages of the capture's final image. */
  imagePages: number;
  digestEqual: boolean;
  /** No page mismatched in any epoch, and the receiver's whole-image digest equals the capture's. */
  imageEqual: boolean;
}

/** Read the epoch's pages back from the receiver; returns how many differ from the capture's copy. */
async function verifyEpoch(receiver: ReceiverClient, imageId: string, capturer: Capturer, pfns: Float64Array): Promise<number> {
  const want = new Uint8Array(capturer.pageSize);
  let next = 0;
  let mismatches = 0;
  const worker = async (): Promise<void> => {
    while (next < pfns.length) {
      const pfn = pfns[next++];
      const got = await receiver.getPage(imageId, pfn);
      capturer.readPage(pfn, want);
      if (got === null || Buffer.compare(got, want) !== 0) mismatches++;
    }
  };
  await Promise.all(Array.from({ length: VERIFY_CONCURRENCY }, worker));
  return mismatches;
}

/**
 * The working example of a checkpoint controller: each checkpoint's epoch is
 * posted to a running sender, its frames are forwarded to a receiver as they
 * arrive, and the receiver's copy of the epoch's pages is read back and
 * compared with the capture. At the end the receiver's whole-image digest is
 * compared with the digest of the capture's image. Verification happens
 * before the next checkpoint, so it delays the schedule; a real controller
 * would verify only the digests.
 */
export async function captureToService(options: ServiceCaptureOptions): Promise<ServiceCaptureResult> {
  checkSchedule(options);
  const capturer = Capturer.open(options);
  try {
    const sender = new SenderClient(options.senderUrl);
    const receiver = new ReceiverClient(options.receiverUrl);
    const stream = await sender.createStream({ ...options.stream, pageSize: capturer.pageSize });
    try {
      const image = await receiver.createImage({ pageSize: capturer.pageSize });
      const epochs: ServiceEpochStats[] = [];
      for await (const epoch of scheduledEpochs(capturer, options)) {
        const record = encodeEpochRecord(epoch.epoch, epoch.pfns, epoch.kinds, epoch.pages, capturer.pageSize);
        const started = performance.now();
        const applied = await receiver.postFrames(image.id, await sender.sendEpoch(stream.id, record));
        const shipMs = performance.now() - started;
        if (applied.committedEpoch !== epoch.epoch) {
          throw new CaptureError('CAPTURE_NOT_COMMITTED', `receiver did not commit epoch ${epoch.epoch} (committed: ${applied.committedEpoch})`);
        }
        const last = (await sender.getStream(stream.id)).lastEpoch;
        if (last === null || last.epoch !== epoch.epoch) {
          throw new CaptureError('CAPTURE_NO_SUMMARY', `sender has no summary of epoch ${epoch.epoch}`);
        }
        epochs.push({
          epoch: epoch.epoch,
          pages: last.pages,
          bytesIn: last.bytesIn,
          bytesOut: last.bytesOut,
          ratio: last.bytesIn === 0 ? 0 : last.bytesOut / last.bytesIn,
          pausedMs: epoch.pausedMs,
          shipMs,
          pagesVerified: epoch.pfns.length,
          mismatches: await verifyEpoch(receiver, image.id, capturer, epoch.pfns),
        });
      }
      const digest = await receiver.digest(image.id);
      const expected = hashImage(capturer.imagePfns(), capturer.pageSize, (pfn, dst) => capturer.readPage(pfn, dst));
      const digestEqual = digest.digest === expected.toString('hex') && digest.pages === capturer.imagePages;
      return {
        streamId: stream.id,
        imageId: image.id,
        epochs,
        imagePages: capturer.imagePages,
        digestEqual,
        imageEqual: digestEqual && epochs.every((e) => e.mismatches === 0),
      };
    } finally {
      // The capture's own outcome is what the caller needs; a stream that
      // cannot be deleted (sender gone) must not replace it.
      await sender.deleteStream(stream.id).catch(() => undefined);
    }
  } finally {
    capturer.close();
  }
}
