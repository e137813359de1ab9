#!/usr/bin/env -S node --max-semi-space-size=1 --expose-gc --optimize-for-size
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { buildApp } from './app.js';
import { AuthConfigError, checkListenAddress, isLoopbackHost, readBearerToken } from './auth.js';
import { isMain } from './is-main.js';
import { runCapture } from './capture-cli.js';
import { formatInspect, inspectFile, reportHasErrors } from './inspect.js';
import { ProgressBar } from './progress.js';
import { runReceive } from './receive-cli.js';
import { formatReplay, replay } from './replay.js';
import { CODEC_NAMES, isCodecName } from './wire.js';
import { CACHE_POLICIES, isCachePolicyName } from '../workers/cache-policy.js';
import {
  DEFAULT_EPOCHS_PER_WORKER, DEFAULT_KERNEL, DEFAULT_MAX_EPOCH_BYTES, DEFAULT_MAX_STREAMS, DEFAULT_MEMORY_BUDGET_BYTES, isKernelChoice, KERNEL_CHOICES,
} from './sender.js';

/** Exit status for a usage or configuration error. */
const EXIT_USAGE = 2;
/** Exit status when a replay's receiver image differs from the trace. */
const EXIT_MISMATCH = 1;

const USAGE = `remus-compress: parallel Remus checkpoint compression service

Usage: remus-compress <command> [options]
       (from a checkout: node dist/src/cli.js <command> ...; npm start -- [serve options])

Commands:
  serve     run the compression service (the sender) over HTTP
  receive   run the receiver service, or apply frames to a file-backed image
  replay    replay an RMTR trace through a sender and a receiver on loopback
  capture   checkpoint a live Linux process into a trace, or through a sender and receiver
  inspect   show what is in a trace (.rmtr) or a frame stream file, for people

Run 'remus-compress <command> --help' for a command's options.`;

const SERVE_USAGE = `Usage: remus-compress serve [options]

Runs the sender: POST epochs to /v1/streams/:id/epochs, get frames back.
API description: GET /openapi.json.

Options (environment variable in brackets):
  --host ADDR            address to listen on (default 127.0.0.1)      [REMUS_HOST]
  --port N               TCP port (default 7000)                       [REMUS_PORT]
  --workers N            encoding worker threads (default: cores, max 4) [REMUS_WORKERS]
  --max-streams N        streams open at once (default ${DEFAULT_MAX_STREAMS})            [REMUS_MAX_STREAMS]
  --max-epoch-bytes N    largest epoch body, bytes or 64MiB/1GiB (default 1GiB) [REMUS_MAX_EPOCH_BYTES]
  --memory-budget N      all streams' caches and slabs together (default 4GiB)     [REMUS_MEMORY_BUDGET]
  --max-concurrent-epochs N  epochs in flight, all streams (default ${DEFAULT_EPOCHS_PER_WORKER} x workers) [REMUS_MAX_CONCURRENT_EPOCHS]
  --kernel wasm|js       page codecs in the workers (and the receiver's decoders with
                         --with-receiver): wasm (default, the WebAssembly SIMD kernel)
                         or js (portable TypeScript); same bytes [REMUS_KERNEL]
  --with-receiver        also serve the receiver routes (/v1/images) in this process [REMUS_WITH_RECEIVER=1]
  --no-fast-path         read epoch bodies through node:http, not straight from the
                         socket into the stream's slab (docs/ARCHITECTURE.md) [REMUS_NO_FAST_PATH=1]
  --log-level LEVEL      fatal|error|warn|info|debug|trace|silent (default info) [REMUS_LOG_LEVEL]
  -h, --help             this help

Security:
  --allow-remote         allow a --host that is not a loopback address (needs a token)
  --token-file PATH      require "Authorization: Bearer <token>" on every route but
                         /health; the token is the file's first line      [REMUS_TOKEN holds the token itself]
  --socket PATH          serve on a Unix socket (mode 0600) instead of TCP [REMUS_SOCKET]`;

