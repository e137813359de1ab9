import { createHash } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApp, type AppOptions } from '../src/app.js';
import { hashImage } from '../src/digest.js';
import { epochLayout } from '../src/epoch-record.js';
import { FrameSplitter } from '../src/frames.js';
import { MemoryImage, Receiver } from '../src/receiver.js';
import { generateTrace } from '../src/trace-gen.js';
import { encodeEpochRecord, parseTrace, TraceImage, type TraceEpoch } from '../src/trace.js';
import { MAX_FRAME_BYTES } from '../src/wire.js';

/**
 * The epoch fast path (buildApp({ sender: { fastPath } }), on by default)
 * serves POST /v1/streams/<id>/epochs straight from the socket; everything
 * else goes to node:http and fastify. It must not be visible from outside:
 * every scenario here runs against two apps, one with the fast path on and
 * one with it off, each with its own stream of the same configuration, and
 * the answers are compared: status, JSON error code, the frames byte for
 * byte, whether the connection stays open, x-request-id.
 *
 * Requests are written by hand on raw node:net sockets (so that a test
 * chooses where the bytes are split, what is pipelined, and how a head is
 * malformed) and answers are read by a small strict HTTP/1.1 response
 * parser (status line, headers, Content-Length, chunked or close-delimited
 * bodies, 1xx interim answers). A receiver (src/receiver.ts) applies every
 * epoch's frames and its image is checked against the trace, so that two
 * equally wrong answers cannot pass either.
 *
 * Two differences are deliberate, and their tests say so: a pipelined
 * second epoch of the same stream is served after the first (node:http
 * starts its handler early and answers 409 EPOCH_IN_PROGRESS), and a body
 * cut short by a half-close is refused as EPOCH_TRUNCATED (fastify's is a
 * generic 400).
 */

const PAGE = 4096;
const OCTETS = 'application/octet-stream';
const FRAMES = 'application/x-remus-frames';
/** Batches of 64 pages: a 512-page epoch is encoded in 8 batches while its body arrives. */
const BATCH_BYTES = 64 * PAGE;
/** Sequencing waits (never timing measurements): reaching one is a failure. */
const WAIT_MS = 20_000;

type SenderOptions = NonNullable<AppOptions['sender']>;

// ================================================================ raw HTTP client

interface RawResponse {
  status: number;
  reason: string;
  version: string;
  /** Header lines in order, names lower-cased. */
  headers: [string, string][];
  body: Buffer;
  /** Body framing: 'length' (Content-Length), 'chunked', 'close' (until the connection ended) or 'none' (1xx, 204, 304). */
  framing: 'length' | 'chunked' | 'close' | 'none';
}

class ProtocolError extends Error {}
/** The connection stayed open, but the answer did not come in time. */
class NoAnswer extends Error {}

/**
 * One client connection. Bytes from the server are buffered as they arrive;
 * response() parses the next answer strictly. A connection that the server
 * ends or resets is `ended`; whatever arrived before stays readable.
 */
class RawConn {
  private buf: Buffer = Buffer.alloc(0);
  private ended = false;
  private wakeUp: (() => void) | null = null;
  /** Every byte the server sent, for messages. */
  private received = 0;

  private constructor(
    readonly socket: net.Socket,
    /** The server's port. */
    readonly port: number,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
      this.received += chunk.length;
      this.wake();
    });
    const end = (): void => {
      this.ended = true;
      this.wake();
    };
    socket.on('end', end);
    socket.on('close', end);
    // ECONNRESET, EPIPE: the server closed; what it sent before is kept.
    socket.on('error', end);
  }

  static open(port: number): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      socket.once('connect', () => {
        socket.off('error', reject);
        const conn = new RawConn(socket, port);
        allConns.add(conn);
        resolve(conn);
      });
      socket.once('error', reject);
    });
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Resolves once the bytes are handed to the kernel, or the socket failed (the server may have closed it; the answer tells). */
  write(bytes: Uint8Array | string): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed || !this.socket.writable) {
        resolve();
        return;
      }
      this.socket.write(bytes, () => resolve());
    });
  }

  /** Write `bytes` cut at `cuts` (ascending offsets), waiting delays[i] ms after piece i. */
  async writePieces(bytes: Uint8Array, cuts: readonly number[], delays: readonly number[] = []): Promise<void> {
    const bounds = [0, ...cuts, bytes.length];
    for (let i = 0; i + 1 < bounds.length; i++) {
      if (bounds[i + 1] > bounds[i]) await this.write(bytes.subarray(bounds[i], bounds[i + 1]));
      const delay = delays[i] ?? 0;
      if (delay > 0) await sleep(delay);
    }
  }

  /** Half-close: the client will send nothing more. */
  endWrites(): void {
    this.socket.end();
  }

  destroy(): void {
    this.socket.destroy();
    allConns.delete(this);
  }

  /** Whether the server closes the connection within `ms`. */
  async closedWithin(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.ended && Date.now() < deadline) await this.waitData(deadline - Date.now());
    return this.ended;
  }

  private wake(): void {
    const w = this.wakeUp;
    this.wakeUp = null;
    w?.();
  }

  /** Wait for more bytes or the end, at most `ms`. */
  private waitData(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wakeUp = null;
        resolve();
      }, Math.max(ms, 0));
      this.wakeUp = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private async fill(n: number, deadline: number, what: string): Promise<boolean> {
    while (this.buf.length < n) {
      if (this.ended) return false;
      if (Date.now() > deadline) throw new NoAnswer(`gave up waiting for ${what} (${this.received} bytes received in all)`);
      await this.waitData(deadline - Date.now());
    }
    return true;
  }

  private take(n: number): Buffer {
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** The next CRLF-terminated line (without it), or null when the connection ended first. */
  private async line(deadline: number, what: string, limit = 64 * 1024): Promise<string | null> {
    for (;;) {
      const at = this.buf.indexOf('\r\n');
      if (at >= 0) {
        const text = this.take(at + 2).subarray(0, at).toString('latin1');
        if (text.includes('\n') || text.includes('\r')) throw new ProtocolError(`bare CR or LF in ${what}: ${JSON.stringify(text)}`);
        return text;
      }
      if (this.buf.length > limit) throw new ProtocolError(`${what} longer than ${limit} bytes`);
      if (!(await this.fill(this.buf.length + 1, deadline, what))) return null;
    }
  }

  /**
   * The next answer, parsed strictly. Status 0: the connection ended before
   * any byte of it. An answer cut off after its head throws.
   */
  async response(opts: { headRequest?: boolean; waitMs?: number } = {}): Promise<RawResponse> {
    const deadline = Date.now() + (opts.waitMs ?? WAIT_MS);
    if (!(await this.fill(1, deadline, 'an answer'))) return { status: 0, reason: '', version: '', headers: [], body: Buffer.alloc(0), framing: 'none' };
    const statusLine = await this.line(deadline, 'the status line', 8192);
    if (statusLine === null) throw new ProtocolError('the connection ended inside the status line');
    const m = /^(HTTP\/1\.[01]) ([1-5]\d\d) ([^\r\n]*)$/.exec(statusLine);
    if (m === null) throw new ProtocolError(`malformed status line ${JSON.stringify(statusLine)}`);
    const [, version, statusText, reason] = m;
    const status = Number(statusText);
    const headers: [string, string][] = [];
    for (;;) {
      const text = await this.line(deadline, 'a header line');
      if (text === null) throw new ProtocolError(`the connection ended inside the head of a ${status} answer`);
      if (text === '') break;
      const h = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$/.exec(text);
      if (h === null) throw new ProtocolError(`malformed header line ${JSON.stringify(text)}`);
      headers.push([h[1].toLowerCase(), h[2]]);
    }
    const res: RawResponse = { status, reason, version, headers, body: Buffer.alloc(0), framing: 'none' };
    if ((status >= 100 && status < 200) || status === 204 || status === 304 || opts.headRequest === true) return res;
    const te = headers.filter(([n]) => n === 'transfer-encoding');
    const cl = headers.filter(([n]) => n === 'content-length');
    if (te.length > 0 && cl.length > 0) throw new ProtocolError('an answer with both Transfer-Encoding and Content-Length');
    if (te.length > 0) {
      if (te.length !== 1 || te[0][1].toLowerCase() !== 'chunked') throw new ProtocolError(`unexpected Transfer-Encoding ${JSON.stringify(te)}`);
      res.framing = 'chunked';
      const parts: Buffer[] = [];
      for (;;) {
        const size = await this.line(deadline, 'a chunk size line', 64);
        if (size === null) throw new ProtocolError(`the chunked body of a ${status} answer ends without its last chunk (after ${parts.reduce((n, p) => n + p.length, 0)} bytes)`);
        if (!/^[0-9a-fA-F]{1,8}$/.test(size)) throw new ProtocolError(`malformed chunk size line ${JSON.stringify(size)}`);
        const n = parseInt(size, 16);
        if (n === 0) break;
        if (!(await this.fill(n + 2, deadline, 'a chunk'))) throw new ProtocolError(`the connection ended inside a ${n}-byte chunk`);
        parts.push(Buffer.from(this.take(n)));
        if (this.take(2).toString('latin1') !== '\r\n') throw new ProtocolError('a chunk not followed by CRLF');
      }
      const trailer = await this.line(deadline, 'the end of the chunked body');
      if (trailer !== '') throw new ProtocolError(`unexpected trailer ${JSON.stringify(trailer)}`);
      res.body = Buffer.concat(parts);
      return res;
    }
    if (cl.length > 0) {
      if (cl.length !== 1 || !/^\d+$/.test(cl[0][1])) throw new ProtocolError(`malformed Content-Length ${JSON.stringify(cl)}`);
      const n = Number(cl[0][1]);
      res.framing = 'length';
      if (!(await this.fill(n, deadline, 'a body'))) throw new ProtocolError(`the connection ended inside a ${n}-byte body (${this.buf.length} bytes came)`);
      res.body = Buffer.from(this.take(n));
      return res;
    }
    res.framing = 'close';
    while (!this.ended) {
      if (Date.now() > deadline) throw new Error('gave up waiting for the end of a close-delimited body');
      await this.waitData(deadline - Date.now());
    }
    res.body = Buffer.from(this.take(this.buf.length));
    return res;
  }

  /** Wait until at least `n` bytes of answers are buffered (not yet parsed); false if the connection ended first. */
  async waitBuffered(n: number): Promise<boolean> {
    return this.fill(n, Date.now() + WAIT_MS, `${n} bytes of answer`);
  }

  /** Bytes received but not consumed by response(): anything after the last answer. */
  get leftover(): number {
    return this.buf.length;
  }
}

