import { ServiceError } from './errors.js';
import { sealFrame, writeFrameHeader, type FrameHeader } from './frames.js';
import { FLAG_LAST, FRAME_HEADER_BYTES } from './wire.js';

/**
 * Where finished frames go: the HTTP response, or a collector in tests and
 * benchmarks. A frame views a slab that is reused, so the sink must call
 * `release` once it no longer needs the bytes (for a socket: once the write
 * has completed), and not before.
 */
export interface FrameSink {
  /** Called once, just before the first frame. */
  begin(): void;
  write(frame: Buffer, release: (err?: Error | null) => void): void;
}

/** Records shorter than this are copied by a JS loop: cheaper than a call into wasm. */
const SMALL_COPY_BYTES = 64;

/**
 * Moves bytes within the work buffer: the stream's wasm kernel, whose
 * memory.copy is a memmove. `copyWithin` on shared memory copies with
 * relaxed atomics instead: 2.2-3.0 GB/s for 4 KiB records against 7-12
 * (bench/copies.ts; docs/PERFORMANCE.md, "Copies into shared memory").
 */
export interface ByteMover {
  copy(dst: number, src: number, n: number): void;
}

export interface FrameFields {
  epoch: number;
  pageShift: number;
  /** RESYNC or 0; LAST is added by `finish`. */
  flags: number;
  /** The stream's codec byte (CODEC_REMUS or CODEC_XBZRLE), the same in every frame of the epoch. */
  codec: number;
}

/**
 * Merges encoded records, in request order, into frames of at most
 * `frameBytes`, and hands each frame to the sink as soon as it is full. Frames
 * are built in a few slabs at the end of the stream's work buffer, the same
 * buffer the workers write records into, so a record moves with one
 * memmove in wasm and no view is made per page. A slab is reused only after the
 * sink released it; when all are out, the merge waits (backpressure).
 */
export class FrameAssembler {
  private readonly work: Uint8Array;
  private readonly mover: ByteMover;
  private readonly slabStarts: readonly number[];
  private readonly frameBytes: number;
  private readonly sink: FrameSink;
  private readonly fields: FrameFields;
  private readonly busy: boolean[];
  private slab = -1;
  private pos = 0;
  private records = 0;
  private sequence = 0;
  /** A write failed: the client is gone. */
  private failure: Error | null = null;
  /** abort() was called: stop waiting for the sink, but frames already handed to it are still its to release. */
  private stopReason: Error | null = null;
  private wake: (() => void) | null = null;
  private begun = false;
  framesWritten = 0;
  bytesWritten = 0;

  constructor(work: Uint8Array, mover: ByteMover, slabStarts: readonly number[], frameBytes: number, sink: FrameSink, fields: FrameFields) {
    this.work = work;
    this.mover = mover;
    this.slabStarts = slabStarts;
    this.frameBytes = frameBytes;
    this.sink = sink;
    this.fields = fields;
    this.busy = slabStarts.map(() => false);
  }

  /** Frames handed to the sink and not released yet: never more than the slabs. */
  get inFlight(): number {
    let n = 0;
    for (const b of this.busy) if (b) n++;
    return n;
  }

  /** Whether the first frame went out (after which errors travel as an ABORT frame). */
  get started(): boolean {
    return this.begun;
  }

  /**
   * Copy the record at work[offset, offset + length) into the open frame and
   * return true; or, when no frame is open or the record does not fit, send
   * the full frame and return false: the caller then awaits `openFrame()` and
   * appends again. Synchronous so that the per-page loop makes no promise.
   */
  tryAppend(offset: number, length: number): boolean {
    if (this.slab < 0) return false;
    if (this.pos + length > this.slabStarts[this.slab] + this.frameBytes) {
      this.emit(0);
      return false;
    }
    const work = this.work;
    let dst = this.pos;
    if (length < SMALL_COPY_BYTES) {
      for (let i = 0; i < length; i++) work[dst++] = work[offset + i];
    } else {
      this.mover.copy(dst, offset, length);
      dst += length;
    }
    this.pos = dst;
    this.records++;
    return true;
  }

  /** Close the epoch: the current frame goes out as the LAST one, with the count and digest. */
  async finish(pageCount: number, digest: Uint8Array): Promise<void> {
    if (this.slab < 0) await this.openFrame();
    this.emit(FLAG_LAST, pageCount, digest);
    await this.drain();
  }

  /** Wait until the sink has released every frame. */
  async drain(): Promise<void> {
    while (this.busy.some((b) => b)) {
      this.checkFailure();
      await this.nextRelease();
    }
    this.checkFailure();
  }

  /**
   * Wait until the sink has released every frame, even after `abort()`, so
   * that the slabs may be reused and an ABORT frame may follow. Returns false
   * when a write failed (the client is gone, nobody to tell). The sink must
   * release every frame, at the latest when its connection closes.
   */
  async settle(): Promise<boolean> {
    while (this.failure === null && this.busy.some((b) => b)) await this.nextRelease();
    return this.failure === null;
  }

  /** Start a new frame in a free slab, waiting for the sink to release one. */
  async openFrame(): Promise<void> {
    for (;;) {
      this.checkFailure();
      const free = this.busy.indexOf(false);
      if (free >= 0) {
        this.slab = free;
        this.pos = this.slabStarts[free] + FRAME_HEADER_BYTES;
        this.records = 0;
        return;
      }
      await this.nextRelease();
    }
  }

  private emit(extraFlags: number, pageCount = 0, digest?: Uint8Array): void {
    const start = this.slabStarts[this.slab];
    const header: FrameHeader = {
      flags: this.fields.flags | extraFlags,
      codec: this.fields.codec,
      pageShift: this.fields.pageShift,
      epoch: this.fields.epoch,
      sequence: this.sequence++,
      recordCount: this.records,
      payloadLength: this.pos - start - FRAME_HEADER_BYTES,
      epochPageCount: pageCount,
      epochDigest: digest ?? ZERO_DIGEST,
    };
    writeFrameHeader(this.work, start, header);
    sealFrame(this.work, start);
    const slab = this.slab;
    const length = this.pos - start;
    this.busy[slab] = true;
    this.slab = -1;
    if (!this.begun) {
      this.begun = true;
      this.sink.begin();
    }
    this.framesWritten++;
    this.bytesWritten += length;
    const frame = Buffer.from(this.work.buffer, this.work.byteOffset + start, length);
    this.sink.write(frame, (err) => {
      this.busy[slab] = false;
      if (err && !this.failure) this.failure = err;
      const wake = this.wake;
      this.wake = null;
      wake?.();
    });
  }

  /** Stop waiting for the sink: the epoch is being abandoned. */
  abort(reason: Error): void {
    if (!this.stopReason) this.stopReason = reason;
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  private checkFailure(): void {
    const failure = this.failure ?? this.stopReason;
    if (failure === null) return;
    if (failure instanceof ServiceError) throw failure;
    throw new ServiceError('RESPONSE_WRITE_FAILED', `writing frames to the client failed: ${failure.message}`, 499);
  }

  private nextRelease(): Promise<void> {
    return new Promise((resolve) => {
      this.wake = resolve;
    });
  }
}

const ZERO_DIGEST = new Uint8Array(32);
