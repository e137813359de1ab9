/**
 * Receiver benchmark: how fast Receiver.applyFrame turns frames back into a
 * memory image, per codec, on real traces, in one process (no HTTP).
 *
 *   npm run build && node dist/bench/receiver.js --trace FILE.rmtr [--trace ...] [options]
 *
 * Options:
 *   --trace FILE          an RMTR trace (repeatable; default ../shared/traces/python-small.rmtr)
 *   --codec LIST          codecs to encode with (default remus,xbzrle,remus-zstd)
 *   --kernel LIST         receiver kernels (default wasm,js); 'default' passes no kernel option
 *                         (what a receiver that has none, or its default, does)
 *   --passes N            timed passes per codec and kernel (default 5)
 *   --max-epochs N        use only the first N epochs of each trace (epoch 0 included)
 *   --workers N           sender worker threads for the encoding step (default 2)
 *   --frame-bytes N       sender frame size (default the service's, 1 MiB)
 *
 * For each trace and codec, the trace's epochs are first encoded into frames
 * in process by a Sender (the stream pipeline bench/pipeline.ts times: worker
 * pool, wasm kernel, merge), and the frames are kept in memory. Then, per
 * receiver kernel and pass: a fresh Receiver over a fresh MemoryImage applies
 * epoch 0 (the image, not timed), then every frame of epochs 1..n, each epoch
 * timed from its first applyFrame call to the return of its LAST frame's
 * (commit included). One untimed warm-up pass comes first. The figure is the
 * dirty epochs' page bytes (the trace's, 4 KiB per page) over the summed
 * epoch times, in GB/s (1e9 bytes), best and median over the passes. After
 * every pass the image digest (docs/FORMAT.md "Image digest") must equal the
 * trace's final image's, and after the first one every page is compared too;
 * the bench exits 1 otherwise.
 *
 * The load average (os.loadavg) is printed at the start and the end: the
 * machine is shared, compare runs made back to back.
 */
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { hashImage } from '../src/digest.js';
import type { FrameSink } from '../src/merge.js';
import { packageRoot } from '../src/package-root.js';
import { MemoryImage, Receiver, type ReceiverOptions } from '../src/receiver.js';
import { Sender } from '../src/sender.js';
import { parseTrace, TraceImage, type TraceEpoch } from '../src/trace.js';
import { median } from './stats.js';
import { CODEC_NAMES, isCodecName, type CodecName } from '../src/wire.js';

const DEFAULT_TRACE = join(packageRoot(), '..', 'shared', 'traces', 'python-small.rmtr');

interface EncodedEpoch {
  epoch: number;
  /** Page bytes of the epoch (pages x pageSize). */
  pageBytes: number;
  frames: Uint8Array[];
}

interface KernelRun {
  kernel: string;
  rates: number[];
  imageEqual: boolean;
}

function positiveInt(name: string, value: string | undefined, fallback: number | undefined): number | undefined {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`--${name} needs an integer >= 1, got ${value}`);
  return n;
}

async function* once(record: Uint8Array): AsyncGenerator<Uint8Array> {
  yield record;
}

/** Encode the trace's epochs into frames with a Sender in this process; the frames are copied out of the stream's slabs. */
async function encodeTrace(
  epochs: TraceEpoch[],
  pageSize: number,
  codec: CodecName,
  workers: number,
  frameBytes: number | undefined,
): Promise<EncodedEpoch[]> {
  const sender = new Sender({ workers });
  try {
    const stream = sender.create({ workers, codec, pageSize, ...(frameBytes === undefined ? {} : { frameBytes }) });
    const out: EncodedEpoch[] = [];
    for (const e of epochs) {
      const frames: Uint8Array[] = [];
      const sink: FrameSink = {
        begin() {},
        write(frame, release) {
          frames.push(Uint8Array.from(frame));
          release(null);
        },
      };
      const summary = await stream.runEpoch(once(e.record), e.record.length, sink);
      if (summary.epoch !== e.epoch) throw new Error(`sender ran epoch ${summary.epoch} for trace epoch ${e.epoch}`);
      out.push({ epoch: e.epoch, pageBytes: e.count * pageSize, frames });
    }
    return out;
  } finally {
    await sender.close();
  }
}

/** Every page of the trace's final image is in the receiver, and nothing else. */
function samePages(rx: Receiver, oracle: TraceImage): boolean {
  if (rx.pageCount !== oracle.size) return false;
  const got = new Uint8Array(oracle.pageSize);
  for (const pfn of oracle.pfns()) {
    if (!rx.readPage(pfn, got)) return false;
    if (Buffer.compare(got, oracle.get(pfn) as Uint8Array) !== 0) return false;
  }
  return true;
}

