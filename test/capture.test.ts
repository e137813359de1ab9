import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { main as captureCli } from '../bench/capture.js';
import { buildApp } from '../src/app.js';
import {
  CaptureError,
  Capturer,
  captureEpochs,
  captureToFile,
  captureToService,
  parseWritableMappings,
  type CapturedEpoch,
} from '../src/capture.js';
import { packageRoot } from '../src/package-root.js';
import { replay } from '../src/replay.js';
import { parseTrace, TraceImage } from '../src/trace.js';

/**
 * Captures a small C program the test drives over stdin: a C process's memory
 * is quiet (no garbage collector writing on its own), so "exactly the pages
 * it wrote" is something a test can check.
 */
const PAGE = 4096;
/** Pages of the child's buffer. */
const BUFFER_PAGES = 64;
/** Pages the child maps on 'm' and unmaps on 'u'. */
const EXTRA_PAGES = 8;
/** On 'f', the child maps a shared file of FILE_PAGES pages FILE_MAP_PAGES long: reading past the file's end fails (EIO). */
const FILE_PAGES = 2;
const FILE_MAP_PAGES = 4;
/** Tags the child fills its buffer with at start, its extra pages and its file pages with. */
const START_TAG = 1;
const EXTRA_TAG = 2;
const FILE_TAG = 3;
/**
 * Pages outside the buffer a quiet child may dirty between two checkpoints:
 * its stack, stdio's buffers and their bookkeeping.
 */
const QUIET_DIRTY_LIMIT = 16;

const CHILD_SOURCE = String.raw`
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGES ${BUFFER_PAGES}
#define EXTRA_PAGES ${EXTRA_PAGES}

static long page;

/* Byte k of page p written with tag t; the test computes the same. */
static void fill(unsigned char *base, long p, unsigned long tag) {
  unsigned char *dst = base + p * page;
  for (long k = 0; k < page; k++) dst[k] = (unsigned char)(tag * 131 + p * 31 + k * 7 + (k >> 8));
}

static unsigned char *map(long pages, int flags, int fd) {
  unsigned char *at = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, flags, fd, 0);
  if (at == MAP_FAILED) exit(1);
  return at;
}

int main(void) {
  page = sysconf(_SC_PAGESIZE);
  unsigned char *buf = map(PAGES, MAP_PRIVATE | MAP_ANONYMOUS, -1);
  unsigned char *extra = NULL;
  for (long p = 0; p < PAGES; p++) fill(buf, p, ${START_TAG});
  printf("%lu %ld\n", (unsigned long)buf, page);
  fflush(stdout);
  char line[1024];
  while (fgets(line, sizeof line, stdin)) {
    char *rest = line + 1;
    if (line[0] == 'w') {            /* w TAG PAGE...: write those pages of the buffer */
      unsigned long tag = strtoul(rest, &rest, 10);
      for (;;) {
        char *end;
        long p = strtol(rest, &end, 10);
        if (end == rest) break;
        fill(buf, p, tag);
        rest = end;
      }
      printf("ok\n");
    } else if (line[0] == 'm') {     /* m: map and fill EXTRA_PAGES more, answer their address */
      extra = map(EXTRA_PAGES, MAP_PRIVATE | MAP_ANONYMOUS, -1);
      for (long p = 0; p < EXTRA_PAGES; p++) fill(extra, p, ${EXTRA_TAG});
      printf("%lu\n", (unsigned long)extra);
    } else if (line[0] == 'u') {     /* u: unmap them */
      munmap(extra, EXTRA_PAGES * page);
      printf("ok\n");
    } else if (line[0] == 'f') {     /* f PATH: map a file shared, longer than the file; answer the address */
      int fd = open(strtok(rest, " \n"), O_RDWR | O_CREAT | O_TRUNC, 0600);
      if (fd < 0 || ftruncate(fd, ${FILE_PAGES} * page) != 0) exit(1);
      unsigned char *file = map(${FILE_MAP_PAGES}, MAP_SHARED, fd);
      for (long p = 0; p < ${FILE_PAGES}; p++) fill(file, p, ${FILE_TAG});
      printf("%lu\n", (unsigned long)file);
    }
    fflush(stdout);
  }
  return 0;
}
`;

