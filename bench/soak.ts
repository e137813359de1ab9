/**
 * Soak: N streams, each a controller replaying generated epochs through a
 * sender and a receiver over loopback HTTP, with faults injected at random:
 *
 *   worker-crash       a worker thread exits in the middle of an encode task
 *                      (workers are shared: the epoch it hits may be another stream's)
 *   client-disconnect  the controller drops the connection after the first frame
 *   abort-running      the controller aborts the epoch while its frames arrive
 *   abort-committed    the sender aborts an epoch the receiver had committed
 *   lose-image         the receiver loses its image (deleted and created empty)
 *   reject-frame       a frame is corrupted on its way, and the receiver refuses it
 *
 * Every fault is followed by the documented recovery (docs/RELIABILITY.md):
 * resend the same epoch when the receiver cannot have committed it, otherwise
 * reset the stream and send the whole image as a RESYNC epoch. Each image is
 * verified against the controller's own copy of the memory (BLAKE3 image
 * digest) after every recovery, every 10 epochs and at the end.
 *
 *   npm run build && node dist/bench/soak.js --streams 8 --seconds 60
 *
 * Bounded by --seconds and by --max-epochs per stream; loopback only.
 */
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../src/app.js';
import { ApiError, ReceiverClient, SenderClient } from '../src/client.js';
import { hashImage } from '../src/digest.js';
import { isMain } from '../src/is-main.js';
import { Sender } from '../src/sender.js';
import { generateEpochs, type GeneratedEpoch } from '../src/trace-gen.js';
import { encodeEpochRecord, TraceImage } from '../src/trace.js';

export const FAULT_KINDS = ['worker-crash', 'client-disconnect', 'abort-running', 'abort-committed', 'lose-image', 'reject-frame'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface SoakOptions {
  streams: number;
  seconds: number;
  maxEpochs: number;
  workers: number;
  pages: number;
  /** Probability that an epoch comes with a fault. */
  faultRate: number;
  seed: number;
  /** Epochs in flight service-wide (default: the service's, 2 x workers): below streams, load shedding is exercised too. */
  maxConcurrentEpochs?: number;
}

export interface SoakReport {
  options: SoakOptions;
  wallSeconds: number;
  epochsCommitted: number;
  epochsSent: number;
  faults: Record<FaultKind, number>;
  /** Epochs that failed and were sent again (the epoch a crash hit, an aborted or cut epoch). */
  epochsRetried: number;
  failuresByCode: Record<string, number>;
  resyncs: number;
  /**
   * How the cut and aborted epochs ended: 'running' (the sender stopped it;
   * after an abort request the answer ends with an ABORT frame) or
   * 'completed' (it had finished first; the controller aborted the
   * completed epoch).
   */
  cutOutcomes: Record<string, number>;
  /** 503 answers (OVERLOADED, MEMORY_BUDGET_EXCEEDED) that the controllers waited out. */
  shed: Record<string, number>;
  verifications: number;
  imagesEqual: number;
  imagesDiffering: number;
  peakRssBytes: number;
  workerFailures: number;
}

const PAGE = 4096;

class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s / 2 ** 32;
  }
  below(n: number): number {
    return Math.floor(this.next() * n);
  }
}

interface Ctx {
  sender: Sender;
  senderClient: SenderClient;
  receiverClient: ReceiverClient;
  senderUrl: string;
  report: SoakReport;
  deadline: number;
  options: SoakOptions;
}

function count(map: Record<string, number>, key: string): void {
  map[key] = (map[key] ?? 0) + 1;
}

/** One protected machine: its trace, its controller's copy of memory, its stream and its receiver image. */
class Controller {
  private readonly trace: Generator<GeneratedEpoch, void, void>;
  /** The machine's memory: every trace epoch taken so far. */
  private readonly memory = new TraceImage(PAGE);
  private streamId = '';
  private imageId = '';
  private epochsDone = 0;

  constructor(
    private readonly ctx: Ctx,
    private readonly index: number,
    private readonly rng: Rng,
  ) {
    this.trace = generateEpochs({ seed: ctx.options.seed * 1000 + index, epochs: ctx.options.maxEpochs, pages: ctx.options.pages, dirtyFraction: 0.2, profile: 'mixed' });
  }

