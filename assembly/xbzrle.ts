/**
 * QEMU's XBZRLE encoder (src/codec/xbzrle.ts xbzrleEncode and
 * encodeXbzrleBody), byte for byte, with v128 compares: part of the same
 * kernel module as assembly/remus.ts (same imported shared memory, every
 * pointer a byte offset in it, nothing allocated, no data segments). Bound
 * by src/codec/remus-wasm.ts, which checks arguments. The decoder
 * (xbzrleDecodeBody) is src/codec/xbzrle.ts decodeXbzrleBody, check for check:
 * same refusals in the same order, same bytes written before a refusal.
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

// ------------------------------------------------------------------ decoder

/**
 * Which check of decodeXbzrleBody / xbzrleDecode failed (xbzrleErrorInfo(0)):
 * the wrapper turns each into that check's CodecError code and message.
 */
const X_KIND_TRUNCATED: u32 = 1; // input ends inside the record kind
const X_FULL_TRUNCATED: u32 = 2; // input ends inside a FULL page
const X_BAD_KIND: u32 = 3; // kind not 0x00, 0x01 or 0x80
const X_DELTA_LENGTH_TRUNCATED: u32 = 4; // input ends inside the delta length
const X_TOO_LONG: u32 = 5; // a ULEB128 length of more bytes than the page size needs
const X_DELTA_BAD_LENGTH: u32 = 6; // delta length 0 or over the page size
const X_DELTA_TRUNCATED: u32 = 7; // input ends inside the delta
const X_ZRUN_LENGTH_TRUNCATED: u32 = 8; // input ends inside a zero-run length
const X_ZRUN_OVER: u32 = 9; // zero-run length over the page size
const X_ZRUN_EMPTY: u32 = 10; // empty zero run other than the first
const X_ZRUN_PAST_END: u32 = 11; // zero run past the page end
const X_AFTER_ZRUN_TRUNCATED: u32 = 12; // input ends after a zero run
const X_NZRUN_LENGTH_TRUNCATED: u32 = 13; // input ends inside a non-zero-run length
const X_NZRUN_OVER: u32 = 14; // non-zero-run length over the page size
const X_NZRUN_EMPTY: u32 = 15; // empty non-zero run
const X_NZRUN_PAST_END: u32 = 16; // non-zero run past the page end
const X_NZRUN_TRUNCATED: u32 = 17; // input ends inside a non-zero run

/** xbzrleDecodeBody's error result; positions never reach it (the wrapper bounds them). */
const X_ERROR: i32 = -1;
const ULEB_MASK: u32 = 0x7f;
const ULEB_MORE: u32 = 0x80;
const ULEB_SHIFT: u64 = 7;

// Details of this instance's last decode error (globals, not memory: one
// instance per thread, so threads never see each other's).
let xWhere: u32 = 0;
let xOffset: usize = 0;
let xPageByte: u32 = 0;
let xValue: u64 = 0;
let xExtra: u32 = 0;

// @ts-ignore: decorator
@inline function xfail(where: u32, offset: usize, pageByte: u32, value: u64, extra: u32): i32 {
  xWhere = where;
  xOffset = offset;
  xPageByte = pageByte;
  xValue = value;
  xExtra = extra;
  return X_ERROR;
}

/**
 * QEMU's xbzrle_decode_buffer (src/codec/xbzrle.ts xbzrleDecode) over the
 * delta [pos, end) onto the page at `page`; returns `end`, or X_ERROR. Each
 * length is checked before it is used and each non-zero run whole before a
 * byte of it is written; runs before a bad one have been applied.
 */
