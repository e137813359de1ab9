import { describe, expect, it } from 'vitest';
import { CODEC_NAMES, createCodec, measureKernel, prepareTrace, type PhaseFigures } from '../bench/kernel.js';
import { parseTrace } from '../src/trace.js';
import { generateTrace } from '../src/trace-gen.js';

/**
 * The kernel bench (bench/kernel.ts) on a tiny synthetic trace: the shape of
 * its results, and that every codec it decodes gives the input back. A cache
 * of 24 pages for a 96-page image makes our path evict, so later epochs mix
 * FULL records (misses, raw pages) with deltas and zero pages. No timing is
 * asserted.
 */
const PAGE = 4096;
const PAGES = 96;
const EPOCHS = 5;
const CACHE_BYTES = 24 * PAGE;
const bytes = generateTrace({ seed: 11, epochs: EPOCHS, pages: PAGES, profile: 'mixed', dirtyFraction: 0.5 });
/** The trace as parsed straight from its bytes, independent of the bench's own copy. */
const reference = parseTrace(bytes);

function expectSpeed(s: PhaseFigures['encode'], passes: number): void {
  expect(s).not.toBeNull();
  expect(s!.passesGBps).toHaveLength(passes);
  for (const v of s!.passesGBps) expect(Number.isFinite(v) && v > 0).toBe(true);
  expect(s!.bestGBps).toBe(Math.max(...s!.passesGBps));
  expect(s!.medianGBps).toBeLessThanOrEqual(s!.bestGBps);
}

describe('kernel bench', () => {
  it('measures every codec on epoch 0 and on the dirty epochs', () => {
    const trace = prepareTrace('tiny', bytes);
    const passes = 2;
    const result = measureKernel(trace, { passes, cacheBytes: CACHE_BYTES });
    expect(result).toMatchObject({ source: 'tiny', pageSize: PAGE, epochs: EPOCHS, passes, cacheBytes: CACHE_BYTES });
    expect(result.codecs.map((c) => c.codec)).toEqual([...CODEC_NAMES]);

    const dirtyPages = reference.epochs.slice(1).reduce((s, e) => s + e.count, 0);
    expect(dirtyPages).toBeGreaterThan(0);
    for (const c of result.codecs) {
      expect(c.description.length).toBeGreaterThan(0);
      expect(c.epoch0).toMatchObject({ epochs: 1, pages: PAGES, bytesIn: PAGES * PAGE });
      expect(c.dirty).toMatchObject({ epochs: EPOCHS - 1, pages: dirtyPages, bytesIn: dirtyPages * PAGE });
      for (const phase of [c.epoch0, c.dirty]) {
        expect(phase.bytesOut).toBeGreaterThan(0);
        expect(phase.ratio).toBeCloseTo(phase.bytesOut / phase.bytesIn, 12);
        expectSpeed(phase.encode, passes);
        if (c.codec === 'copy') expect(phase.decode).toBeNull();
        else expectSpeed(phase.decode, passes);
      }
      expect(c.roundTripChecked).toBe(c.codec !== 'copy');
      if (c.codec === 'copy') expect(c.dirty.bytesOut).toBe(c.dirty.bytesIn);
    }

    const ours = result.codecs.find((c) => c.codec === 'ours')!;
    expect(ours.counters).toBeDefined();
    const { epoch0, dirty } = ours.counters!;
    // Every page is exactly one of: hit, miss, zero, raw.
    expect(epoch0.cacheHits + epoch0.cacheMisses + epoch0.zeroPages + epoch0.rawPages).toBe(PAGES);
    expect(dirty.cacheHits + dirty.cacheMisses + dirty.zeroPages + dirty.rawPages).toBe(dirtyPages);
    expect(epoch0.cacheHits).toBe(0);
    // The cache is carried across epochs (hits) and is bounded (misses after evictions).
    expect(dirty.cacheHits).toBeGreaterThan(0);
    expect(dirty.cacheMisses).toBeGreaterThan(0);
    expect(dirty.zeroPages + dirty.rawPages).toBeGreaterThan(0);
  });

  it.each(CODEC_NAMES.filter((n) => n !== 'copy'))('%s decodes every page of every epoch back to its input, pass after pass', (name) => {
    const trace = prepareTrace('tiny', bytes);
    const codec = createCodec(name, trace, CACHE_BYTES);
    expect(codec.decodes).toBe(true);
    let firstSizes: number[] | null = null;
    for (let pass = 0; pass < 2; pass++) {
      codec.reset();
      const sizes = reference.epochs.map((_, e) => codec.encode(e));
      for (const [e, epoch] of reference.epochs.entries()) {
        codec.decode(e);
        for (let i = 0; i < epoch.count; i++) {
          const want = epoch.pages.subarray(i * PAGE, (i + 1) * PAGE);
          const got = codec.decodedPage(e, i);
          expect(got.length).toBe(PAGE);
          if (!Buffer.from(got).equals(Buffer.from(want))) {
            throw new Error(`${name}: pass ${pass}, epoch ${e}, page ${i} (pfn ${epoch.pfns[i]}) differs from its input`);
          }
        }
      }
      // Same output again after a reset: the state (our cache) starts from empty each pass.
      if (firstSizes === null) firstSizes = sizes;
      else expect(sizes).toEqual(firstSizes);
    }
  });

  it('ours sends deltas: later epochs cost less than their pages when the cache holds them', () => {
    const trace = prepareTrace('tiny', bytes);
    const result = measureKernel(trace, { passes: 1, codecs: ['ours'] });
    expect(result.codecs).toHaveLength(1);
    const ours = result.codecs[0];
    // With the seed's 32 MiB cache nothing is evicted: every later non-raw, non-zero page is a hit.
    expect(ours.counters!.dirty.cacheMisses).toBe(0);
    expect(ours.dirty.ratio).toBeLessThan(1);
  });
});
