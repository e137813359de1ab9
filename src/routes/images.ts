import { randomUUID } from 'node:crypto';
import { lstatSync } from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import type { FastifyPluginAsync } from 'fastify';
import { FRAMES_CONTENT_TYPE } from '../content-types.js';
import { DIGEST_ALGORITHM } from '../digest.js';
import { FrameError, ServiceError } from '../errors.js';
import { FrameSplitter } from '../frames.js';
import {
  DEFAULT_MAX_EPOCH_BYTES,
  DEFAULT_RECEIVER_KERNEL,
  FileImage,
  INDEX_SUFFIX,
  MAX_RECEIVER_EPOCH_BYTES,
  MemoryImage,
  Receiver,
  RECEIVER_KERNELS,
  isReceiverKernel,
  type AbortReport,
  type ImageStore,
  type ReceiverKernel,
} from '../receiver.js';
import { FRAME_HEADER_BYTES, MAX_FRAME_BYTES, MAX_PAGE_SHIFT, PFN_LIMIT, pageShiftOf } from '../wire.js';
import { errorSchema } from './schemas.js';

export interface ImageRoutesOptions {
  /** FileImage files are created only inside this directory; without it, memory images only. */
  imageDir?: string;
  maxFrameBytes?: number;
  maxEpochBytes?: number;
  /** Images open at once (default DEFAULT_MAX_IMAGES). */
  maxImages?: number;
  /** The receivers' decoders: the wasm kernel (default) or the portable TypeScript codecs (ReceiverOptions.kernel). */
  kernel?: ReceiverKernel;
}

export const DEFAULT_MAX_IMAGES = 64;
const DEFAULT_PAGE_SIZE = 4096;
/** A file name: no separators, not hidden, so it can only name a file directly inside imageDir. */
const FILE_NAME_PATTERN = '^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$';
const FILE_NAME_RE = new RegExp(FILE_NAME_PATTERN);
/** Decimal pfns below 2^48 have at most 15 digits. */
const PFN_PATTERN = '^[0-9]{1,15}$';
/** The epoch bound must hold one page of the largest size an image may have. */
const MIN_EPOCH_BYTES = 2 ** MAX_PAGE_SHIFT;

interface ImageSession {
  id: string;
  receiver: Receiver;
  /** Absolute path of a FileImage, null for a memory image. */
  file: string | null;
  /** A frames body is being applied; a second one would interleave frames. */
  busy: boolean;
  /** Deleted while a body was being applied: the rest of it must not touch the closed image. */
  closed: boolean;
}

interface FramesSummary {
  committedEpoch: number | null;
  stagingEpoch: number | null;
  framesApplied: number;
  epochsCommitted: number;
  aborted: boolean;
  abort?: AbortReport & { epoch: number };
}

const nullableEpoch = { type: ['integer', 'null'] } as const;
const idParams = {
  type: 'object',
  properties: { id: { type: 'string' } },
  required: ['id'],
} as const;
const imageInfoSchema = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    pageSize: { type: 'integer' },
    committedEpoch: nullableEpoch,
    stagingEpoch: nullableEpoch,
    pages: { type: 'integer' },
  },
  required: ['id', 'pageSize', 'committedEpoch', 'pages'],
} as const;
const abortSchema = {
  type: 'object',
  properties: {
    epoch: { type: 'integer' },
    code: { type: 'string' },
    senderCode: { type: 'string' },
    senderMessage: { type: 'string' },
    message: { type: 'string' },
  },
} as const;

