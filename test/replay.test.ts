import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageRoot } from '../src/package-root.js';
import { replay, type ReplaySummary } from '../src/replay.js';
import { generateTraceFile } from '../src/trace-gen.js';
import { parseTrace } from '../src/trace.js';
import { readFile } from 'node:fs/promises';

const run = promisify(execFile);
const root = packageRoot();
const sharedTraces = resolve(root, '..', 'shared', 'traces');
const realTraces = existsSync(sharedTraces) ? readdirSync(sharedTraces).filter((f) => f.endsWith('.rmtr')) : [];

let dir: string;
let generated: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'remus-replay-'));
  generated = join(dir, 'generated.rmtr');
  await generateTraceFile(generated, { seed: 7, epochs: 6, pages: 512, profile: 'mixed' });
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('replay of real traces (../shared/traces)', () => {
  it.skipIf(realTraces.length === 0)('finds traces to replay (skipped: no ../shared/traces/*.rmtr on this machine)', () => {
    expect(realTraces.length).toBeGreaterThan(0);
  });

  for (const name of realTraces) {
    for (const workers of [1, 2]) {
      it(`${name} with ${workers} worker(s) leaves the receiver image equal to the trace's`, async () => {
        const path = join(sharedTraces, name);
        const summary = await replay({ tracePath: path, workers });
        const trace = parseTrace(await readFile(path));
        expect(summary.epochs.map((e) => e.pages)).toEqual(trace.epochs.map((e) => e.count));
        expect(summary.mismatches).toEqual([]);
        expect(summary.digestEqual).toBe(true);
        expect(summary.imageEqual).toBe(true);
        expect(summary.pagesCompared).toBe(summary.imagePages);
        // Dirty epochs of real memory compress: far fewer bytes than pages.
        expect(summary.dirty.bytesOut).toBeLessThan(summary.dirty.bytesIn / 4);
      });
    }
  }
});

describe('npm run replay', () => {
  it('prints one JSON summary that matches the trace', async () => {
    const { stdout } = await run('npm', ['run', 'replay', '--', generated, '--json', '--workers', '2', '--cache-bytes', '1MiB'], {
      cwd: root,
      maxBuffer: 64 * 1024 * 1024,
    });
    // npm prints its own "> script" banner lines; everything the program
    // printed must be the single JSON object.
    const programLines = stdout.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('>'));
    expect(programLines).toHaveLength(1);
    const summary = JSON.parse(programLines[0]) as ReplaySummary;
    const trace = parseTrace(await readFile(generated));
    expect(summary.epochs).toHaveLength(trace.epochs.length);
    expect(summary.epochs.map((e) => e.pages)).toEqual(trace.epochs.map((e) => e.count));
    expect(summary.total.pages).toBe(trace.epochs.reduce((n, e) => n + e.count, 0));
    expect(summary.total.bytesIn).toBe(summary.total.pages * trace.pageSize);
    expect(summary.config.workers).toBe(2);
    expect(summary.config.cacheBytes).toBe(1024 * 1024);
    expect(summary.imageEqual).toBe(true);
  });

  it('--codec xbzrle replays through codec 2 exactly', async () => {
    const { stdout } = await run('node', [join(root, 'dist', 'src', 'cli.js'), 'replay', generated, '--json', '--workers', '1', '--cache-bytes', '1MiB', '--codec', 'xbzrle'], {
      maxBuffer: 64 * 1024 * 1024,
    });
    const summary = JSON.parse(stdout) as ReplaySummary;
    expect(summary.config.codec).toBe('xbzrle');
    expect(summary.imageEqual).toBe(true);
    expect(summary.digestEqual).toBe(true);
    const failure = await run('node', [join(root, 'dist', 'src', 'cli.js'), 'replay', generated, '--codec', 'lz4']).catch((e: unknown) => e);
    expect(failure).toMatchObject({ code: 2 });
    expect((failure as { stderr: string }).stderr).toContain('--codec');
  });

  it('exits with a usage error naming a bad option', async () => {
    const failure = await run('node', [join(root, 'dist', 'src', 'cli.js'), 'replay', generated, '--cache-bytes', 'lots']).catch((e: unknown) => e);
    expect(failure).toMatchObject({ code: 2 });
    expect((failure as { stderr: string }).stderr).toContain('--cache-bytes');
  });
});