/** Connections still open at the end are destroyed, so that a failed test cannot keep an app from closing. */
const allConns = new Set<RawConn>();

function header(res: RawResponse, name: string): string | undefined {
  return res.headers.find(([n]) => n === name)?.[1];
}

// ================================================================ requests

interface HeadOptions {
  method?: string;
  target?: string;
  version?: string;
  /** Header lines as written, without CRLF; replaces the default ones. */
  lines?: string[];
}

/** A request head; by default an epoch POST with Host, Content-Type and Content-Length. */
function epochHead(id: string, length: number, extra: string[] = [], opts: HeadOptions = {}): string {
  const lines = opts.lines ?? ['Host: 127.0.0.1', `Content-Type: ${OCTETS}`, `Content-Length: ${length}`];
  return rawHead(`${opts.method ?? 'POST'} ${opts.target ?? `/v1/streams/${id}/epochs`} ${opts.version ?? 'HTTP/1.1'}`, [...lines, ...extra]);
}

function epochRequest(id: string, body: Uint8Array, extra: string[] = []): Buffer {
  return withHead(epochHead(id, body.length, extra), body);
}

/** An epoch POST with exactly these header lines, then `body`. */
function epochWithLines(id: string, lines: string[], body: Uint8Array): Buffer {
  return withHead(epochHead(id, 0, [], { lines }), body);
}

/** A body in chunked transfer coding, cut into pieces of about `piece` bytes. */
function chunked(body: Uint8Array, piece: number): Buffer {
  const parts: Buffer[] = [];
  for (let at = 0; at < body.length; at += piece) {
    const part = body.subarray(at, Math.min(at + piece, body.length));
    parts.push(Buffer.from(`${part.length.toString(16)}\r\n`, 'latin1'), Buffer.from(part), Buffer.from('\r\n', 'latin1'));
  }
  parts.push(Buffer.from('0\r\n\r\n', 'latin1'));
  return Buffer.concat(parts);
}

function chunkedEpochRequest(id: string, body: Uint8Array, piece = 5000): Buffer {
  return epochWithLines(id, ['Host: 127.0.0.1', `Content-Type: ${OCTETS}`, 'Transfer-Encoding: chunked'], chunked(body, piece));
}

function getRequest(path: string, extra: string[] = []): string {
  return `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${extra.map((l) => `${l}\r\n`).join('')}\r\n`;
}

/** The record with another epoch number in its header. */
function renumbered(record: Uint8Array, epoch: number): Buffer {
  const copy = Buffer.from(record);
  copy.writeUInt32LE(epoch, 4);
  return copy;
}

// ================================================================ the two apps

interface Side {
  readonly name: 'fast path on' | 'fast path off';
  readonly fastPath: boolean;
  readonly app: FastifyInstance;
  readonly port: number;
  readonly token: string | undefined;
  /** Epoch POSTs that reached node:http's 'request' event (with the fast path on, fast epochs never do). */
  nodeEpochRequests: number;
  /** Streams created and not deleted yet (a failed scenario's are deleted by onBoth). */
  readonly streams: Set<string>;
}

const sides: Side[] = [];

async function startSide(fastPath: boolean, opts: { authToken?: string; sender?: Partial<SenderOptions> } = {}): Promise<Side> {
  const sender: SenderOptions & { fastPath: boolean } = { workers: 2, batchBytes: BATCH_BYTES, ...opts.sender, fastPath };
  const app = await buildApp({ sender, authToken: opts.authToken });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const address = app.server.address() as net.AddressInfo;
  const side: Side = { name: fastPath ? 'fast path on' : 'fast path off', fastPath, app, port: address.port, token: opts.authToken, nodeEpochRequests: 0, streams: new Set() };
  app.server.on('request', (req: { method?: string; url?: string }) => {
    if (req.method === 'POST' && /\/epochs(\?|$)/.test(req.url ?? '')) side.nodeEpochRequests++;
  });
  sides.push(side);
  return side;
}

async function stopSide(side: Side): Promise<void> {
  for (const conn of [...allConns]) if (conn.port === side.port) conn.destroy();
  const at = sides.indexOf(side);
  if (at >= 0) sides.splice(at, 1);
  await side.app.close();
}

function authHeaders(side: Side): Record<string, string> {
  return side.token === undefined ? {} : { authorization: `Bearer ${side.token}` };
}

interface StreamInfo {
  id: string;
  nextEpoch: number;
  busy: boolean;
  config: Record<string, unknown>;
}

/** A stream of `config` on `side`, a fresh connection to it, and a receiver image to check its frames. */
async function streamConnection(side: Side, config: Record<string, unknown> = SMALL_STREAM): Promise<{ id: string; conn: RawConn; mirror: Mirror }> {
  const id = await createStream(side, config);
  return { id, conn: await RawConn.open(side.port), mirror: new Mirror(side.name) };
}

async function createStream(side: Side, config: Record<string, unknown>): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${side.port}/v1/streams`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...authHeaders(side) },
    body: JSON.stringify(config),
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const json = (await res.json()) as StreamInfo;
  expect(res.status, JSON.stringify(json)).toBe(201);
  side.streams.add(json.id);
  return json.id;
}

async function streamInfo(side: Side, id: string): Promise<StreamInfo> {
  const res = await fetch(`http://127.0.0.1:${side.port}/v1/streams/${id}`, { headers: authHeaders(side), signal: AbortSignal.timeout(WAIT_MS) });
  expect(res.status).toBe(200);
  return (await res.json()) as StreamInfo;
}

/** `record` without the given keys. */
function without<T>(record: Record<string, T>, keys: string[]): Record<string, T> {
  return Object.fromEntries(Object.entries(record).filter(([key]) => !keys.includes(key)));
}

/** The stream's lines of GET /metrics that do not depend on time, its id replaced by ID. */
async function streamMetrics(side: Side, id: string): Promise<string[]> {
  const res = await fetch(`http://127.0.0.1:${side.port}/metrics`, { headers: authHeaders(side), signal: AbortSignal.timeout(WAIT_MS) });
  expect(res.status).toBe(200);
  const wanted = /^remus_stream_(pages_total|bytes_in_total|bytes_out_total|cache_hits_total|cache_misses_total|zero_pages_total|raw_pages_total|unchanged_pages_total|epochs_committed|epochs_aborted_total|epoch_duration_seconds_count)\{/;
  return (await res.text())
    .split('\n')
    .filter((line) => wanted.test(line) && line.includes(`stream="${id}"`))
    .map((line) => line.replace(`stream="${id}"`, 'stream="ID"'))
    .sort();
}

async function api(side: Side, method: string, path: string): Promise<{ status: number; json: Record<string, unknown> | null }> {
  const res = await fetch(`http://127.0.0.1:${side.port}${path}`, { method, headers: authHeaders(side), signal: AbortSignal.timeout(WAIT_MS) });
  const text = await res.text();
  return { status: res.status, json: text === '' ? null : (JSON.parse(text) as Record<string, unknown>) };
}

async function deleteStream(side: Side, id: string): Promise<void> {
  const res = await fetch(`http://127.0.0.1:${side.port}/v1/streams/${id}`, { method: 'DELETE', headers: authHeaders(side), signal: AbortSignal.timeout(WAIT_MS) });
  side.streams.delete(id);
  expect(res.status).toBe(204);
  await res.arrayBuffer();
}

async function waitUntil(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`gave up after ${WAIT_MS} ms waiting until ${what}`);
    await sleep(5);
  }
}

async function waitBusy(side: Side, id: string, busy: boolean): Promise<void> {
  await waitUntil(`stream ${id} on the app with the ${side.name} is ${busy ? 'busy' : 'idle'}`, async () => (await streamInfo(side, id)).busy === busy);
}

async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: not done after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// ================================================================ answers, compared

/** What must be the same on both paths. */
interface Outcome {
  status: number;
  /** JSON error fields (statusCode, code, error), or null for a non-JSON answer. */
  json: { statusCode: unknown; code: unknown; error: unknown } | null;
  /** For frames: length and SHA-256 of the body. */
  frames: string | null;
  contentType: string | null;
  /** A 200 epoch answer is streamed (chunked) and carries x-request-id. */
  streamed?: boolean;
  requestId?: boolean;
  /** Whether the server says Connection: close. */
  connectionClose: boolean;
}

function digestOf(bytes: Uint8Array): string {
  return `${bytes.length} bytes, sha256 ${createHash('sha256').update(bytes).digest('hex').slice(0, 16)}`;
}

function outcome(res: RawResponse): Outcome {
  const type = header(res, 'content-type') ?? null;
  const out: Outcome = {
    status: res.status,
    json: null,
    frames: null,
    contentType: type?.split(';', 1)[0].trim().toLowerCase() ?? null,
    connectionClose: /(^|,)\s*close\s*(,|$)/i.test(header(res, 'connection') ?? ''),
  };
  if (type?.startsWith('application/json') === true && res.status >= 400) {
    const body = JSON.parse(res.body.toString('utf8')) as Record<string, unknown>;
    out.json = { statusCode: body.statusCode, code: body.code, error: body.error };
    expect(typeof body.message, `message of ${res.body.toString('utf8')}`).toBe('string');
  }
  if (out.contentType === FRAMES) {
    out.frames = digestOf(res.body);
    out.streamed = res.framing === 'chunked';
    out.requestId = (header(res, 'x-request-id') ?? '').length > 0;
  }
  return out;
}

/**
 * What became of the connection after an answer: 'closed' when the server
 * closes it (it must, within a few seconds, after Connection: close), else
 * a GET /health on it must be answered ('open'); 'hung' when that GET gets
 * no answer within 5 s on a connection that stays open.
 */
