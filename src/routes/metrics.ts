import type { FastifyPluginAsync } from 'fastify';
import type { ServiceMetrics } from '../metrics.js';

export interface MetricsRoutesOptions {
  metrics: ServiceMetrics;
}

/** GET /metrics: Prometheus text format, collected at scrape time (src/metrics.ts lists the series). */
export const metricsRoutes: FastifyPluginAsync<MetricsRoutesOptions> = async (app, options) => {
  const { metrics } = options;
  app.get(
    '/metrics',
    {
      schema: {
        summary: 'Prometheus metrics: per stream (label stream) and totals, workers, process',
        produces: ['text/plain'],
        response: { 200: { type: 'string' } },
      },
      // A scrape every few seconds would drown the log at info.
      logLevel: 'warn',
    },
    async (_request, reply) => {
      const text = await metrics.render();
      return reply.type(metrics.contentType).send(text);
    },
  );
};