function pattern(page: number, tag: number): Buffer {
  const out = Buffer.alloc(PAGE);
  for (let k = 0; k < PAGE; k++) out[k] = (tag * 131 + page * 31 + k * 7 + (k >> 8)) & 0xff;
  return out;
}

function compilerAvailable(): boolean {
  return spawnSync('cc', ['--version'], { stdio: 'ignore' }).status === 0;
}

const hasCompiler = compilerAvailable();

/** The C child: a line protocol over stdin/stdout. */
class Child {
  readonly process: ChildProcessWithoutNullStreams;
  private readonly lines: string[] = [];
  /** Answers are read in order, so waiters are served in order. */
  private readonly waiting: ((line: string) => void)[] = [];
  private partial = '';

  constructor(binary: string) {
    this.process = spawn(binary, [], { stdio: 'pipe' });
    this.process.stdout.setEncoding('utf8');
    this.process.stdout.on('data', (chunk: string) => {
      const parts = (this.partial + chunk).split('\n');
      this.partial = parts.pop() as string;
      for (const line of parts) {
        const resolve = this.waiting.shift();
        if (resolve === undefined) this.lines.push(line);
        else resolve(line);
      }
    });
  }

  get pid(): number {
    return this.process.pid as number;
  }

  nextLine(): Promise<string> {
    const line = this.lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  /** Send one command and wait for its answer, so its writes are done when this resolves. */
  async command(line: string): Promise<string> {
    this.process.stdin.write(`${line}\n`);
    return this.nextLine();
  }

  /** The state letter in /proc/PID/stat: T is stopped. */
  state(): string {
    const stat = readFileSync(`/proc/${this.pid}/stat`, 'utf8');
    return stat.charAt(stat.lastIndexOf(')') + 2);
  }

  kill(): void {
    this.process.kill('SIGKILL');
  }
}

/** pfns of `epoch` in [first, first + count). */
function pfnsIn(epoch: CapturedEpoch, first: number, count: number): number[] {
  return [...epoch.pfns].filter((pfn) => pfn >= first && pfn < first + count);
}

function pageOf(epoch: CapturedEpoch, pfn: number): Buffer {
  const i = epoch.pfns.indexOf(pfn);
  expect(i, `pfn ${pfn} in epoch ${epoch.epoch}`).toBeGreaterThanOrEqual(0);
  return Buffer.from(epoch.pages.subarray(i * PAGE, (i + 1) * PAGE));
}

/** A pid that does not exist: a process that has exited and been reaped. */
function deadPid(): number {
  const done = spawnSync('true');
  return done.pid as number;
}

function expectAscending(epoch: CapturedEpoch): void {
  for (let i = 1; i < epoch.pfns.length; i++) expect(epoch.pfns[i]).toBeGreaterThan(epoch.pfns[i - 1]);
  expect(epoch.pages.length).toBe(epoch.pfns.length * PAGE);
  expect(epoch.kinds.every((k) => k === 0)).toBe(true);
}

let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'remus-capture-'));
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('parseWritableMappings', () => {
  it('keeps readable writable mappings, private and shared, and skips the kernel\'s', () => {
    const maps = [
      '558259993000-55825999c000 rw-p 0012c000 fe:00 260104                     /usr/bin/bash',
      '558259896000-558259957000 r-xp 0002f000 fe:00 260104                     /usr/bin/bash',
      '7f2bbaa65000-7f2bbaa68000 rw-p 00000000 00:00 0 ',
      '7f2bbaa70000-7f2bbaa72000 rw-s 00000000 00:05 42                         /dev/shm/a file (deleted)',
      '7f2bbaa72000-7f2bbaa73000 -w-p 00000000 00:00 0 ',
      '7f2bbaa73000-7f2bbaa74000 ---p 00000000 00:00 0 ',
      '7f2bbac88000-7f2bbac8c000 rw-p 00000000 00:00 0                          [vvar]',
      '7fff371de000-7fff371ff000 rw-p 00000000 00:00 0                          [stack]',
      'ffffffffff600000-ffffffffff601000 rw-p 00000000 00:00 0                  [vsyscall]',
      '',
    ].join('\n');
    expect(parseWritableMappings(maps)).toEqual([
      { start: 0x558259993000, end: 0x55825999c000, perms: 'rw-p', name: '/usr/bin/bash' },
      { start: 0x7f2bbaa65000, end: 0x7f2bbaa68000, perms: 'rw-p', name: '' },
      { start: 0x7f2bbaa70000, end: 0x7f2bbaa72000, perms: 'rw-s', name: '/dev/shm/a file (deleted)' },
      { start: 0x7fff371de000, end: 0x7fff371ff000, perms: 'rw-p', name: '[stack]' },
    ]);
  });
});