const REPLAY_USAGE = `Usage: remus-compress replay <trace.rmtr> [options]   (or: npm run replay -- <trace.rmtr> ...)

Starts a sender and a receiver on 127.0.0.1, sends every epoch of the trace
through the HTTP API as a controller would, and checks that the receiver's
image equals the trace's final image, page by page. Exits 1 on a mismatch.

Options:
  --workers N          cache partitions and worker threads (default: cores, max 4)
  --cache-bytes N      delta cache budget, bytes or 32MiB (default 32MiB)
  --frame-bytes N      largest frame (default 1MiB, at most 16MiB)
  --codec NAME         page encoding: remus-zstd (default: the seed's records in
                       zstd chunks), remus (the seed's) or xbzrle (QEMU's XBZRLE)
  --cache-policy NAME  cache eviction: tinylfu (default, W-TinyLFU) or lru (the seed's)
  --json               print one JSON object on stdout and nothing else
  -h, --help           this help

Progress: a bar on stderr when stderr is a terminal, else one line per epoch
(nothing in --json mode). The summary table goes to stdout.`;

const INSPECT_USAGE = `Usage: remus-compress inspect <file> [options]

Tells from the file's magic whether it is an RMTR trace ("RMTR",
../shared/TRACE.md) or a frame stream ("RMFR", docs/FORMAT.md: what the
sender answers to an epoch, e.g. saved with curl -o) and prints what is in it:
  trace:   per epoch, its pages, raw pages, zero pages and pfn range
  frames:  per frame, its offset, epoch, sequence, flags, records, payload
           bytes and whether its CRC is right, and its records by type
           (ZERO, FULL, EMPTY = unchanged page, delta = word runs)
Page contents are never printed. Exits 1 when a frame is damaged (bad CRC,
unreadable records, a stream that cannot be split) or the file is neither.

Options:
  --json               print one JSON object on stdout instead of the table
  -h, --help           this help`;

class UsageError extends Error {}

/** "4096", "64KiB", "32MiB", "1GiB" (also K/M/G) -> bytes. */
export function parseSize(option: string, text: string): number {
  const match = /^(\d+)\s*(k|kib|m|mib|g|gib)?$/i.exec(text.trim());
  if (match === null) throw new UsageError(`--${option}: '${text}' is not a size (use bytes, or a number with KiB, MiB or GiB)`);
  const scale: Record<string, number> = { k: 2 ** 10, kib: 2 ** 10, m: 2 ** 20, mib: 2 ** 20, g: 2 ** 30, gib: 2 ** 30 };
  return Number(match[1]) * (match[2] === undefined ? 1 : scale[match[2].toLowerCase()]);
}

function parseCount(option: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n < min || n > max) {
    throw new UsageError(`--${option}: '${text}' is not a whole number from ${min} to ${max}`);
  }
  return n;
}

