import { AuthConfigError, checkListenAddress, isLoopbackHost, readBearerToken } from './auth.js';
import { createReadStream } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import { FrameError, ServiceError } from './errors.js';
import { FrameSplitter } from './frames.js';
import { DEFAULT_MAX_EPOCH_BYTES, DEFAULT_RECEIVER_KERNEL, FileImage, MAX_RECEIVER_EPOCH_BYTES, Receiver, RECEIVER_KERNELS, isReceiverKernel, type ReceiverKernel } from './receiver.js';
import { FRAME_HEADER_BYTES, MAX_FRAME_BYTES, MAX_PAGE_SHIFT, pageShiftOf } from './wire.js';

const DEFAULT_PAGE_SIZE = 4096;
const DEFAULT_HOST = '127.0.0.1';
const DEFAULT_PORT = 7001;
const MAX_PORT = 65535;
const EXIT_OK = 0;
const EXIT_REFUSED = 1;
const EXIT_USAGE = 2;
/** An epoch bound must hold at least one page of any size an image may have. */
const MIN_EPOCH_BYTES = 2 ** MAX_PAGE_SHIFT;

export const RECEIVE_USAGE = `Usage:
  receive --image FILE [--page-size N] [options] [FRAMES_FILE ...]
      Apply frame streams (docs/FORMAT.md) to the file-backed image FILE
      (FILE holds the pages, FILE.index the pfn index and committed epoch).
      Reads the FRAMES_FILEs in order, or stdin when none is given. An
      existing image is resumed at its committed epoch. Prints one line per
      committed epoch and a summary; exits 1 on the first refused frame.
  receive --listen [--host H] [--port P] [--image-dir DIR] [options]
      Serve the receiver over HTTP (POST /v1/images, ... ; GET /openapi.json).
      File images may be created only inside DIR; without it, memory only.

Options:
  --image FILE             image file (frame-file mode; required there)
  --page-size N            bytes per page, a power of two in 512..65536
                           (default ${DEFAULT_PAGE_SIZE}; must match an existing image)
  --listen                 run the HTTP receiver instead
  --host H                 listen address (default ${DEFAULT_HOST})
  --port P                 listen port (default ${DEFAULT_PORT})
  --image-dir DIR          directory for file images (default: none, memory only)
  --allow-remote           allow a --host that is not a loopback address (needs a token)
  --token-file PATH        require "Authorization: Bearer <token>" on every route
                           but /health (token: the file's first line, or REMUS_TOKEN)
  --max-frame-bytes N      largest frame accepted (default ${MAX_FRAME_BYTES})
  --max-epoch-bytes N      largest epoch staged, in page bytes (default ${DEFAULT_MAX_EPOCH_BYTES},
                           at most ${MAX_RECEIVER_EPOCH_BYTES}: the staged epoch and scratch
                           live in one 4 GiB wasm32 memory per image)
  --kernel wasm|js         record decoders: wasm (default, the WebAssembly SIMD kernel)
                           or js (portable TypeScript); same images, same refusals
  --help                   show this help

Crash consistency of file images: an epoch is staged in memory and written
to the image only once verified, data before index, index before the epoch
number. A crash between commits loses nothing committed, but a crash in the
middle of a commit can leave a torn image (pages of the new epoch under the
old epoch number): the sender must then resync the image.
`;

export interface ReceiveIo {
  stdout: Writable;
  stderr: Writable;
  stdin: Readable;
}

class UsageError extends Error {}

function integerOption(value: string | undefined, name: string, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (!/^[0-9]+$/.test(value)) throw new UsageError(`--${name} must be a whole number, got ${JSON.stringify(value)}`);
  const n = Number(value);
  if (n < min || n > max) throw new UsageError(`--${name} must be in ${min}..${max}, got ${n}`);
  return n;
}