function decodeDelta(pos: usize, end: usize, page: usize, pageSize: u32, maxLengthBytes: u32): i32 {
  const size = <u64>pageSize;
  let d: u32 = 0;
  while (pos < end) {
    // Zero run.
    let at = pos;
    let value: u64 = 0;
    let shift: u64 = 0;
    for (let n: u32 = 1; ; n++) {
      if (pos >= end) return xfail(X_ZRUN_LENGTH_TRUNCATED, at, d, 0, 0);
      const b = <u32>load<u8>(pos++);
      value += (<u64>(b & ULEB_MASK)) << shift;
      if ((b & ULEB_MORE) == 0) break;
      if (n == maxLengthBytes) return xfail(X_TOO_LONG, at, d, 0, 0);
      shift += ULEB_SHIFT;
    }
    if (value > size) return xfail(X_ZRUN_OVER, at, d, value, 0);
    if (value == 0 && d != 0) return xfail(X_ZRUN_EMPTY, at, d, 0, 0);
    if (<u64>d + value > size) return xfail(X_ZRUN_PAST_END, at, d, value, 0);
    d += <u32>value;

    // Non-zero run: it must follow (the encoding has no trailing zero run).
    at = pos;
    if (pos >= end) return xfail(X_AFTER_ZRUN_TRUNCATED, at, d, 0, 0);
    value = 0;
    shift = 0;
    for (let n: u32 = 1; ; n++) {
      if (pos >= end) return xfail(X_NZRUN_LENGTH_TRUNCATED, at, d, 0, 0);
      const b = <u32>load<u8>(pos++);
      value += (<u64>(b & ULEB_MASK)) << shift;
      if ((b & ULEB_MORE) == 0) break;
      if (n == maxLengthBytes) return xfail(X_TOO_LONG, at, d, 0, 0);
      shift += ULEB_SHIFT;
    }
    if (value > size) return xfail(X_NZRUN_OVER, at, d, value, 0);
    if (value == 0) return xfail(X_NZRUN_EMPTY, at, d, 0, 0);
    if (<u64>d + value > size) return xfail(X_NZRUN_PAST_END, at, d, value, 0);
    const left = end - pos;
    if (<u64>left < value) return xfail(X_NZRUN_TRUNCATED, pos, d, value, <u32>left);
    const n = <u32>value;
    copyRun(page + d, pos, n);
    pos += n;
    d += n;
  }
  return <i32>pos;
}

/**
 * decodeXbzrleBody: apply the codec-2 record body at [pos, end) to the page
 * at `page` (pageSize bytes, holding the old page unless the kind is FULL);
 * returns the offset after the body, or -1 with the failed check in
 * xbzrleErrorInfo. Nothing outside the page is written.
 */
export function xbzrleDecodeBody(pos: usize, end: usize, page: usize, pageSize: u32): i32 {
  if (pos >= end) return xfail(X_KIND_TRUNCATED, pos, 0, 0, 0);
  const kind = load<u8>(pos);
  if (kind == KIND_UNCHANGED) return <i32>(pos + 1);
  if (kind == KIND_FULL) {
    const start = pos + 1;
    const left = end - start;
    if (left < <usize>pageSize) return xfail(X_FULL_TRUNCATED, start, 0, 0, <u32>left);
    memory.copy(page, start, pageSize);
    return <i32>(start + pageSize);
  }
  if (kind != KIND_DELTA) return xfail(X_BAD_KIND, pos, 0, 0, <u32>kind);
  const maxLengthBytes = lengthBytes(pageSize);
  const at = pos + 1;
  let p = at;
  let length: u64 = 0;
  let shift: u64 = 0;
  for (let n: u32 = 1; ; n++) {
    if (p >= end) return xfail(X_DELTA_LENGTH_TRUNCATED, at, 0, 0, 0);
    const b = <u32>load<u8>(p++);
    length += (<u64>(b & ULEB_MASK)) << shift;
    if ((b & ULEB_MORE) == 0) break;
    if (n == maxLengthBytes) return xfail(X_TOO_LONG, at, 0, 0, 0);
    shift += ULEB_SHIFT;
  }
  if (length == 0 || length > <u64>pageSize) return xfail(X_DELTA_BAD_LENGTH, at, 0, length, 0);
  const left = end - p;
  if (<u64>left < length) return xfail(X_DELTA_TRUNCATED, p, 0, length, <u32>left);
  return decodeDelta(p, p + <usize>length, page, pageSize, maxLengthBytes);
}

/**
 * Details of this instance's last xbzrleDecodeBody error: 0 which check
 * (X_ above), 1 byte offset, 2 page byte, 3 the length read, 4 bytes left
 * (or the bad kind byte). f64, so that any length a ULEB128 of up to 5
 * bytes holds comes back exact.
 */
export function xbzrleErrorInfo(field: i32): f64 {
  switch (field) {
    case 0: return <f64>xWhere;
    case 1: return <f64>xOffset;
    case 2: return <f64>xPageByte;
    case 3: return <f64>xValue;
    case 4: return <f64>xExtra;
    default: return 0;
  }
}
