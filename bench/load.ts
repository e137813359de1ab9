/**
 * End-to-end load test: the service in a child process, driven over loopback
 * HTTP by this process as a checkpoint controller would drive it. For each
 * worker count and epoch size, S streams each send an epoch 0 (the full
 * image, not timed) then E dirty epochs back to back; the streams run at
 * once. Figures: dirty-page throughput, checkpoint latency (first request byte
 * to last frame byte), the server's peak RSS, cache hit rate, wire ratio.
 * Over loopback TCP (127.0.0.1) or a Unix socket (`serve --socket`), the
 * transport a controller on the same host can choose.
 *
 *   npm run build && node dist/bench/load.js [--workers 1,2] [--sizes 1,8,32] [--streams 1] [--epochs 10] [--distinct K] [--transport tcp,unix] [--fast-path on,off] [--ceiling]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { Agent, request, type RequestOptions } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { isMain } from '../src/is-main.js';
import { packageRoot } from '../src/package-root.js';
import { encodeEpochRecord } from '../src/trace.js';
import { SERVICE_NODE_FLAGS } from '../src/node-flags.js';
import { EPOCH_CONTENT_TYPE } from '../src/content-types.js';
import { xorshift32 } from '../src/xorshift.js';

const PAGE_SIZE = 4096;
const MIB = 1024 * 1024;
/** Pages in each stream's image: the seed's 32 MiB cache holds all of it. */
const IMAGE_PAGES = 8192;
/** Words changed per dirty page, in a few clusters: about the 1.4% measured on the real python trace. */
const CHANGED_WORDS = 14;
const CLUSTERS = 3;

/** How the controller reaches the service: loopback TCP or a Unix socket. */
export type Transport = 'tcp' | 'unix';
const TRANSPORTS: readonly Transport[] = ['tcp', 'unix'];

export interface LoadConfig {
  workers: number;
  epochMiB: number;
  streams: number;
  epochs: number;
  transport: Transport;
  /** Node flags of the service process (default: SERVICE_NODE_FLAGS, as `npm start` runs it). */
  nodeFlags?: readonly string[];
  /** Whether the service reads epoch bodies on its fast path (default) or through node:http (`--no-fast-path`). */
  fastPath?: boolean;
  /**
   * Distinct dirty epochs to make (default: all of them). Fewer are replayed
   * in turn, renumbered, so that a long run needs no more client memory
   * than they take.
   */
  distinct?: number;
}