describe('errors before anything is captured', () => {
  it('a pid that does not exist is named in a clear error, and no trace file is left', async () => {
    const pid = deadPid();
    expect(() => Capturer.open({ pid })).toThrow(new CaptureError('CAPTURE_NO_SUCH_PROCESS', `no process with pid ${pid}`));
    const out = join(dir, 'never.rmtr');
    await expect(captureToFile(out, { pid, epochs: 1, intervalMs: 0 })).rejects.toMatchObject({ code: 'CAPTURE_NO_SUCH_PROCESS' });
    expect(existsSync(out)).toBe(false);
  });

  it('refuses bad options and its own pid', async () => {
    expect(() => Capturer.open({ pid: 0 })).toThrow(/pid must be a whole number/);
    expect(() => Capturer.open({ pid: process.pid, pageSize: 1000 })).toThrow(/pageSize must be a power of two/);
    expect(() => Capturer.open({ pid: process.pid })).toThrow(expect.objectContaining({ code: 'CAPTURE_SELF' }));
    await expect(captureEpochs({ pid: process.pid, epochs: 0, intervalMs: 0 }).next()).rejects.toThrow(/epochs must be a whole number/);
  });

  it('the command line names the option at fault and the missing process', async () => {
    const errors = vi.spyOn(console, 'error').mockImplementation(() => undefined);
    const logs = vi.spyOn(console, 'log').mockImplementation(() => undefined);
    try {
      expect(await captureCli(['--help'])).toBe(0);
      expect(logs.mock.calls[0][0]).toMatch(/--interval-ms/);
      expect(await captureCli(['--pid', 'abc', '--out', 'x.rmtr'])).toBe(2);
      expect(errors.mock.calls[0][0]).toMatch(/--pid: 'abc' is not a whole number/);
      expect(await captureCli(['--pid', '1', '--out', 'x.rmtr', '--epochs', '-3'])).toBe(2);
      expect(errors.mock.calls[1][0]).toMatch(/--epochs/);
      expect(await captureCli(['--pid', '1', '--sender', 'http://127.0.0.1:1'])).toBe(2);
      expect(errors.mock.calls[2][0]).toMatch(/--sender and --receiver go together/);
      expect(await captureCli(['--pid', '1', '--bogus'])).toBe(2);
      expect(errors.mock.calls[3][0]).toMatch(/--bogus/);
      const pid = deadPid();
      expect(await captureCli(['--pid', String(pid), '--out', join(dir, 'cli.rmtr')])).toBe(1);
      expect(errors.mock.calls[4][0]).toBe(`capture: CAPTURE_NO_SUCH_PROCESS: no process with pid ${pid}`);
    } finally {
      errors.mockRestore();
      logs.mockRestore();
    }
  });
});

