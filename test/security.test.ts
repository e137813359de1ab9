import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../src/app.js';
import { ReceiverClient, SenderClient } from '../src/client.js';
import { packageRoot } from '../src/package-root.js';
import { runReceive } from '../src/receive-cli.js';
import { encodeEpochRecord } from '../src/trace.js';

/**
 * Security: the bearer token (every route but /health, 401 UNAUTHORIZED,
 * never logged), the command line's refusal to listen beyond loopback
 * without --allow-remote and a token, the Unix socket created 0600, and
 * image files only inside the image directory (no traversal, no symlinks).
 */
const TOKEN = 'tok-3f9c2a71b8e04d5c9a6e1f0b7d2c4e8a';
const PAGE_MARKER = 'PAGE-DATA-MUST-NOT-BE-LOGGED';
const CLI = join(packageRoot(), 'dist', 'src', 'cli.js');
const WAIT_MS = 30_000;

let tmp: string;

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'remus-security-'));
});

afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

function markedPage(): Uint8Array {
  const page = new Uint8Array(4096);
  for (let at = 0; at + PAGE_MARKER.length <= page.length; at += 64) page.set(Buffer.from(PAGE_MARKER, 'latin1'), at);
  return page;
}

describe('bearer token (buildApp authToken)', () => {
  let app: FastifyInstance;
  let base: string;
  let log = '';

  beforeAll(async () => {
    const stream = new Writable({
      write(chunk: Buffer, _encoding, done) {
        log += chunk.toString('utf8');
        done();
      },
    });
    app = await buildApp({ sender: { workers: 1 }, receiver: {}, authToken: TOKEN, logger: { level: 'trace', stream } });
    base = await app.listen({ host: '127.0.0.1', port: 0 });
  });

  afterAll(async () => {
    await app.close();
  });

  async function call(path: string, init: RequestInit = {}): Promise<{ status: number; headers: Headers; json: Record<string, unknown> | null }> {
    const res = await fetch(`${base}${path}`, init);
    const text = await res.text();
    let json: Record<string, unknown> | null = null;
    try {
      json = JSON.parse(text) as Record<string, unknown>;
    } catch {
      json = null;
    }
    return { status: res.status, headers: res.headers, json };
  }

  it('refuses every route but /health without the right token: 401 UNAUTHORIZED, before the body is read', async () => {
    expect((await call('/health')).status).toBe(200);
    const wrong = [undefined, 'Bearer nope', `Bearer ${TOKEN}x`, `Bearer ${TOKEN.slice(0, -1)}`, `Basic ${TOKEN}`, TOKEN, 'Bearer '];
    const routes: [string, string, Record<string, string>, RequestInit['body']][] = [
      ['GET', '/v1/streams', {}, undefined],
      ['POST', '/v1/streams', { 'content-type': 'application/json' }, '{}'],
      ['POST', '/v1/streams/s1/epochs', { 'content-type': 'application/octet-stream' }, new Uint8Array(16)],
      ['POST', '/v1/streams/s1/epochs', { 'content-type': 'text/plain' }, 'x'],
      ['POST', '/v1/images', { 'content-type': 'application/json' }, '{}'],
      ['GET', '/openapi.json', {}, undefined],
      ['GET', '/no/such/route', {}, undefined],
    ];
    for (const authorization of wrong) {
      for (const [method, path, headers, body] of routes) {
        const answer = await call(path, { method, headers: authorization === undefined ? headers : { ...headers, authorization }, body });
        expect(answer.status, `${method} ${path} with ${authorization}`).toBe(401);
        expect(answer.json).toMatchObject({ statusCode: 401, code: 'UNAUTHORIZED' });
        expect(answer.headers.get('www-authenticate')).toMatch(/^Bearer/);
      }
    }
    // Nothing was created by the refused requests.
    const listed = await call('/v1/streams', { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(listed.status).toBe(200);
    expect(listed.json).toEqual([]);
  });

  it('serves everything with the token, and logs neither the token nor page data', async () => {
    const auth = { authorization: `Bearer ${TOKEN}` };
    const create = await fetch(`${base}/v1/streams`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: '{}' });
    expect(create.status).toBe(201);
    const { id } = (await create.json()) as { id: string };
    const record = encodeEpochRecord(0, Float64Array.of(7), Uint8Array.of(0), markedPage(), 4096);
    const epoch = await fetch(`${base}/v1/streams/${id}/epochs`, { method: 'POST', headers: { ...auth, 'content-type': 'application/octet-stream' }, body: record });
    expect(epoch.status).toBe(200);
    const frames = Buffer.from(await epoch.arrayBuffer());
    expect(frames.includes(Buffer.from(PAGE_MARKER))).toBe(true);
    const image = await fetch(`${base}/v1/images`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: '{}' });
    const imageId = ((await image.json()) as { id: string }).id;
    const applied = await fetch(`${base}/v1/images/${imageId}/frames`, { method: 'POST', headers: { ...auth, 'content-type': 'application/x-remus-frames' }, body: frames });
    expect(((await applied.json()) as { committedEpoch: number }).committedEpoch).toBe(0);
    const page = await fetch(`${base}/v1/images/${imageId}/pages/7`, { headers: auth });
    expect(Buffer.from(await page.arrayBuffer()).includes(Buffer.from(PAGE_MARKER))).toBe(true);

    expect(log.length).toBeGreaterThan(0); // the log level is trace: requests were logged
    expect(log).not.toContain(TOKEN);
    expect(log).not.toContain(PAGE_MARKER);
    expect(log.toLowerCase()).not.toContain('authorization');
  });
});

