import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildApp } from '../src/app.js';
import { packageRoot } from '../src/package-root.js';

const root = packageRoot();
const script = join(root, 'docs', 'examples.sh');

let senderApp: FastifyInstance;
let receiverApp: FastifyInstance;
let senderUrl: string;
let receiverUrl: string;

beforeAll(async () => {
  senderApp = await buildApp({ sender: { workers: 2 } });
  receiverApp = await buildApp({ receiver: {} });
  senderUrl = await senderApp.listen({ host: '127.0.0.1', port: 0 });
  receiverUrl = await receiverApp.listen({ host: '127.0.0.1', port: 0 });
});

afterAll(async () => {
  await Promise.all([senderApp?.close(), receiverApp?.close()]);
});

describe('README curl examples', () => {
  it('the README shows docs/examples.sh verbatim between its markers', () => {
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    const match = /<!-- examples:start -->\n```bash\n([\s\S]*?)```\n<!-- examples:end -->/.exec(readme);
    expect(match, 'README has an examples block between <!-- examples:start --> and <!-- examples:end -->').not.toBeNull();
    expect((match as RegExpExecArray)[1]).toBe(readFileSync(script, 'utf8'));
  });

  it('every route in the script answers as the script expects, against a live sender and receiver', async () => {
    const result = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile('bash', [script, senderUrl, receiverUrl], { timeout: 60_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
        resolve({ code: err === null ? 0 : Number((err as { code?: unknown }).code ?? -1), stdout, stderr });
      });
    });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('{"status":"ok"}');
    expect(result.stdout).toContain('"aborted":"completed"');
    expect(result.stdout).toMatch(/^remus_epochs_committed 2$/m);
    expect(result.stdout).toContain('page 2 on the receiver is the page sent');
    expect(result.stdout.trimEnd().endsWith('done')).toBe(true);
    // The script cleaned up after itself.
    expect(await (await fetch(`${senderUrl}/v1/streams`)).json()).toEqual([]);
  });

  it('the script stops at the first failure (set -euo pipefail)', async () => {
    // A receiver URL where nothing listens: the first receiver call fails.
    const code = await new Promise<number>((resolve) => {
      execFile('bash', [script, senderUrl, 'http://127.0.0.1:1'], { timeout: 60_000, killSignal: 'SIGKILL' }, (err, stdout) => {
        expect(stdout).not.toContain('done');
        resolve(err === null ? 0 : Number((err as { code?: unknown }).code ?? -1));
      });
    });
    expect(code).not.toBe(0);
  });
});
