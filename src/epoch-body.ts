import { Readable, finished } from 'node:stream';
import { ServiceError } from './errors.js';
import { bodyGcPacer } from './gc-pacer.js';
import { EPOCH_HEADER_BYTES, epochLayout, parseEpochHeader, validateEpochMetadata, type EpochLayout } from './epoch-record.js';
import { copyInto } from './shared-copy.js';

const STOPPED = Symbol('stopped');

/** Where the body goes: the stream's input slab, grown on demand. */
export interface InputSlabProvider {
  /** A slab of at least `bytes` bytes (its first bytes may be overwritten). */
  inputSlab(bytes: number): Uint8Array;
  /** Scratch for duplicate detection, at least `count` long. */
  pfnScratch(count: number): Float64Array;
}

export interface EpochBodyLimits {
  pageSize: number;
  pfnLimit: number;
  maxEpochBytes: number;
  /** The only epoch number the stream accepts now. */
  expectedEpoch: number;
  /** Content-Length of the request, when the client sent one. */
  declaredLength: number | null;
}

export interface EpochMetadata {
  epoch: number;
  count: number;
  layout: EpochLayout;
  input: Uint8Array;
}

/**
 * Reads an epoch body (an RMTR epoch record) from the request straight into
 * the stream's input slab, checking the header and the pfn list before a
 * single page is encoded, and tells the encoder how many pages have arrived so
 * encoding starts while the rest of the body is still on the wire.
 */
export class EpochBodyReader {
  private readonly limits: EpochBodyLimits;
  private readonly slabs: InputSlabProvider;
  private readonly header = new Uint8Array(EPOCH_HEADER_BYTES);
  private received = 0;
  private meta: EpochMetadata | null = null;
  private failure: Error | null = null;
  private done = false;
  private wake: (() => void) | null = null;
  /**
   * Set while the pump waits for the source: abort() calls it to end that
   * wait at once. For an iterable, a fresh one per wait, not one long-lived
   * 'stopped' promise raced against every read: each Promise.race adds a
   * reaction to the promise it races, and a promise that never settles keeps
   * them all, with every chunk they resolved to (a whole epoch body of
   * 64 KiB socket buffers held until the epoch ended, measured in the load
   * bench).
   */
  private interruptWait: (() => void) | null = null;

  constructor(limits: EpochBodyLimits, slabs: InputSlabProvider) {
    this.limits = limits;
    this.slabs = slabs;
    if (limits.declaredLength !== null && limits.declaredLength > limits.maxEpochBytes) {
      throw new ServiceError('EPOCH_TOO_LARGE', `body of ${limits.declaredLength} bytes exceeds the limit of ${limits.maxEpochBytes} bytes`, 413);
    }
  }

  /**
   * Consume `source` to its end; failures are kept and reported to waiters.
   * After `abort()` it stops at once, without waiting for a chunk that a
   * stalled client may never send. A Node readable (an HTTP request) is read
   * through its 'data' events, an iterable by iterating it, and an
   * InPlaceBody is written into the slab by its transport.
   */
  async pump(source: EpochBodySource): Promise<void> {
    try {
      if (source instanceof InPlaceBody) await this.drainInPlace(source);
      else if (source instanceof Readable) await this.drainReadable(source);
      else await this.drainIterable(source);
      if (this.meta === null || this.received < this.meta.layout.totalBytes) {
        const expected = this.meta === null ? EPOCH_HEADER_BYTES : this.meta.layout.totalBytes;
        throw new ServiceError('EPOCH_TRUNCATED', `body ends after ${this.received} bytes; the epoch record needs ${expected}`);
      }
    } catch (err) {
      if (this.failure === null) this.failure = err instanceof Error ? err : new Error(String(err));
    } finally {
      this.done = true;
      this.notify();
    }
  }

