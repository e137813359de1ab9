import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { IncomingMessage } from 'node:http';
import { Sender, type SenderOptions, type StreamRequest } from '../sender.js';
import type { FrameSink } from '../merge.js';
import type { StreamConfig } from '../stream.js';
import { ServiceError } from '../errors.js';
import { EPOCH_CONTENT_TYPE, FRAMES_CONTENT_TYPE } from '../content-types.js';
import type { ServiceMetrics } from '../metrics.js';
import { errorSchema } from './schemas.js';
import { clientDisconnected, exchangeEpoch, PendingFrames } from '../epoch-exchange.js';
import { installEpochFastPath } from '../fast-path.js';
import { bearerTokenCheck } from '../auth.js';

export interface StreamRoutesOptions extends SenderOptions {
  /** Serve this sender rather than a new one; its owner closes it. */
  sender?: Sender;
  /** Metrics to feed (epoch latency, streams created); buildApp passes its own. */
  metrics?: ServiceMetrics;
  /**
   * Serve epoch requests on the fast path (src/fast-path.ts): bodies read
   * from the socket straight into the stream's slab. It answers them before
   * any fastify hook runs, so it is off unless the app knows its hooks:
   * buildApp turns it on and passes its bearer token as `authToken`.
   */
  fastPath?: boolean;
  /** The bearer token the app requires (auth.ts), for the fast path to check. */
  authToken?: string;
}


const configSchema = {
  type: 'object',
  properties: {
    pageSize: { type: 'integer', description: 'Bytes per page, a power of two from 512 to 65536' },
    cacheBytes: { type: 'integer', description: 'Delta cache budget in bytes, split over the partitions' },
    workers: { type: 'integer', description: 'Cache partitions, each encoded by one worker thread' },
    frameBytes: { type: 'integer', description: 'Largest frame, header included (at most 16 MiB)' },
    pfnLimit: { type: 'integer', description: 'pfns must be below this' },
    maxEpochBytes: { type: 'integer', description: 'Largest epoch body accepted' },
    cachePolicy: { type: 'string', description: "Which cached page gives up its slot: 'tinylfu' (the default: W-TinyLFU, frequency-aware admission) or 'lru' (the seed's)" },
    codec: { type: 'string', description: "Page encoding: 'remus-zstd' (the default: the seed's records in zstd chunks, frame codec 3), 'remus' (the seed's, frame codec 1) or 'xbzrle' (QEMU's XBZRLE, frame codec 2)" },
  },
} as const;

const statsSchema = {
  type: 'object',
  additionalProperties: { type: 'number' },
} as const;

const streamSchema = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    config: configSchema,
    nextEpoch: { type: 'integer' },
    busy: { type: 'boolean' },
    resyncPending: { type: 'boolean' },
    stats: statsSchema,
    lastEpoch: {
      type: ['object', 'null'],
      properties: {
        epoch: { type: 'integer' },
        pages: { type: 'integer' },
        bytesIn: { type: 'integer' },
        bytesOut: { type: 'integer' },
        frames: { type: 'integer' },
        resync: { type: 'boolean' },
        encodeWallNs: { type: 'integer' },
        wallNs: { type: 'integer' },
      },
    },
  },
  required: ['id', 'config', 'nextEpoch', 'busy', 'stats'],
} as const;

const idParams = {
  type: 'object',
  properties: { id: { type: 'string', maxLength: 64 } },
  required: ['id'],
} as const;

/**
 * The sender: streams, epochs in, frames out. The epoch body is binary (an
 * RMTR epoch record) and is read by hand into the stream's input slab, never
 * buffered whole by fastify.
 */
