import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import swagger from '@fastify/swagger';
import { installBearerAuth } from './auth.js';
import { healthRoutes } from './routes/health.js';
import { metricsRoutes } from './routes/metrics.js';
import { ServiceMetrics } from './metrics.js';
import { Sender } from './sender.js';
import { streamRoutes, type StreamRoutesOptions } from './routes/streams.js';
import { imageRoutes, type ImageRoutesOptions } from './routes/images.js';

export interface AppOptions {
  /** Serve the sender (compression) routes under /v1/streams; omit to leave them out. */
  sender?: StreamRoutesOptions;
  /** Serve the receiver routes under /v1/images; omit to leave them out. */
  receiver?: ImageRoutesOptions;
  logger?: FastifyServerOptions['logger'];
  /** Require `Authorization: Bearer <authToken>` on every route but /health (401 UNAUTHORIZED otherwise). */
  authToken?: string;
}

/**
 * Build the HTTP service. Each route group is a fastify plugin registered with
 * its own options, so one process can be a sender, a receiver or both.
 */
export async function buildApp(options: AppOptions): Promise<FastifyInstance> {
  const app = Fastify({
    logger: options.logger ?? false,
    // JSON bodies are small (configuration); binary bodies bypass this limit
    // through their own parsers, which enforce their own.
    bodyLimit: 1024 * 1024,
    // An unknown field is a client error to report, not something to drop
    // silently (ajv's default in fastify removes it).
    ajv: { customOptions: { removeAdditional: false } },
    schemaErrorFormatter: (errors, dataVar) =>
      new Error(
        errors
          .map((e) => {
            const extra = (e.params as { additionalProperty?: string }).additionalProperty;
            return `${dataVar}${e.instancePath} ${e.message ?? 'is invalid'}${extra === undefined ? '' : ` ('${extra}')`}`;
          })
          .join('; '),
      ),
  });
  // First, so that it covers every route registered below.
  if (options.authToken !== undefined) installBearerAuth(app, options.authToken);
  await app.register(swagger, {
    openapi: {
      info: { title: 'remus-compress', version: '1', description: 'Parallel Remus checkpoint compression: sender and receiver' },
    },
  });
  await app.register(healthRoutes);
  // The app owns the Sender (unless given one), so that the metrics can read
  // it as well as the stream routes serve it.
  let sender: Sender | undefined;
  if (options.sender) {
    const given = options.sender.sender;
    const owned = given ?? new Sender(options.sender);
    if (given === undefined) app.addHook('onClose', async () => owned.close());
    sender = owned;
  }
  const metrics = new ServiceMetrics({ sender });
  await app.register(metricsRoutes, { metrics });
  if (options.sender) {
    await app.register(streamRoutes, { ...options.sender, sender, metrics, fastPath: options.sender.fastPath ?? true, authToken: options.authToken });
  }
  if (options.receiver) await app.register(imageRoutes, options.receiver);
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  return app;
}