async function connectionAfter(conn: RawConn, res: RawResponse): Promise<'open' | 'closed' | 'hung'> {
  if (conn.isEnded) return 'closed';
  if (/close/i.test(header(res, 'connection') ?? '')) return (await conn.closedWithin(5000)) ? 'closed' : 'open';
  await conn.write(getRequest('/health'));
  let probe: RawResponse;
  try {
    probe = await conn.response({ waitMs: 5000 });
  } catch (err) {
    if (err instanceof NoAnswer) return 'hung';
    throw err;
  }
  if (probe.status === 0) return 'closed';
  expect(probe.status).toBe(200);
  return 'open';
}

/** Byte-for-byte equality of two answers' frames, with a readable message. */
function expectSameBytes(fast: Uint8Array, node: Uint8Array, what: string): void {
  if (Buffer.compare(fast, node) === 0) return;
  let at = 0;
  while (at < fast.length && at < node.length && fast[at] === node[at]) at++;
  expect.fail(`${what}: the fast path sent ${digestOf(fast)}, node:http ${digestOf(node)}; first difference at byte ${at}`);
}

/** Applies each epoch's frames to a receiver, and checks its image against the trace. */
class Mirror {
  private readonly receiver = new Receiver({ pageSize: PAGE, image: new MemoryImage(PAGE) });
  private readonly oracle = new TraceImage(PAGE);

  constructor(private readonly who: string) {
    openMirrors.add(this);
  }

  apply(frames: Uint8Array, epoch: TraceEpoch, n = epoch.epoch): void {
    const splitter = new FrameSplitter(MAX_FRAME_BYTES);
    const pieces = splitter.push(frames);
    splitter.end();
    expect(pieces.length, `${this.who}: epoch ${n} has no frames`).toBeGreaterThan(0);
    let committed = false;
    for (const frame of pieces) {
      const result = this.receiver.applyFrame(frame);
      expect(result.aborted, `${this.who}: epoch ${n} ended with an ABORT frame`).toBe(false);
      committed = result.committed;
    }
    expect(committed, `${this.who}: epoch ${n} not committed by its last frame`).toBe(true);
    expect(this.receiver.committedEpoch).toBe(n);
    this.oracle.apply(epoch);
  }

  /** apply(), then the frames back. */
  applyAnd(frames: Buffer, epoch: TraceEpoch): Buffer {
    this.apply(frames, epoch);
    return frames;
  }

  /** Apply an answer that ends with an ABORT frame: the receiver drops what it staged; returns the sender's code. */
  applyAborted(frames: Uint8Array): string {
    const splitter = new FrameSplitter(MAX_FRAME_BYTES);
    const pieces = splitter.push(frames);
    splitter.end();
    expect(pieces.length).toBeGreaterThan(1);
    let last: ReturnType<Receiver['applyFrame']> | null = null;
    for (const frame of pieces) {
      expect(last?.aborted ?? false, `${this.who}: a frame after the ABORT frame`).toBe(false);
      last = this.receiver.applyFrame(frame);
      expect(last.committed, `${this.who}: an aborted answer committed its epoch`).toBe(false);
    }
    expect(last?.aborted, `${this.who}: the answer does not end with an ABORT frame`).toBe(true);
    return last?.abort?.senderCode ?? '';
  }

  expectExact(): void {
    const pfns = this.oracle.pfns();
    const expected = hashImage(pfns, PAGE, (pfn, dst) => dst.set(this.oracle.get(pfn) as Uint8Array));
    expect(this.receiver.pageCount, `${this.who}: pages in the image`).toBe(pfns.length);
    expect(this.receiver.imageDigest().toString('hex'), `${this.who}: the receiver's image differs from the trace`).toBe(expected.toString('hex'));
  }

  close(): void {
    if (openMirrors.delete(this)) this.receiver.close();
  }
}

/** Receivers not closed yet: each scenario's are closed after it. */
const openMirrors = new Set<Mirror>();

/** Expect a 200 frames answer, streamed, with x-request-id, that the mirror can apply. */
function expectFrames(side: Side, res: RawResponse, what: string): Buffer {
  if (res.status === 0) expect.fail(`${side.name}: ${what}: the server closed the connection without an answer`);
  const text = res.status === 200 ? '' : res.body.toString('utf8').slice(0, 300);
  expect(res.status, `${side.name}: ${what}: ${text}`).toBe(200);
  expect(header(res, 'content-type'), `${side.name}: ${what}`).toBe(FRAMES);
  expect(res.framing, `${side.name}: ${what}: body framing`).toBe('chunked');
  expect(header(res, 'x-request-id') ?? '', `${side.name}: ${what}: x-request-id`).not.toBe('');
  return res.body;
}

function expectError(side: Side, res: RawResponse, status: number, code: string, what: string): void {
  if (res.status === 0) expect.fail(`${side.name}: ${what}: the server closed the connection without an answer (expected ${status} ${code})`);
  const text = res.body.toString('utf8');
  expect(res.status, `${side.name}: ${what}: ${text}`).toBe(status);
  expect(header(res, 'content-type') ?? '', `${side.name}: ${what}`).toMatch(/^application\/json/);
  const json = JSON.parse(text) as { statusCode: number; code: string };
  expect(json.statusCode).toBe(status);
  expect(json.code, `${side.name}: ${what}`).toBe(code);
}

// ================================================================ traces

/** A 512-page image and nine dirty epochs (about 50 pages each). */
const trace10 = parseTrace(generateTrace({ seed: 20261126, epochs: 10, pages: 512, profile: 'mixed' })).epochs;
/** Small epochs for the many short scenarios: 24 pages, then a few pages each. */
const small = parseTrace(generateTrace({ seed: 77, epochs: 10, pages: 24, profile: 'mixed', dirtyFraction: 0.25 })).epochs;

/** A stream config both sides get. */
const SMALL_STREAM = { workers: 2, codec: 'remus', cacheBytes: 256 * PAGE, frameBytes: 64 * 1024 };

let on: Side;
let off: Side;

beforeAll(async () => {
  on = await startSide(true);
  off = await startSide(false);
});

afterAll(async () => {
  for (const conn of [...allConns]) conn.destroy();
  for (const mirror of [...openMirrors]) mirror.close();
  // Whether the fast path was in use at all: with it on, its epochs never reach node:http.
  console.info(`epoch POSTs that reached node:http: ${sides.map((s) => `${s.name} ${s.nodeEpochRequests}`).join(', ')}`);
  await Promise.all(sides.map((s) => s.app.close()));
});

/** After a scenario, pass or fail: its connections closed, its streams deleted. */
async function cleanUp(side: Side): Promise<void> {
  for (const mirror of [...openMirrors]) mirror.close();
  for (const conn of [...allConns]) if (conn.port === side.port) conn.destroy();
  for (const id of [...side.streams]) {
    side.streams.delete(id);
    await fetch(`http://127.0.0.1:${side.port}/v1/streams/${id}`, { method: 'DELETE', headers: authHeaders(side), signal: AbortSignal.timeout(WAIT_MS) })
      .then((res) => res.arrayBuffer())
      .catch(() => undefined);
  }
}

/** Run `scenario` on both apps (one after the other) and return both results. */
async function onBoth<T>(scenario: (side: Side) => Promise<T>, pair: [Side, Side] = [on, off]): Promise<{ fast: T; node: T }> {
  const run = async (side: Side): Promise<T> => {
    try {
      return await scenario(side);
    } catch (err) {
      // Say which app failed (assertion messages mostly do already).
      if (err instanceof Error && !err.message.startsWith(side.name)) err.message = `${side.name}: ${err.message}`;
      throw err;
    } finally {
      await cleanUp(side);
    }
  };
  const fast = await run(pair[0]);
  const node = await run(pair[1]);
  return { fast, node };
}

/** Send one whole epoch on `conn`, expect frames, apply them. */
async function sendEpoch(side: Side, conn: RawConn, id: string, epoch: TraceEpoch, mirror: Mirror, n = epoch.epoch, extra: string[] = []): Promise<Buffer> {
  await conn.write(epochRequest(id, n === epoch.epoch ? epoch.record : renumbered(epoch.record, n), extra));
  const frames = expectFrames(side, await conn.response(), `epoch ${n}`);
  mirror.apply(frames, epoch, n);
  return frames;
}

/** Send `epoch`'s head and the first half of its body on `conn`, then wait until its stream is running it. */
async function sendHalfEpoch(side: Side, conn: RawConn, id: string, epoch: TraceEpoch): Promise<void> {
  const { record } = epoch;
  await conn.write(withHead(epochHead(id, record.length), record.subarray(0, record.length >> 1)));
  await waitBusy(side, id, true);
}

/** Where a request comes on its connection, in the tests that try both. */
const POSITIONS = ['first on its connection', 'after an epoch on the same connection'] as const;

/**
 * A new stream that has taken epoch 0 (small[0]), and a connection on which
 * the next request comes at `position`: the one epoch 0 went over, or a new one.
 */
async function afterEpochZero(
  side: Side, config: Record<string, unknown>, position: (typeof POSITIONS)[number],
): Promise<{ id: string; mirror: Mirror; conn: RawConn }> {
  const id = await createStream(side, config);
  const mirror = new Mirror(side.name);
  let conn = await RawConn.open(side.port);
  await sendEpoch(side, conn, id, small[0], mirror);
  if (position === 'first on its connection') {
    conn.destroy();
    conn = await RawConn.open(side.port);
  }
  return { id, mirror, conn };
}

// ================================================================ 1. many epochs, one connection

