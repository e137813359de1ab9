import { mkdtempSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.js';
import { SenderClient } from '../src/client.js';
import { KIND_RAW } from '../src/epoch-record.js';
import { replay, type ReplaySummary } from '../src/replay.js';
import { generateTraceFile } from '../src/trace-gen.js';
import { parseTrace } from '../src/trace.js';

/** Prometheus text format -> "name{labels}" -> value (labels as printed, e.g. `stream="s1"`). */
function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    if (match === null) throw new Error(`not a sample line: ${line}`);
    out.set(match[1] + (match[2] ?? ''), Number(match[3]));
  }
  return out;
}

let dir: string;
let tracePath: string;
let senderApp: FastifyInstance;
let receiverApp: FastifyInstance;
let senderUrl: string;
let receiverUrl: string;
let summary: ReplaySummary;
let streamId: string;
const logLines: Record<string, unknown>[] = [];

/** Zero and raw pages of the trace, counted from the trace itself (independent of the encoder). */
let traceZero = 0;
let traceRaw = 0;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'remus-metrics-'));
  tracePath = join(dir, 'trace.rmtr');
  await generateTraceFile(tracePath, { seed: 11, epochs: 6, pages: 1024, profile: 'mixed', rawFraction: 0.02 });
  const trace = parseTrace(await readFile(tracePath));
  const zeroPage = Buffer.alloc(trace.pageSize);
  for (const e of trace.epochs) {
    for (let i = 0; i < e.count; i++) {
      if (e.kinds[i] === KIND_RAW) traceRaw++;
      else if (zeroPage.equals(e.pages.subarray(i * trace.pageSize, (i + 1) * trace.pageSize))) traceZero++;
    }
  }
  const logStream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') logLines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  senderApp = await buildApp({ sender: { workers: 2 }, logger: { level: 'debug', stream: logStream } });
  receiverApp = await buildApp({ receiver: {} });
  senderUrl = await senderApp.listen({ host: '127.0.0.1', port: 0 });
  receiverUrl = await receiverApp.listen({ host: '127.0.0.1', port: 0 });
  // A small cache, so that some pages miss after epoch 0 as well.
  summary = await replay({ tracePath, senderUrl, receiverUrl, workers: 2, cacheBytes: 256 * 4096 });
  const streams = (await (await fetch(`${senderUrl}/v1/streams`)).json()) as { id: string }[];
  expect(streams).toHaveLength(1);
  streamId = streams[0].id;
});

afterAll(async () => {
  await Promise.all([senderApp?.close(), receiverApp?.close()]);
  rmSync(dir, { recursive: true, force: true });
});

async function scrape(): Promise<{ text: string; metrics: Map<string, number>; contentType: string | null }> {
  const response = await fetch(`${senderUrl}/metrics`);
  expect(response.status).toBe(200);
  const text = await response.text();
  return { text, metrics: parseMetrics(text), contentType: response.headers.get('content-type') };
}