  async run(): Promise<void> {
    const { senderClient, receiverClient } = this.ctx;
    this.streamId = (await senderClient.createStream({ workers: this.ctx.options.workers, cacheBytes: 256 * PAGE, frameBytes: 16 * 1024 })).id;
    this.imageId = (await receiverClient.createImage({ pageSize: PAGE })).id;
    while (Date.now() < this.ctx.deadline && this.epochsDone < this.ctx.options.maxEpochs) {
      const next = this.trace.next();
      if (next.done === true) break;
      const data = next.value;
      const fault = this.rng.next() < this.ctx.options.faultRate ? FAULT_KINDS[this.rng.below(FAULT_KINDS.length)] : null;
      if (fault !== null) this.ctx.report.faults[fault]++;
      await this.epochWithFault(data, fault);
      this.memory.apply(data);
      this.epochsDone++;
      if (fault !== null || this.epochsDone % 10 === 0) await this.verify();
    }
    await this.verify();
    await senderClient.deleteStream(this.streamId);
    await receiverClient.deleteImage(this.imageId);
  }

  /** Ship `data` (the next trace epoch), injecting `fault` on the way, and recover as documented. */
  private async epochWithFault(data: GeneratedEpoch, fault: FaultKind | null): Promise<void> {
    switch (fault) {
      case 'worker-crash': {
        const { sender } = this.ctx;
        // Sometimes in a later task than the next one: then frames may have
        // gone out already, and the answer ends with an ABORT frame.
        sender.pool.armCrash(this.rng.below(sender.pool.size), 1 + this.rng.below(40), this.rng.below(3));
        await this.ship(data);
        return;
      }
      case 'client-disconnect':
      case 'abort-running': {
        if (this.rng.next() < 0.5) {
          await this.cutMidBody(data, fault);
          return;
        }
        const n = await this.nextEpoch();
        const cut = new AbortController();
        let frames: ReadableStream<Uint8Array>;
        try {
          frames = await this.ctx.senderClient.sendEpoch(this.streamId, this.record(n, data), cut.signal);
        } catch (err) {
          await this.failure(err);
          await this.ship(data);
          return;
        }
        const reader = frames.getReader();
        const first = await reader.read().catch(() => ({ done: true, value: undefined }));
        if (fault === 'client-disconnect') {
          cut.abort();
          await this.idle();
        } else {
          const answer = await fetch(`${this.ctx.senderUrl}/v1/streams/${this.streamId}/epochs/${n}/abort`, { method: 'POST' });
          const aborted = (await answer.json()) as { aborted?: string; code?: string };
          count(this.ctx.report.cutOutcomes, `abort-${aborted.aborted ?? aborted.code}`);
          const rest: Uint8Array[] = first.value === undefined ? [] : [first.value];
          for (;;) {
            const r = await reader.read().catch(() => ({ done: true, value: undefined }));
            if (r.done === true || r.value === undefined) break;
            rest.push(r.value);
          }
          // A running epoch that was aborted ends with an ABORT frame: the
          // receiver is given it and must drop the epoch.
          if (aborted.aborted === 'running') {
            const applied = await this.ctx.receiverClient.postFrames(this.imageId, Buffer.concat(rest));
            if (applied.committedEpoch === n) throw new Error(`stream ${this.index}: the receiver committed an aborted epoch ${n}`);
          }
        }
        // Either the sender aborted the epoch, or it completed before the
        // cut: then the receiver never got it, and the controller aborts it.
        const info = await this.ctx.senderClient.getStream(this.streamId);
        if (info.nextEpoch === n + 1) await this.ctx.senderClient.abortEpoch(this.streamId, n);
        if (fault === 'client-disconnect') count(this.ctx.report.cutOutcomes, `disconnect-${info.nextEpoch === n + 1 ? 'completed' : 'running'}`);
        this.ctx.report.epochsRetried++;
        await this.ship(data);
        return;
      }
      case 'abort-committed': {
        const n = await this.ship(data);
        // The sender forgets an epoch that the receiver holds: the receiver
        // accepts only n + 1 or RESYNC, and the sender's cache no longer
        // matches, so the documented way back is a reset and a full epoch.
        await this.ctx.senderClient.abortEpoch(this.streamId, n);
        await this.resync(data);
        return;
      }
      case 'lose-image': {
        await this.ctx.receiverClient.deleteImage(this.imageId);
        this.imageId = (await this.ctx.receiverClient.createImage({ pageSize: PAGE })).id;
        await this.resync(data);
        return;
      }
      case 'reject-frame': {
        const n = await this.nextEpoch();
        const frames = await this.collect(n, data);
        if (frames === null) {
          await this.ship(data);
          return;
        }
        const bad = Buffer.from(frames);
        bad[64 + this.rng.below(Math.max(1, bad.length - 64))] ^= 0x5a;
        try {
          const applied = await this.ctx.receiverClient.postFrames(this.imageId, bad);
          // The flipped byte may have fallen into an ABORT frame's text (a
          // crash hit this epoch); then nothing was committed either way.
          if (applied.committedEpoch === n) throw new Error(`stream ${this.index}: the receiver committed a corrupted epoch ${n}`);
        } catch (err) {
          if (!(err instanceof ApiError) || err.status !== 400) throw err;
        }
        await this.resync(data);
        return;
      }
      case null:
        await this.ship(data);
    }
  }