// ---------------------------------------------------------------- the command line

const children = new Set<ChildProcess>();

afterEach(() => {
  for (const child of children) child.kill('SIGTERM');
  children.clear();
});

interface Served {
  child: ChildProcess;
  output: () => string;
  line: string;
}

/** Start `remus-compress serve ...` and wait for its "listening on" line. */
function serve(args: string[], env: Record<string, string> = {}): Promise<Served> {
  const child = spawn(process.execPath, [CLI, 'serve', '--workers', '1', ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString('utf8')));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString('utf8')));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "listening" line after ${WAIT_MS} ms: ${out}`)), WAIT_MS);
    const check = (): void => {
      const line = /remus-compress sender listening on [^\n]*/.exec(out);
      if (line !== null) {
        clearTimeout(timer);
        resolve({ child, output: () => out, line: line[0] });
      }
    };
    child.stdout?.on('data', check);
    child.stderr?.on('data', check);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`serve exited with ${code}: ${out}`));
    });
  });
}

/** Run `remus-compress serve ...` expecting it to refuse: exit status and output. */
function serveRefused(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; output: string }> {
  const base: Record<string, string | undefined> = { ...process.env };
  delete base.REMUS_TOKEN;
  const child = spawn(process.execPath, [CLI, 'serve', '--workers', '1', ...args], { env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString('utf8')));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString('utf8')));
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, output })));
}

function unixGet(socketPath: string, path: string, headers: http.OutgoingHttpHeaders = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path, method: 'GET', headers }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString('utf8')));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('remus-compress serve: where it listens', () => {
  it('refuses a non-loopback --host without --allow-remote, and --allow-remote without a token (exit 2)', async () => {
    const bare = await serveRefused(['--host', '0.0.0.0', '--port', '0']);
    expect(bare.code).toBe(2);
    expect(bare.output).toContain('--allow-remote');
    // A token alone is not enough: the remote address must be asked for.
    expect((await serveRefused(['--host', '0.0.0.0', '--port', '0'], { REMUS_TOKEN: TOKEN })).code).toBe(2);
    const noToken = await serveRefused(['--host', '0.0.0.0', '--port', '0', '--allow-remote']);
    expect(noToken.code).toBe(2);
    expect(noToken.output).toContain('token');
    const emptyFile = join(tmp, 'empty-token');
    writeFileSync(emptyFile, '\n');
    const empty = await serveRefused(['--host', '0.0.0.0', '--port', '0', '--allow-remote', '--token-file', emptyFile]);
    expect(empty.code).toBe(2);
    expect(empty.output).toContain('empty');
  });

  it('says it is loopback only by default', async () => {
    const served = await serve(['--port', '0']);
    expect(served.line).toMatch(/http:\/\/127\.0\.0\.1:\d+ \(loopback only, no token\)/);
  });

  it('on a remote address with --allow-remote and --token-file: the token is required, and never printed', async () => {
    const tokenFile = join(tmp, 'token');
    writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
    const served = await serve(['--host', '0.0.0.0', '--port', '0', '--allow-remote', '--token-file', tokenFile, '--log-level', 'trace']);
    expect(served.line).toContain('REMOTE, bearer token required');
    const port = Number(/:(\d+) \(/.exec(served.line)?.[1]);
    const base = `http://127.0.0.1:${port}`;
    expect((await fetch(`${base}/health`)).status).toBe(200);
    expect((await fetch(`${base}/v1/streams`)).status).toBe(401);
    expect((await fetch(`${base}/v1/streams`, { headers: { authorization: 'Bearer wrong' } })).status).toBe(401);
    const client = new SenderClient(base);
    expect((await fetch(`${base}/v1/streams`, { headers: { authorization: `Bearer ${TOKEN}` } })).status).toBe(200);
    expect(client.baseUrl).toBe(base);
    expect(served.output()).not.toContain(TOKEN);
  });

  it('--socket PATH: serves on a Unix socket created with mode 0600', async () => {
    const socketPath = join(tmp, 'remus.sock');
    const served = await serve(['--socket', socketPath]);
    expect(served.line).toContain(`unix:${socketPath} (mode 0600`);
    const st = statSync(socketPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect(await unixGet(socketPath, '/health')).toMatchObject({ status: 200 });
    const streams = await unixGet(socketPath, '/v1/streams');
    expect(streams).toEqual({ status: 200, body: '[]' });
  });
});

