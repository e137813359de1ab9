/**
 * The sender's epoch pipeline in process, without HTTP: a Stream fed whole
 * epoch records and a sink that drops frames. With bench/load.ts (the same
 * epochs over loopback HTTP) it shows what HTTP and the client cost.
 *
 *   npm run build && node dist/bench/pipeline.js [--workers 1,2] [--mib 32] [--epochs 12] [--skip 2] [--cache-bytes N]
 *     [--codec remus,remus-zstd] [--kernel wasm,js] [--cache-policy tinylfu|lru] [--trace T] [--check]
 *
 * Per epoch (from epoch `--skip` on; default 2: epoch 0 is the image, the
 * first dirty epoch warms the JIT): the whole epoch's rate (median, best),
 * and the encode stage's (first batch dispatched to digest known: workers
 * and merge), over all those epochs and for the median epoch. V8
 * keeps reoptimizing the workers' loop for the first twenty or so epochs of
 * 32 MiB (branches seen for the first time: cache hits after an epoch of
 * misses, evictions), on its helper threads, which share the two cores:
 * `--epochs 40 --skip 24` measures the steady state.
 *
 * `--kernel wasm,js` runs each setting with the workers' WebAssembly kernel
 * and with the TypeScript codecs (default: both, one after the other in the
 * same run); `--check` also hashes every frame (inside the timed epochs) and
 * fails if the kernels' frames differ.
 * `--cache-bytes 0` makes every page a miss, sent FULL: what epoch 0 and cold
 * pages cost.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { createHash } from 'node:crypto';
import { Sender, isKernelChoice, KERNEL_CHOICES } from '../src/sender.js';
import type { KernelChoice } from '../workers/protocol.js';
import type { FrameSink } from '../src/merge.js';
import { makeEpochs } from './load.js';
import { median } from './stats.js';
import { parseTrace } from '../src/trace.js';
import { CACHE_POLICIES, isCachePolicyName } from '../workers/cache-policy.js';
import { CODEC_NAMES, isCodecName, type CodecName } from '../src/wire.js';

const PAGE_SIZE = 4096;
const { values } = parseArgs({
  options: {
    workers: { type: 'string', default: '1,2' },
    mib: { type: 'string', default: '32' },
    epochs: { type: 'string', default: '12' },
    skip: { type: 'string', default: '2' },
    'cache-bytes': { type: 'string' },
    codec: { type: 'string', default: 'remus-zstd' },
    kernel: { type: 'string', default: 'wasm,js' },
    check: { type: 'boolean', default: false },
    trace: { type: 'string' },
    'cache-policy': { type: 'string', default: 'tinylfu' },
  },
});
const cachePolicy = values['cache-policy'];
const skip = Number(values.skip);
if (!isCachePolicyName(cachePolicy)) throw new Error(`--cache-policy: ${cachePolicy} is not one of ${CACHE_POLICIES.join(', ')}`);
const codecs = values.codec.split(',');
for (const codec of codecs) if (!isCodecName(codec)) throw new Error(`--codec: ${codec} is not one of ${CODEC_NAMES.join(', ')}`);
const kernels = values.kernel.split(',');
for (const kernel of kernels) if (!isKernelChoice(kernel)) throw new Error(`--kernel: ${kernel} is not one of ${KERNEL_CHOICES.join(', ')}`);
const pages = (Number(values.mib) * 1024 * 1024) / PAGE_SIZE;
// A real trace's epochs, or synthetic ones (bench/load.ts's: every page of the image fits the cache).
const trace = values.trace === undefined ? null : parseTrace(readFileSync(values.trace));
const records: Uint8Array[] = trace === null ? makeEpochs(1, pages, Number(values.epochs)) : trace.epochs.map((e) => e.record);
const pageSize = trace?.pageSize ?? PAGE_SIZE;
if (!Number.isInteger(skip) || skip < 0 || skip >= records.length) throw new Error(`--skip: ${values.skip} leaves none of the ${records.length} epochs to measure`);
const source = values.trace ?? `${values.mib} MiB epochs`;
/** Hash of the frames of the run in progress: every kernel must send the same bytes. */
let framesHash = createHash('sha256');
const check = values.check;
const sink: FrameSink = { begin() {}, write(frame, release) { if (check) framesHash.update(frame); release(null); } };

async function* once(record: Uint8Array): AsyncGenerator<Uint8Array> {
  yield record;
}

for (const codec of codecs as CodecName[]) for (const workers of values.workers.split(',').map(Number)) {
  let firstHash: string | null = null;
  for (const kernel of kernels as KernelChoice[]) {
    const sender = new Sender({ workers, kernel });
    framesHash = createHash('sha256');
    const cacheBytes = values['cache-bytes'] === undefined ? undefined : Number(values['cache-bytes']);
    const stream = sender.create({ workers, cacheBytes, codec, cachePolicy, pageSize });
    let bytesOut = 0;
    let bytesIn = 0;
    let encodeNs = 0;
    const rates: number[] = [];
    const encodeRates: number[] = [];
    for (const record of records) {
      const started = process.hrtime.bigint();
      const summary = await stream.runEpoch(once(record), record.length, sink);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      if (summary.epoch >= skip) {
        rates.push(summary.bytesIn / seconds / 1e9);
        encodeRates.push(summary.bytesIn / summary.encodeWallNs);
        bytesIn += summary.bytesIn;
        bytesOut += summary.bytesOut;
        encodeNs += summary.encodeWallNs;
      }
    }
    const hash = framesHash.digest('hex');
    firstHash ??= hash;
    if (check && hash !== firstHash) throw new Error(`${codec}, ${workers} worker(s): the ${kernel} kernel's frames differ from the ${kernels[0]} kernel's`);
    console.log(
      `${codec}, ${workers} worker(s), ${kernel}, ${source}${cacheBytes === undefined ? '' : `, cache ${cacheBytes} bytes`}, ${cachePolicy}: ` +
        `epoch median ${median(rates).toFixed(2)} GB/s, best ${Math.max(...rates).toFixed(2)} over ${rates.length} epochs; ` +
        `encode stage ${(bytesIn / encodeNs).toFixed(2)} GB/s over all those epochs, median epoch ${median(encodeRates).toFixed(2)} ` +
        `(first dispatch to digest); out/in ${(bytesOut / bytesIn).toFixed(4)}`,
    );
    await sender.close();
  }
}