export interface LoadResult extends LoadConfig {
  dirtyBytes: number;
  bytesOut: number;
  seconds: number;
  throughputGBps: number;
  latencyMs: { p50: number; p99: number; max: number; samples: number[] };
  peakRssMiB: number;
  /** The server's resident set after a tenth of the timed epochs, and after the last: growth over a long run shows between them. */
  rssTenthMiB: number;
  rssEndMiB: number;
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

/** Where a child server listens: the host and port, or the socket path, that node:http requests take. */
type Target = Pick<RequestOptions, 'host' | 'port' | 'socketPath'>;

interface Server {
  child: ChildProcess;
  target: Target;
  /** A temporary directory to remove when the server is gone (the socket's), or null. */
  dir: string | null;
}

/** A free socket path in a fresh temporary directory, or a free loopback port (0), for a child server. */
function listenArgs(transport: Transport): { args: string[]; dir: string | null; socketPath: string | null } {
  if (transport === 'tcp') return { args: ['--port', '0'], dir: null, socketPath: null };
  const dir = mkdtempSync(join(tmpdir(), 'remus-load-'));
  const socketPath = join(dir, 'sender.sock');
  return { args: ['--socket', socketPath], dir, socketPath };
}

/** Start `remus-compress serve`, with its Node flags, on a free loopback port or a Unix socket. */
async function startServer(config: LoadConfig): Promise<Server> {
  const cli = join(packageRoot(), 'dist', 'src', 'cli.js');
  // Every stream's epoch in flight at once: the load test measures throughput, not load shedding.
  const concurrent = String(Math.max(2 * config.workers, config.streams));
  const listen = listenArgs(config.transport);
  const flags = config.nodeFlags ?? SERVICE_NODE_FLAGS;
  return startChild(
    [
      ...flags, cli, 'serve', ...listen.args, '--workers', String(config.workers), '--max-concurrent-epochs', concurrent, '--log-level', 'warn',
      ...(config.fastPath === false ? ['--no-fast-path'] : []),
    ],
    listen.dir,
  );
}

async function stopServer(server: Server): Promise<void> {
  server.child.kill('SIGTERM');
  await new Promise((resolve) => server.child.once('exit', resolve));
  if (server.dir !== null) rmSync(server.dir, { recursive: true, force: true });
}

/** What both bare servers share: a growing shared slab with the service's memcpy (an empty copy is none), and where they listen. */
const CEILING_SLAB = `
const copyInto = (target, offset, source) => { if (source.length > 0) Buffer.prototype.fill.call(target, source, offset, offset + source.length); };
let slab = new Uint8Array(new SharedArrayBuffer(1));
`;
const CEILING_LISTEN = `
const socketPath = process.argv[1];
if (socketPath) server.listen(socketPath, () => console.error('listening on unix:' + socketPath));
else server.listen(0, '127.0.0.1', () => console.error('listening on http://127.0.0.1:' + server.address().port));
`;

/**
 * The transfer ceiling: a bare node:http server in its own process that
 * copies each request body into a SharedArrayBuffer as the sender's body
 * reader does (data events, a memcpy by Buffer#fill: src/shared-copy.ts)
 * and answers with its length. What an epoch costs before any compression
 * at all.
 */
const CEILING_SERVER = `
const { createServer } = require('node:http');
${CEILING_SLAB}
const server = createServer((req, res) => {
  let n = 0;
  req.on('data', (c) => {
    if (n + c.length > slab.length) { const grown = new Uint8Array(new SharedArrayBuffer(2 * (n + c.length))); copyInto(grown, 0, slab.subarray(0, n)); slab = grown; }
    copyInto(slab, n, c); n += c.length;
  });
  req.on('end', () => res.end(String(n)));
});
${CEILING_LISTEN}`;

/**
 * The transfer ceiling of the fast path: the same bare server, but each
 * body is read from the socket straight into the SharedArrayBuffer, as
 * src/fast-path.ts reads epochs (net.Socket onread on the accepted handle;
 * only Content-Length bodies, one request at a time, no checks).
 */
const SLAB_CEILING_SERVER = `
const { createServer } = require('node:http');
const { Socket } = require('node:net');
${CEILING_SLAB}
const server = createServer();
server.removeAllListeners('connection');
server.on('connection', (accepted) => {
  const handle = accepted._handle;
  accepted._handle = null;
  accepted.destroy();
  const head = Buffer.alloc(80 * 1024);
  let filled = 0, received = 0, left = -1;
  const answer = () => { socket.write('HTTP/1.1 200 OK\\r\\ncontent-length: ' + String(received).length + '\\r\\n\\r\\n' + received); left = -1; filled = 0; };
  const socket = new Socket({ handle, onread: {
    buffer: () => (left > 0 ? slab.subarray(received, received + left) : head.subarray(filled)),
    callback: (bytes, buffer) => {
      if (buffer.buffer === slab.buffer) { received += bytes; left -= bytes; }
      else {
        filled += bytes;
        const end = head.subarray(0, filled).indexOf('\\r\\n\\r\\n');
        if (end < 0) return true;
        const length = Number(/content-length: *(\\d+)/i.exec(head.toString('latin1', 0, end))[1]);
        if (slab.length < length) slab = new Uint8Array(new SharedArrayBuffer(length));
        received = Math.min(filled - end - 4, length);
        copyInto(slab, 0, head.subarray(end + 4, end + 4 + received));
        left = length - received;
      }
      if (left === 0) answer();
      return true;
    },
  } });
  socket.resume();
});
${CEILING_LISTEN}`;

/** Spawn a server and wait for its 'listening on http://host:port' or 'listening on unix:path' line. */
async function startChild(args: string[], dir: string | null): Promise<Server> {
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const target = await new Promise<Target>((resolve, reject) => {
    let text = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      const match = /listening on (?:http:\/\/([^\s:]+):(\d+)|unix:(\S+))/.exec(text);
      if (match) resolve(match[3] !== undefined ? { socketPath: match[3] } : { host: match[1], port: Number(match[2]) });
    });
    child.once('exit', (code) => reject(new Error(`server exited with ${code}: ${text}`)));
  });
  return { child, target, dir };
}

/** VmHWM (the peak resident set) or VmRSS (the resident set now) of a process, in MiB. */
function rssMiB(pid: number, field: 'VmHWM' | 'VmRSS'): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = new RegExp(`${field}:\\s+(\\d+) kB`).exec(status);
  return match ? Number(match[1]) / 1024 : NaN;
}

/** Dirty epoch `e` (1-based) of a stream whose distinct records are `records[1..]`: replayed in turn past the last, renumbered. */
function dirtyRecord(records: Buffer[], e: number): Buffer {
  if (e < records.length) return records[e];
  const record = records[1 + ((e - 1) % (records.length - 1))];
  record.writeUInt32LE(e, 4);
  return record;
}