function load(): string {
  return loadavg().map((l) => l.toFixed(2)).join(', ');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      trace: { type: 'string', multiple: true },
      codec: { type: 'string', default: 'remus,xbzrle,remus-zstd' },
      kernel: { type: 'string', default: 'wasm,js' },
      passes: { type: 'string' },
      'max-epochs': { type: 'string' },
      workers: { type: 'string' },
      'frame-bytes': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log('node dist/bench/receiver.js --trace FILE.rmtr [--codec remus,xbzrle,remus-zstd] [--kernel wasm,js|default] [--passes 5] [--max-epochs N] [--workers 2] [--frame-bytes N]');
    return;
  }
  const traces = values.trace ?? [DEFAULT_TRACE];
  const codecs = values.codec.split(',');
  for (const codec of codecs) if (!isCodecName(codec)) throw new Error(`--codec: ${codec} is not one of ${CODEC_NAMES.join(', ')}`);
  const kernels = values.kernel.split(',');
  for (const k of kernels) if (k !== 'wasm' && k !== 'js' && k !== 'default') throw new Error(`--kernel: ${k} is not wasm, js or default`);
  const passes = positiveInt('passes', values.passes, 5) as number;
  const maxEpochs = positiveInt('max-epochs', values['max-epochs'], undefined);
  const workers = positiveInt('workers', values.workers, 2) as number;
  const frameBytes = positiveInt('frame-bytes', values['frame-bytes'], undefined);

  console.log(`receiver bench: node ${process.version}, load average ${load()} (1, 5, 15 min)`);
  let failed = false;
  for (const path of traces) {
    const trace = parseTrace(readFileSync(path));
    const epochs = maxEpochs === undefined ? trace.epochs : trace.epochs.slice(0, maxEpochs);
    const { pageSize } = trace;
    const oracle = new TraceImage(pageSize);
    for (const e of epochs) oracle.apply(e);
    const expected = hashImage(oracle.pfns(), pageSize, (pfn, dst) => dst.set(oracle.get(pfn) as Uint8Array)).toString('hex');
    const dirtyBytes = epochs.slice(1).reduce((n, e) => n + e.count * pageSize, 0);
    console.log(`\n${path}: ${epochs.length} epochs (1 image + ${epochs.length - 1} dirty), ${(dirtyBytes / 1e6).toFixed(1)} MB of dirty pages, final image ${oracle.size} pages`);
    for (const codec of codecs as CodecName[]) {
      const encoded = await encodeTrace(epochs, pageSize, codec, workers, frameBytes);
      const wire = encoded.slice(1).reduce((n, e) => n + e.frames.reduce((m, f) => m + f.length, 0), 0);
      const frameCount = encoded.slice(1).reduce((n, e) => n + e.frames.length, 0);
      const runs: KernelRun[] = [];
      for (const kernel of kernels) {
        const run: KernelRun = { kernel, rates: [], imageEqual: true };
        for (let pass = -1; pass < passes; pass++) {
          const options = { pageSize, image: new MemoryImage(pageSize), ...(kernel === 'default' ? {} : { kernel }) } as ReceiverOptions;
          const rx = new Receiver(options);
          for (const f of encoded[0].frames) rx.applyFrame(f);
          let ns = 0n;
          for (let i = 1; i < encoded.length; i++) {
            const frames = encoded[i].frames;
            const started = process.hrtime.bigint();
            let committed = false;
            for (const f of frames) committed = rx.applyFrame(f).committed;
            ns += process.hrtime.bigint() - started;
            if (!committed) throw new Error(`${codec}/${kernel}: epoch ${encoded[i].epoch} did not commit`);
          }
          const equal = rx.imageDigest().toString('hex') === expected && (pass !== -1 || samePages(rx, oracle));
          if (!equal) run.imageEqual = false;
          rx.close();
          if (pass >= 0) run.rates.push(dirtyBytes / Number(ns));
        }
        runs.push(run);
      }
      for (const run of runs) {
        if (!run.imageEqual) failed = true;
        console.log(
          `  ${codec.padEnd(10)} ${run.kernel.padEnd(7)}: best ${Math.max(...run.rates).toFixed(2)} GB/s, median ${median(run.rates).toFixed(2)} GB/s ` +
            `over ${passes} passes (${frameCount} frames, ${(wire / 1e6).toFixed(2)} MB on the wire, out/in ${(wire / dirtyBytes).toFixed(4)}); ` +
            `${run.imageEqual ? 'image equal' : 'IMAGE DIFFERS'}`,
        );
      }
    }
  }
  console.log(`\nload average at the end: ${load()}`);
  if (failed) {
    console.error('receiver bench: a receiver image differs from the trace');
    process.exitCode = 1;
  }
}

await main();
