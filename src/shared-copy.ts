/**
 * Copy bytes into shared memory at memcpy speed.
 *
 * `target.set(source, offset)` (and Buffer#copy, which calls it on Node 20)
 * copies with relaxed atomics when either side is a SharedArrayBuffer, as
 * the streams' and receivers' arenas are (shared WebAssembly memories):
 * word by word only when source and destination have the same alignment
 * mod 8, byte by byte otherwise. A request body's chunks land at whatever
 * offset the HTTP headers left, so most of them went byte by byte: 3.8-4.2
 * GB/s, against 10-24 for the same copy by memcpy (bench/copies.ts;
 * docs/PERFORMANCE.md, "Copies into shared memory").
 *
 * Node's Buffer#fill with a buffer value copies it with one C++ memcpy when
 * the range is as long as the value, whatever memory backs either side, and
 * it takes any Uint8Array as its target.
 */
const bufferFill = Buffer.prototype.fill;

/**
 * Copy all of `source` into `target` at `offset`. The two must not overlap
 * (memcpy), and `source` must fit: a range past the end throws RangeError.
 */
export function copyInto(target: Uint8Array, offset: number, source: Uint8Array): void {
  // Buffer#fill refuses an empty value; an empty copy does nothing anyway.
  if (source.length === 0) return;
  if (!(Number.isSafeInteger(offset) && offset >= 0 && offset + source.length <= target.length)) {
    throw new RangeError(`copyInto: ${source.length} bytes at ${offset} do not fit a target of ${target.length}`);
  }
  bufferFill.call(target, source, offset, offset + source.length);
}
