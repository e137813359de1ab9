/**
 * QEMU's XBZRLE encoder (src/codec/xbzrle.ts xbzrleEncode and
 * encodeXbzrleBody), byte for byte, with v128 compares: part of the same
 * kernel module as assembly/remus.ts (same imported shared memory, every
 * pointer a byte offset in it, nothing allocated, no data segments). Bound
 * by src/codec/remus-wasm.ts, which checks arguments. The decoder stays in
 * TypeScript.
 */

/** Record body kinds (docs/FORMAT.md "Codec 2: xbzrle"). */
const KIND_UNCHANGED: u8 = 0x00;
const KIND_DELTA: u8 = 0x01;
const KIND_FULL: u8 = 0x80;
/** QEMU's room check: 2 bytes must be free before each run. */
const RUN_ROOM_BYTES: usize = 2;
/** xbzrleEncode's overflow result (-1 as i32). */
const OVERFLOW: usize = <usize>-1;

// @ts-ignore: decorator
@inline function lengthBytes(value: u32): u32 {
  let n: u32 = 1;
  while (value >= 0x80) {
    value >>= 7;
    n++;
  }
  return n;
}

// @ts-ignore: decorator
@inline function writeLength(pos: usize, value: u32): usize {
  while (value >= 0x80) {
    store<u8>(pos++, <u8>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  store<u8>(pos++, <u8>value);
  return pos;
}

/** Bytes (bits 0..15) of the 16-byte vectors that differ. */
// @ts-ignore: decorator
@inline function differBytes(a: v128, b: v128): i32 {
  return ~i8x16.bitmask(i8x16.eq(a, b)) & 0xffff;
}

/** First j >= i below n where cur and old differ, or n. */
// @ts-ignore: decorator
@inline function equalRunEnd(cur: usize, old: usize, i: u32, n: u32): u32 {
  while (i + 64 <= n) {
    const c = cur + i;
    const o = old + i;
    const a0 = v128.load(c);
    const b0 = v128.load(o);
    const a1 = v128.load(c, 16);
    const b1 = v128.load(o, 16);
    const a2 = v128.load(c, 32);
    const b2 = v128.load(o, 32);
    const a3 = v128.load(c, 48);
    const b3 = v128.load(o, 48);
    const x = v128.or(v128.or(v128.xor(a0, b0), v128.xor(a1, b1)), v128.or(v128.xor(a2, b2), v128.xor(a3, b3)));
    if (v128.any_true(x)) {
      let m = differBytes(a0, b0);
      if (m != 0) return i + <u32>ctz(m);
      m = differBytes(a1, b1);
      if (m != 0) return i + 16 + <u32>ctz(m);
      m = differBytes(a2, b2);
      if (m != 0) return i + 32 + <u32>ctz(m);
      return i + 48 + <u32>ctz(differBytes(a3, b3));
    }
    i += 64;
  }
  while (i + 16 <= n) {
    const m = differBytes(v128.load(cur + i), v128.load(old + i));
    if (m != 0) return i + <u32>ctz(m);
    i += 16;
  }
  while (i < n && load<u8>(cur + i) == load<u8>(old + i)) i++;
  return i;
}

/** First j >= i below n where cur and old are equal, or n. */
// @ts-ignore: decorator
@inline function changedRunEnd(cur: usize, old: usize, i: u32, n: u32): u32 {
  while (i + 16 <= n) {
    const m = i8x16.bitmask(i8x16.eq(v128.load(cur + i), v128.load(old + i)));
    if (m != 0) return i + <u32>ctz(m);
    i += 16;
  }
  while (i < n && load<u8>(cur + i) != load<u8>(old + i)) i++;
  return i;
}

/** Copy n bytes (a non-zero run: most are a few bytes). */
// @ts-ignore: decorator
@inline function copyRun(dst: usize, src: usize, n: u32): void {
  let j: u32 = 0;
  while (j + 16 <= n) {
    v128.store(dst + j, v128.load(src + j));
    j += 16;
  }
  while (j < n) {
    store<u8>(dst + j, load<u8>(src + j));
    j++;
  }
}

/** xbzrleEncode into [out, out + limit); OVERFLOW when it does not fit. */
function encodeBuffer(cur: usize, old: usize, pageSize: u32, out: usize, limit: u32): usize {
  const outEnd = out + limit;
  let d = out;
  let i: u32 = 0;
  while (i < pageSize) {
    if (d + RUN_ROOM_BYTES > outEnd) return OVERFLOW;
    const zrunStart = i;
    i = equalRunEnd(cur, old, i, pageSize);
    const zrun = i - zrunStart;
    if (zrun == pageSize) return out;
    // No trailing zero run.
    if (i == pageSize) return d;
    if (d + lengthBytes(zrun) > outEnd) return OVERFLOW;
    d = writeLength(d, zrun);

    if (d + RUN_ROOM_BYTES > outEnd) return OVERFLOW;
    const nzrunStart = i;
    i = changedRunEnd(cur, old, i, pageSize);
    const nzrun = i - nzrunStart;
    if (d + lengthBytes(nzrun) > outEnd) return OVERFLOW;
    d = writeLength(d, nzrun);
    if (d + nzrun > outEnd) return OVERFLOW;
    copyRun(d, cur + nzrunStart, nzrun);
    d += nzrun;
  }
  return d;
}

/**
 * QEMU's xbzrle_encode_buffer (xbzrleEncode): the page at `cur` against
 * `old`, into [out, out + limit); returns the end (out itself when the page
 * is unchanged) or -1 when it does not fit. Never writes `old`, nor past
 * out + limit.
 */
export function xbzrleEncode(cur: usize, old: usize, pageSize: u32, out: usize, limit: u32): i32 {
  return <i32>encodeBuffer(cur, old, pageSize, out, limit);
}

/**
 * encodeXbzrleBody: one codec-2 record body at `out`: UNCHANGED, DELTA +
 * ULEB128 length + delta when it fits `limit` (xbzrleDeltaLimit(pageSize),
 * whose ULEB128 takes `reserved` bytes), else FULL + the page. Returns the
 * end; the kind is the byte at out. `old` is not written (the caller copies
 * the page into its cache unless the kind is UNCHANGED). Writes at most
 * 1 + pageSize bytes.
 */
export function xbzrleEncodeBody(cur: usize, old: usize, pageSize: u32, out: usize, limit: u32, reserved: u32): usize {
  const deltaStart = out + 1 + reserved;
  const deltaEnd = encodeBuffer(cur, old, pageSize, deltaStart, limit);
  if (deltaEnd == deltaStart) {
    store<u8>(out, KIND_UNCHANGED);
    return out + 1;
  }
  if (deltaEnd == OVERFLOW) {
    store<u8>(out, KIND_FULL);
    memory.copy(out + 1, cur, pageSize);
    return out + 1 + pageSize;
  }
  const length = <u32>(deltaEnd - deltaStart);
  store<u8>(out, KIND_DELTA);
  const lengthEnd = writeLength(out + 1, length);
  // The length took fewer bytes than reserved: close the gap.
  if (lengthEnd != deltaStart) memory.copy(lengthEnd, deltaStart, length);
  return lengthEnd + length;
}
