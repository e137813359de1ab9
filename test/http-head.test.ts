import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_HEAD_BYTES, findHeadEnd, parseRequestHead } from '../src/http-head.js';

/**
 * The fast path's request-head reader (src/http-head.ts): it finds the end
 * of a head however the head arrives in pieces, reads back exactly the
 * request line and headers it was given, and refuses (null: node:http
 * decides) every head that is not plainly well formed.
 */

const TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const token = fc.string({ unit: fc.constantFrom(...TOKEN_CHARS), minLength: 1, maxLength: 20 });
/** A field value as a client sends it: visible ASCII and inner spaces, no surrounding white space. */
const fieldValue = fc
  .string({ unit: fc.integer({ min: 0x21, max: 0x7e }).map((c) => String.fromCharCode(c)), minLength: 0, maxLength: 40 })
  .chain((word) => fc.constantFrom(word, `${word} ${word}`.trim()));
const pathSegment = fc.string({ unit: fc.constantFrom(...'abcXYZ019-._~%:@!$&()*+,;='), minLength: 0, maxLength: 12 });
const path = fc.array(pathSegment, { minLength: 1, maxLength: 5 }).map((segments) => `/${segments.join('/')}`);
/** Header names other than the ones the reader allows only once. */
const otherName = token.filter((name) => !['content-length', 'content-type', 'authorization', 'transfer-encoding', 'connection', 'expect', 'upgrade', 'host'].includes(name.toLowerCase()));

interface Head {
  method: string;
  path: string;
  headers: [string, string][];
}

const head: fc.Arbitrary<Head> = fc.record({
  method: token,
  path,
  headers: fc.uniqueArray(fc.tuple(otherName, fieldValue), { maxLength: 12, selector: ([name]) => name.toLowerCase() }),
});

function text({ method, path: target, headers }: Head, separator = ': '): string {
  return `${method} ${target} HTTP/1.1\r\n${headers.map(([name, value]) => `${name}${separator}${value}\r\n`).join('')}\r\n`;
}

function bytes(head: string): Buffer {
  return Buffer.from(head, 'latin1');
}

describe('findHeadEnd', () => {
  it('finds the end of the first blank line however the bytes arrive, and not before it', () => {
    fc.assert(
      fc.property(head, fc.uint8Array({ maxLength: 200 }), fc.array(fc.nat(), { maxLength: 6 }), (h, after, cuts) => {
        const headBytes = bytes(text(h));
        const buffer = Buffer.concat([headBytes, after]);
        // Arrival in pieces: each call scans from where the last one stopped.
        const ends = [...new Set(cuts.map((cut) => cut % (buffer.length + 1)))].sort((a, b) => a - b);
        let scanned = 0;
        for (const length of [...ends, buffer.length]) {
          const end = findHeadEnd(buffer, scanned, length);
          scanned = length;
          if (length < headBytes.length) expect(end).toBe(-1);
          else {
            expect(end).toBe(headBytes.length);
            return;
          }
        }
      }),
    );
  });

  it('finds a blank line that straddles two arrivals', () => {
    const buffer = bytes('GET / HTTP/1.1\r\nhost: x\r\n\r\n');
    for (let split = 1; split < buffer.length; split++) {
      expect(findHeadEnd(buffer, 0, split), `first ${split} bytes`).toBe(split >= buffer.length ? buffer.length : -1);
      expect(findHeadEnd(buffer, split, buffer.length), `then the rest after ${split}`).toBe(buffer.length);
    }
  });
});