/** One JSON request to the service (stream creation, stats): node:http, so that it takes either transport. */
function requestJson<T>(agent: Agent, target: Target, method: string, path: string, body?: unknown): Promise<T> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const headers = payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) };
  return new Promise((resolve, reject) => {
    const req = request({ agent, ...target, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString();
        if (res.statusCode === undefined || res.statusCode >= 300) reject(new Error(`${method} ${path} answered ${res.statusCode}: ${text}`));
        else resolve(JSON.parse(text) as T);
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

/** POST one epoch and read every frame byte; resolves with the latency in ms and the bytes received. */
function postEpoch(agent: Agent, target: Target, path: string, body: Buffer): Promise<{ ms: number; bytes: number }> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const req = request(
      { agent, ...target, method: 'POST', path, headers: { 'content-type': EPOCH_CONTENT_TYPE, 'content-length': body.length } },
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
  const distinct = Math.min(config.epochs, config.distinct ?? config.epochs);
  const streamsEpochs = Array.from({ length: config.streams }, (_, s) => makeEpochs(1000 + s, Math.min(epochPages, IMAGE_PAGES), distinct));
  const server = await startServer(config);
  const serverPid = (): number => server.child.pid as number;
  let rssTenthMiB = NaN;
  const { target } = server;
  const agent = new Agent({ keepAlive: true, maxSockets: config.streams * 2 });
  const stats = (id: string): Promise<Record<string, number>> => requestJson(agent, target, 'GET', `/v1/streams/${id}/stats`);
  try {
    const streams = await Promise.all(
      streamsEpochs.map(() => requestJson<{ id: string }>(agent, target, 'POST', '/v1/streams', { workers: config.workers })),
    );
    // Epoch 0 fills the caches; it is the image transfer, not a checkpoint.
    await Promise.all(streams.map((s, i) => postEpoch(agent, target, `/v1/streams/${s.id}/epochs`, streamsEpochs[i][0])));
    const before = await Promise.all(streams.map((s) => stats(s.id)));
    const latencies: number[] = [];
    let bytesOut = 0;
    const started = process.hrtime.bigint();
    await Promise.all(
      streams.map(async (s, i) => {
        for (let e = 1; e <= config.epochs; e++) {
          const { ms, bytes } = await postEpoch(agent, target, `/v1/streams/${s.id}/epochs`, dirtyRecord(streamsEpochs[i], e));
          latencies.push(ms);
          bytesOut += bytes;
          if (i === 0 && e === Math.ceil(config.epochs / 10)) rssTenthMiB = rssMiB(serverPid(), 'VmRSS');
        }
      }),
    );
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const after = await Promise.all(streams.map((s) => stats(s.id)));
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
      peakRssMiB: rssMiB(serverPid(), 'VmHWM'),
      rssTenthMiB,
      rssEndMiB: rssMiB(serverPid(), 'VmRSS'),
      cacheHitRate: lookups === 0 ? 0 : hits / lookups,
      wireRatio: bytesOut / dirtyBytes,
    };
  } finally {
    agent.destroy();
    await stopServer(server);
  }
}

/** How the bare transfer server reads a body: node:http 'data' events copied into a slab, or straight into it. */
export const CEILING_READS = ['http', 'slab'] as const;
export type CeilingRead = (typeof CEILING_READS)[number];

export interface CeilingResult {
  transport: Transport;
  read: CeilingRead;
  epochMiB: number;
  epochs: number;
  throughputGBps: number;
  p50Ms: number;
}

/** POST the same dirty epochs to a bare transfer server (CEILING_SERVER or SLAB_CEILING_SERVER), one stream, back to back. */
export async function runHttpCeiling(epochMiB: number, epochs: number, transport: Transport = 'tcp', read: CeilingRead = 'http'): Promise<CeilingResult> {
  const epochPages = Math.min(Math.round((epochMiB * MIB) / PAGE_SIZE), IMAGE_PAGES);
  const records = makeEpochs(1000, epochPages, epochs).slice(1);
  const listen = listenArgs(transport);
  const script = read === 'http' ? CEILING_SERVER : SLAB_CEILING_SERVER;
  const server = await startChild(['-e', script, ...(listen.socketPath === null ? [] : [listen.socketPath])], listen.dir);
  const { target } = server;
  const agent = new Agent({ keepAlive: true });
  try {
    await postEpoch(agent, target, '/', records[0]); // warm up the connection
    const latencies: number[] = [];
    let bytes = 0;
    const started = process.hrtime.bigint();
    for (const record of records) {
      latencies.push((await postEpoch(agent, target, '/', record)).ms);
      bytes += epochPages * PAGE_SIZE;
    }
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    return { transport, read, epochMiB, epochs, throughputGBps: bytes / seconds / 1e9, p50Ms: percentile([...latencies].sort((a, b) => a - b), 50) };
  } finally {
    agent.destroy();
    await stopServer(server);
  }
}

export function formatCeiling(results: CeilingResult[]): string {
  return [
    '| transport | body read | epoch MiB | epochs | GB/s of pages | p50 ms |',
    '|---|---|---|---|---|---|',
    ...results.map((r) => `| ${r.transport} | ${r.read === 'http' ? 'node:http' : 'into the slab'} | ${r.epochMiB} | ${r.epochs} | ${r.throughputGBps.toFixed(3)} | ${r.p50Ms.toFixed(2)} |`),
  ].join('\n');
}

export function formatLoad(results: LoadResult[]): string {
  const lines = [
    '| transport | fast path | workers | streams | epoch MiB | epochs | GB/s dirty | p50 ms | p99 ms | max ms | peak RSS MiB | RSS at 1/10, end MiB | hit rate | wire ratio |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of results) {
    lines.push(
      `| ${r.transport} | ${r.fastPath === false ? 'off' : 'on'} | ${r.workers} | ${r.streams} | ${r.epochMiB} | ${r.epochs * r.streams} | ${r.throughputGBps.toFixed(3)} | ${r.latencyMs.p50.toFixed(2)} | ${r.latencyMs.p99.toFixed(2)} | ${r.latencyMs.max.toFixed(2)} | ${r.peakRssMiB.toFixed(0)} | ${r.rssTenthMiB.toFixed(0)}, ${r.rssEndMiB.toFixed(0)} | ${r.cacheHitRate.toFixed(3)} | ${r.wireRatio.toFixed(4)} |`,
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
      distinct: { type: 'string' },
      transport: { type: 'string', default: 'tcp' },
      'fast-path': { type: 'string', default: 'on' },
      ceiling: { type: 'boolean' },
      'node-flags': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    console.log('Usage: node dist/bench/load.js [--workers 1,2] [--sizes 1,8,32] [--streams 1] [--epochs 10] [--distinct K] [--transport tcp,unix] [--fast-path on,off] [--ceiling]');
    console.log('  --fast-path on,off   the service with its epoch fast path (on, the default), without it (off), or both');
    console.log('  --ceiling   also measure the transfer ceiling (a bare server: node:http, and reading straight into a slab) for each transport and size');
    console.log('  --distinct K   make only K distinct dirty epochs and replay them in turn, renumbered (long runs without K x epoch size of client memory)');
    console.log(`  --node-flags F   the service's Node flags, comma-separated, or none (default: ${SERVICE_NODE_FLAGS.join(',')}, as npm start)`);
    return;
  }
  const transports = values.transport.split(',').map((t) => t.trim());
  for (const t of transports) {
    if (!(TRANSPORTS as readonly string[]).includes(t)) throw new Error(`--transport: unknown ${t}; known: ${TRANSPORTS.join(', ')}`);
  }
  const fastPaths = values['fast-path'].split(',').map((text) => {
    if (text.trim() !== 'on' && text.trim() !== 'off') throw new Error(`--fast-path: '${text}' is not on or off`);
    return text.trim() === 'on';
  });
  const epochs = Number(values.epochs);
  const distinct = values.distinct === undefined ? undefined : Number(values.distinct);
  if (distinct !== undefined && !(Number.isInteger(distinct) && distinct >= 1)) throw new Error(`--distinct: ${values.distinct} is not a whole number of epochs, at least 1`);
  const flagsText = values['node-flags'];
  const nodeFlags = flagsText === undefined ? SERVICE_NODE_FLAGS : flagsText === 'none' ? [] : flagsText.split(',').map((f) => f.trim());
  const results: LoadResult[] = [];
  const ceilings: CeilingResult[] = [];
  for (const transport of transports as Transport[]) {
    for (const workers of list(values.workers)) {
      for (const epochMiB of list(values.sizes)) {
        for (const streams of list(values.streams)) {
          for (const fastPath of fastPaths) {
            results.push(await runLoad({ workers, epochMiB, streams, epochs, transport, nodeFlags, distinct, fastPath }));
            process.stderr.write(`done: ${transport}, fast path ${fastPath ? 'on' : 'off'}, ${workers} workers, ${epochMiB} MiB, ${streams} streams\n`);
          }
        }
      }
    }
    if (values.ceiling === true) {
      for (const epochMiB of list(values.sizes)) {
        for (const read of CEILING_READS) ceilings.push(await runHttpCeiling(epochMiB, epochs, transport, read));
      }
    }
  }
  console.log(formatLoad(results));
  if (ceilings.length > 0) console.log('\n' + formatCeiling(ceilings));
}

if (isMain(import.meta.url)) {
  await main();
}