describe('many epochs over one keep-alive connection', () => {
  for (const codec of ['remus', undefined] as const) {
    it(`ten epochs (codec ${codec ?? 'default'}): the same frames on both paths, and the receiver's image is the trace's`, async () => {
      const { fast, node } = await onBoth(async (side) => {
        const id = await createStream(side, { workers: 2, cacheBytes: 256 * PAGE, frameBytes: 64 * 1024, ...(codec === undefined ? {} : { codec }) });
        const conn = await RawConn.open(side.port);
        const mirror = new Mirror(side.name);
        const frames: Buffer[] = [];
        for (const epoch of trace10) frames.push(await sendEpoch(side, conn, id, epoch, mirror));
        mirror.expectExact();
        mirror.close();
        // Every epoch came back on the one connection, and it is still open.
        expect(conn.isEnded, `${side.name}: the connection was closed`).toBe(false);
        expect(conn.leftover).toBe(0);
        conn.destroy();
        const info = (await streamInfo(side, id)) as StreamInfo & { stats: Record<string, number>; lastEpoch: Record<string, unknown> };
        expect(info.nextEpoch).toBe(trace10.length);
        const metrics = await streamMetrics(side, id);
        await deleteStream(side, id);
        // Counters and metrics: fed the same on both paths (worker time aside).
        const stats = without(info.stats, ['encodeNs', 'encodingRate']);
        const lastEpoch = without(info.lastEpoch, ['encodeWallNs', 'wallNs']);
        return { frames, stats, lastEpoch, metrics };
      });
      expect(fast.stats.epochsCommitted).toBe(trace10.length);
      expect(fast.metrics).toContain(`remus_stream_epoch_duration_seconds_count{stream="ID"} ${trace10.length}`);
      expect({ ...fast, frames: null }).toEqual({ ...node, frames: null });
      // The trace's epoch 0 spans several batches and frames: a real stream.
      expect(node.frames[0].length).toBeGreaterThan(4 * 64 * 1024);
      expect(fast.frames.length).toBe(node.frames.length);
      fast.frames.forEach((f, i) => expectSameBytes(f, node.frames[i], `epoch ${i}`));
    });
  }
});

// ================================================================ 2. requests in pieces

describe('a request written in pieces', () => {
  it('any split points (in the head, the epoch header, the pfn list, the pages) and small delays: the same frames as unsplit', async () => {
    const epochs = small.slice(0, 2);
    // The unsplit answers, per side: the reference.
    const reference = await onBoth(async (side) => {
      const { id, conn, mirror } = await streamConnection(side);
      const frames = [await sendEpoch(side, conn, id, epochs[0], mirror), await sendEpoch(side, conn, id, epochs[1], mirror)];
      mirror.expectExact();
      conn.destroy();
      await deleteStream(side, id);
      return frames;
    });
    reference.fast.forEach((f, i) => expectSameBytes(f, reference.node[i], `unsplit epoch ${i}`));

    /**
     * A cut: a region of the request (0 the head, 1 around the blank line
     * that ends it, 2 inside the 16-byte epoch header, 3 the pfn list and
     * kinds, 4 the pages) and a place in it, resolved against the real head.
     */
    const cut = fc.record({ region: fc.integer({ min: 0, max: 4 }), at: fc.nat({ max: 1 << 30 }) });
    const cuts = fc.array(cut, { minLength: 1, maxLength: 10 });
    const resolve = (specs: { region: number; at: number }[], headBytes: number, e: TraceEpoch): number[] => {
      const layout = epochLayout(e.count, PAGE);
      const total = headBytes + e.record.length;
      const regions: [number, number][] = [
        [1, headBytes - 1],
        [headBytes - 4, headBytes + 1],
        [headBytes + 1, headBytes + 15],
        [headBytes + 16, headBytes + layout.pageOffset],
        [headBytes + layout.pageOffset, total - 1],
      ];
      const offsets = specs.map(({ region, at }) => {
        const [lo, hi] = regions[region];
        return lo + (at % (hi - lo + 1));
      });
      return [...new Set(offsets)].sort((a, b) => a - b);
    };
    const delays = fc.array(fc.integer({ min: 0, max: 3 }), { minLength: 11, maxLength: 11 });
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(cuts, cuts, delays, async (specs0, specs1, pause) => {
        runs++;
        for (const side of [on, off]) {
          try {
            const { id, conn, mirror } = await streamConnection(side);
            for (const [i, specs] of [specs0, specs1].entries()) {
              const e = epochs[i];
              const head = Buffer.from(epochHead(id, e.record.length), 'latin1');
              const at = resolve(specs, head.length, e);
              await conn.writePieces(Buffer.concat([head, e.record]), at, pause);
              const what = `${side.name}: epoch ${i} cut at ${at.join(',')} (head ${head.length} bytes)`;
              const frames = expectFrames(side, await conn.response(), what);
              expectSameBytes(frames, side.fastPath ? reference.fast[i] : reference.node[i], what);
              mirror.apply(frames, e);
            }
            mirror.close();
          } finally {
            await cleanUp(side);
          }
        }
      }),
      { numRuns: 12, seed: 4242, endOnFailure: true },
    );
    expect(runs).toBe(12);
  });
});

// ================================================================ 3. pipelining

describe('pipelining', () => {
  /**
   * node:http hands a pipelined request to its handler as soon as its head
   * is parsed, even while the answer before it is still going out (answers
   * are queued in order): a second epoch of the same stream then finds the
   * stream busy (409 EPOCH_IN_PROGRESS, and the connection closes). The
   * fast path reads the next request only once the answer before it is
   * out, so both epochs are served: a deliberate difference.
   */
  it('two epochs of one stream written back to back in one write: both answered, in order, the same on both paths', async () => {
    const { fast, node } = await onBoth(async (side) => {
      const { id, conn, mirror } = await streamConnection(side);
      await sendEpoch(side, conn, id, small[0], mirror);
      await conn.write(Buffer.concat([epochRequest(id, small[1].record), epochRequest(id, small[2].record)]));
      const first = await conn.response();
      mirror.apply(expectFrames(side, first, 'the first pipelined epoch'), small[1]);
      const second = await conn.response();
      // In order: the second answer is epoch 2's frames, or a refusal.
      if (second.status === 200) mirror.apply(expectFrames(side, second, 'the second pipelined epoch'), small[2]);
      else expectError(side, second, 409, 'EPOCH_IN_PROGRESS', 'the second pipelined epoch');
      const after = await connectionAfter(conn, second);
      conn.destroy();
      const info = await streamInfo(side, id);
      return { answers: [outcome(first), outcome(second)], after, nextEpoch: info.nextEpoch };
    });
    expect(fast.answers.map((answer) => answer.status)).toEqual([200, 200]);
    expect(fast.after).toBe('open');
    expect(fast.nextEpoch).toBe(3);
    // node:http: the same first answer; the second is epoch 2's frames or, when its handler ran early, 409.
    expect(node.answers[0]).toEqual(fast.answers[0]);
    if (node.answers[1].status === 200) expect(node).toEqual(fast);
    else expect(node.nextEpoch).toBe(2);
  });

  it('epochs of two streams pipelined on one connection: both answered in order with their own frames', async () => {
    const { fast, node } = await onBoth(async (side) => {
      const a = await createStream(side, SMALL_STREAM);
      const b = await createStream(side, { ...SMALL_STREAM, codec: 'xbzrle' });
      const conn = await RawConn.open(side.port);
      await conn.write(Buffer.concat([epochRequest(a, small[0].record), epochRequest(b, small[0].record), Buffer.from(getRequest('/health'), 'latin1')]));
      const ra = await conn.response();
      const rb = await conn.response();
      const health = await conn.response();
      const ma = new Mirror(`${side.name}, stream a`);
      const mb = new Mirror(`${side.name}, stream b`);
      ma.apply(expectFrames(side, ra, 'stream a'), small[0]);
      mb.apply(expectFrames(side, rb, 'stream b'), small[0]);
      // codec 1 and codec 2 frames: byte 6 of a frame header is its codec.
      expect([ra.body[6], rb.body[6]]).toEqual([1, 2]);
      expect(health.status).toBe(200);
      const next = [await sendEpoch(side, conn, a, small[1], ma), await sendEpoch(side, conn, b, small[1], mb)];
      ma.expectExact();
      mb.expectExact();
      conn.destroy();
      return [outcome(ra), outcome(rb), outcome(health).status, ...next.map(digestOf)];
    });
    expect(fast).toEqual(node);
  });

  it('an epoch pipelined with a GET, then garbage: the epoch answered, then the GET, then 400 for the garbage', async () => {
    const { fast, node } = await onBoth(async (side) => {
      const { id, conn, mirror } = await streamConnection(side);
      await conn.write(Buffer.concat([epochRequest(id, small[0].record), Buffer.from(getRequest('/health'), 'latin1')]));
      const epoch = await conn.response();
      mirror.apply(expectFrames(side, epoch, 'the pipelined epoch'), small[0]);
      const health = await conn.response();
      expect(health.status).toBe(200);
      // Not in the same write: node:http would refuse the garbage (and drop the connection) before answering the epoch.
      await conn.write('NOT HTTP AT ALL\r\n\r\n');
      const garbage = await conn.response();
      expect(garbage.status, `${side.name}: the answer to garbage`).toBe(400);
      const closed = await conn.closedWithin(5000);
      conn.destroy();
      // The stream took epoch 0 and nothing else.
      return { answers: [outcome(epoch), outcome(health), outcome(garbage)], closed, nextEpoch: (await streamInfo(side, id)).nextEpoch };
    });
    expect(node.closed).toBe(true);
    expect(node.nextEpoch).toBe(1);
    expect(fast).toEqual(node);
  });
});

// ================================================================ 4. mixed requests on one connection

describe('fast epochs and other requests on one connection', () => {
  it('epoch, GET the stream, epoch, chunked epoch, epoch, GET /health, 404, epoch: all answered correctly', async () => {
    const { fast, node } = await onBoth(async (side) => {
      const { id, conn, mirror } = await streamConnection(side);
      const frames: string[] = [];
      frames.push(digestOf(await sendEpoch(side, conn, id, small[0], mirror)));

      await conn.write(getRequest(`/v1/streams/${id}`));
      const got = await conn.response();
      expect(got.status).toBe(200);
      const info = JSON.parse(got.body.toString('utf8')) as StreamInfo;
      expect([info.id, info.nextEpoch, info.busy]).toEqual([id, 1, false]);

      frames.push(digestOf(await sendEpoch(side, conn, id, small[1], mirror)));

      await conn.write(chunkedEpochRequest(id, small[2].record, 3000));
      frames.push(digestOf(mirror.applyAnd(expectFrames(side, await conn.response(), 'the chunked epoch'), small[2])));

      frames.push(digestOf(await sendEpoch(side, conn, id, small[3], mirror)));

      await conn.write(getRequest('/health'));
      expect((await conn.response()).status).toBe(200);
      await conn.write(getRequest('/no/such/route'));
      expect((await conn.response()).status).toBe(404);

      frames.push(digestOf(await sendEpoch(side, conn, id, small[4], mirror)));
      mirror.expectExact();
      expect(conn.isEnded).toBe(false);
      conn.destroy();
      return frames;
    });
    expect(fast).toEqual(node);
  });

  it('a connection that starts with other requests: its epochs are answered as well', async () => {
    const { fast, node } = await onBoth(async (side) => {
      const { id, conn, mirror } = await streamConnection(side);
      await conn.write(getRequest('/health'));
      expect((await conn.response()).status).toBe(200);
      const frames = [];
      for (const e of small.slice(0, 3)) frames.push(digestOf(await sendEpoch(side, conn, id, e, mirror)));
      mirror.expectExact();
      conn.destroy();
      return frames;
    });
    expect(fast).toEqual(node);
  });
});

