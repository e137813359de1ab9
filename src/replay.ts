import { stat } from 'node:fs/promises';
import type { FastifyInstance } from 'fastify';
import { buildApp } from './app.js';
import { ReceiverClient, SenderClient, type StreamConfigRequest } from './client.js';
import { hashImage } from './digest.js';
import { openTrace, TRACE_HEADER_BYTES, TraceImage } from './trace.js';

export interface ReplayOptions extends StreamConfigRequest {
  tracePath: string;
  /** Encoding worker threads of the in-process sender (default: the stream's workers). */
  poolWorkers?: number;
  /** Called after each epoch, e.g. for a progress line. */
  onEpoch?: (epoch: ReplayEpoch) => void;
  /** Called after each epoch with the trace bytes replayed so far and the file's size, e.g. for a progress bar. */
  onProgress?: (bytesDone: number, bytesTotal: number, epoch: ReplayEpoch) => void;
  /** Use this running sender (base URL) instead of starting one; its stream is left open. */
  senderUrl?: string;
  /** Use this running receiver (base URL) instead of starting one; its image is left open. */
  receiverUrl?: string;
}

export interface ReplayEpoch {
  epoch: number;
  pages: number;
  bytesIn: number;
  bytesOut: number;
  /** bytesOut / bytesIn */
  ratio: number;
  /** Sender-side encode time (first page dispatched to digest known). */
  encodeMs: number;
  /** The workers' busy time on the epoch, summed over workers (page codecs, cache, chunk compression, digest hashing). */
  workerMs: number;
  /** From the controller's first request byte to the receiver's commit. */
  endToEndMs: number;
}

export interface ReplaySummary {
  trace: string;
  pageSize: number;
  config: StreamInfoConfig;
  epochs: ReplayEpoch[];
  total: Omit<ReplayEpoch, 'epoch'> & { epochs: number };
  /** Dirty epochs only (1 and later): what a running machine costs. */
  dirty: Omit<ReplayEpoch, 'epoch'> & { epochs: number };
  imagePages: number;
  pagesCompared: number;
  /** pfns whose page differs or is missing on the receiver (the first 20). */
  mismatches: number[];
  digestEqual: boolean;
  imageEqual: boolean;
}

type StreamInfoConfig = Record<string, number | string>;

/**
 * Replay a trace through a sender and a receiver on loopback, exactly as a
 * checkpoint controller would: each epoch record is POSTed to the sender and
 * its frames are forwarded, as they arrive, to the receiver. At the end every
 * page of the receiver's image is compared with the trace's final image.
 */
export async function replay(options: ReplayOptions): Promise<ReplaySummary> {
  const reader = await openTrace(options.tracePath);
  const streamConfig: StreamConfigRequest = {
    pageSize: reader.pageSize,
    cacheBytes: options.cacheBytes,
    workers: options.workers,
    frameBytes: options.frameBytes,
    pfnLimit: options.pfnLimit,
    maxEpochBytes: options.maxEpochBytes,
    codec: options.codec,
    cachePolicy: options.cachePolicy,
  };
  const poolWorkers = options.poolWorkers ?? options.workers;
  const apps: FastifyInstance[] = [];
  try {
    const { size: traceBytes } = await stat(options.tracePath);
    const start = async (app: Promise<FastifyInstance>): Promise<string> => {
      const started = await app;
      apps.push(started);
      return listen(started);
    };
    const senderUrl = options.senderUrl ?? (await start(buildApp({ sender: poolWorkers === undefined ? {} : { workers: poolWorkers } })));
    const receiverUrl = options.receiverUrl ?? (await start(buildApp({ receiver: {} })));
    const sender = new SenderClient(senderUrl);
    const receiver = new ReceiverClient(receiverUrl);
    const stream = await sender.createStream(streamConfig);
    const image = await receiver.createImage({ pageSize: reader.pageSize });
    const oracle = new TraceImage(reader.pageSize);
    const epochs: ReplayEpoch[] = [];
    let bytesDone = TRACE_HEADER_BYTES;
    let workerNsBefore = 0;

    for await (const epoch of reader.epochs()) {
      const started = process.hrtime.bigint();
      const frames = await sender.sendEpoch(stream.id, epoch.record);
      const applied = await receiver.postFrames(image.id, frames);
      const endToEndMs = Number(process.hrtime.bigint() - started) / 1e6;
      if (applied.committedEpoch !== epoch.epoch) {
        throw new Error(`receiver did not commit epoch ${epoch.epoch} (committed: ${applied.committedEpoch})`);
      }
      oracle.apply(epoch);
      const info = await sender.getStream(stream.id);
      const last = info.lastEpoch;
      if (last === null || last.epoch !== epoch.epoch) throw new Error(`sender has no summary of epoch ${epoch.epoch}`);
      const row: ReplayEpoch = {
        epoch: epoch.epoch,
        pages: last.pages,
        bytesIn: last.bytesIn,
        bytesOut: last.bytesOut,
        ratio: ratio(last.bytesOut, last.bytesIn),
        encodeMs: last.encodeWallNs / 1e6,
        workerMs: (info.stats.encodeNs - workerNsBefore) / 1e6,
        endToEndMs,
      };
      workerNsBefore = info.stats.encodeNs;
      epochs.push(row);
      bytesDone += epoch.record.length;
      options.onEpoch?.(row);
      options.onProgress?.(bytesDone, traceBytes, row);
    }

    const { compared, mismatches } = await compareImages(oracle, receiver, image.id);
    const digest = await receiver.digest(image.id);
    const expected = hashImage(oracle.pfns(), reader.pageSize, (pfn, dst) => dst.set(oracle.get(pfn) as Uint8Array));
    const digestEqual = digest.digest === expected.toString('hex') && digest.pages === oracle.size;
    const config = (await sender.getStream(stream.id)).config as StreamInfoConfig;
    return {
      trace: options.tracePath,
      pageSize: reader.pageSize,
      config,
      epochs,
      total: totals(epochs),
      dirty: totals(epochs.filter((e) => e.epoch > 0)),
      imagePages: oracle.size,
      pagesCompared: compared,
      mismatches,
      digestEqual,
      imageEqual: mismatches.length === 0 && digestEqual,
    };
  } finally {
    await reader.close();
    await Promise.all(apps.map((app) => app.close()));
  }
}

