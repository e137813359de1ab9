/**
 * The service's Prometheus metrics (prom-client), one Registry per app so
 * that several apps in one process (tests, replay) never share series.
 *
 * Almost everything is read at scrape time (collect callbacks) from the
 * objects that already keep the figures: each Stream's QEMU-style counters,
 * its slabs and cache occupancy, the WorkerPool's queues and busy time. The
 * only thing pushed is the epoch latency histogram, observed by the epochs
 * route when an epoch has been sent whole.
 *
 * Per-stream series carry the label `stream` and disappear when the stream
 * is deleted; the unlabelled totals keep what deleted streams contributed, so
 * they only grow (except `remus_epochs_committed`, a gauge: aborting the last
 * completed epoch takes it back).
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Sender } from './sender.js';
import type { EpochSummary, Stream, StreamStats } from './stream.js';

/** Epoch wall time buckets, seconds: a small epoch takes a millisecond, a full image of a large machine seconds. */
export const EPOCH_SECONDS_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** The counters that add up over streams (and over deleted streams, for the totals). */
type Additive = Pick<
  StreamStats,
  'pages' | 'bytesIn' | 'bytesOut' | 'cacheHits' | 'cacheMisses' | 'overflows' | 'zeroPages' | 'rawPages' | 'unchangedPages' | 'epochsCommitted' | 'epochsAborted' | 'encodeNs'
>;

const ADDITIVE_KEYS: (keyof Additive)[] = [
  'pages', 'bytesIn', 'bytesOut', 'cacheHits', 'cacheMisses', 'overflows', 'zeroPages', 'rawPages', 'unchangedPages',
  'epochsCommitted', 'epochsAborted', 'encodeNs',
];

/** What a stream (or the total) exposes: additive counters plus occupancy. */
interface Figures extends Additive {
  cachedPages: number;
  cacheSlots: number;
  memoryBytes: number;
}

function zero(): Figures {
  return {
    pages: 0, bytesIn: 0, bytesOut: 0, cacheHits: 0, cacheMisses: 0, overflows: 0, zeroPages: 0, rawPages: 0, unchangedPages: 0,
    epochsCommitted: 0, epochsAborted: 0, encodeNs: 0, cachedPages: 0, cacheSlots: 0, memoryBytes: 0,
  };
}

function figuresOf(stream: Stream): Figures {
  const f = zero();
  for (const key of ADDITIVE_KEYS) f[key] = stream.stats[key];
  f.cachedPages = stream.stats.cachedPages;
  f.cacheSlots = Math.floor(stream.config.cacheBytes / stream.config.pageSize);
  f.memoryBytes = stream.slabBytes + stream.stats.cachedPages * stream.config.pageSize;
  return f;
}

interface Family {
  /** Name after `remus_stream_` (per stream) or `remus_` (total). */
  name: string;
  help: string;
  kind: 'counter' | 'gauge';
  value: (f: Figures) => number;
}

const ratio = (a: number, b: number): number => (b === 0 ? 0 : a / b);