describe.skipIf(!hasCompiler)(`a live C process (${hasCompiler ? 'compiled with cc' : 'skipped: no C compiler (cc) on this machine'})`, () => {
  let binary: string;
  let child: Child;
  /** First pfn of the child's buffer. */
  let base: number;

  beforeAll(() => {
    const source = join(dir, 'child.c');
    binary = join(dir, 'child');
    writeFileSync(source, CHILD_SOURCE);
    const cc = spawnSync('cc', ['-O0', '-o', binary, source], { encoding: 'utf8' });
    if (cc.status !== 0) throw new Error(`cc failed: ${cc.stderr}`);
  });

  async function startChild(): Promise<void> {
    child = new Child(binary);
    const [address, pageSize] = (await child.nextLine()).split(' ').map(Number);
    // The capture's default page size must be the machine's.
    expect(pageSize).toBe(PAGE);
    base = address / PAGE;
  }

  afterEach(() => child?.kill());

  it('epoch 0 holds the whole buffer; the next epoch exactly the pages written, with their contents', async () => {
    await startChild();
    const capturer = Capturer.open({ pid: child.pid });
    try {
      const e0 = await capturer.snapshot();
      expect(e0.epoch).toBe(0);
      expectAscending(e0);
      expect(pfnsIn(e0, base, BUFFER_PAGES)).toEqual(Array.from({ length: BUFFER_PAGES }, (_, p) => base + p));
      for (let p = 0; p < BUFFER_PAGES; p++) expect(pageOf(e0, base + p).equals(pattern(p, START_TAG))).toBe(true);
      expect(e0.newPages).toBe(e0.pfns.length);
      expect(e0.mappedPages).toBe(e0.pfns.length);
      expect(child.state()).not.toBe('T');

      const written = [3, 17, 40];
      const tag = 5;
      expect(await child.command(`w ${tag} ${written.join(' ')}`)).toBe('ok');
      const e1 = await capturer.snapshot();
      expect(e1.epoch).toBe(1);
      expectAscending(e1);
      expect(pfnsIn(e1, base, BUFFER_PAGES)).toEqual(written.map((p) => base + p));
      for (const p of written) expect(pageOf(e1, base + p).equals(pattern(p, tag))).toBe(true);
      expect(e1.pfns.length).toBeLessThanOrEqual(written.length + QUIET_DIRTY_LIMIT);
      expect(e1).toMatchObject({ newPages: 0, unmappedPages: 0, changedPages: e1.pfns.length, mappedPages: e0.mappedPages });

      // Untouched, the buffer does not show up at all.
      const e2 = await capturer.snapshot();
      expect(pfnsIn(e2, base, BUFFER_PAGES)).toEqual([]);
      expect(e2.pfns.length).toBeLessThanOrEqual(QUIET_DIRTY_LIMIT);

      const page = new Uint8Array(PAGE);
      expect(capturer.readPage(base + 17, page)).toBe(true);
      expect(Buffer.from(page).equals(pattern(17, tag))).toBe(true);
    } finally {
      capturer.close();
    }
  });

  it('sends newly mapped pages whole; unmapped pages leave the epochs but stay in the image', async () => {
    await startChild();
    const capturer = Capturer.open({ pid: child.pid });
    try {
      const e0 = await capturer.snapshot();
      const extra = Number(await child.command('m')) / PAGE;
      const e1 = await capturer.snapshot();
      expect(pfnsIn(e1, extra, EXTRA_PAGES)).toEqual(Array.from({ length: EXTRA_PAGES }, (_, p) => extra + p));
      for (let p = 0; p < EXTRA_PAGES; p++) expect(pageOf(e1, extra + p).equals(pattern(p, EXTRA_TAG))).toBe(true);
      expect(e1.newPages).toBe(EXTRA_PAGES);
      expect(e1.mappedPages).toBe(e0.mappedPages + EXTRA_PAGES);

      expect(await child.command('u')).toBe('ok');
      const e2 = await capturer.snapshot();
      expect(pfnsIn(e2, extra, EXTRA_PAGES)).toEqual([]);
      expect(e2.unmappedPages).toBe(EXTRA_PAGES);
      expect(e2.mappedPages).toBe(e0.mappedPages);
      // RMTR has no unmap record: the trace's image keeps the pages, and so does the capturer's.
      expect(capturer.imagePages).toBe(e0.mappedPages + EXTRA_PAGES);
      const page = new Uint8Array(PAGE);
      expect(capturer.readPage(extra + 1, page)).toBe(true);
      expect(Buffer.from(page).equals(pattern(1, EXTRA_TAG))).toBe(true);
    } finally {
      capturer.close();
    }
  });

  it('skips pages it cannot read: a shared file mapping past the end of its file', async () => {
    await startChild();
    const file = Number(await child.command(`f ${join(dir, 'short-file')}`)) / PAGE;
    const capturer = Capturer.open({ pid: child.pid });
    try {
      const e0 = await capturer.snapshot();
      expect(pfnsIn(e0, file, FILE_MAP_PAGES)).toEqual(Array.from({ length: FILE_PAGES }, (_, p) => file + p));
      for (let p = 0; p < FILE_PAGES; p++) expect(pageOf(e0, file + p).equals(pattern(p, FILE_TAG))).toBe(true);
      expect(e0.unreadablePages).toBe(FILE_MAP_PAGES - FILE_PAGES);
      expect(pfnsIn(e0, base, BUFFER_PAGES)).toHaveLength(BUFFER_PAGES);
      expect(child.state()).not.toBe('T');
      const e1 = await capturer.snapshot();
      expect(e1).toMatchObject({ unreadablePages: FILE_MAP_PAGES - FILE_PAGES, unmappedPages: 0, newPages: 0 });
    } finally {
      capturer.close();
    }
  });

  it('leaves the process running after each checkpoint, and after a checkpoint that fails', async () => {
    await startChild();
    const tooSmall = Capturer.open({ pid: child.pid, maxPages: BUFFER_PAGES });
    await expect(tooSmall.snapshot()).rejects.toMatchObject({ code: 'CAPTURE_TOO_LARGE' });
    tooSmall.close();
    expect(child.state()).not.toBe('T');
    expect(await child.command('w 9 0')).toBe('ok');

    const epochs: number[] = [];
    for await (const e of captureEpochs({ pid: child.pid, epochs: 3, intervalMs: 10 })) {
      expect(child.state()).not.toBe('T');
      epochs.push(e.epoch);
    }
    expect(epochs).toEqual([0, 1, 2]);
    expect(child.state()).not.toBe('T');
    expect(await child.command('w 9 1')).toBe('ok');

    // A process that dies under the capturer: a clear error, and the capturer refuses to go on.
    const capturer = Capturer.open({ pid: child.pid });
    await capturer.snapshot();
    child.kill();
    await new Promise((resolve) => child.process.once('exit', resolve));
    await expect(capturer.snapshot()).rejects.toMatchObject({ code: 'CAPTURE_PROCESS_EXITED' });
    capturer.close();
  });

  it('captureToFile writes a trace that replays to the capture\'s image', async () => {
    await startChild();
    const out = join(dir, 'child.rmtr');
    const writes: Promise<string>[] = [];
    const result = await captureToFile(out, {
      pid: child.pid,
      epochs: 4,
      intervalMs: 20,
      // Between checkpoints the child rewrites page e of its buffer.
      onEpoch: (e) => writes.push(child.command(`w ${10 + e.epoch} ${e.epoch}`)),
    });
    await Promise.all(writes);
    const trace = parseTrace(readFileSync(out));
    expect(result).toEqual({ epochs: 4, pages: trace.epochs.reduce((n, e) => n + e.count, 0) });
    expect(trace.pageSize).toBe(PAGE);
    const image = new TraceImage(PAGE);
    for (const e of trace.epochs) image.apply(e);
    for (let p = 0; p < 3; p++) expect(Buffer.from(image.get(base + p) as Uint8Array).equals(pattern(p, 10 + p))).toBe(true);
    expect(Buffer.from(image.get(base + 3) as Uint8Array).equals(pattern(3, START_TAG))).toBe(true);

    const summary = await replay({ tracePath: out, workers: 2 });
    expect(summary.imageEqual).toBe(true);
    expect(summary.epochs.map((e) => e.pages)).toEqual(trace.epochs.map((e) => e.count));
  });

  describe('streaming to a sender and a receiver', () => {
    let senderApp: FastifyInstance;
    let receiverApp: FastifyInstance;

    beforeAll(async () => {
      senderApp = await buildApp({ sender: { workers: 2 } });
      receiverApp = await buildApp({ receiver: {} });
    });

    afterAll(async () => {
      await Promise.all([senderApp?.close(), receiverApp?.close()]);
    });

    it('the receiver holds every captured page and its digest equals the capture\'s', async () => {
      await startChild();
      const senderUrl = await senderApp.listen({ host: '127.0.0.1', port: 0 });
      const receiverUrl = await receiverApp.listen({ host: '127.0.0.1', port: 0 });
      const writes: Promise<string>[] = [];
      const result = await captureToService({
        pid: child.pid,
        epochs: 4,
        intervalMs: 20,
        senderUrl,
        receiverUrl,
        stream: { workers: 2 },
        onEpoch: (e) => writes.push(child.command(e.epoch === 1 ? 'm' : `w ${20 + e.epoch} ${e.epoch} ${e.epoch + 30}`)),
      });
      await Promise.all(writes);
      expect(result.imageEqual).toBe(true);
      expect(result.digestEqual).toBe(true);
      expect(result.epochs.map((e) => e.epoch)).toEqual([0, 1, 2, 3]);
      expect(result.epochs.every((e) => e.mismatches === 0 && e.pagesVerified === e.pages)).toBe(true);
      expect(result.epochs[0].pages).toBeGreaterThanOrEqual(BUFFER_PAGES);
      // Epoch 2 follows the child's new mapping: at least those pages and the two written.
      expect(result.epochs[2].pages).toBeGreaterThanOrEqual(EXTRA_PAGES + 2);
      const receiver = await fetch(`${receiverUrl}/v1/images/${result.imageId}`);
      expect(((await receiver.json()) as { pages: number }).pages).toBe(result.imagePages);
      // The stream is deleted at the end; the image stays for inspection.
      expect((await fetch(`${senderUrl}/v1/streams/${result.streamId}`)).status).toBe(404);
    });
  });
});

