/**
 * End-to-end load test: the service in a child process, driven over loopback
 * HTTP by this process as a checkpoint controller would drive it. For each
 * worker count and epoch size, S streams each send an epoch 0 (the full
 * image, not timed) then E dirty epochs back to back; the streams run at
 * once. Figures: dirty-page throughput, checkpoint latency (first request byte
 * to last frame byte), the server's peak RSS, cache hit rate, wire ratio.
 *
 *   npm run build && node dist/bench/load.js [--workers 1,2] [--sizes 1,8,32] [--streams 1] [--epochs 10]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { isMain } from '../src/is-main.js';
import { packageRoot } from '../src/package-root.js';
import { encodeEpochRecord } from '../src/trace.js';
import { SenderClient } from '../src/client.js';
import { EPOCH_CONTENT_TYPE } from '../src/content-types.js';
import { xorshift32 } from './xorshift.js';

const PAGE_SIZE = 4096;
const MIB = 1024 * 1024;
/** Pages in each stream's image: the seed's 32 MiB cache holds all of it. */
const IMAGE_PAGES = 8192;
/** Words changed per dirty page, in a few clusters: about the 1.4% measured on the real python trace. */
const CHANGED_WORDS = 14;
const CLUSTERS = 3;

export interface LoadConfig {
  workers: number;
  epochMiB: number;
  streams: number;
  epochs: number;
}

export interface LoadResult extends LoadConfig {
  dirtyBytes: number;
  bytesOut: number;
  seconds: number;
  throughputGBps: number;
  latencyMs: { p50: number; p99: number; max: number; samples: number[] };
  peakRssMiB: number;
  cacheHitRate: number;
  wireRatio: number;
}

/** The epoch records one stream will send: a full image, then dirty epochs of `epochPages` sparse-edited pages. */
export function makeEpochs(seed: number, epochPages: number, dirtyEpochs: number): Buffer[] {
  const next = xorshift32(seed);
  const image = new Uint32Array(IMAGE_PAGES * PAGE_SIZE / 4);
  for (let i = 0; i < image.length; i++) image[i] = next();
  const image8 = new Uint8Array(image.buffer);
  const allPfns = Float64Array.from({ length: IMAGE_PAGES }, (_, i) => 0x10000 + i);
  const records = [encodeEpochRecord(0, allPfns, new Uint8Array(IMAGE_PAGES), image8, PAGE_SIZE)];
  const order = Int32Array.from({ length: IMAGE_PAGES }, (_, i) => i);
  const words = PAGE_SIZE / 4;
  for (let e = 1; e <= dirtyEpochs; e++) {
    // A partial Fisher-Yates shuffle picks the epoch's distinct dirty pages.
    for (let i = 0; i < epochPages; i++) {
      const j = i + (next() % (IMAGE_PAGES - i));
      [order[i], order[j]] = [order[j], order[i]];
    }
    const pfns = new Float64Array(epochPages);
    const pages = new Uint8Array(epochPages * PAGE_SIZE);
    for (let i = 0; i < epochPages; i++) {
      const page = order[i];
      for (let c = 0; c < CLUSTERS; c++) {
        const start = next() % (words - CHANGED_WORDS);
        for (let w = 0; w < Math.ceil(CHANGED_WORDS / CLUSTERS); w++) image[page * words + start + w] = next();
      }
      pfns[i] = allPfns[page];
      pages.set(image8.subarray(page * PAGE_SIZE, (page + 1) * PAGE_SIZE), i * PAGE_SIZE);
    }
    records.push(encodeEpochRecord(e, pfns, new Uint8Array(epochPages), pages, PAGE_SIZE));
  }
  return records;
}

/** Start `remus-compress serve` on a free loopback port; resolves with its base URL. */
async function startServer(workers: number, streams: number): Promise<{ child: ChildProcess; url: string }> {
  const cli = join(packageRoot(), 'dist', 'src', 'cli.js');
  // Every stream's epoch in flight at once: the load test measures throughput, not load shedding.
  const concurrent = String(Math.max(2 * workers, streams));
  return startChild([cli, 'serve', '--port', '0', '--workers', String(workers), '--max-concurrent-epochs', concurrent, '--log-level', 'warn']);
}

