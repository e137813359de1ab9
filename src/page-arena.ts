/**
 * The receiver's page memory: one growable shared WebAssembly memory that
 * holds a receiver's staged pages and its scratch (a trial page, the codec 3
 * chunk scratch, a copy of the frame), so that the wasm kernel
 * (src/codec/remus-wasm.ts) decodes records straight into staging. A memory
 * image's pages are NOT here (they live in Buffer chunks in the process's
 * memory, see MemoryImage in src/receiver.ts): a page moves between the image
 * and the staging by the image's read() and write(), one memmove each.
 *
 * Regions are handed out by a bump allocator and never freed: staging keeps
 * its blocks for its life (a reset staging reuses them), so nothing
 * fragments. The memory grows in
 * place (memory.grow, whole 64 KiB wasm pages) as regions are added;
 * offsets stay valid, only the whole-memory view (`bytes`) is re-taken.
 * wasm32 bounds it to 4 GiB: alloc() then answers -1 and the caller refuses
 * what needed the room.
 */
import { createKernelMemory, KERNEL_MAX_MEMORY_PAGES, WASM_PAGE_BYTES, type KernelMemory } from './codec/remus-wasm.js';

/** The most an arena holds: wasm32's whole address space, 4 GiB. */
export const ARENA_MAX_BYTES = KERNEL_MAX_MEMORY_PAGES * WASM_PAGE_BYTES;
/** Regions start on a cache line. */
const REGION_ALIGN = 64;

export class PageArena {
  readonly memory: KernelMemory;
  private view: Uint8Array;
  /** End of the last region handed out. */
  private top = 0;

  constructor() {
    this.memory = createKernelMemory(WASM_PAGE_BYTES, ARENA_MAX_BYTES);
    this.view = new Uint8Array(this.memory.buffer);
  }

  /**
   * The whole memory as one array (for copyWithin, fill, fs reads and
   * writes at region offsets). Re-taken when the memory grows: read it
   * again after any alloc().
   */
  get bytes(): Uint8Array {
    return this.view;
  }

  /** Bytes handed out so far. */
  get allocated(): number {
    return this.top;
  }

  /** A region of `bytes` bytes; its offset, or -1 when the memory cannot grow that far (4 GiB, or the host refused). */
  alloc(bytes: number): number {
    if (!Number.isSafeInteger(bytes) || bytes < 0) throw new RangeError(`PageArena.alloc: ${bytes} bytes`);
    const offset = Math.ceil(this.top / REGION_ALIGN) * REGION_ALIGN;
    const end = offset + bytes;
    if (end > ARENA_MAX_BYTES) return -1;
    if (end > this.view.byteLength) {
      const pages = Math.ceil((end - this.view.byteLength) / WASM_PAGE_BYTES);
      try {
        this.memory.grow(pages);
      } catch (err) {
        if (err instanceof RangeError) return -1;
        throw err;
      }
      this.view = new Uint8Array(this.memory.buffer);
    }
    this.top = end;
    return offset;
  }
}