export const streamRoutes: FastifyPluginAsync<StreamRoutesOptions> = async (app, options) => {
  const sender = options.sender ?? new Sender(options);
  if (options.sender === undefined) app.addHook('onClose', async () => sender.close());

  if (options.fastPath === true) {
    const fastPath = installEpochFastPath(app.server, {
      sender,
      log: app.log,
      metrics: options.metrics,
      authorized: options.authToken === undefined ? undefined : bearerTokenCheck(options.authToken),
    });
    if (fastPath === null) app.log.warn('epoch fast path not installed: the server is not a plain node:http server');
    else app.addHook('preClose', async () => fastPath.close());
  }

  // Hand the raw request through: the stream reads it into its slab with
  // every length checked, as the pages arrive.
  app.addContentTypeParser(EPOCH_CONTENT_TYPE, (_request, payload, done) => done(null, payload));

  app.post<{ Body: StreamRequest }>(
    '/v1/streams',
    {
      schema: {
        summary: 'Create a compression stream (one per protected machine)',
        body: { ...configSchema, additionalProperties: false },
        response: { 201: streamSchema, 400: errorSchema, 503: errorSchema },
      },
      // Every field has a default, so no body at all means "all defaults"
      // (the schema would otherwise refuse a missing body as not an object).
      preValidation: async (request) => {
        request.body ??= {};
      },
    },
    async (request, reply) => {
      const stream = sender.create(request.body);
      options.metrics?.track(stream);
      request.log.info({ stream: stream.id, event: 'create', config: publicConfig(stream.config) }, 'stream created');
      return reply.code(201).send({ ...stream.describe(), config: publicConfig(stream.config) });
    },
  );

  app.get('/v1/streams', { schema: { summary: 'List streams', response: { 200: { type: 'array', items: streamSchema } } } }, async () =>
    sender.list().map((s) => ({ ...s.describe(), config: publicConfig(s.config) })),
  );

  app.get<{ Params: { id: string } }>(
    '/v1/streams/:id',
    { schema: { summary: 'A stream: configuration, next epoch and XBZRLE-style counters', params: idParams, response: { 200: streamSchema, 404: errorSchema } } },
    async (request) => {
      const stream = sender.get(request.params.id);
      return { ...stream.describe(), config: publicConfig(stream.config) };
    },
  );

  app.get<{ Params: { id: string } }>(
    '/v1/streams/:id/stats',
    { schema: { summary: "A stream's counters", params: idParams, response: { 200: statsSchema, 404: errorSchema } } },
    async (request) => sender.get(request.params.id).stats,
  );

  app.delete<{ Params: { id: string } }>(
    '/v1/streams/:id',
    { schema: { summary: 'Delete a stream and free its cache', params: idParams, response: { 204: { type: 'null' }, 404: errorSchema } } },
    async (request, reply) => {
      await sender.delete(request.params.id);
      request.log.info({ stream: request.params.id, event: 'delete' }, 'stream deleted');
      return reply.code(204).send();
    },
  );

  app.post<{ Params: { id: string } }>(
    '/v1/streams/:id/reset',
    {
      schema: {
        summary: 'Forget every cached page: the next epoch is a RESYNC epoch that replaces the receiver image',
        params: idParams,
        response: { 200: streamSchema, 404: errorSchema, 409: errorSchema },
      },
    },
    async (request) => {
      const stream = sender.get(request.params.id);
      await stream.reset();
      request.log.info({ stream: stream.id, event: 'reset' }, 'stream reset: the next epoch is a RESYNC epoch');
      return { ...stream.describe(), config: publicConfig(stream.config) };
    },
  );

  app.post<{ Params: { id: string; epoch: number } }>(
    '/v1/streams/:id/epochs/:epoch/abort',
    {
      schema: {
        summary: 'Abort the running epoch, or the last completed one that the receiver did not commit; its pages leave the cache',
        params: {
          type: 'object',
          properties: { id: { type: 'string', maxLength: 64 }, epoch: { type: 'integer', minimum: 0, maximum: 0xffffffff } },
          required: ['id', 'epoch'],
        },
        response: {
          200: { type: 'object', properties: { aborted: { type: 'string' }, nextEpoch: { type: 'integer' } }, required: ['aborted', 'nextEpoch'] },
          404: errorSchema,
          409: errorSchema,
        },
      },
    },
    async (request) => {
      const stream = sender.get(request.params.id);
      const aborted = await stream.abortEpoch(request.params.epoch);
      request.log.info({ stream: stream.id, event: 'abort', epoch: request.params.epoch, aborted, nextEpoch: stream.nextEpoch }, 'epoch aborted by request');
      return { aborted, nextEpoch: stream.nextEpoch };
    },
  );

  app.post<{ Params: { id: string } }>(
    '/v1/streams/:id/epochs',
    {
      schema: {
        summary: 'Submit an epoch (an RMTR epoch record, application/octet-stream); the response streams its frames (application/x-remus-frames)',
        params: idParams,
        response: { 400: errorSchema, 404: errorSchema, 409: errorSchema, 413: errorSchema, 415: errorSchema, 500: errorSchema, 503: errorSchema },
      },
      // Before any body parser runs: fastify's own parsers would otherwise
      // hand the handler a string or a JSON value (or refuse "invalid JSON").
      onRequest: async (request) => {
        const type = request.headers['content-type']?.split(';', 1)[0].trim().toLowerCase();
        if (type !== EPOCH_CONTENT_TYPE) {
          throw new ServiceError(
            'EPOCH_BAD_CONTENT_TYPE',
            `an epoch is sent as ${EPOCH_CONTENT_TYPE} (one RMTR epoch record), not ${type === undefined || type === '' ? 'without a content type' : type}`,
            415,
          );
        }
      },
    },
    async (request, reply) => {
      const stream = sender.get(request.params.id);
      const body = request.body as IncomingMessage;
      const declared = request.headers['content-length'];
      const sink = responseSink(request, reply);
      const cut = new AbortController();
      // A controller that goes away mid-response aborts the epoch, exactly as
      // if it had asked: the receiver cannot have committed it.
      reply.raw.on('close', () => {
        if (!reply.raw.writableFinished) cut.abort(clientDisconnected());
      });
      try {
        // The body reader pauses the request on an error rather than
        // destroying it, so that an error found before the first frame can
        // still be answered as JSON.
        await exchangeEpoch({
          stream,
          body,
          declaredLength: declared === undefined ? null : Number(declared),
          sink,
          signal: cut.signal,
          log: request.log,
          metrics: options.metrics,
        });
      } catch (err) {
        if (reply.sent || reply.raw.headersSent) {
          // The answer ended with an ABORT frame. A client still uploading
          // the rest of a body nobody will read would stall on a kept-alive
          // connection: close it once the answer is out.
          if (!request.raw.complete) reply.raw.once('finish', () => request.raw.socket?.destroy());
          reply.raw.end();
          return reply;
        }
        // The rest of the body is not wanted; do not keep the connection.
        reply.header('connection', 'close');
        throw err;
      }
      reply.raw.end();
      return reply;
    },
  );
};

/**
 * The HTTP response as a frame sink: headers go with the first frame; a
 * frame's slab is released when its write completes, or when the connection
 * closes (PendingFrames).
 */
function responseSink(request: FastifyRequest, reply: FastifyReply): FrameSink {
  const pending = new PendingFrames();
  reply.raw.once('close', () => pending.releaseAll());
  return {
    begin() {
      reply.hijack();
      reply.raw.writeHead(200, { 'content-type': FRAMES_CONTENT_TYPE, 'x-request-id': String(request.id) });
    },
    write(frame, release) {
      if (reply.raw.destroyed) {
        release(new Error('connection closed'));
        return;
      }
      reply.raw.write(frame, pending.hold(release));
    },
  };
}

/** The configuration as the API names it (partitions are "workers" to a client). */
function publicConfig(config: StreamConfig): Record<string, number | string> {
  const { partitions, ...rest } = config;
  return { ...rest, workers: partitions };
}