  /**
   * The epoch's body stops half way; while the sender waits for the rest,
   * the controller either goes away or aborts the epoch. No page reached a
   * worker, so the sender is exactly as before; the epoch is then sent again.
   */
  private async cutMidBody(data: GeneratedEpoch, fault: 'client-disconnect' | 'abort-running'): Promise<void> {
    const n = await this.nextEpoch();
    const record = this.record(n, data);
    const half = Math.floor(record.length / 2);
    let release: (go: boolean) => void = () => undefined;
    const released = new Promise<boolean>((resolve) => (release = resolve));
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(record.subarray(0, half));
      },
      async pull(controller) {
        if (await released) {
          controller.enqueue(record.subarray(half));
          controller.close();
        }
      },
    });
    const cut = new AbortController();
    const answer = fetch(`${this.ctx.senderUrl}/v1/streams/${this.streamId}/epochs`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body,
      duplex: 'half',
      signal: cut.signal,
    } as RequestInit).then(
      async (res) => ({ status: res.status, body: await res.arrayBuffer().catch(() => new ArrayBuffer(0)) }),
      () => ({ status: 0, body: new ArrayBuffer(0) }),
    );
    // Until the stream says busy: the sender is reading this body.
    while (!(await this.ctx.senderClient.getStream(this.streamId)).busy) {
      const settled = await Promise.race([answer, sleep(2).then(() => null)]);
      if (settled !== null) break; // refused at once (503 OVERLOADED): nothing to cut
    }
    if (fault === 'abort-running') {
      const aborted = await fetch(`${this.ctx.senderUrl}/v1/streams/${this.streamId}/epochs/${n}/abort`, { method: 'POST' });
      const json = (await aborted.json()) as { aborted?: string; code?: string };
      count(this.ctx.report.cutOutcomes, `mid-body-abort-${json.aborted ?? json.code}`);
      release(true);
    } else {
      cut.abort();
      release(false);
      count(this.ctx.report.cutOutcomes, 'mid-body-disconnect');
    }
    const result = await answer;
    if (result.status === 200) throw new Error(`stream ${this.index}: a cut epoch ${n} was answered 200`);
    await this.idle();
    const info = await this.ctx.senderClient.getStream(this.streamId);
    if (info.nextEpoch !== n) throw new Error(`stream ${this.index}: a cut epoch ${n} moved the stream to ${info.nextEpoch}`);
    this.ctx.report.epochsRetried++;
    await this.ship(data);
  }

  /** Reset the stream and send the whole memory, `data` included, as one RESYNC epoch. */
  private async resync(data: GeneratedEpoch): Promise<void> {
    this.ctx.report.resyncs++;
    await this.retrying(() => this.ctx.senderClient.reset(this.streamId));
    const image = new TraceImage(PAGE);
    for (const pfn of this.memory.pfns()) image.apply({ pfns: [pfn], pages: this.memory.get(pfn) as Uint8Array });
    image.apply(data);
    const pfns = image.pfns();
    const pages = new Uint8Array(pfns.length * PAGE);
    pfns.forEach((pfn, i) => pages.set(image.get(pfn) as Uint8Array, i * PAGE));
    await this.ship({ pfns: Float64Array.from(pfns), kinds: new Uint8Array(pfns.length), pages });
  }

  /** Send `data` as the stream's next epoch and forward it, again and again until the receiver commits it; returns its number. */
  private async ship(data: GeneratedEpoch): Promise<number> {
    for (let attempt = 0; attempt < 50; attempt++) {
      const n = await this.nextEpoch();
      const frames = await this.collect(n, data);
      if (frames === null) continue;
      this.ctx.report.epochsSent++;
      const applied = await this.ctx.receiverClient.postFrames(this.imageId, frames);
      if (applied.committedEpoch === n) {
        this.ctx.report.epochsCommitted++;
        return n;
      }
      // The answer ended with an ABORT frame (a worker died under it): the
      // sender has dropped the epoch's pages and expects the same number.
      count(this.ctx.report.failuresByCode, 'ABORT_FRAME');
      this.ctx.report.epochsRetried++;
    }
    throw new Error(`stream ${this.index}: an epoch failed 50 times`);
  }

  /** Send `data` as epoch `n` and collect its frames; null when the sender refused or failed it (counted by `failure`). */
  private async collect(n: number, data: GeneratedEpoch): Promise<Buffer | null> {
    try {
      return await this.ctx.senderClient.sendEpochCollect(this.streamId, this.record(n, data));
    } catch (err) {
      await this.failure(err);
      return null;
    }
  }

  /** An epoch refused or failed: count it, and wait a little when the service is shedding load or the stream is still busy. */
  private async failure(err: unknown): Promise<void> {
    if (!(err instanceof ApiError)) throw err;
    if (err.status === 503) {
      count(this.ctx.report.shed, err.code);
      // The controller here waits a short random time rather than the
      // advertised Retry-After, so that the soak stays busy.
      await sleep(5 + this.rng.below(30));
      return;
    }
    count(this.ctx.report.failuresByCode, err.code);
    if (err.code === 'EPOCH_IN_PROGRESS') await this.idle();
    else if (err.status >= 500) this.ctx.report.epochsRetried++;
    else throw err;
  }

  private async retrying<T>(call: () => Promise<T>): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await call();
      } catch (err) {
        if (attempt > 100 || !(err instanceof ApiError) || err.status !== 409) throw err;
        await sleep(5);
      }
    }
  }

  private async idle(): Promise<void> {
    while ((await this.ctx.senderClient.getStream(this.streamId)).busy) await sleep(2);
  }

  private async nextEpoch(): Promise<number> {
    await this.idle();
    return (await this.ctx.senderClient.getStream(this.streamId)).nextEpoch;
  }

  private record(n: number, data: GeneratedEpoch): Buffer {
    return encodeEpochRecord(n, data.pfns, data.kinds, data.pages, PAGE);
  }

  /** The receiver's image digest against the controller's memory. */
  private async verify(): Promise<void> {
    const expected = hashImage(this.memory.pfns(), PAGE, (pfn, dst) => dst.set(this.memory.get(pfn) as Uint8Array)).toString('hex');
    const digest = await this.ctx.receiverClient.digest(this.imageId);
    this.ctx.report.verifications++;
    if (digest.digest === expected && digest.pages === this.memory.size) this.ctx.report.imagesEqual++;
    else this.ctx.report.imagesDiffering++;
  }
}

