/**
 * xorshift32: a small deterministic PRNG, so that a bench, a workload or a
 * worker's start-up exercise (workers/cache-partition.ts) does the same
 * thing every run. Returns the next value, 1..2^32-1.
 */
export function xorshift32(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

/** The same sequence scaled to [0, 1). */
export function xorshiftUnit(seed: number): () => number {
  const next = xorshift32(seed);
  return () => next() / 0x1_0000_0000;
}
