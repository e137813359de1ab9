/**
 * Wire size against the cache budget: each trace replayed through a sender
 * and a receiver over loopback HTTP (src/replay.ts, the receiver's image
 * checked against the trace's), for each codec and cache policy, at cache
 * budgets of 8, 32 and 128 MiB; beside it, zstd -1 and lz4 on every dirty
 * page whole (no cache: the kernel bench's baselines, which need no budget).
 * Ratios are bytes on the wire over dirty page bytes, epochs 1 and later.
 *
 *   npm run build && node dist/bench/wire-size.js [--trace T ...] [--mib 8,32,128] [--workers 2] [--json-out F]
 *
 * Without --trace: ../shared/traces/python-small.rmtr and every
 * bench/traces/*.rmtr present (captured by bench/capture-*.sh).
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { packageRoot } from '../src/package-root.js';
import type { FrameSink } from '../src/merge.js';
import { replay } from '../src/replay.js';
import { Sender, type StreamRequest } from '../src/sender.js';
import { parseTrace } from '../src/trace.js';
import type { CodecName } from '../src/wire.js';
import type { CachePolicyName } from '../workers/cache-policy.js';
import { measureKernel, prepareTrace } from './kernel.js';

const MIB = 1024 * 1024;

/** What is compared: the seed as shipped (its format, its LRU), QEMU's XBZRLE (LRU), and ours under each policy. */
const VARIANTS: { label: string; codec: CodecName; cachePolicy: CachePolicyName }[] = [
  { label: 'seed format (remus, LRU)', codec: 'remus', cachePolicy: 'lru' },
  { label: 'XBZRLE (LRU)', codec: 'xbzrle', cachePolicy: 'lru' },
  { label: 'remus-zstd, LRU', codec: 'remus-zstd', cachePolicy: 'lru' },
  { label: 'remus-zstd, W-TinyLFU (default)', codec: 'remus-zstd', cachePolicy: 'tinylfu' },
];

interface Cell {
  ratio: number;
  bytesOut: number;
  /**
   * Dirty bytes over the worker's busy time, one worker, in process, the
   * best of 3 passes over the trace after a warm-up pass: one thread's encode
   * rate with the wasm kernel, cache work, chunk compression and BLAKE3
   * digest hashing included.
   */
  encodeGBps: number;
  imageEqual: boolean;
}

interface TraceResult {
  trace: string;
  dirtyBytes: number;
  cells: Record<string, Record<number, Cell>>;
  wholePages: { codec: string; ratio: number }[];
}

function defaultTraces(): string[] {
  const root = packageRoot();
  const traces: string[] = [];
  const shared = join(root, '..', 'shared', 'traces', 'python-small.rmtr');
  if (existsSync(shared)) traces.push(shared);
  const captured = join(root, 'bench', 'traces');
  if (existsSync(captured)) {
    for (const name of readdirSync(captured).sort()) if (name.endsWith('.rmtr')) traces.push(join(captured, name));
  }
  return traces;
}

/** One encoding worker for every encodeRate: warm across configurations, as a long-running service's would be. */
let rateSender: Sender | null = null;
const dropFrames: FrameSink = { begin() {}, write(_frame, release) { release(null); } };

async function* once(record: Uint8Array): AsyncGenerator<Uint8Array> {
  yield record;
}

/** See Cell.encodeGBps. */
async function encodeRate(epochs: Uint8Array[], config: StreamRequest): Promise<number> {
  rateSender ??= new Sender({ workers: 1 });
  let best = 0;
  for (let pass = 0; pass < 4; pass++) {
    const stream = rateSender.create({ ...config, workers: 1 });
    let busyNs = 0;
    let bytes = 0;
    for (const [e, record] of epochs.entries()) {
      const before = stream.stats.encodeNs;
      const summary = await stream.runEpoch(once(record), record.length, dropFrames);
      if (e === 0) continue;
      busyNs += stream.stats.encodeNs - before;
      bytes += summary.bytesIn;
    }
    await rateSender.delete(stream.id);
    if (pass > 0) best = Math.max(best, bytes / busyNs);
  }
  return best;
}

