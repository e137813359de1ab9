import { STATUS_CODES } from 'node:http';
import type { FastifyBaseLogger } from 'fastify';
import { ServiceError } from './errors.js';
import type { EpochBodySource } from './epoch-body.js';
import type { FrameSink } from './merge.js';
import type { ServiceMetrics } from './metrics.js';
import type { Stream } from './stream.js';

/** One epoch request, whichever transport carries it: the fastify route or the fast path (fast-path.ts). */
export interface EpochExchange {
  stream: Stream;
  body: EpochBodySource;
  /** Content-Length, when the client sent one. */
  declaredLength: number | null;
  sink: FrameSink;
  /** Aborts the epoch (the client went away). */
  signal: AbortSignal;
  log: FastifyBaseLogger;
  metrics?: ServiceMetrics;
}

/**
 * Run the epoch and account for it: the latency metric and the debug line
 * on success, the 'epoch failed' line on failure, the same whichever
 * transport served it. Rejects with the failure; the transport answers it
 * (a JSON error before the first frame; after it the stream has already
 * written an ABORT frame).
 */
export async function exchangeEpoch({ stream, body, declaredLength, sink, signal, log, metrics }: EpochExchange): Promise<void> {
  try {
    const summary = await stream.runEpoch(body, declaredLength, sink, signal);
    metrics?.observeEpoch(stream, summary);
    log.debug(
      { stream: stream.id, epoch: summary.epoch, pages: summary.pages, bytesIn: summary.bytesIn, bytesOut: summary.bytesOut, frames: summary.frames, resync: summary.resync, ms: summary.wallNs / 1e6 },
      'epoch sent',
    );
  } catch (err) {
    const failure = err as { code?: string; message?: string; statusCode?: number };
    log.info(
      { stream: stream.id, event: 'epoch-failed', expectedEpoch: stream.nextEpoch, code: failure.code, statusCode: failure.statusCode, reason: failure.message },
      'epoch failed',
    );
    throw err;
  }
}

/**
 * The frames of an answer written but not yet flushed: each frame's slab is
 * released once, when its write completes, or when the connection closes (a
 * write into a socket that is already gone never calls back, and after
 * 'close' nothing reads the slab any more). Both transports' sinks use it.
 */
export class PendingFrames {
  private readonly pending = new Set<(err?: Error | null) => void>();

  /** The write callback for a frame whose slab `release` gives back. */
  hold(release: (err?: Error | null) => void): (err?: Error | null) => void {
    const once = (err?: Error | null): void => {
      if (!this.pending.delete(once)) return;
      release(err ?? null);
    };
    this.pending.add(once);
    return once;
  }

  /** The connection closed: every slab still held goes back. */
  releaseAll(): void {
    for (const release of [...this.pending]) release(new Error('connection closed'));
  }
}

/** The abort reason when the client goes away before the epoch's answer is out. */
export function clientDisconnected(): ServiceError {
  return new ServiceError('CLIENT_DISCONNECTED', 'the client closed the connection before the epoch was sent', 499);
}

/** An error as fastify's default handler answers it: status, the JSON body, and the error's own headers (Retry-After). */
export function errorAnswer(err: unknown): { statusCode: number; body: string; headers: Record<string, string> } {
  const failure = err as { code?: unknown; message?: unknown; statusCode?: unknown; headers?: Record<string, string> };
  const status = typeof failure.statusCode === 'number' && failure.statusCode >= 400 && failure.statusCode <= 599 ? failure.statusCode : 500;
  const body: Record<string, unknown> = { statusCode: status };
  if (typeof failure.code === 'string') body.code = failure.code;
  body.error = STATUS_CODES[status] ?? 'Error';
  body.message = typeof failure.message === 'string' ? failure.message : String(err);
  return { statusCode: status, body: JSON.stringify(body), headers: failure.headers ?? {} };
}