async function listen(app: FastifyInstance): Promise<string> {
  return app.listen({ host: '127.0.0.1', port: 0 });
}

/** Fetch every page of the trace's final image from the receiver and compare bytes. */
async function compareImages(oracle: TraceImage, receiver: ReceiverClient, imageId: string): Promise<{ compared: number; mismatches: number[] }> {
  const pfns = oracle.pfns();
  const mismatches: number[] = [];
  const concurrency = 8;
  let next = 0;
  let compared = 0;
  const worker = async (): Promise<void> => {
    while (next < pfns.length) {
      const pfn = pfns[next++];
      const got = await receiver.getPage(imageId, pfn);
      const want = oracle.get(pfn) as Uint8Array;
      compared++;
      if (got === null || Buffer.compare(got, want) !== 0) mismatches.push(pfn);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const info = await receiver.getImage(imageId);
  // A page the receiver holds but the trace never had is a mismatch too.
  if (info.pages !== pfns.length) mismatches.push(-1);
  return { compared, mismatches: mismatches.sort((a, b) => a - b).slice(0, 20) };
}

function ratio(out: number, inBytes: number): number {
  return inBytes === 0 ? 0 : out / inBytes;
}

function totals(epochs: ReplayEpoch[]): Omit<ReplayEpoch, 'epoch'> & { epochs: number } {
  const sum = (f: (e: ReplayEpoch) => number): number => epochs.reduce((a, e) => a + f(e), 0);
  const bytesIn = sum((e) => e.bytesIn);
  const bytesOut = sum((e) => e.bytesOut);
  return {
    epochs: epochs.length,
    pages: sum((e) => e.pages),
    bytesIn,
    bytesOut,
    ratio: ratio(bytesOut, bytesIn),
    encodeMs: sum((e) => e.encodeMs),
    workerMs: sum((e) => e.workerMs),
    endToEndMs: sum((e) => e.endToEndMs),
  };
}

/** The summary as a table for people. */
export function formatReplay(summary: ReplaySummary): string {
  const lines: string[] = [];
  const row = (cols: (string | number)[]): string => cols.map((c, i) => String(c).padStart(i === 0 ? 7 : 12)).join(' ');
  lines.push(`trace ${summary.trace}: page size ${summary.pageSize}, ${summary.imagePages} pages in the final image`);
  lines.push(`stream: ${Object.entries(summary.config).map(([k, v]) => `${k}=${v}`).join(' ')}`);
  lines.push(row(['epoch', 'pages', 'bytes in', 'bytes out', 'ratio', 'encode ms', 'e2e ms']));
  const fmt = (label: string | number, e: Omit<ReplayEpoch, 'epoch'>): string =>
    row([label, e.pages, e.bytesIn, e.bytesOut, e.ratio.toFixed(4), e.encodeMs.toFixed(2), e.endToEndMs.toFixed(2)]);
  for (const e of summary.epochs) lines.push(fmt(e.epoch, e));
  lines.push(fmt('total', summary.total));
  if (summary.dirty.epochs > 0) lines.push(fmt('dirty', summary.dirty));
  lines.push(
    summary.imageEqual
      ? `receiver image equals the trace's final image: ${summary.pagesCompared} pages compared, digest equal`
      : `MISMATCH: receiver image differs from the trace's final image (pfns ${summary.mismatches.join(', ')}; digest equal: ${summary.digestEqual})`,
  );
  return lines.join('\n');
}
