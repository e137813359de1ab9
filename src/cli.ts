#!/usr/bin/env node
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { buildApp } from './app.js';
import { isMain } from './is-main.js';
import { runReceive } from './receive-cli.js';
import { formatReplay, replay } from './replay.js';
import { DEFAULT_MAX_EPOCH_BYTES, DEFAULT_MAX_STREAMS } from './sender.js';

/** Exit status for a usage or configuration error. */
const EXIT_USAGE = 2;
/** Exit status when a replay's receiver image differs from the trace. */
const EXIT_MISMATCH = 1;

const USAGE = `remus-compress: parallel Remus checkpoint compression service

Usage: remus-compress <command> [options]   (or: npm start -- <command> ...)

Commands:
  serve     run the compression service (the sender) over HTTP
  receive   run the receiver service, or apply frames to a file-backed image
  replay    replay an RMTR trace through a sender and a receiver on loopback

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
  --with-receiver        also serve the receiver routes (/v1/images) in this process
  --log-level LEVEL      fatal|error|warn|info|debug|trace|silent (default info) [REMUS_LOG_LEVEL]
  -h, --help             this help`;

const REPLAY_USAGE = `Usage: remus-compress replay <trace.rmtr> [options]   (or: npm run replay -- <trace.rmtr> ...)

Starts a sender and a receiver on 127.0.0.1, sends every epoch of the trace
through the HTTP API as a controller would, and checks that the receiver's
image equals the trace's final image, page by page. Exits 1 on a mismatch.

Options:
  --workers N          cache partitions and worker threads (default: cores, max 4)
  --cache-bytes N      delta cache budget, bytes or 32MiB (default 32MiB)
  --frame-bytes N      largest frame (default 1MiB, at most 16MiB)
  --json               print one JSON object on stdout and nothing else
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
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    false,
  );
  if (values.help) {
    console.log(SERVE_USAGE);
    return 0;
  }
  const host = setting(values, 'host', 'REMUS_HOST') ?? '127.0.0.1';
  const portText = setting(values, 'port', 'REMUS_PORT');
  const port = portText === undefined ? 7000 : parseCount('port', portText, 0, 65535);
  const workersText = setting(values, 'workers', 'REMUS_WORKERS');
  const maxStreamsText = setting(values, 'max-streams', 'REMUS_MAX_STREAMS');
  const maxEpochText = setting(values, 'max-epoch-bytes', 'REMUS_MAX_EPOCH_BYTES');
  const level = setting(values, 'log-level', 'REMUS_LOG_LEVEL') ?? 'info';
  const app = await buildApp({
    logger: { level },
    sender: {
      workers: workersText === undefined ? undefined : parseCount('workers', workersText, 1, 64),
      maxStreams: maxStreamsText === undefined ? DEFAULT_MAX_STREAMS : parseCount('max-streams', maxStreamsText, 1, 4096),
      maxEpochBytes: maxEpochText === undefined ? DEFAULT_MAX_EPOCH_BYTES : parseSize('max-epoch-bytes', maxEpochText),
    },
    receiver: values['with-receiver'] ? {} : undefined,
  });
  const address = await app.listen({ host, port });
  // Printed whatever the log level: operators and scripts need the address.
  console.error(`remus-compress sender listening on ${address}${isLoopback(host) ? ' (loopback only)' : ''}`);
  const stop = (): void => {
    void app.close().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  return new Promise<number>(() => undefined);
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

async function replayCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      workers: { type: 'string' },
      'cache-bytes': { type: 'string' },
      'frame-bytes': { type: 'string' },
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
  const json = values.json === true;
  const summary = await replay({
    tracePath: positionals[0],
    workers: typeof values.workers === 'string' ? parseCount('workers', values.workers, 1, 64) : undefined,
    cacheBytes: typeof values['cache-bytes'] === 'string' ? parseSize('cache-bytes', values['cache-bytes']) : undefined,
    frameBytes: typeof values['frame-bytes'] === 'string' ? parseSize('frame-bytes', values['frame-bytes']) : undefined,
    onEpoch: json ? undefined : (e) => process.stderr.write(`epoch ${e.epoch}: ${e.pages} pages, ratio ${e.ratio.toFixed(4)}\n`),
  });
  console.log(json ? JSON.stringify(summary) : formatReplay(summary));
  return summary.imageEqual ? 0 : EXIT_MISMATCH;
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