async function measureTrace(path: string, mibs: number[], workers: number): Promise<TraceResult> {
  const { pageSize, epochs: parsed } = parseTrace(readFileSync(path));
  const epochs = parsed.map((e) => e.record);
  const cells: TraceResult['cells'] = {};
  let dirtyBytes = 0;
  for (const v of VARIANTS) {
    cells[v.label] = {};
    for (const mib of mibs) {
      const s = await replay({ tracePath: path, codec: v.codec, cachePolicy: v.cachePolicy, cacheBytes: mib * MIB, workers });
      if (!s.imageEqual) throw new Error(`${path} ${v.label} ${mib} MiB: the receiver's image differs from the trace's`);
      dirtyBytes = s.dirty.bytesIn;
      cells[v.label][mib] = {
        ratio: s.dirty.ratio,
        bytesOut: s.dirty.bytesOut,
        encodeGBps: await encodeRate(epochs, { codec: v.codec, cachePolicy: v.cachePolicy, cacheBytes: mib * MIB, pageSize }),
        imageEqual: s.imageEqual,
      };
      process.stderr.write(`${path}: ${v.label}, ${mib} MiB: ratio ${s.dirty.ratio.toFixed(4)}\n`);
    }
  }
  // Sizes only: the kernel bench times these (one pass is its warm-up, which fixes the sizes).
  const kernel = measureKernel(prepareTrace(path, readFileSync(path)), { passes: 1, codecs: ['zstd-1', 'lz4'] });
  const wholePages = kernel.codecs.map((c) => ({ codec: c.codec, ratio: c.dirty.ratio }));
  return { trace: path, dirtyBytes, cells, wholePages };
}

function table(r: TraceResult, mibs: number[]): string {
  const seed = r.cells[VARIANTS[0].label];
  const lines = [
    `### ${r.trace}`,
    '',
    `Dirty epochs: ${r.dirtyBytes.toLocaleString('en-US')} bytes. Ratio out/in; (x) the share of the seed format's bytes at the same budget; GB/s: one worker's encode rate (see encodeRate in bench/wire-size.ts: wasm kernel, cache, chunk compression and digest hashing included).`,
    '',
    `| codec | ${mibs.map((m) => `${m} MiB`).join(' | ')} |`,
    `|---|${mibs.map(() => '--:').join('|')}|`,
  ];
  for (const v of VARIANTS) {
    const row = mibs.map((m) => {
      const c = r.cells[v.label][m];
      const share = v === VARIANTS[0] ? '' : ` (${(c.bytesOut / seed[m].bytesOut).toFixed(2)}x)`;
      return `${c.ratio.toFixed(4)}${share}, ${c.encodeGBps.toFixed(2)} GB/s`;
    });
    lines.push(`| ${v.label} | ${row.join(' | ')} |`);
  }
  for (const w of r.wholePages) {
    lines.push(`| ${w.codec}, every dirty page whole (no cache) | ${mibs.map((m) => `${w.ratio.toFixed(4)} (${(w.ratio / r.cells[VARIANTS[0].label][m].ratio).toFixed(2)}x)`).join(' | ')} |`);
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      trace: { type: 'string', multiple: true },
      mib: { type: 'string', default: '8,32,128' },
      workers: { type: 'string', default: '2' },
      'json-out': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log('usage: node dist/bench/wire-size.js [--trace T ...] [--mib 8,32,128] [--workers 2] [--json-out F]');
    return;
  }
  const traces = values.trace ?? defaultTraces();
  const mibs = values.mib.split(',').map(Number);
  const results: TraceResult[] = [];
  for (const t of traces) {
    const r = await measureTrace(t, mibs, Number(values.workers));
    results.push(r);
    console.log(`${table(r, mibs)}\n`);
  }
  if (values['json-out'] !== undefined) writeFileSync(values['json-out'], JSON.stringify(results, null, 2));
  await rateSender?.close();
}

await main();
