/**
 * The workload of bench/capture-node.sh: a small JSON service whose memory is
 * an LRU of records, so V8's heap churns the way a caching service's does.
 *
 * GET /items/:id returns a record, building it first on a miss (as if loaded
 * from a database) and evicting the least recently used record past
 * --entries; PUT /items/:id with a JSON body ({ "delta": n, "tag": "..." })
 * changes a record in place (scores, history, tags). Records are objects,
 * strings and arrays of about 2.5 KiB, so 8000 of them keep about 20 MiB
 * alive while every request leaves garbage behind (bodies, JSON text, new
 * records): young-generation scavenges all the time and old-generation
 * collections as evicted records die. Listens on 127.0.0.1 only, on a free
 * port that it writes to --port-file once it is listening; exits by itself
 * after --seconds.
 *
 *   node dist/bench/workloads/lru-server.js --port-file F [--entries 8000] [--seconds 120]
 */
import { renameSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { parseArgs } from 'node:util';
import { xorshiftUnit } from '../../src/xorshift.js';

interface HistoryItem {
  at: number;
  delta: number;
  tag: string;
}

interface Entry {
  id: number;
  name: string;
  tags: string[];
  scores: number[];
  history: HistoryItem[];
  body: string;
  hits: number;
  updatedAt: number;
}

const WORDS = ['alpha', 'bravo', 'charlie', 'delta', 'echo', 'foxtrot', 'golf', 'hotel', 'india', 'juliet', 'kilo', 'lima', 'mike', 'november'];
const SCORES = 32;
const HISTORY_MAX = 16;
const TAGS_MAX = 8;

function buildEntry(id: number): Entry {
  // Seeded per record, so a record rebuilt after eviction has the same contents.
  const rand = xorshiftUnit(id * 2654435761);
  const words: string[] = [];
  const length = 30 + Math.floor(rand() * 220);
  for (let i = 0; i < length; i++) words.push(WORDS[Math.floor(rand() * WORDS.length)]);
  return {
    id,
    name: `record-${id}-${WORDS[id % WORDS.length]}`,
    tags: [WORDS[Math.floor(rand() * WORDS.length)], `t${id % 97}`],
    scores: Array.from({ length: SCORES }, () => rand() * 1000),
    history: [],
    body: words.join(' '),
    hits: 0,
    updatedAt: Date.now(),
  };
}

class Lru {
  private readonly map = new Map<number, Entry>();
  hits = 0;
  misses = 0;
  evictions = 0;

  constructor(private readonly capacity: number) {}

  get size(): number {
    return this.map.size;
  }

  /** The record, most recently used from now on; built on a miss. */
  fetch(id: number): Entry {
    let entry = this.map.get(id);
    if (entry === undefined) {
      this.misses++;
      entry = buildEntry(id);
    } else {
      this.hits++;
      this.map.delete(id);
    }
    this.map.set(id, entry);
    while (this.map.size > this.capacity) {
      const oldest = this.map.keys().next().value as number;
      this.map.delete(oldest);
      this.evictions++;
    }
    return entry;
  }
}

function send(res: ServerResponse, status: number, value: unknown): void {
  const text = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function main(): void {
  const { values } = parseArgs({
    options: {
      'port-file': { type: 'string' },
      entries: { type: 'string', default: '8000' },
      seconds: { type: 'string', default: '120' },
    },
  });
  const portFile = values['port-file'];
  if (portFile === undefined) throw new Error('--port-file is required');
  const lru = new Lru(Number(values.entries));
  let requests = 0;

  const server = createServer((req, res) => {
    requests++;
    const match = /^\/items\/(\d+)$/.exec(req.url ?? '');
    if (req.url === '/stats') {
      send(res, 200, { requests, size: lru.size, hits: lru.hits, misses: lru.misses, evictions: lru.evictions, memory: process.memoryUsage() });
      return;
    }
    if (match === null) {
      send(res, 404, { error: 'not found' });
      return;
    }
    const entry = lru.fetch(Number(match[1]));
    entry.hits++;
    if (req.method === 'GET') {
      send(res, 200, entry);
      return;
    }
    if (req.method !== 'PUT') {
      send(res, 405, { error: 'method not allowed' });
      return;
    }
    readBody(req).then(
      (text) => {
        const change = JSON.parse(text) as { delta: number; tag: string };
        const slot = Math.abs(change.delta) % SCORES;
        entry.scores[slot] += change.delta;
        entry.history.push({ at: Date.now(), delta: change.delta, tag: change.tag });
        if (entry.history.length > HISTORY_MAX) entry.history.shift();
        if (!entry.tags.includes(change.tag)) {
          entry.tags.push(change.tag);
          if (entry.tags.length > TAGS_MAX) entry.tags.splice(1, 1);
        }
        entry.updatedAt = Date.now();
        send(res, 200, { id: entry.id, hits: entry.hits, score: entry.scores[slot], history: entry.history.length });
      },
      (err: Error) => send(res, 400, { error: err.message }),
    );
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1', () => {
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('no port');
    writeFileSync(`${portFile}.tmp`, `${address.port}\n`);
    renameSync(`${portFile}.tmp`, portFile);
  });
  // Bounded: gone after --seconds whatever happens to the script that started it.
  setTimeout(() => {
    console.error(`lru-server: ${requests} requests, ${lru.hits} hits, ${lru.misses} misses, ${lru.evictions} evictions`);
    process.exit(0);
  }, Number(values.seconds) * 1000).unref();
}

main();