  /**
   * Read a readable through 'data' events (flowing mode): each chunk is
   * copied into the slab as it is emitted and is garbage at once. Through
   * its async iterator instead, every chunk passed through the request's
   * read buffer, which by then lived in V8's old generation (an epoch
   * outlasts two scavenges): its old-to-new pointers kept each chunk alive
   * through the scavenges, promoted, and a whole body's socket buffers
   * waited for a full collection, about one every epoch or two of 8 MiB
   * (docs/PERFORMANCE.md, "End to end"). The chunks are counted toward
   * the GC pacer (gc-pacer.ts), which frees them while they are young. On
   * failure or abort the body is paused, its rest unread.
   */
  private drainReadable(body: Readable): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const settle = (err: Error | null): void => {
        if (settled) return;
        settled = true;
        body.off('data', onData);
        stopWatching();
        this.interruptWait = null;
        if (err === null) {
          resolve();
        } else {
          body.pause();
          reject(err);
        }
      };
      const onData = (chunk: Uint8Array): void => {
        try {
          bodyGcPacer.noteBodyBytes(chunk.length);
          this.accept(chunk);
        } catch (err) {
          settle(err instanceof Error ? err : new Error(String(err)));
        }
      };
      const stopWatching = finished(body, { writable: false }, (err) => settle(err ?? null));
      this.interruptWait = () => settle(this.failure ?? new Error('stopped'));
      if (this.failure !== null) settle(this.failure);
      else body.on('data', onData);
    });
  }

  /** Lend `body` to its transport until the body has ended, failed or been stopped. */
  private drainInPlace(body: InPlaceBody): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const settle = (err: Error | null): void => {
        this.interruptWait = null;
        if (err === null) resolve();
        else reject(err);
      };
      this.interruptWait = () => body.stop(this.failure ?? new Error('stopped'));
      body.attach(this, settle);
    });
  }

  private async drainIterable(source: AsyncIterable<Uint8Array>): Promise<void> {
    const iterator = source[Symbol.asyncIterator]();
    let finished = false;
    try {
      for (;;) {
        if (this.failure !== null) throw this.failure;
        const next = await this.nextChunk(iterator);
        // Stopped: the loop's first line throws the abort's reason.
        if (next === STOPPED) continue;
        if (next.done === true) break;
        this.accept(next.value);
      }
      finished = true;
    } finally {
      // Let go of the source without waiting: a read may still be pending.
      if (!finished) iterator.return?.()?.catch(() => undefined);
    }
  }

  /** Resolves with the checked header and pfn list once they have arrived. */
  async metadata(): Promise<EpochMetadata> {
    for (;;) {
      if (this.failure) throw this.failure;
      if (this.meta !== null && this.received >= this.meta.layout.pageOffset) return this.meta;
      if (this.done) throw new ServiceError('EPOCH_TRUNCATED', `body ends after ${this.received} bytes, inside the epoch header or pfn list`);
      await this.nextEvent();
    }
  }

  /** Whether the first `pages` pages are in the slab already. */
  hasPages(pages: number): boolean {
    const meta = this.meta as EpochMetadata;
    return this.received >= meta.layout.pageOffset + pages * this.limits.pageSize;
  }

  /** Throws the body's failure (or the abort reason) if there is one. */
  check(): void {
    if (this.failure) throw this.failure;
  }

  /** Resolves once the first `pages` pages are in the slab. */
  async waitForPages(pages: number): Promise<void> {
    const meta = this.meta as EpochMetadata;
    const needed = meta.layout.pageOffset + pages * this.limits.pageSize;
    for (;;) {
      if (this.received >= needed) return;
      if (this.failure) throw this.failure;
      await this.nextEvent();
    }
  }

  /** Resolves when the whole body has been read and checked. */
  async finished(): Promise<void> {
    while (!this.done) await this.nextEvent();
    if (this.failure) throw this.failure;
  }

  /** Stop: waiters are woken with `reason`, and the rest of the body is ignored. */
  abort(reason: Error): void {
    if (this.failure === null) this.failure = reason;
    this.interruptWait?.();
    this.notify();
  }

  /** Copy `chunk`, the next bytes of the body, into the slab. */
  accept(chunk: Uint8Array): void {
    if (this.failure !== null) throw this.failure;
    let offset = 0;
    if (this.meta === null) {
      const take = Math.min(EPOCH_HEADER_BYTES - this.received, chunk.length);
      this.header.set(chunk.subarray(0, take), this.received);
      this.received += take;
      offset = take;
      if (this.received < EPOCH_HEADER_BYTES) return;
      this.meta = this.openEpoch();
      this.meta.input.set(this.header, 0);
    }
    const meta = this.meta;
    const rest = chunk.length - offset;
    if (this.received + rest > meta.layout.totalBytes) {
      throw new ServiceError('EPOCH_BODY_TOO_LONG', `body goes on past the end of the epoch record at byte ${meta.layout.totalBytes}`);
    }
    copyInto(meta.input, this.received, offset === 0 ? chunk : chunk.subarray(offset));
    this.arrived(rest);
  }

  /**
   * Where the next body bytes may be read in place: the slab from the first
   * byte not yet received, at most `limit` bytes and never past the record's
   * end. Null until the epoch header has arrived (the slab is chosen by its
   * size) and after a failure.
   */
  slabWindow(limit: number): Uint8Array | null {
    const meta = this.meta;
    if (meta === null || this.failure !== null) return null;
    const end = Math.min(meta.layout.totalBytes, this.received + limit);
    return end > this.received ? meta.input.subarray(this.received, end) : null;
  }

  /** `bytes` were read into the last slabWindow(). */
  acceptInPlace(bytes: number): void {
    if (this.failure !== null) throw this.failure;
    this.arrived(bytes);
  }

  /** Count `bytes` more of the record as in the slab; check the pfn list once it is whole. */
  private arrived(bytes: number): void {
    const meta = this.meta as EpochMetadata;
    const before = this.received;
    this.received += bytes;
    if (before < meta.layout.pageOffset && this.received >= meta.layout.pageOffset) {
      validateEpochMetadata(meta.input, meta.count, meta.layout, this.limits.pfnLimit, this.slabs.pfnScratch(meta.count));
    }
    this.notify();
  }

  private openEpoch(): EpochMetadata {
    const { epoch, count } = parseEpochHeader(this.header, 0);
    const { expectedEpoch, maxEpochBytes, declaredLength, pageSize } = this.limits;
    if (epoch !== expectedEpoch) {
      throw new ServiceError('EPOCH_OUT_OF_ORDER', `epoch ${epoch} was sent; the stream expects epoch ${expectedEpoch}`, 409);
    }
    const layout = epochLayout(count, pageSize);
    if (layout.totalBytes > maxEpochBytes) {
      throw new ServiceError('EPOCH_TOO_LARGE', `epoch of ${count} pages is ${layout.totalBytes} bytes, over the limit of ${maxEpochBytes} bytes`, 413);
    }
    if (declaredLength !== null && declaredLength !== layout.totalBytes) {
      throw new ServiceError('EPOCH_LENGTH_MISMATCH', `Content-Length is ${declaredLength} but an epoch of ${count} pages of ${pageSize} bytes is ${layout.totalBytes} bytes`);
    }
    return { epoch, count, layout, input: this.slabs.inputSlab(layout.totalBytes) };
  }

  /** The source's next chunk, or STOPPED as soon as abort() is called. */
  private async nextChunk(iterator: AsyncIterator<Uint8Array>): Promise<IteratorResult<Uint8Array> | typeof STOPPED> {
    try {
      return await new Promise<IteratorResult<Uint8Array> | typeof STOPPED>((resolve, reject) => {
        this.interruptWait = () => resolve(STOPPED);
        iterator.next().then(resolve, reject);
      });
    } finally {
      this.interruptWait = null;
    }
  }

  private nextEvent(): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
    });
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}