export const imageRoutes: FastifyPluginAsync<ImageRoutesOptions> = async (app, options) => {
  const imageDir = options.imageDir === undefined ? undefined : path.resolve(options.imageDir);
  const maxFrameBytes = options.maxFrameBytes ?? MAX_FRAME_BYTES;
  const maxEpochBytes = options.maxEpochBytes ?? DEFAULT_MAX_EPOCH_BYTES;
  const maxImages = options.maxImages ?? DEFAULT_MAX_IMAGES;
  const kernel = options.kernel ?? DEFAULT_RECEIVER_KERNEL;
  // Checked here, so that a bad setting stops the service at start rather
  // than failing every image creation.
  if (!Number.isInteger(maxFrameBytes) || maxFrameBytes <= FRAME_HEADER_BYTES || maxFrameBytes > MAX_FRAME_BYTES) {
    throw new RangeError(`imageRoutes: maxFrameBytes ${maxFrameBytes} outside (${FRAME_HEADER_BYTES}, ${MAX_FRAME_BYTES}]`);
  }
  if (!Number.isInteger(maxEpochBytes) || maxEpochBytes < MIN_EPOCH_BYTES) {
    throw new RangeError(`imageRoutes: maxEpochBytes ${maxEpochBytes} is below one ${MIN_EPOCH_BYTES}-byte page`);
  }
  if (maxEpochBytes > MAX_RECEIVER_EPOCH_BYTES) {
    throw new RangeError(`imageRoutes: maxEpochBytes ${maxEpochBytes} is over ${MAX_RECEIVER_EPOCH_BYTES}: a receiver stages an epoch in its 4 GiB wasm32 memory`);
  }
  if (!isReceiverKernel(kernel)) throw new RangeError(`imageRoutes: kernel ${JSON.stringify(kernel)} is not one of ${RECEIVER_KERNELS.join(', ')}`);
  const sessions = new Map<string, ImageSession>();

  // The body stays a stream: frames are applied as they arrive, so a body of
  // any length needs only one frame's worth of memory (and bodyLimit, which
  // applies to buffered bodies, does not cut it).
  app.addContentTypeParser(FRAMES_CONTENT_TYPE, (_request, payload, done) => done(null, payload));

  app.addHook('onClose', async () => {
    for (const session of sessions.values()) closeSession(session);
    sessions.clear();
  });

  function closeSession(session: ImageSession): void {
    session.closed = true;
    session.receiver.close();
  }

  function sessionOf(id: string): ImageSession {
    const session = sessions.get(id);
    if (session === undefined) throw new ServiceError('IMAGE_NOT_FOUND', `no image ${id}`, 404);
    return session;
  }

  function info(session: ImageSession) {
    const r = session.receiver;
    return { id: session.id, pageSize: r.pageSize, committedEpoch: r.committedEpoch, stagingEpoch: r.stagingEpoch, pages: r.pageCount };
  }

  function openStore(pageSize: number, file: string | undefined): { store: ImageStore; filePath: string | null } {
    if (file === undefined) return { store: new MemoryImage(pageSize), filePath: null };
    if (imageDir === undefined) {
      throw new ServiceError('IMAGE_FILE_NOT_ALLOWED', 'file images are disabled: the receiver was started without an image directory');
    }
    if (!FILE_NAME_RE.test(file)) {
      throw new ServiceError('IMAGE_FILE_NOT_ALLOWED', `file ${JSON.stringify(file)} is not a plain file name (letters, digits, ".", "_", "-"; no path)`);
    }
    // Such a name would be another image's index file.
    if (file.endsWith(INDEX_SUFFIX)) {
      throw new ServiceError('IMAGE_FILE_NOT_ALLOWED', `file ${JSON.stringify(file)} ends with "${INDEX_SUFFIX}", which is reserved for image indexes`);
    }
    const filePath = path.join(imageDir, file);
    // A symbolic link in the directory could point anywhere: never followed.
    for (const p of [filePath, filePath + INDEX_SUFFIX]) {
      if (isSymlink(p)) throw new ServiceError('IMAGE_FILE_NOT_ALLOWED', `file ${JSON.stringify(path.basename(p))} is a symbolic link; image files must be plain files inside the image directory`);
    }
    for (const s of sessions.values()) {
      if (s.file === filePath) throw new ServiceError('IMAGE_FILE_IN_USE', `file ${file} is open as image ${s.id}`, 409);
    }
    return { store: FileImage.open(filePath, pageSize), filePath };
  }

  app.post<{ Body: { pageSize?: number; file?: string } }>(
    '/v1/images',
    {
      schema: {
        summary: 'Create a receiver image (in memory, or a file in the image directory, resumed if it exists)',
        body: {
          type: 'object',
          properties: {
            pageSize: { type: 'integer', minimum: 512, maximum: 65536, default: DEFAULT_PAGE_SIZE },
            file: { type: 'string', minLength: 1 },
          },
          additionalProperties: false,
        },
        response: {
          201: {
            type: 'object',
            properties: { id: { type: 'string' }, pageSize: { type: 'integer' }, committedEpoch: nullableEpoch, pages: { type: 'integer' } },
            required: ['id', 'pageSize', 'committedEpoch', 'pages'],
          },
          400: errorSchema,
          409: errorSchema,
        },
      },
    },
    async (request, reply) => {
      const pageSize = request.body?.pageSize ?? DEFAULT_PAGE_SIZE;
      if (pageShiftOf(pageSize) < 0) throw new ServiceError('IMAGE_BAD_PAGE_SIZE', `pageSize ${pageSize} is not a power of two in 512..65536`);
      if (sessions.size >= maxImages) throw new ServiceError('IMAGE_LIMIT_REACHED', `${maxImages} images are open; delete one first`, 409);
      const { store, filePath } = openStore(pageSize, request.body?.file);
      const receiver = new Receiver({ pageSize, image: store, maxFrameBytes, maxEpochBytes, kernel });
      const session: ImageSession = { id: randomUUID(), receiver, file: filePath, busy: false, closed: false };
      sessions.set(session.id, session);
      reply.code(201);
      return { id: session.id, pageSize, committedEpoch: receiver.committedEpoch, pages: receiver.pageCount };
    },
  );

  app.post<{ Params: { id: string } }>(
    '/v1/images/:id/frames',
    {
      schema: {
        summary: 'Apply frames (docs/FORMAT.md) as they arrive; a body may end between frames of an epoch',
        params: idParams,
        // An empty schema: the body is a stream, which only the splitter reads.
        body: { content: { [FRAMES_CONTENT_TYPE]: { schema: { description: 'one or more whole frames, concatenated' } } } },
        response: {
          200: {
            type: 'object',
            properties: {
              committedEpoch: nullableEpoch,
              stagingEpoch: nullableEpoch,
              framesApplied: { type: 'integer' },
              epochsCommitted: { type: 'integer' },
              aborted: { type: 'boolean' },
              abort: abortSchema,
            },
            required: ['committedEpoch', 'stagingEpoch', 'framesApplied', 'epochsCommitted', 'aborted'],
          },
          400: errorSchema,
          404: errorSchema,
          409: errorSchema,
          415: errorSchema,
        },
      },
    },
    async (request) => {
      const session = sessionOf(request.params.id);
      if (!(request.body instanceof Readable)) {
        throw new ServiceError('IMAGE_BAD_CONTENT_TYPE', `frames must be sent as ${FRAMES_CONTENT_TYPE}`, 415);
      }
      if (session.busy) throw new ServiceError('IMAGE_BUSY', `image ${session.id} is applying another frames body`, 409);
      session.busy = true;
      try {
        return await applyBody(session, request.body, maxFrameBytes);
      } finally {
        session.busy = false;
      }
    },
  );

  app.get<{ Params: { id: string } }>(
    '/v1/images/:id',
    { schema: { summary: 'Image state', params: idParams, response: { 200: imageInfoSchema, 404: errorSchema } } },
    async (request) => info(sessionOf(request.params.id)),
  );

  app.get<{ Params: { id: string } }>(
    '/v1/images/:id/digest',
    {
      schema: {
        summary: 'BLAKE3 digest of the committed image (docs/FORMAT.md "Image digest")',
        params: idParams,
        response: {
          200: {
            type: 'object',
            properties: { committedEpoch: nullableEpoch, pages: { type: 'integer' }, algorithm: { type: 'string' }, digest: { type: 'string' } },
            required: ['committedEpoch', 'pages', 'algorithm', 'digest'],
          },
          404: errorSchema,
        },
      },
    },
    async (request) => {
      const { receiver } = sessionOf(request.params.id);
      return { committedEpoch: receiver.committedEpoch, pages: receiver.pageCount, algorithm: DIGEST_ALGORITHM, digest: receiver.imageDigest().toString('hex') };
    },
  );

  app.get<{ Params: { id: string; pfn: string } }>(
    '/v1/images/:id/pages/:pfn',
    {
      schema: {
        summary: 'One committed page, raw bytes',
        params: {
          type: 'object',
          properties: { id: { type: 'string' }, pfn: { type: 'string', pattern: PFN_PATTERN } },
          required: ['id', 'pfn'],
        },
        produces: ['application/octet-stream'],
        response: {
          200: { type: 'string', format: 'binary' },
          400: errorSchema,
          404: errorSchema,
        },
      },
    },
    async (request, reply) => {
      const { receiver } = sessionOf(request.params.id);
      const pfn = Number(request.params.pfn);
      if (pfn >= PFN_LIMIT) throw new ServiceError('IMAGE_BAD_PFN', `pfn ${request.params.pfn} is not below 2^48`);
      const page = Buffer.alloc(receiver.pageSize);
      if (!receiver.readPage(pfn, page)) throw new ServiceError('IMAGE_PAGE_NOT_FOUND', `image ${request.params.id} holds no page ${pfn}`, 404);
      reply.type('application/octet-stream');
      return page;
    },
  );

  app.delete<{ Params: { id: string } }>(
    '/v1/images/:id',
    {
      schema: {
        summary: 'Close and forget an image (a file image keeps its files, and can be opened again)',
        params: idParams,
        response: { 204: { type: 'null' }, 404: errorSchema },
      },
    },
    async (request, reply) => {
      const session = sessionOf(request.params.id);
      sessions.delete(session.id);
      closeSession(session);
      reply.code(204);
    },
  );
};

