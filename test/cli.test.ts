import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.js';
import { SenderClient } from '../src/client.js';
import { KIND_RAW } from '../src/epoch-record.js';
import type { FramesReport, TraceReport } from '../src/inspect.js';
import { SERVICE_NODE_FLAGS } from '../src/node-flags.js';
import { packageRoot } from '../src/package-root.js';
import { ProgressBar } from '../src/progress.js';
import { generateTraceFile } from '../src/trace-gen.js';
import { parseTrace } from '../src/trace.js';

const CLI = join(packageRoot(), 'dist', 'src', 'cli.js');

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run the built CLI; never rejects, whatever the exit status (a serve that wrongly starts is killed by the timeout). */
function cli(args: string[], env: Record<string, string> = {}): Promise<Result> {
  return new Promise((resolve) => {
    execFile('node', [CLI, ...args], { env: { ...process.env, ...env }, maxBuffer: 64 * 1024 * 1024, timeout: 60_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

let dir: string;
let trace: string;
let framesFile: string;
/** The sender's counters for the epochs in framesFile. */
let frameStats: Record<string, number>;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'remus-cli-'));
  trace = join(dir, 'small.rmtr');
  await generateTraceFile(trace, { seed: 3, epochs: 4, pages: 256, profile: 'mixed', rawFraction: 0.02 });
  // A frames file: the sender's answers to the trace's epochs, concatenated.
  const app: FastifyInstance = await buildApp({ sender: { workers: 2 } });
  try {
    const client = new SenderClient(await app.listen({ host: '127.0.0.1', port: 0 }));
    const stream = await client.createStream({ workers: 2, cacheBytes: 128 * 4096, frameBytes: 64 * 1024 });
    const parts: Buffer[] = [];
    for (const e of parseTrace(readFileSync(trace)).epochs) parts.push(await client.sendEpochCollect(stream.id, e.record));
    framesFile = join(dir, 'epochs.frames');
    writeFileSync(framesFile, Buffer.concat(parts));
    frameStats = await client.stats(stream.id);
  } finally {
    await app.close();
  }
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('--help of every subcommand', () => {
  const cases: [string, string[]][] = [
    ['serve', ['--host', '--port', '--workers', '--max-streams', '--max-epoch-bytes', '--with-receiver', '--log-level', 'REMUS_PORT', 'REMUS_LOG_LEVEL']],
    ['receive', ['--image', '--listen', '--port', '--image-dir', '--max-frame-bytes']],
    ['replay', ['--workers', '--cache-bytes', '--frame-bytes', '--json']],
    ['capture', ['--pid', '--epochs', '--interval-ms', '--out', '--sender', '--receiver']],
    ['inspect', ['--json', 'ZERO', 'FULL', 'EMPTY', 'delta', 'CRC']],
  ];
  for (const [command, mentions] of cases) {
    it(`${command} --help exits 0 and lists its options`, async () => {
      const { code, stdout } = await cli([command, '--help']);
      expect(code).toBe(0);
      for (const m of mentions) expect(stdout).toContain(m);
    });
  }

  it('the top-level help lists every subcommand', async () => {
    const { code, stdout } = await cli(['--help']);
    expect(code).toBe(0);
    for (const command of ['serve', 'receive', 'replay', 'capture', 'inspect']) expect(stdout).toMatch(new RegExp(`^  ${command} `, 'm'));
  });
});

describe("the service's Node flags", () => {
  it('npm start and the remus-compress shebang both pass them, and the shebang runs', async () => {
    const pkg = JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    const shebang = readFileSync(CLI, 'utf8').split('\n')[0];
    for (const flag of SERVICE_NODE_FLAGS) {
      expect(pkg.scripts.start.split(' ')).toContain(flag);
      expect(shebang.split(' ')).toContain(flag);
    }
    // Run the built CLI the way the kernel runs its shebang line (env -S splits it).
    const [interpreter, ...args] = shebang.slice(2).split(' ');
    const result = await new Promise<Result>((resolve) => {
      execFile(interpreter, [...args, CLI, '--help'], { timeout: 60_000 }, (err, stdout, stderr) => {
        resolve({ code: err === null ? 0 : -1, stdout, stderr });
      });
    });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('serve');
  });
});

describe('bad options exit 2 and name the option', () => {
  for (const command of ['serve', 'receive', 'replay', 'capture', 'inspect']) {
    it(`${command} --bogus`, async () => {
      const { code, stderr } = await cli([command, '--bogus']);
      expect(code).toBe(2);
      expect(stderr).toContain('--bogus');
    });
  }

  it('bad values, from flags and from the environment', async () => {
    const port = await cli(['serve', '--port', '99999']);
    expect(port.code).toBe(2);
    expect(port.stderr).toContain('--port');
    const level = await cli(['serve', '--log-level', 'loud']);
    expect(level.code).toBe(2);
    expect(level.stderr).toContain('--log-level');
    const workers = await cli(['serve'], { REMUS_WORKERS: 'many' });
    expect(workers.code).toBe(2);
    expect(workers.stderr).toContain('--workers');
    const withReceiver = await cli(['serve'], { REMUS_WITH_RECEIVER: 'perhaps' });
    expect(withReceiver.code).toBe(2);
    expect(withReceiver.stderr).toContain('REMUS_WITH_RECEIVER');
    const unknown = await cli(['frobnicate']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("unknown command 'frobnicate'");
  });
});

describe('replay from the command line', () => {
  it('replays a generated trace end to end and says the images are equal', async () => {
    const { code, stdout, stderr } = await cli(['replay', trace, '--workers', '2', '--cache-bytes', '512KiB']);
    expect(code).toBe(0);
    expect(stdout).toContain("receiver image equals the trace's final image");
    expect(stdout).toMatch(/^ +total +\d+/m);
    // stderr is not a terminal here: one progress line per epoch, no bar.
    expect(stderr.trim().split('\n')).toHaveLength(4);
    expect(stderr).not.toContain('\r');
  });

  it('--json prints one object and no progress', async () => {
    const { code, stdout, stderr } = await cli(['replay', trace, '--json', '--workers', '1']);
    expect(code).toBe(0);
    expect(stderr).toBe('');
    const summary = JSON.parse(stdout) as { imageEqual: boolean; epochs: unknown[] };
    expect(summary.imageEqual).toBe(true);
    expect(summary.epochs).toHaveLength(4);
  });
});

describe('progress bar', () => {
  it('redraws one line in place and ends it', () => {
    let written = '';
    const stream = { columns: 80, write: (s: string) => ((written += s), true) } as unknown as NodeJS.WriteStream;
    const bar = new ProgressBar(stream);
    bar.update(0.5, 'epoch 1');
    bar.update(1, 'epoch 3');
    bar.finish();
    const draws = written.split('\r').filter((s) => s !== '');
    expect(draws).toHaveLength(2);
    expect(draws[0]).toContain(' 50% ');
    expect(draws[1]).toContain('100% ');
    expect(draws[1]).toContain('[##############################]');
    expect(written.endsWith('\n')).toBe(true);
    for (const d of draws) expect(d.trimEnd().length).toBeLessThan(80);
  });
});

describe('inspect', () => {
  it('a trace: epochs, pages, raw and zero pages per epoch', async () => {
    const parsed = parseTrace(readFileSync(trace));
    const { code, stdout } = await cli(['inspect', trace, '--json']);
    expect(code).toBe(0);
    const report = JSON.parse(stdout) as TraceReport;
    expect(report.kind).toBe('trace');
    expect(report.pageSize).toBe(parsed.pageSize);
    expect(report.epochs.map((e) => e.pages)).toEqual(parsed.epochs.map((e) => e.count));
    const zero = Buffer.alloc(parsed.pageSize);
    for (const [i, e] of parsed.epochs.entries()) {
      let raw = 0;
      let zeros = 0;
      for (let p = 0; p < e.count; p++) {
        if (e.kinds[p] === KIND_RAW) raw++;
        if (zero.equals(e.pages.subarray(p * parsed.pageSize, (p + 1) * parsed.pageSize))) zeros++;
      }
      expect(report.epochs[i]).toMatchObject({ epoch: i, rawPages: raw, zeroPages: zeros });
    }
    const text = await cli(['inspect', trace]);
    expect(text.code).toBe(0);
    expect(text.stdout).toContain('RMTR trace, page size 4096, 4 epochs');
  });

  it("a frame stream: each frame's header, CRC, and records by type matching the sender's counters", async () => {
    const { code, stdout } = await cli(['inspect', framesFile, '--json']);
    expect(code).toBe(0);
    const report = JSON.parse(stdout) as FramesReport;
    expect(report.kind).toBe('frames');
    expect(report.error).toBeUndefined();
    expect(report.totals.bytes).toBe(readFileSync(framesFile).length);
    expect(report.frames.every((f) => f.crcOk && f.recordError === undefined)).toBe(true);
    // Frames per epoch are numbered from 0, the last one LAST; epoch 0 is RESYNC.
    const lasts = report.frames.filter((f) => f.flags.includes('LAST'));
    expect(lasts.map((f) => f.epoch)).toEqual([0, 1, 2, 3]);
    expect(report.frames.filter((f) => f.epoch === 0).every((f) => f.flags.includes('RESYNC'))).toBe(true);
    expect(report.frames.length).toBeGreaterThan(4); // 64 KiB frames: epoch 0 spans several
    // The default codec (3): a frame's records are chunks, each holding one or more page records.
    const pagesOf = (f: (typeof report.frames)[number]): number => f.records.zero + f.records.full + f.records.empty + f.records.delta;
    expect(report.frames.every((f) => f.codec === 3)).toBe(true);
    for (const f of report.frames) expect(pagesOf(f)).toBeGreaterThanOrEqual(f.recordCount);
    expect(report.frames.some((f) => pagesOf(f) > f.recordCount)).toBe(true);
    for (const last of lasts) {
      const epochPages = report.frames.filter((f) => f.epoch === last.epoch).reduce((n, f) => n + pagesOf(f), 0);
      expect(last.epochPageCount).toBe(epochPages);
    }
    const r = report.totals.records;
    expect(r.zero).toBe(frameStats.zeroPages);
    expect(r.full).toBe(frameStats.cacheMisses + frameStats.rawPages);
    expect(r.empty).toBe(frameStats.unchangedPages);
    expect(r.delta).toBe(frameStats.cacheHits - frameStats.unchangedPages);

    const text = await cli(['inspect', framesFile]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/frame stream, \d+ frames/);
    expect(text.stdout).toContain('LAST|RESYNC');
  });

  it('a damaged frame stream: the bad CRC is shown and the exit status is 1', async () => {
    const bytes = readFileSync(framesFile);
    bytes[100] ^= 0xff; // inside frame 0's payload
    const damaged = join(dir, 'damaged.frames');
    writeFileSync(damaged, bytes);
    const { code, stdout } = await cli(['inspect', damaged]);
    expect(code).toBe(1);
    expect(stdout).toContain('BAD');
  });

  it('neither a trace nor frames: exit 1, saying what it starts with', async () => {
    const other = join(dir, 'other.bin');
    writeFileSync(other, 'hello world');
    const { code, stderr } = await cli(['inspect', other]);
    expect(code).toBe(1);
    expect(stderr).toContain('not a trace');
    expect(stderr).toContain('0x68656c6c');
  });
});

describe('capture from the command line', () => {
  it.skipIf(process.platform !== 'linux')('captures a live process into a trace that inspect can read', async () => {
    const child = spawn('sleep', ['60'], { stdio: 'ignore' });
    try {
      const out = join(dir, 'sleep.rmtr');
      const { code, stdout, stderr } = await cli(['capture', '--pid', String(child.pid), '--epochs', '2', '--interval-ms', '10', '--out', out]);
      expect(stderr).toContain('epoch 1:');
      expect(code).toBe(0);
      expect(stdout).toContain(`wrote ${out}: 2 epochs`);
      expect(existsSync(out)).toBe(true);
      const inspected = await cli(['inspect', out, '--json']);
      expect(inspected.code).toBe(0);
      expect((JSON.parse(inspected.stdout) as TraceReport).epochs).toHaveLength(2);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