describe('remus-compress receive --listen: where it listens', () => {
  it('refuses a non-loopback --host without --allow-remote and a token (exit 2)', async () => {
    let err = '';
    const io = { stdout: { write: () => true }, stderr: { write: (s: string) => ((err += s), true) } } as unknown as Parameters<typeof runReceive>[1];
    expect(await runReceive(['--listen', '--host', '0.0.0.0', '--port', '0'], io)).toBe(2);
    expect(err).toContain('--allow-remote');
    const saved = process.env.REMUS_TOKEN;
    delete process.env.REMUS_TOKEN;
    try {
      err = '';
      expect(await runReceive(['--listen', '--host', '0.0.0.0', '--port', '0', '--allow-remote'], io)).toBe(2);
      expect(err).toContain('token');
    } finally {
      if (saved !== undefined) process.env.REMUS_TOKEN = saved;
    }
  });
});

// ---------------------------------------------------------------- image files

describe('file images stay inside the image directory', () => {
  let app: FastifyInstance;
  let client: ReceiverClient;
  let dir: string;
  let outside: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmp, 'images-'));
    outside = mkdtempSync(join(tmp, 'outside-'));
    app = await buildApp({ receiver: { imageDir: dir } });
    client = new ReceiverClient(await app.listen({ host: '127.0.0.1', port: 0 }));
  });

  afterAll(async () => {
    await app.close();
  });

  async function refusedFile(file: string): Promise<void> {
    const res = await fetch(`${client.baseUrl}/v1/images`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ file }) });
    const body = (await res.json()) as { code: string };
    expect({ file, status: res.status, code: body.code }).toEqual({ file, status: 400, code: 'IMAGE_FILE_NOT_ALLOWED' });
  }

  it('refuses traversal, absolute paths and symbolic links; nothing is written outside', async () => {
    const victim = join(outside, 'victim.img');
    writeFileSync(victim, 'precious');
    symlinkSync(victim, join(dir, 'link.img'));
    symlinkSync(join(outside, 'elsewhere.index'), join(dir, 'plain.img.index'));
    for (const file of ['../x', '../../etc/passwd', `..${'/'}outside`, join(dir, 'abs.img'), victim, '/etc/passwd', 'a/../b', '.', '..', 'x\u0000y', 'link.img', 'plain.img']) {
      await refusedFile(file);
    }
    expect(readFileSync(victim, 'utf8')).toBe('precious');
    expect(readdirSync(outside).sort()).toEqual(['victim.img']);
    expect(readdirSync(dir).sort()).toEqual(['link.img', 'plain.img.index']);
    // A plain name still works.
    const ok = await client.createImage({ file: 'vm.img' });
    expect(ok.committedEpoch).toBeNull();
    expect(readdirSync(dir).sort()).toEqual(['link.img', 'plain.img.index', 'vm.img', 'vm.img.index']);
  });
});