/**
 * Feed the body through a splitter into the receiver. On a refused frame the
 * rest of the body is read and dropped rather than the stream destroyed, so
 * the error response still reaches the client on the same connection.
 */
function applyBody(session: ImageSession, body: Readable, maxFrameBytes: number): Promise<FramesSummary> {
  const splitter = new FrameSplitter(maxFrameBytes);
  const summary: FramesSummary = { committedEpoch: null, stagingEpoch: null, framesApplied: 0, epochsCommitted: 0, aborted: false };
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (err: unknown): void => {
      settled = true;
      reject(withProgress(err, summary.framesApplied));
    };
    body.on('data', (chunk: Buffer) => {
      if (settled) return;
      try {
        for (const frame of splitter.push(chunk)) {
          if (session.closed) throw new ServiceError('IMAGE_NOT_FOUND', `image ${session.id} was deleted while frames were applied`, 404);
          const result = session.receiver.applyFrame(frame);
          summary.framesApplied++;
          if (result.committed) summary.epochsCommitted++;
          if (result.abort !== undefined) {
            summary.aborted = true;
            summary.abort = { ...result.abort, epoch: result.epoch };
          }
        }
      } catch (err) {
        fail(err);
      }
    });
    body.on('end', () => {
      if (settled) return;
      try {
        splitter.end();
      } catch (err) {
        fail(err);
        return;
      }
      settled = true;
      summary.committedEpoch = session.receiver.committedEpoch;
      summary.stagingEpoch = session.receiver.stagingEpoch;
      resolve(summary);
    });
    body.on('error', (err) => {
      if (!settled) fail(err);
    });
    // A client that goes away mid-body may end the stream with neither 'end'
    // nor 'error'; without this the image would stay busy for good.
    body.on('close', () => {
      if (!settled) fail(new ServiceError('IMAGE_BODY_CUT', 'the request body was cut off before its end', 400));
    });
  });
}

function isSymlink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false; // not there yet: it will be created as a plain file
  }
}

/** A frame refusal names how far the body got: the frames before it stay applied. */
function withProgress(err: unknown, framesApplied: number): unknown {
  if (!(err instanceof FrameError)) return err;
  return new FrameError(
    err.code,
    `${err.message} (frame ${framesApplied + 1} of this body; the ${framesApplied} frame${framesApplied === 1 ? '' : 's'} before it ${framesApplied === 1 ? 'was' : 'were'} applied)`,
    err.statusCode,
  );
}