/** `receive` subcommand; returns the exit code (0 ok, 1 a frame or image refused, 2 usage). */
export async function runReceive(argv: string[], io: ReceiveIo = process): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        image: { type: 'string' },
        'page-size': { type: 'string' },
        listen: { type: 'boolean' },
        host: { type: 'string' },
        port: { type: 'string' },
        'image-dir': { type: 'string' },
        'allow-remote': { type: 'boolean' },
        'token-file': { type: 'string' },
        'max-frame-bytes': { type: 'string' },
        'max-epoch-bytes': { type: 'string' },
        kernel: { type: 'string' },
        help: { type: 'boolean' },
      },
    });
  } catch (err) {
    io.stderr.write(`receive: ${(err as Error).message}\n\n${RECEIVE_USAGE}`);
    return EXIT_USAGE;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    io.stdout.write(RECEIVE_USAGE);
    return EXIT_OK;
  }
  try {
    const maxFrameBytes = integerOption(values['max-frame-bytes'], 'max-frame-bytes', MAX_FRAME_BYTES, FRAME_HEADER_BYTES + 1, MAX_FRAME_BYTES);
    const maxEpochBytes = integerOption(values['max-epoch-bytes'], 'max-epoch-bytes', DEFAULT_MAX_EPOCH_BYTES, MIN_EPOCH_BYTES, MAX_RECEIVER_EPOCH_BYTES);
    const kernel = values.kernel ?? DEFAULT_RECEIVER_KERNEL;
    if (!isReceiverKernel(kernel)) throw new UsageError(`--kernel: '${kernel}' is not one of ${RECEIVER_KERNELS.join(', ')}`);
    if (values.listen) {
      if (values.image !== undefined) throw new UsageError('--image is for frame files; with --listen, images are created over HTTP (see --image-dir)');
      if (values['page-size'] !== undefined) throw new UsageError('--page-size is for frame files; with --listen, each image states its own');
      if (positionals.length > 0) throw new UsageError(`--listen takes no frame files (got ${positionals[0]})`);
      const port = integerOption(values.port, 'port', DEFAULT_PORT, 0, MAX_PORT);
      const host = values.host ?? DEFAULT_HOST;
      let token: string | undefined;
      try {
        token = readBearerToken(values['token-file']);
        checkListenAddress(host, values['allow-remote'] === true, token);
      } catch (err) {
        if (err instanceof AuthConfigError) throw new UsageError(err.message);
        throw err;
      }
      return await listen(io, host, port, values['image-dir'], maxFrameBytes, maxEpochBytes, kernel, token);
    }
    for (const name of ['host', 'port', 'image-dir', 'allow-remote', 'token-file'] as const) {
      if (values[name] !== undefined) throw new UsageError(`--${name} needs --listen`);
    }
    if (values.image === undefined) throw new UsageError('--image FILE is required (or --listen)');
    const pageSize = integerOption(values['page-size'], 'page-size', DEFAULT_PAGE_SIZE, 1, Number.MAX_SAFE_INTEGER);
    if (pageShiftOf(pageSize) < 0) throw new UsageError(`--page-size must be a power of two in 512..65536, got ${pageSize}`);
    return await receiveFiles(io, values.image, pageSize, positionals, maxFrameBytes, maxEpochBytes, kernel);
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`receive: ${err.message}\n\n${RECEIVE_USAGE}`);
      return EXIT_USAGE;
    }
    throw err;
  }
}

async function receiveFiles(
  io: ReceiveIo,
  imagePath: string,
  pageSize: number,
  files: string[],
  maxFrameBytes: number,
  maxEpochBytes: number,
  kernel: ReceiverKernel,
): Promise<number> {
  let image: FileImage;
  try {
    image = FileImage.open(imagePath, pageSize);
  } catch (err) {
    if (err instanceof ServiceError) {
      io.stderr.write(`receive: ${err.code}: ${err.message}\n`);
      return EXIT_REFUSED;
    }
    throw err;
  }
  const receiver = new Receiver({ pageSize, image, maxFrameBytes, maxEpochBytes, kernel });
  try {
    if (receiver.committedEpoch !== null) {
      io.stdout.write(`resuming ${imagePath}: committed epoch ${receiver.committedEpoch}, ${receiver.pageCount} pages\n`);
    }
    let frames = 0;
    let epochs = 0;
    const sources: { name: string; open: () => Readable }[] =
      files.length > 0 ? files.map((f) => ({ name: f, open: () => createReadStream(f) })) : [{ name: 'stdin', open: () => io.stdin }];
    for (const source of sources) {
      const splitter = new FrameSplitter(maxFrameBytes);
      let offset = 0;
      try {
        for await (const chunk of source.open()) {
          for (const frame of splitter.push(chunk as Buffer)) {
            const result = receiver.applyFrame(frame);
            frames++;
            offset += frame.length;
            if (result.committed) {
              epochs++;
              io.stdout.write(`epoch ${result.epoch} committed: ${receiver.pageCount} pages in the image\n`);
            } else if (result.abort !== undefined) {
              io.stdout.write(`epoch ${result.epoch} aborted by the sender: ${result.abort.senderCode}: ${result.abort.senderMessage}\n`);
            }
          }
        }
        splitter.end();
      } catch (err) {
        if (!(err instanceof FrameError)) throw err;
        io.stderr.write(`receive: ${source.name}: frame at byte ${offset}: ${err.code}: ${err.message}\n`);
        io.stderr.write(summaryLine(imagePath, receiver, frames, epochs));
        return EXIT_REFUSED;
      }
    }
    io.stdout.write(summaryLine(imagePath, receiver, frames, epochs));
    return EXIT_OK;
  } finally {
    receiver.close();
  }
}

function summaryLine(imagePath: string, receiver: Receiver, frames: number, epochs: number): string {
  return (
    `${imagePath}: committed epoch ${receiver.committedEpoch ?? 'none'}, ${receiver.pageCount} pages, ` +
    `blake3 ${receiver.imageDigest().toString('hex')}; ${frames} frames applied, ${epochs} epochs committed\n`
  );
}

async function listen(
  io: ReceiveIo,
  host: string,
  port: number,
  imageDir: string | undefined,
  maxFrameBytes: number,
  maxEpochBytes: number,
  kernel: ReceiverKernel,
  authToken: string | undefined,
): Promise<number> {
  // Loaded here so that frame-file mode does not load the HTTP stack.
  const { buildApp } = await import('./app.js');
  const app = await buildApp({ receiver: { imageDir, maxFrameBytes, maxEpochBytes, kernel }, authToken });
  const address = await app.listen({ host, port });
  const where = `${isLoopbackHost(host) ? 'loopback only' : 'REMOTE'}, ${authToken === undefined ? 'no token' : 'bearer token required'}`;
  io.stdout.write(`receiver listening on ${address} (${where})${imageDir === undefined ? ' (memory images only)' : ` (file images in ${imageDir})`}\n`);
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  await app.close();
  return EXIT_OK;
}