describe('GET /metrics after a replay', () => {
  it('is Prometheus text and the replay succeeded', async () => {
    expect(summary.imageEqual).toBe(true);
    const { contentType, text } = await scrape();
    expect(contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(text).toContain('# TYPE remus_stream_pages_total counter');
    expect(text).toContain('# TYPE remus_stream_epoch_duration_seconds histogram');
  });

  it("counts exactly the replay's own totals, per stream and in total", async () => {
    const { metrics } = await scrape();
    const label = `{stream="${streamId}"}`;
    for (const prefix of ['remus_stream_', 'remus_']) {
      const get = (name: string): number => {
        const key = prefix === 'remus_' ? `remus_${name}` : `remus_stream_${name}${label}`;
        const value = metrics.get(key);
        if (value === undefined) throw new Error(`no series ${key}`);
        return value;
      };
      expect(get('pages_total')).toBe(summary.total.pages);
      expect(get('bytes_in_total')).toBe(summary.total.bytesIn);
      expect(get('bytes_out_total')).toBe(summary.total.bytesOut);
      expect(get('epochs_committed')).toBe(summary.epochs.length);
      expect(get('epochs_aborted_total')).toBe(0);
      expect(get('zero_pages_total')).toBe(traceZero);
      expect(get('raw_pages_total')).toBe(traceRaw);
      const hits = get('cache_hits_total');
      const misses = get('cache_misses_total');
      expect(hits + misses).toBe(summary.total.pages - traceZero - traceRaw);
      expect(misses).toBeGreaterThan(0);
      expect(hits).toBeGreaterThan(0);
      expect(get('full_pages_total')).toBe(misses + traceRaw);
      expect(get('cache_miss_rate')).toBeCloseTo(misses / (hits + misses), 12);
      expect(get('compression_ratio')).toBeCloseTo(summary.total.bytesOut / summary.total.bytesIn, 12);
      expect(get('unchanged_pages_total')).toBeLessThanOrEqual(hits);
      expect(get('overflows_total')).toBeLessThanOrEqual(hits);
      expect(get('encode_seconds_total')).toBeGreaterThan(0);
      expect(get('encoding_rate_bytes_per_second')).toBeGreaterThan(0);
      // The cache holds at most its slots, and at least something.
      expect(get('cache_slots')).toBe(256);
      expect(get('cache_pages')).toBeGreaterThan(0);
      expect(get('cache_pages')).toBeLessThanOrEqual(256);
      expect(get('memory_bytes')).toBeGreaterThanOrEqual(get('cache_pages') * 4096);
    }
    // One latency observation per committed epoch.
    expect(metrics.get(`remus_stream_epoch_duration_seconds_count${label}`)).toBe(summary.epochs.length);
    expect(metrics.get('remus_epoch_duration_seconds_count')).toBe(summary.epochs.length);
    expect(metrics.get('remus_epoch_duration_seconds_bucket{le="+Inf"}')).toBe(summary.epochs.length);
  });

  it('reports the workers: queue depth, busy time, tasks', async () => {
    const { metrics } = await scrape();
    expect(metrics.get('remus_workers')).toBe(2);
    expect(metrics.get('remus_streams')).toBe(1);
    let busy = 0;
    let tasks = 0;
    for (const w of ['0', '1']) {
      expect(metrics.get(`remus_worker_queue_depth{worker="${w}"}`)).toBe(0);
      busy += metrics.get(`remus_worker_busy_seconds_total{worker="${w}"}`) ?? NaN;
      tasks += metrics.get(`remus_worker_tasks_total{worker="${w}"}`) ?? NaN;
    }
    // Busy time is the workers' own encode time, the same figure the streams sum.
    expect(busy).toBeCloseTo(metrics.get('remus_encode_seconds_total') as number, 6);
    expect(tasks).toBeGreaterThanOrEqual(summary.epochs.length);
    expect(metrics.get('remus_worker_failures_total')).toBe(0);
  });

  it('logs one debug line per epoch and info lines per stream event, without page data', () => {
    const epochLines = logLines.filter((l) => l.msg === 'epoch sent');
    expect(epochLines.map((l) => l.epoch)).toEqual(summary.epochs.map((e) => e.epoch));
    for (const [i, line] of epochLines.entries()) {
      expect(line.level).toBe(20);
      expect(line).toMatchObject({ stream: streamId, pages: summary.epochs[i].pages, bytesIn: summary.epochs[i].bytesIn, bytesOut: summary.epochs[i].bytesOut });
      expect(typeof line.ms).toBe('number');
      expect(typeof line.reqId).toBe('string');
    }
    expect(logLines.filter((l) => l.event === 'create' && l.stream === streamId && l.level === 30)).toHaveLength(1);
    // Nothing long enough to carry a page.
    for (const line of logLines) expect(JSON.stringify(line).length).toBeLessThan(2048);
  });

  it('drops a deleted stream from the labels and keeps its counts in the totals', async () => {
    const before = (await scrape()).metrics;
    // An epoch that fails (out of order) is logged at info as a stream event.
    const client = new SenderClient(senderUrl);
    const failing = await fetch(`${senderUrl}/v1/streams/${streamId}/epochs`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream' },
      body: Buffer.from('not an epoch record'),
    });
    expect(failing.status).toBe(400);
    expect(logLines.some((l) => l.event === 'epoch-failed' && l.stream === streamId && l.level === 30)).toBe(true);
    await client.deleteStream(streamId);
    expect(logLines.some((l) => l.event === 'delete' && l.stream === streamId)).toBe(true);
    const { text, metrics } = await scrape();
    expect(text).not.toContain(`stream="${streamId}"`);
    expect(metrics.get('remus_streams')).toBe(0);
    for (const name of ['pages_total', 'bytes_in_total', 'bytes_out_total', 'cache_hits_total', 'cache_misses_total', 'epochs_committed']) {
      expect(metrics.get(`remus_${name}`)).toBe(before.get(`remus_${name}`));
    }
    expect(metrics.get('remus_cache_pages')).toBe(0);
    expect(metrics.get('remus_epoch_duration_seconds_count')).toBe(summary.epochs.length);
  });

  it('is served by a receiver-only app too (process metrics only)', async () => {
    const response = await fetch(`${receiverUrl}/metrics`);
    expect(response.status).toBe(200);
    const metrics = parseMetrics(await response.text());
    expect(metrics.get('remus_process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(metrics.has('remus_pages_total')).toBe(false);
  });
});