/** What an epoch body can be read from. */
export type EpochBodySource = AsyncIterable<Uint8Array> | Readable | InPlaceBody;

/**
 * A body that its transport reads straight into the stream's input slab
 * (src/fast-path.ts): no chunk objects and no copy. The transport asks where
 * its next read may land (`window`), reads there and reports the count
 * (`wrote`); bytes it had to read elsewhere (those that came with the request
 * head) it hands over with `write`, which copies them in. Once the reader has
 * failed or been aborted, `stopped` is true and the transport must stop
 * reading the body; its calls after that change nothing.
 */
export class InPlaceBody {
  private reader: EpochBodyReader | null = null;
  private settle: ((err: Error | null) => void) | null = null;
  /** Set once the body has ended, failed or been stopped. */
  private ended = false;
  /** Called once when the reader stops wanting bytes (failure or abort), so that the transport stops reading. */
  onStop: (() => void) | null = null;

  get stopped(): boolean {
    return this.ended;
  }

  /** Called by the reader's pump: from here on the transport's bytes go to `reader`. */
  attach(reader: EpochBodyReader, settle: (err: Error | null) => void): void {
    this.reader = reader;
    this.settle = settle;
  }

  /** The slab bytes the next read may fill, at most `limit`; null: read elsewhere and `write`. */
  window(limit: number): Uint8Array | null {
    return this.ended ? null : (this.reader?.slabWindow(limit) ?? null);
  }

  /** `bytes` were read into the last window(). */
  wrote(bytes: number): void {
    this.deliver((reader) => reader.acceptInPlace(bytes));
  }

  /** Bytes read elsewhere: copied into the slab. */
  write(chunk: Uint8Array): void {
    if (chunk.length > 0) this.deliver((reader) => reader.accept(chunk));
  }

  /** The transport has delivered the whole body (or the connection ended: the reader reports a short body). */
  end(): void {
    this.finish(null);
  }

  /** The reader no longer wants bytes. */
  stop(reason: Error): void {
    this.finish(reason);
  }

  private deliver(step: (reader: EpochBodyReader) => void): void {
    const reader = this.reader;
    if (this.ended || reader === null) return;
    try {
      step(reader);
    } catch (err) {
      this.finish(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private finish(err: Error | null): void {
    if (this.ended) return;
    this.ended = true;
    const settle = this.settle;
    this.settle = null;
    this.reader = null;
    settle?.(err);
    if (err !== null) this.onStop?.();
  }
}
