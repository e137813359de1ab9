import { EPOCH_CONTENT_TYPE, FRAMES_CONTENT_TYPE } from './content-types.js';
import type { EpochSummary } from './stream.js';
import type { CodecName } from './wire.js';
import type { CachePolicyName } from '../workers/cache-policy.js';

/**
 * A small typed client for controllers written in TypeScript, over Node's
 * built-in fetch: nobody should have to hand-build a request.
 */

/** An error answer of the service: the HTTP status and the service's stable code. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;

  constructor(status: number, code: string, message: string) {
    super(`${status} ${code}: ${message}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export interface StreamConfigRequest {
  pageSize?: number;
  cacheBytes?: number;
  workers?: number;
  frameBytes?: number;
  pfnLimit?: number;
  maxEpochBytes?: number;
  /** Page encoding: 'remus-zstd' (default, frame codec 3), 'remus' (frame codec 1) or 'xbzrle' (QEMU's XBZRLE, frame codec 2). */
  codec?: CodecName;
  /** Cache eviction: 'tinylfu' (default) or 'lru' (the seed's). */
  cachePolicy?: CachePolicyName;
}

/** What the sender reports of an epoch it completed. */
export type EpochInfo = EpochSummary;

export interface StreamInfo {
  id: string;
  config: Required<StreamConfigRequest>;
  nextEpoch: number;
  busy: boolean;
  resyncPending: boolean;
  stats: Record<string, number>;
  lastEpoch: EpochInfo | null;
}

export interface ImageInfo {
  id: string;
  pageSize: number;
  committedEpoch: number | null;
  stagingEpoch?: number | null;
  pages: number;
}

/** The receiver's proof of what it holds (docs/FORMAT.md "Image digest"). */
export interface ImageDigest {
  committedEpoch: number | null;
  pages: number;
  algorithm: string;
  /** Hex. */
  digest: string;
}

export interface FramesResult {
  committedEpoch: number | null;
  stagingEpoch: number | null;
  framesApplied: number;
  epochsCommitted: number;
  aborted?: boolean;
}

async function check(response: Response): Promise<Response> {
  if (response.ok) return response;
  const text = await response.text();
  let code = 'HTTP_ERROR';
  let message = text;
  try {
    const body = JSON.parse(text) as { code?: string; message?: string };
    code = body.code ?? code;
    message = body.message ?? message;
  } catch {
    // not JSON: keep the raw text as the message
  }
  throw new ApiError(response.status, code, message);
}

async function json<T>(response: Promise<Response>): Promise<T> {
  return (await (await check(await response)).json()) as T;
}

function jsonRequest(method: string, body?: unknown): RequestInit {
  return body === undefined
    ? { method }
    : { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
}

/** The sender (compression) side. */
export class SenderClient {
  constructor(readonly baseUrl: string) {}

  createStream(config: StreamConfigRequest = {}): Promise<StreamInfo> {
    return json(fetch(`${this.baseUrl}/v1/streams`, jsonRequest('POST', config)));
  }

  getStream(id: string): Promise<StreamInfo> {
    return json(fetch(`${this.baseUrl}/v1/streams/${id}`));
  }

  stats(id: string): Promise<Record<string, number>> {
    return json(fetch(`${this.baseUrl}/v1/streams/${id}/stats`));
  }

  reset(id: string): Promise<StreamInfo> {
    return json(fetch(`${this.baseUrl}/v1/streams/${id}/reset`, { method: 'POST' }));
  }

  abortEpoch(id: string, epoch: number): Promise<{ aborted: string; nextEpoch: number }> {
    return json(fetch(`${this.baseUrl}/v1/streams/${id}/epochs/${epoch}/abort`, { method: 'POST' }));
  }

  async deleteStream(id: string): Promise<void> {
    await check(await fetch(`${this.baseUrl}/v1/streams/${id}`, { method: 'DELETE' }));
  }

  /**
   * Submit an epoch (an RMTR epoch record) and get its frames as a byte
   * stream, to be forwarded to the receiver as they arrive.
   */
  async sendEpoch(id: string, record: Uint8Array, signal?: AbortSignal): Promise<ReadableStream<Uint8Array>> {
    const response = await check(
      await fetch(`${this.baseUrl}/v1/streams/${id}/epochs`, {
        method: 'POST',
        headers: { 'content-type': EPOCH_CONTENT_TYPE },
        body: record,
        signal,
      }),
    );
    if (response.body === null) throw new ApiError(response.status, 'EMPTY_RESPONSE', 'the epoch answer had no body');
    return response.body;
  }

  /** Submit an epoch and collect all its frames in one buffer. */
  async sendEpochCollect(id: string, record: Uint8Array): Promise<Buffer> {
    const frames = await this.sendEpoch(id, record);
    return Buffer.from(await new Response(frames).arrayBuffer());
  }
}

/** The receiver side. */
export class ReceiverClient {
  constructor(readonly baseUrl: string) {}

  createImage(options: { pageSize?: number; file?: string } = {}): Promise<ImageInfo> {
    return json(fetch(`${this.baseUrl}/v1/images`, jsonRequest('POST', options)));
  }

  getImage(id: string): Promise<ImageInfo> {
    return json(fetch(`${this.baseUrl}/v1/images/${id}`));
  }

  /** Post frames: a whole buffer, or a stream (e.g. the sender's answer, forwarded as it arrives). */
  postFrames(id: string, frames: Uint8Array | ReadableStream<Uint8Array>): Promise<FramesResult> {
    const init: RequestInit & { duplex?: 'half' } = {
      method: 'POST',
      headers: { 'content-type': FRAMES_CONTENT_TYPE },
      body: frames,
      duplex: 'half',
    };
    return json(fetch(`${this.baseUrl}/v1/images/${id}/frames`, init));
  }

  digest(id: string): Promise<ImageDigest> {
    return json(fetch(`${this.baseUrl}/v1/images/${id}/digest`));
  }

  /** A page's bytes, or null when the image does not hold it. */
  async getPage(id: string, pfn: number): Promise<Buffer | null> {
    const response = await fetch(`${this.baseUrl}/v1/images/${id}/pages/${pfn}`);
    if (response.status === 404) {
      const body = (await response.json()) as { code?: string };
      if (body.code === 'IMAGE_PAGE_NOT_FOUND') return null;
      throw new ApiError(404, body.code ?? 'HTTP_ERROR', 'not found');
    }
    return Buffer.from(await (await check(response)).arrayBuffer());
  }

  async deleteImage(id: string): Promise<void> {
    await check(await fetch(`${this.baseUrl}/v1/images/${id}`, { method: 'DELETE' }));
  }
}