/**
 * The transfer ceiling: a bare node:http server in its own process that
 * copies each request body into a SharedArrayBuffer (as the sender's body
 * reader does) and answers with its length. What an epoch costs before any
 * compression at all.
 */
const CEILING_SERVER = `
const { createServer } = require('node:http');
let slab = new Uint8Array(new SharedArrayBuffer(1));
const server = createServer((req, res) => {
  let n = 0;
  req.on('data', (c) => {
    if (n + c.length > slab.length) { const grown = new Uint8Array(new SharedArrayBuffer(2 * (n + c.length))); grown.set(slab.subarray(0, n)); slab = grown; }
    slab.set(c, n); n += c.length;
  });
  req.on('end', () => res.end(String(n)));
});
server.listen(0, '127.0.0.1', () => console.error('listening on http://127.0.0.1:' + server.address().port));
`;

async function startChild(args: string[]): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const url = await new Promise<string>((resolve, reject) => {
    let text = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      const match = /listening on (http:\/\/[^\s]+)/.exec(text);
      if (match) resolve(match[1]);
    });
    child.once('exit', (code) => reject(new Error(`server exited with ${code}: ${text}`)));
  });
  return { child, url };
}

/** VmHWM of a process: its peak resident set, in MiB. */
function peakRssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /VmHWM:\s+(\d+) kB/.exec(status);
  return match ? Number(match[1]) / 1024 : NaN;
}