// ================================================================ 5. errors before the first frame

/** Stream config of the error tests: epochs up to 32 pages. */
const LIMITED_STREAM = { ...SMALL_STREAM, maxEpochBytes: 32 * PAGE + 512 };

/** A valid record of `pages` pages (pfns 0.., all-zero pages but one word), numbered n. */
function bigRecord(n: number, pages: number): Buffer {
  const bytes = new Uint8Array(pages * PAGE);
  bytes[5] = 1;
  return encodeEpochRecord(n, Float64Array.from({ length: pages }, (_, i) => i), new Uint8Array(pages), bytes, PAGE);
}

interface BadRequest {
  name: string;
  status: number;
  /** null: whatever code the body reader gives, as long as both paths give the same. */
  code: string | null;
  /** The request bytes, given the stream id and the record of the epoch the stream expects (epoch 1). */
  request(id: string, record: Uint8Array): Buffer;
}

const BAD_REQUESTS: BadRequest[] = [
  {
    name: 'an epoch number ahead of the stream',
    status: 409,
    code: 'EPOCH_OUT_OF_ORDER',
    request: (id, record) => epochRequest(id, renumbered(record, 4)),
  },
  {
    name: 'the epoch already sent',
    status: 409,
    code: 'EPOCH_OUT_OF_ORDER',
    request: (id, record) => epochRequest(id, renumbered(record, 0)),
  },
  {
    name: 'Content-Length 8 more than the record',
    status: 400,
    code: 'EPOCH_LENGTH_MISMATCH',
    request: (id, record) => withHead(epochHead(id, record.length + 8), Buffer.concat([record, Buffer.alloc(8)])),
  },
  {
    name: 'Content-Length 8 less than the record',
    status: 400,
    code: 'EPOCH_LENGTH_MISMATCH',
    request: (id, record) => withHead(epochHead(id, record.length - 8), record.subarray(0, record.length - 8)),
  },
  {
    name: 'an unknown stream',
    status: 404,
    code: 'STREAM_NOT_FOUND',
    request: (_id, record) => epochRequest('nosuch', record),
  },
  {
    name: 'content type text/plain',
    status: 415,
    code: 'EPOCH_BAD_CONTENT_TYPE',
    request: (id, record) => epochWithLines(id, ['Host: x', 'Content-Type: text/plain', `Content-Length: ${record.length}`], record),
  },
  {
    name: 'no content type',
    status: 415,
    code: 'EPOCH_BAD_CONTENT_TYPE',
    request: (id, record) => epochWithLines(id, ['Host: x', `Content-Length: ${record.length}`], record),
  },
  {
    name: 'content type application/json',
    status: 415,
    code: 'EPOCH_BAD_CONTENT_TYPE',
    request: (id, record) => epochWithLines(id, ['Host: x', 'Content-Type: application/json', `Content-Length: ${record.length}`], record),
  },
  {
    // The head only: the answer must come before any of the body.
    name: "Content-Length over the stream's maxEpochBytes (head only)",
    status: 413,
    code: 'EPOCH_TOO_LARGE',
    request: (id) => Buffer.from(epochHead(id, bigRecord(1, 40).length), 'latin1'),
  },
  {
    name: "a page count over the stream's maxEpochBytes, chunked (no Content-Length)",
    status: 413,
    code: 'EPOCH_TOO_LARGE',
    request: (id) => chunkedEpochRequest(id, bigRecord(1, 40).subarray(0, 64)),
  },
  {
    name: 'a body that is not an epoch record',
    status: 400,
    code: null,
    request: (id, record) => {
      const bad = Buffer.from(record);
      bad.write('XXXX', 0, 'latin1');
      return epochRequest(id, bad);
    },
  },
  {
    name: 'a pfn listed twice',
    status: 400,
    code: null,
    request: (id, record) => {
      const bad = Buffer.from(record);
      bad.copy(bad, 16 + 8, 16, 24);
      return epochRequest(id, bad);
    },
  },
];

describe('errors before the first frame: the same status and code on both paths, and the stream takes the right epoch after', () => {
  for (const bad of BAD_REQUESTS) {
    for (const position of POSITIONS) {
      it(`${bad.name} (${position}): ${bad.status} ${bad.code ?? '(the body reader names the code)'}`, async () => {
        const { fast, node } = await onBoth(async (side) => {
          const { id, mirror, conn } = await afterEpochZero(side, LIMITED_STREAM, position);
          await conn.write(bad.request(id, small[1].record));
          const res = await conn.response();
          if (bad.code === null) expect(res.status, `${side.name}: ${res.body.toString('utf8')}`).toBe(bad.status);
          else expectError(side, res, bad.status, bad.code, bad.name);
          const after = await connectionAfter(conn, res);
          conn.destroy();
          await waitBusy(side, id, false);
          const info = await streamInfo(side, id);
          expect(info.nextEpoch, `${side.name}: nextEpoch after the refusal`).toBe(1);
          // The right epoch, on a new connection, then one more on it.
          const next = await RawConn.open(side.port);
          const frames = [await sendEpoch(side, next, id, small[1], mirror), await sendEpoch(side, next, id, small[2], mirror)];
          mirror.expectExact();
          next.destroy();
          await deleteStream(side, id);
          return { answer: outcome(res), after, frames: frames.map(digestOf) };
        });
        // The epoch's own refusals (400, 409, 413) close the connection; 404 and 415 come from checks before the epoch starts and keep it (node:http skips the body).
        if (bad.status === 409 || bad.status === 400 || bad.status === 413) expect(node.after).toBe('closed');
        expect(fast).toEqual(node);
      });
    }
  }

  for (const position of POSITIONS) {
    it(`a body shorter than its Content-Length, then the client half-closes (${position})`, async () => {
      const { fast, node } = await onBoth(async (side) => {
        const { id, mirror, conn } = await afterEpochZero(side, LIMITED_STREAM, position);
        await sendHalfEpoch(side, conn, id, small[1]);
        conn.endWrites();
        const res = await conn.response();
        const closed = await conn.closedWithin(5000);
        conn.destroy();
        await waitBusy(side, id, false);
        expect((await streamInfo(side, id)).nextEpoch).toBe(1);
        const next = await RawConn.open(side.port);
        const frames = await sendEpoch(side, next, id, small[1], mirror);
        mirror.expectExact();
        next.destroy();
        await deleteStream(side, id);
        return { answer: res.status === 0 ? 'no answer' : outcome(res), closed, frames: digestOf(frames) };
      });
      expect(node.closed).toBe(true);
      // node:http sees the half-close inside the body and fastify answers
      // its generic 400 (no code); the fast path hands the short body to the
      // reader, which names the problem. Otherwise the same.
      expect(fast.answer).toMatchObject({ status: 400, json: { code: 'EPOCH_TRUNCATED' } });
      expect(node.answer).toMatchObject({ status: 400 });
      expect({ ...fast, answer: null }).toEqual({ ...node, answer: null });
    });
  }

  it('a second epoch on the same stream from another connection while one is running: 409 EPOCH_IN_PROGRESS; the first completes', async () => {
    const { fast, node } = await onBoth(async (side) => {
      const id = await createStream(side, LIMITED_STREAM);
      const mirror = new Mirror(side.name);
      const a = await RawConn.open(side.port);
      await sendEpoch(side, a, id, small[0], mirror);
      const record = small[1].record;
      await a.write(withHead(epochHead(id, record.length), record.subarray(0, record.length - 100)));
      await waitBusy(side, id, true);

      const answers: Outcome[] = [];
      const afters: string[] = [];
      // A fresh connection, and one that has just served an epoch of another stream.
      const other = await createStream(side, LIMITED_STREAM);
      const b = await RawConn.open(side.port);
      const c = await RawConn.open(side.port);
      await sendEpoch(side, c, other, small[0], new Mirror(`${side.name}, other stream`));
      for (const conn of [b, c]) {
        await conn.write(epochRequest(id, record));
        const res = await conn.response();
        expectError(side, res, 409, 'EPOCH_IN_PROGRESS', 'the second epoch');
        answers.push(outcome(res));
        afters.push(await connectionAfter(conn, res));
        conn.destroy();
      }
      expect((await streamInfo(side, id)).busy).toBe(true);

      await a.write(record.subarray(record.length - 100));
      const first = await a.response();
      mirror.apply(expectFrames(side, first, 'the running epoch'), small[1]);
      await sendEpoch(side, a, id, small[2], mirror);
      mirror.expectExact();
      a.destroy();
      return { answers, afters, frames: digestOf(first.body) };
    });
    expect(node.afters).toEqual(['closed', 'closed']);
    expect(fast).toEqual(node);
  });
});

// ================================================================ 5b. a running epoch stopped by another request