/** Every per-stream family, and its total. QEMU's XBZRLE names are given in the help where they differ. */
const FAMILIES: Family[] = [
  { name: 'pages_total', kind: 'counter', help: 'Pages encoded in committed epochs (QEMU xbzrle pages)', value: (f) => f.pages },
  { name: 'bytes_in_total', kind: 'counter', help: 'Page bytes received in committed epochs', value: (f) => f.bytesIn },
  { name: 'bytes_out_total', kind: 'counter', help: 'Frame bytes sent for committed epochs, headers included (QEMU xbzrle bytes)', value: (f) => f.bytesOut },
  { name: 'cache_hits_total', kind: 'counter', help: 'Pages found in the delta cache and sent as a delta', value: (f) => f.cacheHits },
  { name: 'cache_misses_total', kind: 'counter', help: 'Pages not in the delta cache, sent FULL (QEMU xbzrle cache-miss)', value: (f) => f.cacheMisses },
  { name: 'overflows_total', kind: 'counter', help: 'Cache hits whose delta was not smaller than a FULL record (QEMU xbzrle overflow)', value: (f) => f.overflows },
  { name: 'zero_pages_total', kind: 'counter', help: 'All-zero pages, sent as ZERO records', value: (f) => f.zeroPages },
  { name: 'raw_pages_total', kind: 'counter', help: 'Raw pages (page tables), sent FULL and dropped from the cache', value: (f) => f.rawPages },
  { name: 'full_pages_total', kind: 'counter', help: 'Pages sent as FULL records (cache misses plus raw pages)', value: (f) => f.cacheMisses + f.rawPages },
  { name: 'unchanged_pages_total', kind: 'counter', help: 'Cache hits whose page had not changed (one-byte EMPTY record)', value: (f) => f.unchangedPages },
  { name: 'epochs_aborted_total', kind: 'counter', help: 'Epochs aborted after encoding began (their pages left the cache)', value: (f) => f.epochsAborted },
  { name: 'encode_seconds_total', kind: 'counter', help: 'Worker time spent encoding committed epochs', value: (f) => f.encodeNs / 1e9 },
  { name: 'epochs_committed', kind: 'gauge', help: 'Epochs sent whole (less those aborted afterwards by request)', value: (f) => f.epochsCommitted },
  { name: 'cache_miss_rate', kind: 'gauge', help: 'cache misses / (hits + misses) (QEMU xbzrle cache-miss-rate)', value: (f) => ratio(f.cacheMisses, f.cacheHits + f.cacheMisses) },
  { name: 'encoding_rate_bytes_per_second', kind: 'gauge', help: 'Page bytes in per second of worker encode time (QEMU xbzrle encoding-rate)', value: (f) => ratio(f.bytesIn, f.encodeNs / 1e9) },
  { name: 'compression_ratio', kind: 'gauge', help: 'bytes out / bytes in (0 before the first epoch; lower is better)', value: (f) => ratio(f.bytesOut, f.bytesIn) },
  { name: 'cache_pages', kind: 'gauge', help: 'Pages held in the delta cache (QEMU xbzrle cache occupancy)', value: (f) => f.cachedPages },
  { name: 'cache_slots', kind: 'gauge', help: 'Pages the delta cache may hold (cacheBytes / pageSize)', value: (f) => f.cacheSlots },
  { name: 'memory_bytes', kind: 'gauge', help: 'Memory held: main-thread slabs plus cached page bytes in the workers', value: (f) => f.memoryBytes },
];

export class ServiceMetrics {
  readonly registry = new Registry();
  private readonly sender: Sender | undefined;
  /** Streams seen alive; a stream that leaves sender.list() has its figures folded into `retired`. */
  private readonly known = new Map<string, Stream>();
  private readonly retired = zero();
  private readonly epochSeconds: Histogram<'stream'> | undefined;
  private readonly epochSecondsTotal: Histogram | undefined;

