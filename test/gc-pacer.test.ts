import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { packageRoot } from '../src/package-root.js';
import { GcPacer, PACE_BYTES } from '../src/gc-pacer.js';

describe('GcPacer', () => {
  it('collects the young generation once per pace of body bytes, however the bytes are split', () => {
    const calls: unknown[] = [];
    const pacer = new GcPacer((options) => calls.push(options), 1000);
    for (let i = 0; i < 99; i++) pacer.noteBodyBytes(10);
    expect(calls).toEqual([]);
    pacer.noteBodyBytes(10);
    expect(calls).toEqual([{ type: 'minor', execution: 'sync' }]);
    pacer.noteBodyBytes(2500);
    pacer.noteBodyBytes(999);
    expect(calls.length).toBe(2);
    pacer.noteBodyBytes(1);
    expect(calls.length).toBe(3);
    expect(pacer.collections).toBe(3);
  });

  it('does nothing without a collector (Node without --expose-gc)', () => {
    const pacer = new GcPacer(null);
    expect(pacer.active).toBe(false);
    pacer.noteBodyBytes(10 * PACE_BYTES);
    expect(pacer.collections).toBe(0);
  });

  it('under --expose-gc, finds V8 gc and runs a real minor collection (seen by a gc PerformanceObserver)', () => {
    const script = `
      const { PerformanceObserver, constants } = require('node:perf_hooks');
      import(${JSON.stringify(pathToFileURL(join(packageRoot(), 'dist', 'src', 'gc-pacer.js')).href)}).then(({ GcPacer }) => {
        const kinds = [];
        const observer = new PerformanceObserver((list) => { for (const e of list.getEntries()) kinds.push(e.detail.kind); });
        observer.observe({ entryTypes: ['gc'] });
        const pacer = new GcPacer(undefined, 1000);
        pacer.noteBodyBytes(1000);
        setTimeout(() => {
          observer.disconnect();
          console.log(JSON.stringify({ active: pacer.active, collections: pacer.collections, minor: kinds.includes(constants.NODE_PERFORMANCE_GC_MINOR) }));
        }, 50);
      });`;
    const withGc = JSON.parse(execFileSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8' })) as Record<string, unknown>;
    expect(withGc).toEqual({ active: true, collections: 1, minor: true });
    const without = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' })) as Record<string, unknown>;
    expect(without).toMatchObject({ active: false, collections: 0 });
  });

  it('refuses a pace that is not a positive whole number of bytes', () => {
    for (const pace of [0, -1, 0.5, Number.NaN]) expect(() => new GcPacer(null, pace)).toThrow(RangeError);
  });
});