function parse(argv: string[], options: ParseArgsConfig['options'], allowPositionals: boolean): ReturnType<typeof parseArgs> {
  try {
    return parseArgs({ args: argv, options, allowPositionals, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** A boolean environment variable: 1/true/yes or 0/false/no (or unset). */
function envFlag(option: string, env: string): boolean {
  const text = process.env[env];
  if (text === undefined || text === '') return false;
  if (/^(1|true|yes)$/i.test(text)) return true;
  if (/^(0|false|no)$/i.test(text)) return false;
  throw new UsageError(`${env} (--${option}): '${text}' is not 1/true/yes or 0/false/no`);
}

/** Flag, else environment variable, else undefined. */
function setting(values: Record<string, unknown>, name: string, env: string): string | undefined {
  const flag = values[name];
  if (typeof flag === 'string') return flag;
  return process.env[env];
}

async function serve(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      host: { type: 'string' },
      port: { type: 'string' },
      workers: { type: 'string' },
      'max-streams': { type: 'string' },
      'max-epoch-bytes': { type: 'string' },
      'with-receiver': { type: 'boolean' },
      'no-fast-path': { type: 'boolean' },
      'log-level': { type: 'string' },
      'memory-budget': { type: 'string' },
      'max-concurrent-epochs': { type: 'string' },
      kernel: { type: 'string' },
      'allow-remote': { type: 'boolean' },
      'token-file': { type: 'string' },
      socket: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    false,
  );
  if (values.help) {
    console.log(SERVE_USAGE);
    return 0;
  }
  const socketPath = setting(values, 'socket', 'REMUS_SOCKET');
  const token = readToken(values['token-file'] as string | undefined);
  const budgetText = setting(values, 'memory-budget', 'REMUS_MEMORY_BUDGET');
  const concurrentText = setting(values, 'max-concurrent-epochs', 'REMUS_MAX_CONCURRENT_EPOCHS');
  const host = setting(values, 'host', 'REMUS_HOST') ?? '127.0.0.1';
  const portText = setting(values, 'port', 'REMUS_PORT');
  const port = portText === undefined ? 7000 : parseCount('port', portText, 0, 65535);
  const workersText = setting(values, 'workers', 'REMUS_WORKERS');
  const maxStreamsText = setting(values, 'max-streams', 'REMUS_MAX_STREAMS');
  const maxEpochText = setting(values, 'max-epoch-bytes', 'REMUS_MAX_EPOCH_BYTES');
  const kernel = setting(values, 'kernel', 'REMUS_KERNEL') ?? DEFAULT_KERNEL;
  if (!isKernelChoice(kernel)) throw new UsageError(`--kernel: '${kernel}' is not one of ${KERNEL_CHOICES.join(', ')}`);
  const level = setting(values, 'log-level', 'REMUS_LOG_LEVEL') ?? 'info';
  if (!LOG_LEVELS.includes(level)) throw new UsageError(`--log-level: '${level}' is not one of ${LOG_LEVELS.join(', ')}`);
  const withReceiver = values['with-receiver'] === true || envFlag('with-receiver', 'REMUS_WITH_RECEIVER');
  const noFastPath = values['no-fast-path'] === true || envFlag('no-fast-path', 'REMUS_NO_FAST_PATH');
  if (socketPath === undefined) {
    try {
      checkListenAddress(host, values['allow-remote'] === true, token);
    } catch (err) {
      if (err instanceof AuthConfigError) throw new UsageError(err.message);
      throw err;
    }
  }
  const app = await buildApp({
    logger: { level },
    authToken: token,
    sender: {
      memoryBudgetBytes: budgetText === undefined ? DEFAULT_MEMORY_BUDGET_BYTES : parseSize('memory-budget', budgetText),
      maxConcurrentEpochs: concurrentText === undefined ? undefined : parseCount('max-concurrent-epochs', concurrentText, 1, 65536),
      workers: workersText === undefined ? undefined : parseCount('workers', workersText, 1, 64),
      maxStreams: maxStreamsText === undefined ? DEFAULT_MAX_STREAMS : parseCount('max-streams', maxStreamsText, 1, 4096),
      maxEpochBytes: maxEpochText === undefined ? DEFAULT_MAX_EPOCH_BYTES : parseSize('max-epoch-bytes', maxEpochText),
      kernel,
      fastPath: !noFastPath,
    },
    receiver: withReceiver ? { kernel } : undefined,
  });
  const auth = token === undefined ? 'no token' : 'bearer token required';
  if (socketPath !== undefined) {
    removeStaleSocket(socketPath);
    // Created 0600 from the start (umask), not chmod-ed after a window in
    // which another user could connect.
    const umask = process.umask(0o177);
    try {
      await app.listen({ path: socketPath });
    } finally {
      process.umask(umask);
    }
    chmodSync(socketPath, 0o600);
    console.error(`remus-compress sender listening on unix:${socketPath} (mode 0600, ${auth})`);
  } else {
    const address = await app.listen({ host, port });
    // Printed whatever the log level: operators and scripts need the address.
    console.error(`remus-compress sender listening on ${address} (${isLoopbackHost(host) ? 'loopback only' : 'REMOTE'}, ${auth})`);
  }
  const stop = (): void => {
    void app.close().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return new Promise<number>(() => undefined);
}

/** The bearer token (--token-file, else REMUS_TOKEN), checked; a bad setting is a usage error. */
function readToken(file: string | undefined): string | undefined {
  try {
    return readBearerToken(file);
  } catch (err) {
    if (err instanceof AuthConfigError) throw new UsageError(err.message);
    throw err;
  }
}

/** A socket file left by a previous run is removed; anything else at that path is an error. */
function removeStaleSocket(path: string): void {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return; // nothing there
  }
  if (!isSocket) throw new UsageError(`--socket: ${path} exists and is not a socket`);
  unlinkSync(path);
}


async function replayCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      workers: { type: 'string' },
      'cache-bytes': { type: 'string' },
      'frame-bytes': { type: 'string' },
      codec: { type: 'string' },
      'cache-policy': { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    true,
  );
  if (values.help) {
    console.log(REPLAY_USAGE);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('replay takes exactly one trace file');
  const codec = values.codec;
  if (codec !== undefined && !isCodecName(codec)) {
    throw new UsageError(`--codec: expected ${CODEC_NAMES.join(', ')}, got ${JSON.stringify(codec)}`);
  }
  const cachePolicy = values['cache-policy'];
  if (cachePolicy !== undefined && !isCachePolicyName(cachePolicy)) {
    throw new UsageError(`--cache-policy: expected ${CACHE_POLICIES.join(', ')}, got ${JSON.stringify(cachePolicy)}`);
  }
  const json = values.json === true;
  // A bar redrawn in place when a person watches; a line per epoch in logs.
  const bar = !json && process.stderr.isTTY ? new ProgressBar(process.stderr) : undefined;
  const summary = await replay({
    tracePath: positionals[0],
    workers: typeof values.workers === 'string' ? parseCount('workers', values.workers, 1, 64) : undefined,
    cacheBytes: typeof values['cache-bytes'] === 'string' ? parseSize('cache-bytes', values['cache-bytes']) : undefined,
    frameBytes: typeof values['frame-bytes'] === 'string' ? parseSize('frame-bytes', values['frame-bytes']) : undefined,
    codec,
    cachePolicy,
    onEpoch: json || bar !== undefined ? undefined : (e) => process.stderr.write(`epoch ${e.epoch}: ${e.pages} pages, ratio ${e.ratio.toFixed(4)}\n`),
    onProgress: bar === undefined ? undefined : (done, total, e) => bar.update(done / total, `epoch ${e.epoch}: ${e.pages} pages, ratio ${e.ratio.toFixed(4)}`),
  }).finally(() => bar?.finish());
  console.log(json ? JSON.stringify(summary) : formatReplay(summary));
  return summary.imageEqual ? 0 : EXIT_MISMATCH;
}

async function inspectCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, { json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, true);
  if (values.help) {
    console.log(INSPECT_USAGE);
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError('inspect takes exactly one file (a trace or a frame stream)');
  const report = await inspectFile(positionals[0]);
  console.log(values.json === true ? JSON.stringify(report) : formatInspect(report));
  return reportHasErrors(report) ? 1 : 0;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'serve':
        return await serve(rest);
      case 'receive':
        return await runReceive(rest);
      case 'replay':
        return await replayCommand(rest);
      case 'capture':
        return await runCapture(rest, 'remus-compress capture');
      case 'inspect':
        return await inspectCommand(rest);
      case undefined:
      case 'help':
      case '-h':
      case '--help':
        console.log(USAGE);
        return command === undefined ? EXIT_USAGE : 0;
      default:
        throw new UsageError(`unknown command '${command}'`);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`remus-compress: ${err.message}\n\n${USAGE}`);
      return EXIT_USAGE;
    }
    const e = err as Error & { code?: string };
    console.error(`remus-compress: ${e.code ? `${e.code}: ` : ''}${e.message}`);
    return 1;
  }
}

// Run only as a program, so tests can import the helpers above.
if (isMain(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
