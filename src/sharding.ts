import { readPfn } from './epoch-record.js';

/**
 * The partition that owns `pfn`. A fixed function of the pfn and the
 * partition count only, so a page always meets the same cache partition and
 * the output never depends on worker timing.
 */
export function partitionOf(pfn: number, partitions: number): number {
  return pfn % partitions;
}

/**
 * Splits one batch of an epoch's pages into per-partition lists of page
 * indices, keeping request order inside each list. A counting sort over
 * preallocated arrays: nothing is allocated per page.
 */
export class BatchSharder {
  readonly partitions: number;
  /** Per partition: first slot in the index list, and page count, of the last plan. */
  readonly starts: Int32Array;
  readonly counts: Int32Array;
  private readonly owner: Uint16Array;
  private readonly cursor: Int32Array;

  constructor(partitions: number, batchPages: number) {
    this.partitions = partitions;
    this.starts = new Int32Array(partitions);
    this.counts = new Int32Array(partitions);
    this.owner = new Uint16Array(batchPages);
    this.cursor = new Int32Array(partitions);
  }

  /**
   * Plan pages [first, end) of the epoch whose pfns start at `pfnOffset` in
   * `input`: writes the page indices into `indices` from `base` on, grouped
   * by partition (see `starts` and `counts`).
   */
  plan(input: Uint8Array, pfnOffset: number, first: number, end: number, indices: Int32Array, base: number): void {
    const { partitions, starts, counts, owner, cursor } = this;
    counts.fill(0);
    for (let i = first; i < end; i++) {
      const p = partitionOf(readPfn(input, pfnOffset + 8 * i), partitions);
      owner[i - first] = p;
      counts[p]++;
    }
    let next = base;
    for (let p = 0; p < partitions; p++) {
      starts[p] = next;
      cursor[p] = next;
      next += counts[p];
    }
    for (let i = first; i < end; i++) indices[cursor[owner[i - first]]++] = i;
  }
}