describe('a running epoch stopped by another request', () => {
  it('aborted by POST .../abort before any frame: 409 EPOCH_ABORTED, the connection closed, and the epoch sent again succeeds', async () => {
    const { fast, node } = await onBoth(async (side) => {
      const { id, mirror, conn } = await afterEpochZero(side, SMALL_STREAM, 'after an epoch on the same connection');
      await sendHalfEpoch(side, conn, id, small[1]);
      const aborted = await api(side, 'POST', `/v1/streams/${id}/epochs/1/abort`);
      expect(aborted).toEqual({ status: 200, json: { aborted: 'running', nextEpoch: 1 } });
      const res = await conn.response();
      expectError(side, res, 409, 'EPOCH_ABORTED', 'the aborted epoch');
      const after = await connectionAfter(conn, res);
      conn.destroy();
      await waitBusy(side, id, false);
      const again = await RawConn.open(side.port);
      const frames = [await sendEpoch(side, again, id, small[1], mirror), await sendEpoch(side, again, id, small[2], mirror)];
      mirror.expectExact();
      return { answer: outcome(res), after, frames: frames.map(digestOf) };
    });
    expect(node.after).toBe('closed');
    expect(fast).toEqual(node);
  });

  it('aborted by POST .../abort after its first frames: the answer ends with an ABORT frame, the connection is closed, and the epoch sent again succeeds', async () => {
    const { fast, node } = await onBoth(async (side) => {
      const id = await createStream(side, SMALL_STREAM);
      const mirror = new Mirror(side.name);
      const conn = await RawConn.open(side.port);
      const record = trace10[0].record;
      // Three quarters of a 2 MiB body: six of its eight batches, so frames go out while the rest is awaited.
      await conn.write(withHead(epochHead(id, record.length), record.subarray(0, (record.length * 3) >> 2)));
      expect(await conn.waitBuffered(64 * 1024), `${side.name}: no frames while the body is awaited`).toBe(true);
      const aborted = await api(side, 'POST', `/v1/streams/${id}/epochs/0/abort`);
      expect(aborted).toEqual({ status: 200, json: { aborted: 'running', nextEpoch: 0 } });
      const res = await conn.response();
      expect(res.status).toBe(200);
      expect(res.framing).toBe('chunked');
      const code = mirror.applyAborted(res.body);
      const closed = await conn.closedWithin(5000);
      conn.destroy();
      await waitBusy(side, id, false);
      const again = await RawConn.open(side.port);
      // Frames before the abort depend on timing, and so does what the cut
      // epoch left in the cache policy's counts; the epoch sent again (the
      // whole image, all FULL) does not. The next is checked by the receiver.
      const resent = await sendEpoch(side, again, id, trace10[0], mirror);
      await sendEpoch(side, again, id, trace10[1], mirror);
      mirror.expectExact();
      return { status: res.status, code, closed, requestId: header(res, 'x-request-id') !== undefined, resent: digestOf(resent) };
    });
    expect(node.code).toBe('EPOCH_ABORTED');
    expect(node.closed).toBe(true);
    expect(fast).toEqual(node);
  });

  it('its stream deleted while the body arrives: the same answer on both paths, and the connection is not left hanging', async () => {
    const { fast, node } = await onBoth(async (side) => {
      const { id, conn } = await afterEpochZero(side, SMALL_STREAM, 'after an epoch on the same connection');
      await sendHalfEpoch(side, conn, id, small[1]);
      const deleted = await api(side, 'DELETE', `/v1/streams/${id}`);
      side.streams.delete(id);
      const res = await conn.response();
      const answer = res.status === 0 ? 'no answer' : outcome(res);
      const closed = await conn.closedWithin(5000);
      conn.destroy();
      return { deleted: deleted.status, answer, closed };
    });
    expect(node.deleted).toBe(204);
    expect(node.answer).toMatchObject({ status: 410, json: { code: 'STREAM_DELETED' } });
    expect(fast).toEqual(node);
  });
});

// ================================================================ 6. bearer token

describe('with a bearer token (authToken)', () => {
  let authOn: Side;
  let authOff: Side;

  beforeAll(async () => {
    authOn = await startSide(true, { authToken: 'secret' });
    authOff = await startSide(false, { authToken: 'secret' });
  });

  afterAll(async () => {
    await Promise.all([authOn, authOff].filter((s) => s !== undefined).map(stopSide));
  });

  const CASES: { authorization: string | null; ok: boolean }[] = [
    { authorization: null, ok: false },
    { authorization: 'Bearer wrong', ok: false },
    { authorization: 'Bearer secretx', ok: false },
    { authorization: 'Bearer secre', ok: false },
    { authorization: 'Basic c2VjcmV0', ok: false },
    { authorization: 'secret', ok: false },
    { authorization: 'Bearer ', ok: false },
    { authorization: 'Bearersecret', ok: false },
    { authorization: 'Bearer secret secret', ok: false },
    { authorization: 'Bearer secret', ok: true },
    { authorization: 'bearer secret', ok: true },
    { authorization: 'BEARER secret', ok: true },
    { authorization: 'Bearer    secret', ok: true },
    { authorization: 'Bearer\tsecret', ok: true },
    { authorization: 'Bearer secret   ', ok: true },
  ];

  /** Enough epochs for every case below in both positions. */
  const authTrace = parseTrace(generateTrace({ seed: 5150, epochs: 48, pages: 8, profile: 'mixed', dirtyFraction: 0.5 })).epochs;

  it('no token or a wrong one: 401 UNAUTHORIZED; the right one: frames; the same on both paths', async () => {
    const { fast, node } = await onBoth(
      async (side) => {
        const id = await createStream(side, SMALL_STREAM);
        const mirror = new Mirror(side.name);
        let n = 0;
        const results: unknown[] = [];
        for (const { authorization, ok } of CASES) {
          for (const position of ['first', 'after'] as const) {
            const conn = await RawConn.open(side.port);
            if (position === 'after') await sendEpoch(side, conn, id, authTrace[n], mirror, n++, ['Authorization: Bearer secret']);
            const extra = authorization === null ? [] : [`Authorization: ${authorization}`];
            await conn.write(epochRequest(id, authTrace[n].record, extra));
            const res = await conn.response();
            const what = `Authorization ${JSON.stringify(authorization)} (${position} on its connection)`;
            if (ok) mirror.apply(expectFrames(side, res, what), authTrace[n++]);
            else expectError(side, res, 401, 'UNAUTHORIZED', what);
            results.push({ authorization, position, answer: outcome(res), after: await connectionAfter(conn, res) });
            conn.destroy();
          }
        }
        mirror.expectExact();
        return { results, nextEpoch: (await streamInfo(side, id)).nextEpoch };
      },
      [authOn, authOff],
    );
    expect(node.nextEpoch).toBe(CASES.length + CASES.filter((c) => c.ok).length * 2);
    expect(fast).toEqual(node);
  });

  it('Authorization headers given twice or in upper case: node:http keeps the first; the same answers on both paths', async () => {
    const LINES: { lines: string[]; status: number }[] = [
      { lines: ['AUTHORIZATION: Bearer secret'], status: 200 },
      { lines: ['Authorization: Bearer secret', 'Authorization: Bearer wrong'], status: 200 },
      { lines: ['Authorization: Bearer wrong', 'Authorization: Bearer secret'], status: 401 },
      { lines: ['Authorization: Bearer wrong', 'authorization: Bearer secret'], status: 401 },
    ];
    const { fast, node } = await onBoth(
      async (side) => {
        const id = await createStream(side, SMALL_STREAM);
        const mirror = new Mirror(side.name);
        let n = 0;
        const results: unknown[] = [];
        for (const { lines, status } of LINES) {
          const conn = await RawConn.open(side.port);
          await conn.write(epochRequest(id, authTrace[n].record, lines));
          const res = await conn.response();
          if (status === 200) mirror.apply(expectFrames(side, res, lines.join(' / ')), authTrace[n++]);
          else expectError(side, res, status, 'UNAUTHORIZED', lines.join(' / '));
          results.push({ lines, answer: outcome(res), after: await connectionAfter(conn, res) });
          conn.destroy();
        }
        mirror.expectExact();
        return results;
      },
      [authOn, authOff],
    );
    expect(fast).toEqual(node);
  });

  it('an unknown stream without a token: 401, not 404, on both paths', async () => {
    const { fast, node } = await onBoth(
      async (side) => {
        const conn = await RawConn.open(side.port);
        await conn.write(epochRequest('nosuch', authTrace[0].record));
        const res = await conn.response();
        conn.destroy();
        return outcome(res);
      },
      [authOn, authOff],
    );
    expect(node.status).toBe(401);
    expect(fast).toEqual(node);
  });
});

// ================================================================ 7. client disconnect mid-body

describe('a client that disconnects in the middle of the body', () => {
  const cases = [
    { name: 'a small epoch, half its body sent, on a connection that served an epoch', big: false, sent: 0.5 },
    { name: 'a small epoch, its head and 20 bytes sent', big: false, sent: 20 },
    { name: 'a 2 MiB epoch spanning several batches, 3/4 of it sent', big: true, sent: 0.75 },
  ];
  for (const c of cases) {
    it(`${c.name}: the epoch is aborted, nextEpoch unchanged, and the same epoch sent again succeeds`, async () => {
      const epochs = c.big ? trace10 : small;
      const { fast, node } = await onBoth(async (side) => {
        const id = await createStream(side, SMALL_STREAM);
        const mirror = new Mirror(side.name);
        const conn = await RawConn.open(side.port);
        const frames: string[] = [];
        // The big case cuts epoch 0 (the whole image) on a fresh connection; the small ones epoch 1, after epoch 0 on the same connection.
        let n = 0;
        if (!c.big) frames.push(digestOf(await sendEpoch(side, conn, id, epochs[n++], mirror)));
        const record = epochs[n].record;
        const cut = c.sent < 1 ? Math.floor(record.length * c.sent) : c.sent;
        await conn.write(withHead(epochHead(id, record.length), record.subarray(0, cut)));
        await waitBusy(side, id, true);
        conn.destroy();
        await waitBusy(side, id, false);
        const info = await streamInfo(side, id);
        expect(info.nextEpoch, `${side.name}: nextEpoch after the disconnect`).toBe(n);
        const again = await RawConn.open(side.port);
        for (; n < Math.min(epochs.length, 4); n++) frames.push(digestOf(await sendEpoch(side, again, id, epochs[n], mirror)));
        mirror.expectExact();
        // After an epoch cut while its batches were being encoded, how much of
        // it reached the cache policy's counts depends on timing: only the
        // epoch sent again (all FULL: it is the whole image) is the same
        // byte for byte, the ones after it are checked by the receiver.
        if (c.big) frames.splice(1);
        again.destroy();
        await deleteStream(side, id);
        return { frames, aborted: (info as unknown as { stats: { epochsAborted: number } }).stats.epochsAborted };
      });
      expect(fast).toEqual(node);
    });
  }
});

