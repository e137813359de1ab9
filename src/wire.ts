/**
 * Constants of the frame format (docs/FORMAT.md) and the ULEB128 integer
 * coding of page frame numbers, shared by the encoding workers, the frame
 * writer and the receiver.
 */
export const FRAME_MAGIC = 'RMFR';
export const FRAME_VERSION = 1;
export const FRAME_HEADER_BYTES = 64;
/** Offset of the CRC-32 inside the header; the CRC covers bytes before it and the payload. */
export const FRAME_CRC_OFFSET = 60;
/** The seed's output buffer size, and our ceiling for one frame. */
export const MAX_FRAME_BYTES = 16 * 1024 * 1024;

export const FLAG_LAST = 0x01;
export const FLAG_RESYNC = 0x02;
export const FLAG_ABORT = 0x04;
export const KNOWN_FLAGS = FLAG_LAST | FLAG_RESYNC | FLAG_ABORT;

/** Codec byte of a frame: how its page records are encoded (docs/FORMAT.md). */
export const CODEC_REMUS = 1;
export const CODEC_XBZRLE = 2;
/** Codec 1's page records in zstd-compressed chunks (src/codec/chunk.ts). */
export const CODEC_REMUS_ZSTD = 3;
/** A stream's codec as the API names it, and its codec byte. */
export const CODEC_NAMES = ['remus', 'xbzrle', 'remus-zstd'] as const;
export type CodecName = (typeof CODEC_NAMES)[number];
const CODEC_BYTES: Record<CodecName, number> = { remus: CODEC_REMUS, xbzrle: CODEC_XBZRLE, 'remus-zstd': CODEC_REMUS_ZSTD };
export function isCodecName(value: unknown): value is CodecName {
  return (CODEC_NAMES as readonly unknown[]).includes(value);
}
export function codecByte(name: CodecName): number {
  return CODEC_BYTES[name];
}
/** Whether `byte` is the codec byte of a codec this build encodes and decodes. */
export function isKnownCodecByte(byte: number): boolean {
  return Object.values(CODEC_BYTES).includes(byte);
}
/** The known codec bytes with their names, for error messages: "1 (remus), 2 (xbzrle), 3 (remus-zstd)". */
export function knownCodecsText(): string {
  return CODEC_NAMES.map((name) => `${CODEC_BYTES[name]} (${name})`).join(', ');
}

/**
 * Record types: 1 is the page record of the frame's codec (REMUS under codecs
 * 1 and 3, XBZRLE under codec 2); 2 is ZERO under all; 3 is a chunk of page
 * records, the only top-level record of codec 3.
 */
export const RECORD_REMUS = 1;
export const RECORD_XBZRLE = 1;
export const RECORD_ZERO = 2;
export const RECORD_CHUNK = 3;
/** A chunk record's header at most: type, method and three ULEB128 lengths of at most 3 bytes. */
export const CHUNK_HEADER_MAX_BYTES = 2 + 3 * 3;
/**
 * What a chunk of one page adds to that page's record at most: the header and
 * the first index (4 bytes); each further page adds at most a 3-byte gap.
 * Frames and record regions leave this much room per page.
 */
export const CHUNK_OVERHEAD_BYTES = CHUNK_HEADER_MAX_BYTES + 4;

/** Page frame numbers are below 2^48: any x86-64 physical or virtual page number fits. */
export const PFN_LIMIT = 2 ** 48;
/** ULEB128 bytes needed for any pfn below PFN_LIMIT (7 bits a byte). */
export const MAX_PFN_BYTES = 7;
/** Record type byte plus the longest pfn. */
export const RECORD_PREFIX_MAX_BYTES = 1 + MAX_PFN_BYTES;

export const MIN_PAGE_SHIFT = 9;
export const MAX_PAGE_SHIFT = 16;

/**
 * Write `value` (a non-negative integer below PFN_LIMIT) as ULEB128 at `pos`;
 * returns the position after it. Below 2^32 (every pfn of a guest under 16
 * TiB) by shifts; above, by division, since pfns may exceed 32 bits. Why two
 * loops: a pfn read as u64 is a double to V8, on which `%` is a call to fmod;
 * the shifts halve the cost of the encode loop's pfns (35 -> 17 ns a pfn).
 */
export function writeUleb128(out: Uint8Array, pos: number, value: number): number {
  if (value < 0x1_0000_0000) {
    while (value >= 0x80) {
      out[pos++] = (value & 0x7f) | 0x80;
      value >>>= 7;
    }
  } else {
    while (value >= 0x80) {
      out[pos++] = (value % 0x80) | 0x80;
      value = Math.floor(value / 0x80);
    }
  }
  out[pos++] = value;
  return pos;
}

/** Bytes writeUleb128 uses for `value`. */
export function uleb128Length(value: number): number {
  let n = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 0x80);
    n++;
  }
  return n;
}

/** log2 of a power of two in the supported page size range, or -1. */
export function pageShiftOf(pageSize: number): number {
  for (let shift = MIN_PAGE_SHIFT; shift <= MAX_PAGE_SHIFT; shift++) {
    if (pageSize === 2 ** shift) return shift;
  }
  return -1;
}
