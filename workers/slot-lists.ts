/**
 * Recency lists of cache slots, intrusive and preallocated: two Int32Arrays
 * (prev, next) indexed by slot, so that moving a page to the most recent end
 * or dropping the least recent touches a few integers and allocates
 * nothing. A slot is in at most one list at a time. Each list is circular
 * through a sentinel entry past the slots (list k's at slotCount + k): an
 * empty list is its sentinel linked to itself, and no operation tests for
 * an end. From the sentinel, next is the least recent slot and prev the
 * most recent.
 */
export class SlotLists {
  private readonly prev: Int32Array;
  private readonly next: Int32Array;
  private readonly sentinels: number;

  constructor(slotCount: number, listCount: number) {
    this.sentinels = slotCount;
    this.prev = new Int32Array(slotCount + listCount);
    this.next = new Int32Array(slotCount + listCount);
    for (let s = slotCount; s < slotCount + listCount; s++) this.prev[s] = this.next[s] = s;
  }

  /** The least recent slot of `list`, or -1 when it is empty. */
  oldest(list: number): number {
    const sentinel = this.sentinels + list;
    const slot = this.next[sentinel];
    return slot === sentinel ? -1 : slot;
  }

  /** Append `slot`, in no list, as the most recent of `list`. */
  pushNewest(list: number, slot: number): void {
    const sentinel = this.sentinels + list;
    const newest = this.prev[sentinel];
    this.next[newest] = slot;
    this.prev[slot] = newest;
    this.next[slot] = sentinel;
    this.prev[sentinel] = slot;
  }

  /** Take `slot` out of its list. */
  unlink(slot: number): void {
    const before = this.prev[slot];
    const after = this.next[slot];
    this.next[before] = after;
    this.prev[after] = before;
  }

  /** Make `slot`, in `list`, its most recent. */
  touch(list: number, slot: number): void {
    if (this.next[slot] === this.sentinels + list) return;
    this.unlink(slot);
    this.pushNewest(list, slot);
  }
}