// ================================================================ 8. unusual and malformed heads

interface HeadVariant {
  name: string;
  /** The request, given the stream id and the record of the epoch the stream expects. */
  request(id: string, record: Uint8Array, port: number): Buffer;
  /** What node:http and fastify answer, when this test pins it. */
  status?: number;
}

function withHead(head: string, body: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(head, 'latin1'), body]);
}

/** A head from raw header lines (CRLF-joined), for the given request line. */
function rawHead(requestLine: string, lines: string[], eol = '\r\n'): string {
  return `${requestLine}${eol}${lines.map((l) => `${l}${eol}`).join('')}${eol}`;
}

/** What node:http counts against its header size limit: the request target, header names and values (without white space around them). */
function nodeHeadBytes(head: string): number {
  const lines = head.split('\r\n');
  let count = lines[0].split(' ')[1].length;
  for (const line of lines.slice(1)) {
    if (line === '') continue;
    const colon = line.indexOf(':');
    count += colon + line.slice(colon + 1).trim().length;
  }
  return count;
}

const VARIANTS: HeadVariant[] = [
  { name: 'a plain epoch (the baseline)', status: 200, request: (id, r) => epochRequest(id, r) },
  {
    name: 'header names in upper case',
    status: 200,
    request: (id, r) => epochWithLines(id, ['HOST: x', `CONTENT-TYPE: ${OCTETS}`, `CONTENT-LENGTH: ${r.length}`], r),
  },
  {
    name: 'content type with a parameter',
    status: 200,
    request: (id, r) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}; charset=binary`, `Content-Length: ${r.length}`], r),
  },
  {
    name: 'content type in mixed case',
    status: 200,
    request: (id, r) => epochWithLines(id, ['Host: x', 'Content-Type: Application/Octet-Stream', `Content-Length: ${r.length}`], r),
  },
  {
    name: 'header values with tabs and spaces around them',
    status: 200,
    request: (id, r) => epochWithLines(id, ['Host:x', `Content-Type:\t ${OCTETS} \t`, `Content-Length:   ${r.length}  `], r),
  },
  {
    name: 'two Content-Type headers, text/plain first',
    status: 415,
    request: (id, r) => epochWithLines(id, ['Host: x', 'Content-Type: text/plain', `Content-Type: ${OCTETS}`, `Content-Length: ${r.length}`], r),
  },
  {
    name: 'two Content-Type headers, octet-stream first',
    request: (id, r) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}`, 'Content-Type: text/plain', `Content-Length: ${r.length}`], r),
  },
  {
    name: 'content type application/octet-streamx',
    status: 415,
    request: (id, r) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}x`, `Content-Length: ${r.length}`], r),
  },
  {
    name: 'Content-Length with leading zeros',
    request: (id, r) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}`, `Content-Length: 000${r.length}`], r),
  },
  {
    name: 'two equal Content-Length headers',
    status: 400,
    request: (id, r) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}`, `Content-Length: ${r.length}`, `Content-Length: ${r.length}`], r),
  },
  {
    name: 'Content-Length "N, N"',
    request: (id, r) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}`, `Content-Length: ${r.length}, ${r.length}`], r),
  },
  {
    name: 'Content-Length with a plus sign',
    request: (id, r) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}`, `Content-Length: +${r.length}`], r),
  },
  {
    name: 'Content-Length of 2^64',
    request: (id, r) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}`, 'Content-Length: 18446744073709551616'], r),
  },
  {
    name: 'Content-Length 0',
    request: (id) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}`, 'Content-Length: 0'], new Uint8Array(0)),
  },
  {
    name: 'Content-Length and Transfer-Encoding: chunked',
    status: 400,
    request: (id, r) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}`, `Content-Length: ${r.length}`, 'Transfer-Encoding: chunked'], chunked(r, 4000)),
  },
  { name: 'Transfer-Encoding: chunked', status: 200, request: (id, r) => chunkedEpochRequest(id, r, 777) },
  {
    name: 'Transfer-Encoding: identity',
    request: (id, r) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}`, `Content-Length: ${r.length}`, 'Transfer-Encoding: identity'], r),
  },
  { name: 'a query string', status: 200, request: (id, r) => withHead(epochHead(id, r.length, [], { target: `/v1/streams/${id}/epochs?x=1` }), r) },
  { name: 'an empty query string', request: (id, r) => withHead(epochHead(id, r.length, [], { target: `/v1/streams/${id}/epochs?` }), r) },
  { name: 'a trailing slash', request: (id, r) => withHead(epochHead(id, r.length, [], { target: `/v1/streams/${id}/epochs/` }), r) },
  { name: 'a double slash', request: (id, r) => withHead(epochHead(id, r.length, [], { target: `/v1//streams/${id}/epochs` }), r) },
  {
    name: 'the stream id percent-encoded',
    request: (id, r) => withHead(epochHead(id, r.length, [], { target: `/v1/streams/${[...id].map((ch) => `%${ch.charCodeAt(0).toString(16)}`).join('')}/epochs` }), r),
  },
  { name: 'an id of 65 characters', request: (_id, r) => withHead(epochHead('a'.repeat(65), r.length), r) },
  { name: 'an id with a character outside [A-Za-z0-9._~-]', request: (id, r) => withHead(epochHead(`${id}!`, r.length), r) },
  { name: 'an absolute-form target', request: (id, r, port) => withHead(epochHead(id, r.length, [], { target: `http://127.0.0.1:${port}/v1/streams/${id}/epochs` }), r) },
  { name: 'method in lower case', status: 400, request: (id, r) => withHead(epochHead(id, r.length, [], { method: 'post' }), r) },
  { name: 'method PUT', request: (id, r) => withHead(epochHead(id, r.length, [], { method: 'PUT' }), r) },
  { name: 'HTTP/1.0', status: 200, request: (id, r) => withHead(epochHead(id, r.length, [], { version: 'HTTP/1.0' }), r) },
  { name: 'HTTP/1.0 with Connection: keep-alive', request: (id, r) => withHead(epochHead(id, r.length, ['Connection: keep-alive'], { version: 'HTTP/1.0' }), r) },
  { name: 'HTTP/1.2', request: (id, r) => withHead(epochHead(id, r.length, [], { version: 'HTTP/1.2' }), r) },
  { name: 'no Host header', status: 400, request: (id, r) => epochWithLines(id, [`Content-Type: ${OCTETS}`, `Content-Length: ${r.length}`], r) },
  { name: 'Connection: close', status: 200, request: (id, r) => epochRequest(id, r, ['Connection: close']) },
  { name: 'Connection: keep-alive', status: 200, request: (id, r) => epochRequest(id, r, ['Connection: keep-alive']) },
  { name: 'Upgrade: websocket', request: (id, r) => epochRequest(id, r, ['Connection: Upgrade', 'Upgrade: websocket']) },
  { name: 'Expect: something-else', request: (id, r) => epochRequest(id, r, ['Expect: something-else']) },
  { name: 'an Authorization header (no token configured)', status: 200, request: (id, r) => epochRequest(id, r, ['Authorization: Bearer whatever']) },
  { name: 'a header line without a colon', status: 400, request: (id, r) => epochRequest(id, r, ['This line has no colon']) },
  { name: 'a space before the colon', request: (id, r) => epochRequest(id, r, ['X-Thing : 1']) },
  { name: 'an obs-fold continuation line', request: (id, r) => epochRequest(id, r, ['X-Folded: a', ' b']) },
  { name: 'a control character in a header value', request: (id, r) => epochRequest(id, r, ['X-Thing: a\u0001b']) },
  { name: 'bare LF line endings', request: (id, r) => withHead(rawHead(`POST /v1/streams/${id}/epochs HTTP/1.1`, ['Host: x', `Content-Type: ${OCTETS}`, `Content-Length: ${r.length}`], '\n'), r) },
  { name: 'a header over 16 KiB', status: 431, request: (id, r) => epochRequest(id, r, [`X-Big: ${'b'.repeat(17 * 1024)}`]) },
  { name: 'many small headers, 20 KiB in all', status: 431, request: (id, r) => epochRequest(id, r, Array.from({ length: 1000 }, (_, i) => `X-H${i}: ${'v'.repeat(12)}`)) },
  { name: 'a request line over 16 KiB', request: (id, r) => withHead(epochHead(id, r.length, [], { target: `/v1/streams/${id}/epochs?${'q'.repeat(17 * 1024)}` }), r) },
  ...[16 * 1024 - 512, 16 * 1024, 16 * 1024 + 512].map(
    (total): HeadVariant => ({
      name: `a head of ${total} bytes in all`,
      request: (id, r) => {
        const bare = epochHead(id, r.length, ['X-Pad: ']).length;
        const head = epochHead(id, r.length, [`X-Pad: ${'p'.repeat(total - bare)}`]);
        expect(head.length).toBe(total);
        return withHead(head, r);
      },
    }),
  ),
  // node:http's limit (http.maxHeaderSize, 16 KiB) counts the target, the header names and the values: one under it is served, at it refused.
  ...[
    [http.maxHeaderSize - 1, 200],
    [http.maxHeaderSize, 431],
  ].map(
    ([count, status]): HeadVariant => ({
      name: `a head of ${count} bytes as node:http counts them`,
      status,
      request: (id, r) => {
        const bare = nodeHeadBytes(epochHead(id, r.length, ['X-Pad: ']));
        const head = epochHead(id, r.length, [`X-Pad: ${'p'.repeat(count - bare)}`]);
        expect(nodeHeadBytes(head)).toBe(count);
        return withHead(head, r);
      },
    }),
  ),
  { name: 'the version in lower case', request: (id, r) => withHead(epochHead(id, r.length, [], { version: 'http/1.1' }), r) },
  { name: 'two spaces after the method', request: (id, r) => withHead(epochHead(id, r.length, [], { method: 'POST ' }), r) },
  { name: 'a tab after the method', request: (id, r) => withHead(epochHead(id, r.length, [], { method: 'POST\t' }).replace('POST\t ', 'POST\t'), r) },
  { name: 'a space at the end of the request line', request: (id, r) => withHead(epochHead(id, r.length, [], { version: 'HTTP/1.1 ' }), r) },
  {
    name: 'Content-Length twice, in different case',
    request: (id, r) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}`, `Content-Length: ${r.length}`, `content-length: ${r.length}`], r),
  },
  {
    name: 'Content-Length with a space inside',
    request: (id, r) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}`, `Content-Length: ${String(r.length).replace(/^(\d)/, '$1 ')}`], r),
  },
  { name: 'Content-Length negative', request: (id, r) => epochWithLines(id, ['Host: x', `Content-Type: ${OCTETS}`, `Content-Length: -${r.length}`], r) },
  { name: 'Content-Length 2^53 + 1 (head only)', request: (id) => Buffer.from(rawHead(`POST /v1/streams/${id}/epochs HTTP/1.1`, ['Host: x', `Content-Type: ${OCTETS}`, 'Content-Length: 9007199254740993']), 'latin1') },
  { name: 'a header name with a space inside', request: (id, r) => epochRequest(id, r, ['X Thing: 1']) },
  { name: 'an empty header name', request: (id, r) => epochRequest(id, r, [': 1']) },
  { name: 'a bare CR inside a header value', request: (id, r) => epochRequest(id, r, ['X-Thing: a\rb']) },
  { name: 'bytes 0x80-0xff in a header value', request: (id, r) => epochRequest(id, r, ['X-Thing: caf\u00e9 \u00ff']) },
  { name: 'an empty line before the request line', request: (id, r) => Buffer.concat([Buffer.from('\r\n', 'latin1'), epochRequest(id, r)]) },
  { name: 'a NUL in the target', request: (id, r) => withHead(epochHead(id, r.length, [], { target: `/v1/streams/${id}/epochs\u0000` }), r) },
  { name: '2000 headers, under 16 KiB', request: (id, r) => epochRequest(id, r, Array.from({ length: 2000 }, (_, i) => `X${i}:`)) },
];