export async function soak(options: SoakOptions): Promise<SoakReport> {
  const sender = new Sender({ workers: options.workers, allowFaults: true, maxConcurrentEpochs: options.maxConcurrentEpochs });
  let senderApp: FastifyInstance | null = null;
  let receiverApp: FastifyInstance | null = null;
  const started = Date.now();
  try {
    senderApp = await buildApp({ sender: { sender } });
    receiverApp = await buildApp({ receiver: { maxImages: options.streams * 2 } });
    const senderUrl = await senderApp.listen({ host: '127.0.0.1', port: 0 });
    const receiverUrl = await receiverApp.listen({ host: '127.0.0.1', port: 0 });
    const report: SoakReport = {
      options,
      wallSeconds: 0,
      epochsCommitted: 0,
      epochsSent: 0,
      faults: Object.fromEntries(FAULT_KINDS.map((k) => [k, 0])) as Record<FaultKind, number>,
      epochsRetried: 0,
      failuresByCode: {},
      resyncs: 0,
      cutOutcomes: {},
      shed: {},
      verifications: 0,
      imagesEqual: 0,
      imagesDiffering: 0,
      peakRssBytes: 0,
      workerFailures: 0,
    };
    const ctx: Ctx = {
      sender,
      senderClient: new SenderClient(senderUrl),
      receiverClient: new ReceiverClient(receiverUrl),
      senderUrl,
      report,
      deadline: started + options.seconds * 1000,
      options,
    };
    const controllers = Array.from({ length: options.streams }, (_, i) => new Controller(ctx, i, new Rng(options.seed * 7919 + i)));
    await Promise.all(controllers.map((c) => c.run()));
    report.wallSeconds = (Date.now() - started) / 1000;
    report.workerFailures = sender.pool.failures;
    return report;
  } finally {
    await Promise.all([senderApp?.close(), receiverApp?.close()]);
    await sender.close();
  }
}