describe.skipIf(process.platform !== 'linux')('a capture ended by a signal (Linux: /proc)', () => {
  /** The state letter of a process in /proc/PID/stat ('T' = stopped), or null once it is gone. */
  function stateOf(pid: number): string | null {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    } catch {
      return null;
    }
  }

  it('SIGINT or SIGTERM in the middle of checkpoints leaves the target running, every time', async () => {
    // 256 MiB of written memory: each checkpoint pauses the target for tens of
    // ms, and with --interval-ms 0 it is paused most of the time, so the
    // signal lands inside a pause (without the handler, 3 tries in 5 left
    // the target stopped).
    const target = spawn(process.execPath, ['-e', 'const b = Buffer.alloc(256 << 20, 1); setInterval(() => { b[(Math.random() * b.length) | 0]++; }, 1); console.log("ready");'], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve) => target.stdout.once('data', () => resolve()));
      const cli = join(packageRoot(), 'dist', 'src', 'cli.js');
      for (const [i, signal] of (['SIGINT', 'SIGTERM', 'SIGINT', 'SIGTERM', 'SIGINT'] as const).entries()) {
        const capture = spawn(process.execPath, [cli, 'capture', '--pid', String(target.pid), '--epochs', '100000', '--interval-ms', '0', '--out', join(dir, `signalled-${i}.rmtr`)], { stdio: ['ignore', 'ignore', 'pipe'] });
        // Wait until checkpoints are under way (a progress line per epoch on stderr).
        await new Promise<void>((resolve) => capture.stderr.on('data', (chunk: Buffer) => { if (/epoch [1-9]/.test(chunk.toString())) resolve(); }));
        const exited = new Promise<number | null>((resolve) => capture.once('exit', (code) => resolve(code)));
        capture.kill(signal);
        expect(await exited).toBe(signal === 'SIGINT' ? 130 : 143);
        expect(stateOf(target.pid as number), `try ${i} (${signal})`).not.toBe('T');
      }
    } finally {
      target.kill('SIGKILL');
    }
  }, 60_000);
});