describe('parseRequestHead', () => {
  it('reads back the request line and every header, names lower-cased, values trimmed', () => {
    fc.assert(
      fc.property(head, fc.constantFrom(': ', ':', ':  ', ':\t'), (h, separator) => {
        const buffer = bytes(text(h, separator));
        const parsed = parseRequestHead(buffer, buffer.length);
        expect(parsed).not.toBeNull();
        expect(parsed?.method).toBe(h.method);
        expect(parsed?.path).toBe(h.path);
        expect(parsed?.bytes).toBe(buffer.length);
        expect([...(parsed?.headers ?? [])]).toEqual(h.headers.map(([name, value]) => [name.toLowerCase(), value]));
      }),
    );
  });

  it('refuses a head with any one thing wrong in it', () => {
    const mutations: [string, (h: Head) => string][] = [
      ['HTTP/1.0', (h) => text(h).replace(' HTTP/1.1\r\n', ' HTTP/1.0\r\n')],
      ['a header line without a colon', (h) => text({ ...h, headers: [...h.headers, ['x-bad', 'v']] }).replace('x-bad: v', 'x-bad v')],
      ['white space before the colon', (h) => text({ ...h, headers: [...h.headers, ['x-bad', 'v']] }).replace('x-bad: v', 'x-bad : v')],
      ['an obsolete folded line', (h) => text({ ...h, headers: [...h.headers, ['x-bad', 'v']] }).replace('x-bad: v\r\n', 'x-bad: v\r\n  folded\r\n')],
      ['a control byte in a value', (h) => text({ ...h, headers: [...h.headers, ['x-bad', 'v\x01']] })],
      ['a byte over 0x7e in a value', (h) => text({ ...h, headers: [...h.headers, ['x-bad', 'v\xe9']] })],
      ['a bare LF inside a line', (h) => text({ ...h, headers: [...h.headers, ['x-bad', 'a\nb']] })],
      ['a query string', (h) => text({ ...h, path: `${h.path}?x=1` })],
      ['an absolute-form target', (h) => text({ ...h, path: `http://host${h.path}` })],
      ['two spaces in the request line', (h) => text(h).replace(' HTTP/1.1', '  HTTP/1.1')],
      ['content-length twice', (h) => text({ ...h, headers: [...h.headers, ['content-length', '1'], ['Content-Length', '1']] })],
      ['transfer-encoding twice', (h) => text({ ...h, headers: [...h.headers, ['transfer-encoding', 'chunked'], ['transfer-encoding', 'chunked']] })],
      ['authorization twice', (h) => text({ ...h, headers: [...h.headers, ['authorization', 'Bearer a'], ['authorization', 'Bearer b']] })],
    ];
    for (const [what, mutate] of mutations) {
      fc.assert(
        fc.property(head, (h) => {
          const buffer = bytes(mutate(h));
          const end = findHeadEnd(buffer, 0, buffer.length);
          // A mutation may move the blank line; wherever it is, the head is refused.
          expect(end < 0 ? null : parseRequestHead(buffer, end), what).toBeNull();
        }),
        { numRuns: 50 },
      );
    }
  });

  it('keeps the headers the fast path reads', () => {
    const buffer = bytes(
      'POST /v1/streams/s1/epochs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length:  123 \r\n' +
        'Authorization: Bearer abc\r\nConnection: keep-alive\r\n\r\n',
    );
    const parsed = parseRequestHead(buffer, buffer.length);
    expect(parsed?.headers.get('content-length')).toBe('123');
    expect(parsed?.headers.get('content-type')).toBe('application/octet-stream');
    expect(parsed?.headers.get('authorization')).toBe('Bearer abc');
    expect(parsed?.headers.get('connection')).toBe('keep-alive');
    expect(parsed?.headers.get('host')).toBe('127.0.0.1');
  });

  it('reads a head as long as MAX_HEAD_BYTES', () => {
    const filler = 'x'.repeat(100);
    const lines: string[] = [];
    let head = 'GET / HTTP/1.1\r\n\r\n';
    for (let i = 0; head.length < MAX_HEAD_BYTES - 120; i++) {
      lines.push(`x-${i}: ${filler}\r\n`);
      head = `GET / HTTP/1.1\r\n${lines.join('')}\r\n`;
    }
    const buffer = bytes(head);
    expect(buffer.length).toBeLessThanOrEqual(MAX_HEAD_BYTES);
    expect(parseRequestHead(buffer, findHeadEnd(buffer, 0, buffer.length))?.headers.size).toBe(lines.length);
    // One byte more and the head is node:http's to judge.
    const longer = bytes(head.replace('x-0: ', `x-0: ${'y'.repeat(MAX_HEAD_BYTES - buffer.length + 1)}`));
    expect(longer.length).toBe(MAX_HEAD_BYTES + 1);
    expect(parseRequestHead(longer, findHeadEnd(longer, 0, longer.length))).toBeNull();
  });
});