describe('unusual and malformed request heads: node:http and fastify decide, on both paths', () => {
  for (const v of VARIANTS) {
    for (const position of POSITIONS) {
      it(`${v.name} (${position})`, async () => {
        const { fast, node } = await onBoth(async (side) => {
          const id = await createStream(side, SMALL_STREAM);
          const mirror = new Mirror(side.name);
          const conn = await RawConn.open(side.port);
          let n = 0;
          if (position !== 'first on its connection') await sendEpoch(side, conn, id, small[n++], mirror);
          await conn.write(v.request(id, small[n].record, side.port));
          let res = await conn.response();
          const interim = res.status >= 100 && res.status < 200 ? outcome(res) : null;
          if (interim !== null) res = await conn.response();
          const answer = outcome(res);
          if (res.status === 200 && answer.contentType === FRAMES) mirror.apply(res.body, small[n]);
          const after = res.status === 0 ? 'closed' : await connectionAfter(conn, res);
          conn.destroy();
          await waitBusy(side, id, false);
          const nextEpoch = (await streamInfo(side, id)).nextEpoch;
          // Whatever happened, the stream takes its next epoch.
          const next = await RawConn.open(side.port);
          await sendEpoch(side, next, id, small[nextEpoch], mirror);
          mirror.expectExact();
          next.destroy();
          await deleteStream(side, id);
          return { interim, answer, framing: res.framing, after, nextEpoch };
        });
        if (v.status !== undefined) expect(node.answer.status, JSON.stringify(node)).toBe(v.status);
        expect(fast).toEqual(node);
      });
    }
  }
});

// ================================================================ 9. Expect: 100-continue

describe('Expect: 100-continue', () => {
  for (const flow of ['waits for 100 Continue before the body', 'sends the body at once', 'waits for 100 Continue, on a connection that served an epoch'] as const) {
    it(`a client that ${flow}: 100 Continue, then the frames`, async () => {
      const { fast, node } = await onBoth(async (side) => {
        const id = await createStream(side, SMALL_STREAM);
        const mirror = new Mirror(side.name);
        const conn = await RawConn.open(side.port);
        let n = 0;
        if (flow.endsWith('served an epoch')) await sendEpoch(side, conn, id, small[n++], mirror);
        const record = small[n].record;
        const head = epochHead(id, record.length, ['Expect: 100-continue']);
        let interim: RawResponse;
        if (flow === 'sends the body at once') {
          await conn.write(withHead(head, record));
          interim = await conn.response();
        } else {
          await conn.write(head);
          interim = await conn.response();
          await conn.write(record);
        }
        expect(interim.status, `${side.name}: the interim answer`).toBe(100);
        const res = await conn.response();
        mirror.apply(expectFrames(side, res, 'the epoch after 100 Continue'), small[n++]);
        // The connection goes on.
        await sendEpoch(side, conn, id, small[n], mirror);
        mirror.expectExact();
        conn.destroy();
        return { interim: interim.status, answer: outcome(res) };
      });
      expect(fast).toEqual(node);
    });
  }
});

// ================================================================ 10. closing the app

describe('closing the app', () => {
  it('app.close() resolves promptly while keep-alive connections that served fast epochs are idle, and closes them', async () => {
    // Apps of their own: these are closed here.
    for (const fastPath of [true, false]) {
      const side = await startSide(fastPath);
      try {
        const id = await createStream(side, SMALL_STREAM);
        const mirror = new Mirror(side.name);
        // One connection with epochs only, one that went on to a GET, one that began with a GET.
        const epochsOnly = await RawConn.open(side.port);
        await sendEpoch(side, epochsOnly, id, small[0], mirror);
        await sendEpoch(side, epochsOnly, id, small[1], mirror);
        const thenGet = await RawConn.open(side.port);
        await sendEpoch(side, thenGet, id, small[2], mirror);
        await thenGet.write(getRequest(`/v1/streams/${id}`));
        expect((await thenGet.response()).status).toBe(200);
        const getFirst = await RawConn.open(side.port);
        await getFirst.write(getRequest('/health'));
        expect((await getFirst.response()).status).toBe(200);
        await sendEpoch(side, getFirst, id, small[3], mirror);
        mirror.expectExact();

        await within(side.app.close(), 5000, `${side.name}: app.close() with idle keep-alive connections`);
        for (const [name, conn] of [['epochs only', epochsOnly], ['epoch then GET', thenGet], ['GET then epoch', getFirst]] as const) {
          expect(await conn.closedWithin(2000), `${side.name}: connection "${name}" still open after app.close()`).toBe(true);
        }
      } finally {
        await stopSide(side).catch(() => undefined);
      }
    }
  });
});

// ================================================================ which requests take the fast path

describe('which requests the fast path serves', () => {
  /**
   * Epoch POSTs that reach node:http are counted on its 'request' event.
   * With the fast path on, a plain epoch on a connection that began with
   * one never does; every request outside the rules does, and so does every
   * epoch on a connection that began with another request. With it off,
   * every epoch does.
   */
  it('plain epochs bypass node:http with the fast path on; every other kind of epoch request goes through it', async () => {
    const { fast, node } = await onBoth(async (side) => {
      const id = await createStream(side, SMALL_STREAM);
      const mirror = new Mirror(side.name);
      const counts: Record<string, number> = {};
      let n = 0;
      const step = async (name: string, request: (conn: RawConn) => Promise<void>, conn?: RawConn): Promise<void> => {
        const c = conn ?? (await RawConn.open(side.port));
        const before = side.nodeEpochRequests;
        await request(c);
        counts[name] = side.nodeEpochRequests - before;
      };
      const served = (extra: string[] = [], opts: HeadOptions = {}) => async (conn: RawConn) => {
        const record = small[n].record;
        await conn.write(withHead(epochHead(id, record.length, extra, opts), record));
        let res = await conn.response();
        if (res.status === 100) res = await conn.response();
        mirror.apply(expectFrames(side, res, `epoch ${n}`), small[n]);
        n++;
      };
      const refused = (status: number, request: (record: Uint8Array) => Buffer) => async (conn: RawConn) => {
        await conn.write(request(small[n].record));
        expect((await conn.response()).status).toBe(status);
      };
      const keep = await RawConn.open(side.port);
      await step('a plain epoch, first on its connection', served(), keep);
      await step('a plain epoch after a fast one', served(), keep);
      await step('a chunked epoch', async (conn) => {
        await conn.write(chunkedEpochRequest(id, small[n].record));
        mirror.apply(expectFrames(side, await conn.response(), 'chunked'), small[n++]);
      });
      await step('Expect: 100-continue', served(['Expect: 100-continue']));
      await step('a query string', served([], { target: `/v1/streams/${id}/epochs?a=b` }));
      await step('HTTP/1.0', async (conn) => {
        const record = small[n].record;
        await conn.write(withHead(epochHead(id, record.length, [], { version: 'HTTP/1.0' }), record));
        const res = await conn.response();
        expect(res.status).toBe(200);
        mirror.apply(res.body, small[n++]);
      });
      await step('Upgrade', served(['Connection: Upgrade', 'Upgrade: websocket']));
      await step('a wrong content type', refused(415, (r) => epochWithLines(id, ['Host: x', 'Content-Type: text/plain', `Content-Length: ${r.length}`], r)));
      await step('an unknown stream', refused(404, (r) => epochRequest('nosuch', r)));
      await step('an epoch after GET /health on its connection', async (conn) => {
        await conn.write(getRequest('/health'));
        expect((await conn.response()).status).toBe(200);
        await served()(conn);
      });
      await step('an epoch on a connection that began with a receiver route', async (conn) => {
        await conn.write(getRequest('/v1/images/none'));
        expect((await conn.response()).status).toBe(404);
        await served()(conn);
      });
      mirror.expectExact();
      return counts;
    });
    for (const [name, count] of Object.entries(node)) expect(count, `with the fast path off: ${name}`).toBe(1);
    const fastOnes = new Set(['a plain epoch, first on its connection', 'a plain epoch after a fast one', 'an epoch after GET /health on its connection']);
    const expected = Object.fromEntries(Object.keys(node).map((name) => [name, fastOnes.has(name) ? 0 : 1]));
    expect(fast, 'epoch requests that reached node:http with the fast path on').toEqual(expected);
  });
});
