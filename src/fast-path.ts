import net from 'node:net';
import { STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { Duplex } from 'node:stream';
import type { FastifyBaseLogger } from 'fastify';
import { EPOCH_CONTENT_TYPE, FRAMES_CONTENT_TYPE } from './content-types.js';
import { InPlaceBody } from './epoch-body.js';
import { clientDisconnected, errorAnswer, exchangeEpoch, PendingFrames } from './epoch-exchange.js';
import { MAX_HEAD_BYTES, findHeadEnd, parseRequestHead, type RequestHead } from './http-head.js';
import type { FrameSink } from './merge.js';
import type { ServiceMetrics } from './metrics.js';
import type { Sender } from './sender.js';
import type { Stream } from './stream.js';

/**
 * The epoch fast path: epoch requests read from the socket straight into the
 * stream's input slab.
 *
 * Through node:http every body byte is copied twice before the service sees
 * it (the kernel into the parser's buffer, that into a new Buffer per chunk),
 * and each 64 KiB chunk is garbage for V8 to collect. A socket whose reads
 * land in a buffer of our own choosing (net.Socket's `onread`) takes the
 * kernel's one copy straight into the slab (docs/PERFORMANCE.md, "The epoch
 * fast path").
 *
 * So this front end takes each new connection first and reads its first
 * request head. A connection that starts with a request for the receiver's
 * routes (/v1/images...), or with a head it cannot read, is handed to
 * node:http as it is, the head put back in front. Any other (a
 * controller's: create a stream, then epoch after epoch) becomes an
 * EpochConnection, which reads every request head itself. An epoch request
 * it understands completely (see `epochRequest`) it serves itself; any other
 * request it relays to node:http through a bridge (a Duplex that gets that
 * request's bytes, a copy), so fastify answers it exactly as before, and
 * then it reads the next head itself again. A request whose end it cannot
 * tell without parsing its body (chunked) is relayed with everything after
 * it: node:http keeps the connection.
 *
 * The one thing taken from Node's internals: `onread` is only offered for
 * sockets a program creates, not for those a server accepts, so the accepted
 * socket's handle is moved into a new net.Socket that has one. Where the
 * handle is not what this expects, the connection simply stays node:http's.
 *
 * It answers epoch requests before any fastify hook runs: the app that turns
 * it on passes the one hook that matters (the bearer token) as `authorized`.
 */

export interface EpochFastPathOptions {
  sender: Sender;
  log: FastifyBaseLogger;
  metrics?: ServiceMetrics;
  /** Whether an Authorization header value is allowed in; omitted: no token is required. */
  authorized?: (header: string | undefined) => boolean;
}

/** `/v1/streams/:id/epochs` with an id that needs no decoding and passes the route's schema (at most 64). */
const EPOCH_PATH = /^\/v1\/streams\/([A-Za-z0-9._~-]{1,64})\/epochs$/;
/**
 * The receiver's routes, when the same server has them (`serve
 * --with-receiver`): a connection that starts with one of these is a
 * receiver's client, whose large frame bodies are better left to node:http
 * than copied through a bridge. Every other connection may carry epochs
 * (a controller may ask for /health or create its stream first).
 */
const RECEIVER_PREFIX = '/v1/images';
const DECIMAL = /^[0-9]{1,15}$/;
/**
 * The scratch: a head of up to MAX_HEAD_BYTES and a whole socket read after
 * it (Node reads 64 KiB at most), so that nothing read ever waits outside it.
 */
const SCRATCH_BYTES = MAX_HEAD_BYTES + 64 * 1024;

/** An epoch request the fast path serves. */
interface EpochRequest {
  stream: Stream;
  contentLength: number;
  keepAlive: boolean;
  head: RequestHead;
}

/** The accepted socket's handle, as far as the fast path relies on it. */
interface StreamHandle {
  readStart(): number;
  useUserBuffer(buffer: Uint8Array): void;
}

type HttpConnectionListener = (this: Server, socket: Duplex) => void;

/**
 * Put the fast path in front of `server`'s connections. Returns null, and
 * changes nothing, when the server is not the plain node:http server it
 * expects (one 'connection' listener: node:http's own).
 */
export function installEpochFastPath(server: Server, options: EpochFastPathOptions): EpochFastPath | null {
  const listeners = server.listeners('connection');
  if (listeners.length !== 1) return null;
  return new EpochFastPath(server, listeners[0] as HttpConnectionListener, options);
}

export class EpochFastPath {
  private readonly connections = new Set<EpochConnection>();
  /** Each relayed request's bridge, to the connection that waits for its answer. */
  private readonly bridges = new WeakMap<object, EpochConnection>();
  private nextRequestId = 0;
  private closing = false;

  constructor(
    readonly server: Server,
    private readonly httpListener: HttpConnectionListener,
    readonly options: EpochFastPathOptions,
  ) {
    server.removeListener('connection', httpListener);
    server.on('connection', (socket: net.Socket) => this.accept(socket));
    // A relayed request's answer is whole when node:http has written it: the
    // connection then reads its next head itself.
    server.on('request', (request: IncomingMessage, response: ServerResponse) => {
      const connection = this.bridges.get(request.socket);
      if (connection === undefined) return;
      const bridge = request.socket;
      response.once('finish', () => connection.relayAnswered(bridge, true));
      response.once('close', () => connection.relayAnswered(bridge, response.writableFinished));
    });
  }

  get isClosing(): boolean {
    return this.closing;
  }

  /** Hand a connection to node:http. */
  toHttp(socket: Duplex): void {
    this.httpListener.call(this.server, socket);
  }

  /** Relay one request through `bridge`; its answer is reported to `connection`. */
  relay(bridge: Duplex, connection: EpochConnection): void {
    this.bridges.set(bridge, connection);
    this.toHttp(bridge);
  }

  requestId(): string {
    return `epoch-${(this.nextRequestId++).toString(36)}`;
  }

  /** Whether a connection that starts with `head` stays with the fast path (else it is node:http's). */
  keepsConnection(head: RequestHead): boolean {
    return !this.closing && head.path !== RECEIVER_PREFIX && !head.path.startsWith(`${RECEIVER_PREFIX}/`);
  }

  /** Which epoch request `head` is, or null when node:http should answer it. */
  epochRequest(head: RequestHead): EpochRequest | null {
    if (this.closing || head.method !== 'POST') return null;
    const path = EPOCH_PATH.exec(head.path);
    if (path === null) return null;
    const { headers } = head;
    // HTTP/1.1 requires a Host header; node:http refuses a request without one.
    if (!headers.has('host') || !headers.has('content-length') || headers.has('expect')) return null;
    const length = bodyLength(head);
    if (length === null) return null;
    if (headers.get('content-type')?.split(';', 1)[0].trim().toLowerCase() !== EPOCH_CONTENT_TYPE) return null;
    if (this.options.authorized !== undefined && !this.options.authorized(headers.get('authorization'))) return null;
    const stream = this.options.sender.find(path[1]);
    if (stream === undefined) return null;
    return { stream, contentLength: length, keepAlive: !connectionTokens(head).includes('close'), head };
  }

  /** A new connection: read its first head, then keep it or hand it over. */
  private accept(socket: net.Socket): void {
    const handle = (socket as unknown as { _handle: Partial<StreamHandle> | null })._handle;
    if (this.closing || handle === null || typeof handle.useUserBuffer !== 'function' || typeof handle.readStart !== 'function') {
      this.toHttp(socket);
      return;
    }
    const connection = new EpochConnection(this, socket);
    this.connections.add(connection);
    connection.onClosed = () => this.connections.delete(connection);
  }

  /** Stop taking epoch requests: idle connections close now, busy ones after their answer. */
  close(): void {
    this.closing = true;
    for (const connection of this.connections) connection.shutdown();
  }
}

function connectionTokens(head: RequestHead): string[] {
  return head.headers.get('connection')?.toLowerCase().split(',').map((token) => token.trim()) ?? [];
}

/**
 * How many body bytes follow `head`, or null when that takes parsing the
 * body (chunked), cannot be told (an upgrade), or node:http may answer
 * without a 'request' event, so that the relay could not tell when the
 * answer is out (an Expect other than 100-continue: 417).
 */
function bodyLength(head: RequestHead): number | null {
  const { headers } = head;
  if (headers.has('transfer-encoding') || headers.has('upgrade') || head.method === 'CONNECT') return null;
  const expect = headers.get('expect');
  if (expect !== undefined && expect.toLowerCase() !== '100-continue') return null;
  const length = headers.get('content-length');
  if (length === undefined) return 0;
  return DECIMAL.test(length) ? Number(length) : null;
}

type State =
  /** Reading the first head on the accepted socket's own 'data' events. */
  | 'sniff'
  /** Reading a head into the scratch buffer. */
  | 'head'
  /** Reading an epoch body. */
  | 'body'
  /** An epoch's answer is going out; reading is paused. */
  | 'answer'
  /** Passing a request's bytes to node:http. */
  | 'relay'
  /** A relayed request is whole; node:http is answering it; reading is paused. */
  | 'relayAnswer'
  | 'closed';

/**
 * One controller connection, one request at a time. Heads, and anything
 * read before an epoch's slab is known, go to a small scratch buffer; an
 * epoch body goes straight into the slab. While an answer goes out reading
 * pauses, so a pipelined next request waits in the socket (or, its start,
 * in the scratch).
 */
class EpochConnection {
  private socket: net.Socket;
  private state: State = 'sniff';
  /** Heads, and bytes read outside the slab; [0, filled) is not consumed yet. */
  private readonly scratch = Buffer.allocUnsafe(SCRATCH_BYTES);
  private filled = 0;
  /** How far findHeadEnd has looked. */
  private scanned = 0;
  /** The slab window handed out for the next read, if it was one. */
  private window: Uint8Array | null = null;
  private body: InPlaceBody | null = null;
  /** Bytes of the current request not read yet: an epoch's body, or all of a relayed request. */
  private left = 0;
  private keepAlive = true;
  private cut: AbortController | null = null;
  private headersSent = false;
  /** Frames written but not yet flushed, released if the connection closes first. */
  private readonly pending = new PendingFrames();
  /** The relayed request's bridge to node:http. */
  private bridge: Duplex | null = null;
  /** Ends the current bridge's input, from our side. */
  private endRelay: (() => void) | null = null;
  /** Whether node:http has answered the relayed request already (before its body was all relayed). */
  private relayDone = false;
  onClosed: (() => void) | null = null;

  constructor(
    private readonly front: EpochFastPath,
    socket: net.Socket,
  ) {
    this.socket = socket;
    socket.on('data', this.onSniffData);
    socket.on('end', this.onSniffGone);
    socket.on('error', this.onSniffGone);
    socket.setTimeout(front.server.headersTimeout || front.server.keepAliveTimeout, this.onSniffTimeout);
  }

  private readonly onSniffData = (chunk: Buffer): void => {
    if (chunk.length > this.scratch.length - this.filled) {
      this.handOver(chunk);
      return;
    }
    chunk.copy(this.scratch, this.filled);
    this.filled += chunk.length;
    const end = findHeadEnd(this.scratch, this.scanned, this.filled);
    this.scanned = this.filled;
    if (end < 0) {
      if (this.filled >= MAX_HEAD_BYTES) this.handOver(null);
      return;
    }
    const head = parseRequestHead(this.scratch, end);
    if (head === null || !this.front.keepsConnection(head)) {
      this.handOver(null);
      return;
    }
    this.takeSocket();
    this.state = 'head';
    this.scanned = 0;
    if (this.consumeScratch()) this.socket.resume();
    else this.socket.pause();
  };

  /** The client went (or the server is closing) before its first head was whole: it asked for nothing. */
  private readonly onSniffGone = (): void => {
    if (this.state !== 'sniff') return;
    this.stopSniffing();
    this.close();
    this.socket.destroy();
  };

  /** A first head slower than node:http's headersTimeout: node:http deals with it (408). */
  private readonly onSniffTimeout = (): void => {
    if (this.state === 'sniff') this.handOver(null);
  };

  private stopSniffing(): void {
    const socket = this.socket;
    socket.off('data', this.onSniffData);
    socket.off('end', this.onSniffGone);
    socket.off('error', this.onSniffGone);
    socket.off('timeout', this.onSniffTimeout);
    socket.setTimeout(0);
  }

  /**
   * Not a connection for the fast path: node:http gets the socket with what was
   * read put back in front (and `extra`, a chunk that did not fit).
   */
  private handOver(extra: Buffer | null): void {
    this.stopSniffing();
    this.close();
    const socket = this.socket;
    const read = Buffer.from(this.scratch.subarray(0, this.filled));
    socket.unshift(extra === null ? read : Buffer.concat([read, extra]));
    this.front.toHttp(socket);
  }

  /**
   * Move the accepted socket's handle into a socket that reads where
   * `nextReadBuffer` says. The old socket object, left without a handle, is
   * destroyed, which only takes it off the server's connection count.
   */
  private takeSocket(): void {
    this.stopSniffing();
    const accepted = this.socket;
    const holder = accepted as unknown as { _handle: StreamHandle | null };
    const handle = holder._handle as StreamHandle;
    holder._handle = null;
    accepted.destroy();
    const socket = new net.Socket({
      handle,
      allowHalfOpen: true,
      onread: { buffer: () => this.nextReadBuffer(), callback: (bytes: number, buffer: Uint8Array) => this.onRead(bytes, buffer) },
    } as net.SocketConstructorOpts & { handle: unknown });
    this.socket = socket;
    socket.on('end', () => this.onEnd());
    socket.on('error', () => undefined);
    socket.on('close', () => this.onClose());
    socket.on('timeout', () => {
      if (this.state === 'head') socket.destroy();
    });
  }

  /**
   * Where the next read lands: the epoch body's slab window, else the
   * scratch's free room. Node asks at the end of each read's callback (and
   * once when the socket is made), and the answer stands until the next
   * read, however the state changes meanwhile: see onRead.
   */
  private nextReadBuffer(): Uint8Array {
    this.window = this.state === 'body' && this.body !== null ? this.body.window(this.left) : null;
    return this.window ?? this.scratch.subarray(this.filled);
  }

  /** `bytes` were read into `buffer`; returns false to pause reading. */
  private onRead(bytes: number, buffer: Uint8Array): boolean {
    if (buffer.buffer !== this.scratch.buffer) {
      // A slab window is handed out only in the body state, and the body
      // state ends either inside this callback (the body is whole; the
      // next buffer is the scratch) or by a failure, after which reading
      // never resumes. Anything else would be a bug: drop the connection
      // rather than take bytes from the wrong place.
      const body = this.body;
      if (buffer !== this.window || this.state !== 'body' || body === null) {
        this.socket.destroy(new Error('epoch fast path: a read landed in a stale slab window'));
        return false;
      }
      this.left -= bytes;
      body.wrote(bytes);
      if (this.left === 0) return this.bodyDone(0);
      return !body.stopped;
    }
    // The scratch read went where the scratch's end was when it was asked
    // for; consuming since may have moved the end back (never forward).
    const at = buffer.byteOffset - this.scratch.byteOffset;
    if (at < this.filled) {
      this.socket.destroy(new Error('epoch fast path: a read landed on bytes not yet consumed'));
      return false;
    }
    if (at > this.filled) this.scratch.copyWithin(this.filled, at, at + bytes);
    this.filled += bytes;
    return this.consumeScratch();
  }

  /**
   * Act on what the scratch holds: a head (serve its epoch, or relay it),
   * body bytes that came with a head, or bytes to relay. Returns whether to
   * go on reading.
   */
  private consumeScratch(): boolean {
    switch (this.state) {
      case 'head': {
        const end = findHeadEnd(this.scratch, this.scanned, this.filled);
        this.scanned = this.filled;
        if (end < 0) {
          if (this.filled < MAX_HEAD_BYTES) return true;
          // Over MAX_HEAD_BYTES: node:http answers 431 and closes.
          return this.startRelay(Infinity);
        }
        const head = parseRequestHead(this.scratch, end);
        if (head === null) return this.startRelay(Infinity);
        const request = this.front.epochRequest(head);
        if (request !== null) return this.startEpoch(request);
        const length = bodyLength(head);
        return this.startRelay(length === null ? Infinity : head.bytes + length);
      }
      case 'body':
        return this.feedBody(0);
      case 'relay':
        return this.feedRelay();
      default:
        return false;
    }
  }

  /** Serve `request`, whose head fills the scratch up to `head.bytes`. Returns whether to go on reading. */
  private startEpoch(request: EpochRequest): boolean {
    const { stream, contentLength, head } = request;
    const requestId = this.front.requestId();
    const log = this.front.options.log.child({ reqId: requestId });
    log.info({ req: { method: head.method, url: head.path, remoteAddress: this.socket.remoteAddress } }, 'incoming request');
    const started = performance.now();
    this.state = 'body';
    this.socket.setTimeout(0);
    this.keepAlive = request.keepAlive && !this.front.isClosing;
    this.left = contentLength;
    this.headersSent = false;
    const body = new InPlaceBody();
    body.onStop = () => this.socket.pause();
    this.body = body;
    const cut = new AbortController();
    this.cut = cut;
    exchangeEpoch({
      stream,
      body,
      declaredLength: contentLength,
      sink: this.frameSink(requestId),
      signal: cut.signal,
      log,
      metrics: this.front.options.metrics,
    }).then(
      () => this.answered(log, started, 200),
      (err: unknown) => this.failed(err, requestId, log, started),
    );
    // The body is attached by now (runEpoch's first steps are synchronous):
    // what came with the head goes in.
    return this.left === 0 ? this.bodyDone(head.bytes) : this.feedBody(head.bytes);
  }

  /** Hand the body bytes in scratch[from, filled) to the body; keep what follows it. */
  private feedBody(from: number): boolean {
    const body = this.body as InPlaceBody;
    const take = Math.min(this.left, this.filled - from);
    body.write(this.scratch.subarray(from, from + take));
    this.left -= take;
    this.keepOnly(from + take);
    if (this.left === 0) return this.bodyDone(0);
    return !body.stopped;
  }

  /** Drop scratch[0, from): what follows is the start of a pipelined request. */
  private keepOnly(from: number): void {
    if (from > 0) this.scratch.copyWithin(0, from, this.filled);
    this.filled -= from;
    this.scanned = 0;
  }

  private bodyDone(from: number): boolean {
    this.keepOnly(from);
    this.state = 'answer';
    (this.body as InPlaceBody).end();
    return false;
  }

  /** The answer: frames after a chunked 200 head; a frame's slab is released once written. */
  private frameSink(requestId: string): FrameSink {
    let head = '';
    return {
      begin: () => {
        this.headersSent = true;
        const connection = this.keepAlive ? `keep-alive\r\nkeep-alive: timeout=${Math.floor(this.front.server.keepAliveTimeout / 1000)}` : 'close';
        head =
          `HTTP/1.1 200 OK\r\ncontent-type: ${FRAMES_CONTENT_TYPE}\r\nx-request-id: ${requestId}\r\n` +
          `connection: ${connection}\r\ntransfer-encoding: chunked\r\n\r\n`;
      },
      write: (frame, release) => {
        const socket = this.socket;
        if (socket.destroyed) {
          release(new Error('connection closed'));
          return;
        }
        socket.cork();
        socket.write(`${head}${frame.length.toString(16)}\r\n`);
        head = '';
        socket.write(frame, this.pending.hold(release));
        socket.write('\r\n');
        socket.uncork();
      },
    };
  }

  /** The epoch's frames are all out: end the chunked answer, then read the next request or close. */
  private answered(log: FastifyBaseLogger, started: number, statusCode: number): void {
    this.endRequest();
    const socket = this.socket;
    if (socket.destroyed) return;
    socket.write('0\r\n\r\n', (err) => {
      if (err) return;
      logCompleted(log, started, statusCode);
      // An unread rest of the body (the epoch failed after its first
      // frame) would stall a kept-alive connection: close it.
      if (this.left > 0) this.keepAlive = false;
      if (this.nextRequest()) socket.resume();
    });
  }

  /** The epoch failed before its first frame: a JSON error, and the connection closes (the rest of the body is not wanted). */
  private failed(err: unknown, requestId: string, log: FastifyBaseLogger, started: number): void {
    if (this.headersSent) {
      // The stream ended the answer with an ABORT frame.
      this.answered(log, started, 200);
      return;
    }
    this.endRequest();
    this.keepAlive = false;
    this.state = 'answer';
    const socket = this.socket;
    socket.pause();
    const answer = errorAnswer(err);
    const extra = Object.entries(answer.headers).map(([name, value]) => `${name}: ${value}\r\n`).join('');
    if (!socket.destroyed) {
      socket.write(
        `HTTP/1.1 ${answer.statusCode} ${STATUS_CODES[answer.statusCode] ?? 'Error'}\r\n` +
          `content-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(answer.body)}\r\n` +
          `x-request-id: ${requestId}\r\nconnection: close\r\n${extra}\r\n${answer.body}`,
      );
    }
    logCompleted(log, started, answer.statusCode);
    socket.destroySoon();
  }

  private endRequest(): void {
    this.body = null;
    this.cut = null;
  }

  /**
   * The answer is out: read the next head (maybe in the scratch already),
   * or close. Returns whether to go on reading (inside a read's callback
   * that is its return value; elsewhere the caller resumes the socket).
   */
  private nextRequest(): boolean {
    const socket = this.socket;
    if (this.state === 'closed' || socket.destroyed) return false;
    if (!this.keepAlive || this.front.isClosing) {
      socket.destroySoon();
      return false;
    }
    this.state = 'head';
    socket.setTimeout(this.front.server.keepAliveTimeout);
    return this.filled > 0 ? this.consumeScratch() : true;
  }

  /**
   * Relay the request in the scratch, `length` bytes in all (Infinity: the
   * connection's every byte from here on), to node:http through a new
   * bridge: a Duplex, as if it were a connection of its own. Returns
   * whether to go on reading.
   */
  private startRelay(length: number): boolean {
    this.state = 'relay';
    this.socket.setTimeout(0);
    this.left = length;
    this.relayDone = false;
    const socket = this.socket;
    let relayEnded = false;
    const bridge = new Duplex({
      allowHalfOpen: true,
      read: () => {
        if (this.state === 'relay' && this.bridge === bridge) socket.resume();
      },
      write: (chunk: Buffer, _encoding, callback) => {
        socket.write(chunk, callback);
      },
      final: (callback) => {
        // node:http ends the connection without a 'request' event (a
        // request it refused itself: no Host header, say), or it has the
        // connection for good and ends it: so does the real one, after
        // the answer already written. (After an answer that asked to
        // close, relayAnswered has seen it first.)
        if (!relayEnded) {
          this.keepAlive = false;
          this.close();
          socket.pause();
          socket.end();
        }
        callback();
      },
      destroy: (err, callback) => {
        // Destroyed before its answer was whole (a request node:http
        // refused, a timeout): the connection cannot go on.
        if (!relayEnded) socket.destroy();
        callback(err);
      },
    });
    for (const name of ['remoteAddress', 'remotePort', 'remoteFamily', 'localAddress', 'localPort'] as const) {
      Object.defineProperty(bridge, name, { get: () => socket[name] });
    }
    this.bridge = bridge;
    this.endRelay = () => {
      relayEnded = true;
      bridge.push(null);
    };
    this.front.relay(bridge, this);
    return this.feedRelay();
  }

  /** Pass what the scratch holds of the relayed request to node:http. */
  private feedRelay(): boolean {
    const bridge = this.bridge as Duplex;
    const take = Math.min(this.left, this.filled);
    let more = true;
    if (take > 0) more = bridge.push(Buffer.from(this.scratch.subarray(0, take)));
    this.left -= take;
    this.keepOnly(take);
    if (this.left > 0) return more;
    if (this.relayDone) return this.finishRelay();
    this.state = 'relayAnswer';
    return false;
  }

  /**
   * node:http has answered the relayed request on `bridge` (`whole`: to the
   * end). An answer that came before the body was all here (an early
   * refusal) waits for the body: node:http reads and drops it, as it would
   * on a connection of its own, and the next request starts after it.
   */
  relayAnswered(bridge: Duplex, whole: boolean): void {
    // A bridge that has the connection for good answers request after request.
    if (bridge !== this.bridge || this.left === Infinity || this.relayDone) return;
    // node:http ends a connection whose answer said Connection: close just
    // before this (its own 'finish' listener comes first).
    if (bridge.writableEnded) this.keepAlive = false;
    if (!whole) {
      this.socket.destroy();
      return;
    }
    this.relayDone = true;
    if (this.state === 'relayAnswer' && this.finishRelay()) this.socket.resume();
  }

  /** The relayed request is over: on to the next. Returns whether to go on reading. */
  private finishRelay(): boolean {
    this.bridge = null;
    this.endRelay?.();
    this.endRelay = null;
    return this.nextRequest();
  }

  private onEnd(): void {
    switch (this.state) {
      case 'relay':
        this.bridge?.push(null);
        break;
      case 'body':
        // A short body: the reader reports it (EPOCH_TRUNCATED), then the connection closes.
        this.keepAlive = false;
        this.body?.end();
        break;
      case 'answer':
      case 'relayAnswer':
        this.keepAlive = false;
        break;
      default:
        this.socket.end();
    }
  }

  private onClose(): void {
    this.close();
    this.bridge?.destroy();
    // A controller that goes away mid-answer aborts the epoch, exactly as if
    // it had asked: the receiver cannot have committed it.
    this.cut?.abort(clientDisconnected());
    this.pending.releaseAll();
  }

  private close(): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.onClosed?.();
  }

  /** The server is closing: close now if idle, else after the answer in hand. */
  shutdown(): void {
    this.keepAlive = false;
    // A connection that has not sent a whole request yet has asked for nothing.
    if (this.state === 'sniff') this.onSniffGone();
    else if (this.state === 'head' && this.filled === 0) this.socket.destroy();
  }
}

/** The 'request completed' line fastify logs for every request. */
function logCompleted(log: FastifyBaseLogger, started: number, statusCode: number): void {
  log.info({ res: { statusCode }, responseTime: performance.now() - started }, 'request completed');
}
