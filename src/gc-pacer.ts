/**
 * Collects the young generation after every few MiB of request body, so
 * that node:http's socket buffers are freed while they are young.
 *
 * node:http hands a request body over in 64 KiB buffers, each reported to
 * V8 as external memory and freed only when a collection finds it dead. The
 * service allocates little on the JS heap (its pages live in the arena), so
 * scavenges are rare beside the bodies: one per 8-32 MiB of body, measured.
 * Dead buffers then piled up until V8's external-memory limit forced a full
 * mark-compact, about one every 1-2 epochs of 32 MiB: 1-6 ms on the main
 * thread, marking on the other core, and tens of MiB of freed-but-kept
 * malloc heap in the peak RSS. A minor collection every PACE_BYTES of body
 * frees them instead, for 0.1-0.3 ms (a ~1 MiB young generation, nearly all
 * dead). docs/PERFORMANCE.md, "End to end", has the figures. Bodies on the
 * epoch fast path (fast-path.ts) are read into the slab without such
 * buffers and are not counted.
 *
 * The collector is V8's `gc`, there only when Node runs with --expose-gc
 * (SERVICE_NODE_FLAGS: `npm start` and the `remus-compress` shebang pass it);
 * without it nothing is paced and V8 decides alone, as before.
 */

/** Body bytes between two minor collections: 4 MiB held the load bench to one full collection per run; 8 MiB still let 32 MiB epochs reach the limit. */
export const PACE_BYTES = 4 * 1024 * 1024;

type Collector = (options: { type: 'minor'; execution: 'sync' }) => void;

export class GcPacer {
  private readonly collect: Collector | null;
  private readonly paceBytes: number;
  private sinceLast = 0;
  /** Minor collections run so far. */
  collections = 0;

  constructor(collect: Collector | null = exposedCollector(), paceBytes = PACE_BYTES) {
    if (!(Number.isSafeInteger(paceBytes) && paceBytes > 0)) throw new RangeError(`GcPacer: pace of ${paceBytes} bytes`);
    this.collect = collect;
    this.paceBytes = paceBytes;
  }

  /** Whether collections actually run (Node has --expose-gc). */
  get active(): boolean {
    return this.collect !== null;
  }

  /** `bytes` more of some request body have been read. */
  noteBodyBytes(bytes: number): void {
    if (this.collect === null) return;
    this.sinceLast += bytes;
    if (this.sinceLast < this.paceBytes) return;
    this.sinceLast = 0;
    this.collections++;
    this.collect({ type: 'minor', execution: 'sync' });
  }
}

function exposedCollector(): Collector | null {
  const gc = (globalThis as { gc?: unknown }).gc;
  return typeof gc === 'function' ? (gc as Collector) : null;
}

/** The process's pacer: every request body read counts toward the same pace. */
export const bodyGcPacer = new GcPacer();
