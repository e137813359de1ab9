/**
 * A strict HTTP/1.1 request-head reader for the epoch fast path
 * (src/fast-path.ts). It accepts only heads it understands completely; for
 * anything else it answers null and the request goes to node:http, which
 * then decides (and answers 400, 431, 505, ... as it always did). Being
 * strict here costs nothing but speed for odd clients.
 */

/** Largest request head read: node:http's default --max-http-header-size (longer ones are node:http's). */
export const MAX_HEAD_BYTES = 16 * 1024;

/** The headers the fast path reads: any of these twice and the head is not ours. */
const SINGLE_HEADERS = new Set(['content-length', 'content-type', 'authorization', 'transfer-encoding', 'connection', 'expect', 'upgrade', 'host']);

/** RFC 9110 token characters (header names, methods). */
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** A field value: visible ASCII, spaces and tabs (no obs-text, no control bytes). */
const FIELD_VALUE = /^[\t\x20-\x7e]*$/;
/** An origin-form request target: path characters only, no query, no fragment. */
const ORIGIN_PATH = /^\/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*$/;

export interface RequestHead {
  method: string;
  /** The request target: an origin-form path without a query. */
  path: string;
  /** Lower-cased names; each of SINGLE_HEADERS at most once, values trimmed. */
  headers: Map<string, string>;
  /** Bytes of the head, its blank line included. */
  bytes: number;
}

/**
 * The end of the head in `buffer[0, length)` (the index just past its blank
 * line), or -1 if the blank line has not arrived. Scanning restarts at
 * `from`, the length at the last call, less the three bytes a CRLFCRLF can
 * straddle.
 */
export function findHeadEnd(buffer: Uint8Array, from: number, length: number): number {
  for (let i = Math.max(0, from - 3); i + 3 < length; i++) {
    if (buffer[i] === 0x0d && buffer[i + 1] === 0x0a && buffer[i + 2] === 0x0d && buffer[i + 3] === 0x0a) return i + 4;
  }
  return -1;
}

/**
 * Parse the head in `buffer[0, end)` (`end` from findHeadEnd). Null when it
 * is anything but a plain HTTP/1.1 request with an origin-form path and
 * well-formed header lines.
 */
export function parseRequestHead(buffer: Buffer, end: number): RequestHead | null {
  // node:http counts a little less of a head than its bytes (the target,
  // header names and values), so a head within this many bytes is within
  // its limit too, and a longer one is node:http's to accept or refuse.
  if (end > MAX_HEAD_BYTES) return null;
  const text = buffer.toString('latin1', 0, end - 4);
  const lines = text.split('\r\n');
  const requestLine = lines[0].split(' ');
  if (requestLine.length !== 3) return null;
  const [method, path, version] = requestLine;
  if (version !== 'HTTP/1.1' || !TOKEN.test(method) || !ORIGIN_PATH.test(path)) return null;
  const headers = new Map<string, string>();
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i];
    const colon = line.indexOf(':');
    if (colon <= 0) return null;
    const name = line.slice(0, colon);
    const value = line.slice(colon + 1);
    // A bare CR or LF inside a line, white space before the colon, an
    // obsolete line folding: all node:http's to judge.
    if (!TOKEN.test(name) || !FIELD_VALUE.test(value)) return null;
    const key = name.toLowerCase();
    if (SINGLE_HEADERS.has(key) && headers.has(key)) return null;
    headers.set(key, value.trim());
  }
  return { method, path, headers, bytes: end };
}