export function formatSoak(r: SoakReport): string {
  const mib = (n: number): string => (n / 2 ** 20).toFixed(0);
  return [
    `soak: ${r.options.streams} streams, ${r.options.workers} workers, ${r.options.pages}-page images, fault rate ${r.options.faultRate}, seed ${r.options.seed}, ${r.wallSeconds.toFixed(1)} s`,
    `epochs committed ${r.epochsCommitted}; epoch answers forwarded ${r.epochsSent}; epochs retried ${r.epochsRetried}`,
    `faults injected: ${FAULT_KINDS.map((k) => `${k} ${r.faults[k]}`).join(', ')}`,
    `failures seen by the controllers: ${JSON.stringify(r.failuresByCode)}; worker failures ${r.workerFailures}`,
    `load shed (503, waited out): ${JSON.stringify(r.shed)}`,
    `cut and aborted epochs ended: ${JSON.stringify(r.cutOutcomes)}`,
    `resyncs ${r.resyncs}`,
    `images verified equal: ${r.imagesEqual} of ${r.verifications}${r.imagesDiffering > 0 ? `  (${r.imagesDiffering} DIFFER)` : ''}`,
    `peak RSS ${mib(r.peakRssBytes)} MiB`,
  ].join('\n');
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      streams: { type: 'string' },
      seconds: { type: 'string' },
      'max-epochs': { type: 'string' },
      workers: { type: 'string' },
      pages: { type: 'string' },
      'fault-rate': { type: 'string' },
      'max-concurrent-epochs': { type: 'string' },
      seed: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(
      'Usage: node dist/bench/soak.js [--streams 8] [--seconds 60] [--max-epochs N] [--workers 2] [--pages 2048]\n' +
        '                                [--fault-rate 0.1] [--max-concurrent-epochs N] [--seed 1] [--json]\n' +
        'Exits 1 unless every image verified equal.',
    );
    return 0;
  }
  const num = (name: string, text: string | undefined, fallback: number, min: number, max: number): number => {
    const n = text === undefined ? fallback : Number(text);
    if (!Number.isFinite(n) || n < min || n > max) throw new Error(`--${name} must be from ${min} to ${max}, got ${text}`);
    return n;
  };
  const options: SoakOptions = {
    streams: num('streams', values.streams, 8, 1, 64),
    seconds: num('seconds', values.seconds, 60, 1, 24 * 3600),
    maxEpochs: num('max-epochs', values['max-epochs'], 100_000, 1, 10_000_000),
    workers: num('workers', values.workers, 2, 1, 64),
    pages: num('pages', values.pages, 2048, 64, 65536),
    faultRate: num('fault-rate', values['fault-rate'], 0.1, 0, 1),
    seed: num('seed', values.seed, 1, 0, 2 ** 31),
    maxConcurrentEpochs: values['max-concurrent-epochs'] === undefined ? undefined : num('max-concurrent-epochs', values['max-concurrent-epochs'], 0, 1, 4096),
  };
  const report = await soak(options);
  report.peakRssBytes = process.resourceUsage().maxRSS * 1024;
  console.log(values.json ? JSON.stringify(report) : formatSoak(report));
  return report.imagesDiffering === 0 && report.imagesEqual === report.verifications ? 0 : 1;
}

if (isMain(import.meta.url)) {
  process.exitCode = await main();
}