  constructor(options: { sender?: Sender } = {}) {
    this.sender = options.sender;
    const registers = [this.registry];
    new Gauge({
      name: 'remus_process_resident_memory_bytes',
      help: 'Resident set size of the service process',
      registers,
      collect() {
        this.set(process.memoryUsage.rss());
      },
    });
    const sender = this.sender;
    if (sender === undefined) return;

    const perStream = (): [Stream, Figures][] => [...this.known.values()].map((s) => [s, figuresOf(s)]);
    const total = (): Figures => {
      const t = { ...this.retired };
      for (const stream of this.known.values()) {
        const f = figuresOf(stream);
        for (const key of Object.keys(t) as (keyof Figures)[]) t[key] += f[key];
      }
      return t;
    };
    for (const family of FAMILIES) {
      const common = { help: family.help, registers };
      if (family.kind === 'counter') {
        new Counter({
          ...common,
          name: `remus_stream_${family.name}`,
          labelNames: ['stream'] as const,
          collect() {
            this.reset();
            for (const [s, f] of perStream()) this.inc({ stream: s.id }, family.value(f));
          },
        });
        new Counter({
          ...common,
          name: `remus_${family.name}`,
          collect() {
            this.reset();
            this.inc(family.value(total()));
          },
        });
      } else {
        new Gauge({
          ...common,
          name: `remus_stream_${family.name}`,
          labelNames: ['stream'] as const,
          collect() {
            this.reset();
            for (const [s, f] of perStream()) this.set({ stream: s.id }, family.value(f));
          },
        });
        new Gauge({
          ...common,
          name: `remus_${family.name}`,
          collect() {
            this.set(family.value(total()));
          },
        });
      }
    }
    this.epochSeconds = new Histogram({
      name: 'remus_stream_epoch_duration_seconds',
      help: 'Wall time of each committed epoch, from the request to its last frame written',
      labelNames: ['stream'] as const,
      buckets: EPOCH_SECONDS_BUCKETS,
      registers,
    });
    this.epochSecondsTotal = new Histogram({
      name: 'remus_epoch_duration_seconds',
      help: 'Wall time of each committed epoch, all streams',
      buckets: EPOCH_SECONDS_BUCKETS,
      registers,
    });

    new Gauge({
      name: 'remus_streams',
      help: 'Streams open',
      registers,
      collect() {
        this.set(sender.list().length);
      },
    });
    new Gauge({
      name: 'remus_streams_max',
      help: 'Streams that may be open at once',
      registers,
      collect() {
        this.set(sender.maxStreams);
      },
    });
    const pool = sender.pool;
    new Gauge({
      name: 'remus_workers',
      help: 'Encoding worker threads',
      registers,
      collect() {
        this.set(pool.size);
      },
    });
    new Gauge({
      name: 'remus_worker_queue_depth',
      help: 'Tasks waiting in a worker pool queue (besides the running one and the one posted ahead of it)',
      labelNames: ['worker'] as const,
      registers,
      collect() {
        pool.queueDepths().forEach((depth, w) => this.set({ worker: String(w) }, depth));
      },
    });
    new Counter({
      name: 'remus_worker_busy_seconds_total',
      help: 'Time a worker spent in encode tasks',
      labelNames: ['worker'] as const,
      registers,
      collect() {
        this.reset();
        pool.busyNs.forEach((ns, w) => this.inc({ worker: String(w) }, ns / 1e9));
      },
    });
    new Counter({
      name: 'remus_worker_tasks_total',
      help: 'Tasks a worker completed (encode, invalidate, drop)',
      labelNames: ['worker'] as const,
      registers,
      collect() {
        this.reset();
        pool.tasksCompleted.forEach((n, w) => this.inc({ worker: String(w) }, n));
      },
    });
    new Gauge({
      name: 'remus_worker_utilization',
      help: "Piscina's utilization of a worker: mean task run time over its capacity since start (0..1)",
      labelNames: ['worker'] as const,
      registers,
      collect() {
        pool.utilization().forEach((u, w) => this.set({ worker: String(w) }, Number.isFinite(u) ? u : 0));
      },
    });
    new Counter({
      name: 'remus_worker_failures_total',
      help: 'Worker tasks that failed and idle workers that died (each replaced in place)',
      registers,
      collect() {
        this.reset();
        this.inc(pool.failures);
      },
    });
  }

  /** A stream the service just created (so it counts even if deleted before the next scrape). */
  track(stream: Stream): void {
    this.known.set(stream.id, stream);
  }

  /** An epoch was sent whole: observe its wall time. */
  observeEpoch(stream: Stream, summary: EpochSummary): void {
    this.track(stream);
    const seconds = summary.wallNs / 1e9;
    this.epochSeconds?.observe({ stream: stream.id }, seconds);
    this.epochSecondsTotal?.observe(seconds);
  }

  /**
   * Bring the stream set up to date with the sender's: new streams are
   * picked up, deleted ones leave their labels and add their counters to the
   * totals. Called before every scrape.
   */
  reconcile(): void {
    if (this.sender === undefined) return;
    const live = new Map(this.sender.list().map((s) => [s.id, s]));
    for (const [id, stream] of live) if (!this.known.has(id)) this.known.set(id, stream);
    for (const [id, stream] of this.known) {
      if (live.get(id) === stream) continue;
      const f = figuresOf(stream);
      for (const key of ADDITIVE_KEYS) this.retired[key] += f[key];
      this.known.delete(id);
      this.epochSeconds?.remove({ stream: id });
    }
  }

  /** The exposition text (Prometheus text format 0.0.4). */
  async render(): Promise<string> {
    this.reconcile();
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