/** POST one epoch and read every frame byte; resolves with the latency in ms and the bytes received. */
function postEpoch(agent: Agent, url: URL, path: string, body: Buffer): Promise<{ ms: number; bytes: number }> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const req = request(
      { agent, host: url.hostname, port: url.port, method: 'POST', path, headers: { 'content-type': EPOCH_CONTENT_TYPE, 'content-length': body.length } },
      (res) => {
        let bytes = 0;
        res.on('data', (chunk: Buffer) => (bytes += chunk.length));
        res.on('end', () => {
          if (res.statusCode !== 200) reject(new Error(`epoch answered ${res.statusCode}`));
          else resolve({ ms: Number(process.hrtime.bigint() - started) / 1e6, bytes });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

/** One configuration: a fresh server, S streams at once, E dirty epochs each. */
export async function runLoad(config: LoadConfig): Promise<LoadResult> {
  const epochPages = Math.round((config.epochMiB * MIB) / PAGE_SIZE);
  const streamsEpochs = Array.from({ length: config.streams }, (_, s) => makeEpochs(1000 + s, Math.min(epochPages, IMAGE_PAGES), config.epochs));
  const { child, url } = await startServer(config.workers, config.streams);
  const agent = new Agent({ keepAlive: true, maxSockets: config.streams * 2 });
  try {
    const client = new SenderClient(url);
    const base = new URL(url);
    const streams = await Promise.all(streamsEpochs.map(() => client.createStream({ workers: config.workers })));
    // Epoch 0 fills the caches; it is the image transfer, not a checkpoint.
    await Promise.all(streams.map((s, i) => postEpoch(agent, base, `/v1/streams/${s.id}/epochs`, streamsEpochs[i][0])));
    const before = await Promise.all(streams.map((s) => client.stats(s.id)));
    const latencies: number[] = [];
    let bytesOut = 0;
    const started = process.hrtime.bigint();
    await Promise.all(
      streams.map(async (s, i) => {
        for (let e = 1; e <= config.epochs; e++) {
          const { ms, bytes } = await postEpoch(agent, base, `/v1/streams/${s.id}/epochs`, streamsEpochs[i][e]);
          latencies.push(ms);
          bytesOut += bytes;
        }
      }),
    );
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const after = await Promise.all(streams.map((s) => client.stats(s.id)));
    let hits = 0;
    let lookups = 0;
    let dirtyBytes = 0;
    for (let i = 0; i < streams.length; i++) {
      if (after[i].epochsCommitted !== config.epochs + 1) throw new Error(`stream ${streams[i].id} committed ${after[i].epochsCommitted} epochs`);
      hits += after[i].cacheHits - before[i].cacheHits;
      lookups += after[i].cacheHits + after[i].cacheMisses - before[i].cacheHits - before[i].cacheMisses;
      dirtyBytes += after[i].bytesIn - before[i].bytesIn;
    }
    const sorted = [...latencies].sort((a, b) => a - b);
    return {
      ...config,
      dirtyBytes,
      bytesOut,
      seconds,
      throughputGBps: dirtyBytes / seconds / 1e9,
      latencyMs: { p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted[sorted.length - 1], samples: latencies },
      peakRssMiB: peakRssMiB(child.pid as number),
      cacheHitRate: lookups === 0 ? 0 : hits / lookups,
      wireRatio: bytesOut / dirtyBytes,
    };
  } finally {
    agent.destroy();
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
  }
}

export interface CeilingResult {
  epochMiB: number;
  epochs: number;
  throughputGBps: number;
  p50Ms: number;
}

/** POST the same dirty epochs to the bare transfer server (CEILING_SERVER), one stream, back to back. */
export async function runHttpCeiling(epochMiB: number, epochs: number): Promise<CeilingResult> {
  const epochPages = Math.min(Math.round((epochMiB * MIB) / PAGE_SIZE), IMAGE_PAGES);
  const records = makeEpochs(1000, epochPages, epochs).slice(1);
  const { child, url } = await startChild(['-e', CEILING_SERVER]);
  const agent = new Agent({ keepAlive: true });
  try {
    const base = new URL(url);
    await postEpoch(agent, base, '/', records[0]); // warm up the connection
    const latencies: number[] = [];
    let bytes = 0;
    const started = process.hrtime.bigint();
    for (const record of records) {
      latencies.push((await postEpoch(agent, base, '/', record)).ms);
      bytes += epochPages * PAGE_SIZE;
    }
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    return { epochMiB, epochs, throughputGBps: bytes / seconds / 1e9, p50Ms: percentile([...latencies].sort((a, b) => a - b), 50) };
  } finally {
    agent.destroy();
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
  }
}

export function formatCeiling(results: CeilingResult[]): string {
  return [
    '| epoch MiB | epochs | GB/s of pages | p50 ms |',
    '|---|---|---|---|',
    ...results.map((r) => `| ${r.epochMiB} | ${r.epochs} | ${r.throughputGBps.toFixed(3)} | ${r.p50Ms.toFixed(2)} |`),
  ].join('\n');
}

export function formatLoad(results: LoadResult[]): string {
  const lines = [
    '| workers | streams | epoch MiB | epochs | GB/s dirty | p50 ms | p99 ms | max ms | peak RSS MiB | hit rate | wire ratio |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of results) {
    lines.push(
      `| ${r.workers} | ${r.streams} | ${r.epochMiB} | ${r.epochs * r.streams} | ${r.throughputGBps.toFixed(3)} | ${r.latencyMs.p50.toFixed(2)} | ${r.latencyMs.p99.toFixed(2)} | ${r.latencyMs.max.toFixed(2)} | ${r.peakRssMiB.toFixed(0)} | ${r.cacheHitRate.toFixed(3)} | ${r.wireRatio.toFixed(4)} |`,
    );
  }
  return lines.join('\n');
}

function list(text: string): number[] {
  return text.split(',').map((s) => Number(s.trim()));
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      workers: { type: 'string', default: '1,2' },
      sizes: { type: 'string', default: '1,8,32' },
      streams: { type: 'string', default: '1' },
      epochs: { type: 'string', default: '10' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log('Usage: node dist/bench/load.js [--workers 1,2] [--sizes 1,8,32] [--streams 1] [--epochs 10]');
    return;
  }
  const results: LoadResult[] = [];
  for (const workers of list(values.workers)) {
    for (const epochMiB of list(values.sizes)) {
      for (const streams of list(values.streams)) {
        results.push(await runLoad({ workers, epochMiB, streams, epochs: Number(values.epochs) }));
        process.stderr.write(`done: ${workers} workers, ${epochMiB} MiB, ${streams} streams\n`);
      }
    }
  }
  console.log(formatLoad(results));
}

if (isMain(import.meta.url)) {
  await main();
}
