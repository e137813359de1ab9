/**
 * Copies into shared memory, the three ways the service could make them:
 * TypedArray#set (and Buffer#copy, which calls it on Node 20), copyInto
 * (src/shared-copy.ts: Buffer#fill, a C++ memcpy), and within one shared
 * memory copyWithin against the wasm kernel's memory.copy (the merge's
 * ByteMover). V8 copies shared memory with relaxed atomics: byte by byte
 * unless both sides have the same alignment mod 8.
 *
 *   npm run build && node dist/bench/copies.js [--mib 64] [--runs 5]
 *
 * Body chunks: 64 KiB from an ordinary Buffer (as node:http hands a request
 * body over) into a shared slab, at offsets aligned to 8 and 3 past that.
 * Records: 4 KiB records (a FULL page) moved within a shared wasm memory to
 * a place 13 bytes further per record (frames pack records end to end).
 * GB/s of bytes copied, best of `--runs` timed passes after two untimed ones.
 */
import { parseArgs } from 'node:util';
import { createKernelMemory, instantiateRemusWasm } from '../src/codec/remus-wasm.js';
import { copyInto } from '../src/shared-copy.js';

const { values } = parseArgs({ options: { mib: { type: 'string', default: '64' }, runs: { type: 'string', default: '5' } } });
const totalBytes = Number(values.mib) * 1024 * 1024;
const runs = Number(values.runs);
const CHUNK_BYTES = 64 * 1024;
const RECORD_BYTES = 4096;
/** Frames pack records end to end: each record lands 13 bytes further on than the one before would if they were page-aligned. */
const RECORD_STRIDE = RECORD_BYTES + 13;

function best(pass: () => void, bytes: number): number {
  pass();
  pass();
  let fastest = Infinity;
  for (let r = 0; r < runs; r++) {
    const started = process.hrtime.bigint();
    pass();
    fastest = Math.min(fastest, Number(process.hrtime.bigint() - started));
  }
  return bytes / fastest;
}

const chunk = Buffer.alloc(CHUNK_BYTES, 0x5a);
const slab = new Uint8Array(new SharedArrayBuffer(totalBytes + 16)).fill(1);
const rows: string[] = [];
for (const skew of [0, 3]) {
  const set = best(() => {
    for (let o = 0; o + CHUNK_BYTES <= totalBytes; o += CHUNK_BYTES) slab.set(chunk, o + skew);
  }, totalBytes);
  const filled = best(() => {
    for (let o = 0; o + CHUNK_BYTES <= totalBytes; o += CHUNK_BYTES) copyInto(slab, o + skew, chunk);
  }, totalBytes);
  rows.push(`| 64 KiB body chunk into a shared slab, offset ${skew === 0 ? 'aligned' : '8n + 3'} | set ${set.toFixed(2)} | copyInto ${filled.toFixed(2)} |`);
}

const records = Math.floor(totalBytes / 2 / RECORD_STRIDE);
const memory = createKernelMemory(totalBytes);
const kernel = instantiateRemusWasm(memory);
const arena = new Uint8Array(memory.buffer).fill(2);
const framesAt = totalBytes / 2;
const within = best(() => {
  for (let i = 0; i < records; i++) arena.copyWithin(framesAt + i * RECORD_STRIDE, i * RECORD_BYTES, (i + 1) * RECORD_BYTES);
}, records * RECORD_BYTES);
const wasmCopy = best(() => {
  for (let i = 0; i < records; i++) kernel.copy(framesAt + i * RECORD_STRIDE, i * RECORD_BYTES, RECORD_BYTES);
}, records * RECORD_BYTES);
rows.push(`| 4 KiB records within a shared wasm memory, packed end to end | copyWithin ${within.toFixed(2)} | wasm memory.copy ${wasmCopy.toFixed(2)} |`);

console.log(`GB/s, best of ${runs} passes over ${values.mib} MiB\n`);
console.log('| copy | as before | as now |');
console.log('|---|--:|--:|');
for (const row of rows) console.log(row);
