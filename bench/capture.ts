/**
 * Capture a live process's dirty pages into an RMTR trace, or stream them
 * through a running sender and receiver as a checkpoint controller would.
 * The command itself lives in src/capture-cli.ts (also `remus-compress capture`).
 *
 *   npm run build && node dist/bench/capture.js --pid N --epochs K --interval-ms M --out trace.rmtr
 */
import { runCapture } from '../src/capture-cli.js';
import { isMain } from '../src/is-main.js';

export function main(argv: string[]): Promise<number> {
  return runCapture(argv, 'node dist/bench/capture.js');
}

// Run only as a program, so tests can import main().
if (isMain(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
