/**
 * The V8 flags the service is meant to run with: `npm start` and the
 * `remus-compress` command (its shebang) pass them, and the load bench starts
 * the service with them. Node takes them only on its command line (or in
 * NODE_OPTIONS): V8 sizes its heap when the process starts, and setting them
 * from inside the running process changes almost nothing (measured).
 *
 * --max-semi-space-size=1: V8's young generation may otherwise grow to 16 MiB
 * a semi-space, committed twice over, in the main thread and in every worker,
 * for a heap whose live part is ~14 MiB; the service's own memory is in its
 * arena, outside the heap. Capped, the load bench's peak RSS is 17-42 MiB
 * lower (docs/PERFORMANCE.md, "Memory").
 *
 * --expose-gc: lets the GC pacer (gc-pacer.ts) collect the young generation
 * every 4 MiB of request body read through node:http (an epoch off the fast
 * path: relayed, or `--no-fast-path`), freeing its socket buffers young
 * instead of in a full collection every epoch or two.
 *
 * --optimize-for-size: V8 grows its old generation less between full
 * collections. Without it the heap's pages came and went by 16-23 MiB over
 * a long run, and the peak RSS of 2000 epochs of 8 MiB was 210-223 MiB
 * against 187-199 with it, at the same in-process encode rate
 * (docs/PERFORMANCE.md, "Memory").
 */
export const SERVICE_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=1', '--expose-gc', '--optimize-for-size'];
