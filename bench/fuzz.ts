/**
 * The long fuzz run: the properties of test/fuzz.test.ts (bench/fuzz-props.ts)
 * for as long as --seconds allows, half on the sender's body reader, half on
 * the receiver's frame path. Prints one JSON summary; exits 1 on the first
 * counterexample, with fast-check's seed and path to replay it.
 *
 *   npm run build && node dist/bench/fuzz.js --seconds 60 [--seed N]
 */
import { parseArgs } from 'node:util';
import fc from 'fast-check';
import { isMain } from '../src/is-main.js';
import { bodyCase, checkBodyCase, checkStreamCase, streamCase } from './fuzz-props.js';

// As in the tests (test/setup.ts): every maxLength in the properties is the
// range meant, not fast-check's default of about ten elements.
fc.configureGlobal({ defaultSizeToMaxWhenMaxSpecified: true });

export interface FuzzSummary {
  seconds: number;
  seed: number;
  body: { runs: number; outcomes: Record<string, number>; failed: boolean; counterexample?: string };
  frames: { runs: number; outcomes: Record<string, number>; failed: boolean; counterexample?: string };
}

export async function runFuzz(seconds: number, seed: number): Promise<FuzzSummary> {
  const halfMs = Math.max(1, Math.round((seconds * 1000) / 2));
  const options = { numRuns: Number.MAX_SAFE_INTEGER, interruptAfterTimeLimit: halfMs, markInterruptAsFailure: false, seed };
  const bodyOutcomes: Record<string, number> = {};
  const body = await fc.check(
    fc.asyncProperty(bodyCase, async (c) => {
      const outcome = await checkBodyCase(c);
      bodyOutcomes[outcome] = (bodyOutcomes[outcome] ?? 0) + 1;
    }),
    options,
  );
  const frameOutcomes: Record<string, number> = {};
  const frames = fc.check(
    fc.property(streamCase, (c) => {
      const outcome = checkStreamCase(c);
      frameOutcomes[outcome] = (frameOutcomes[outcome] ?? 0) + 1;
    }),
    options,
  );
  const describe = <T>(d: fc.RunDetails<T>): string | undefined =>
    d.failed ? `seed ${d.seed}, path ${d.counterexamplePath}: ${JSON.stringify(d.counterexample)}; ${String(d.errorInstance)}` : undefined;
  return {
    seconds,
    seed,
    body: { runs: body.numRuns, outcomes: bodyOutcomes, failed: body.failed, counterexample: describe(body) },
    frames: { runs: frames.numRuns, outcomes: frameOutcomes, failed: frames.failed, counterexample: describe(frames) },
  };
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { seconds: { type: 'string' }, seed: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true });
  if (values.help) {
    console.log('Usage: node dist/bench/fuzz.js [--seconds 30] [--seed N]   (exits 1 on a counterexample)');
    return 0;
  }
  const seconds = Number(values.seconds ?? '30');
  if (!Number.isFinite(seconds) || seconds <= 0 || seconds > 24 * 3600) throw new Error(`--seconds must be a positive number, got ${values.seconds}`);
  const seed = values.seed === undefined ? Date.now() | 0 : Number(values.seed);
  const summary = await runFuzz(seconds, seed);
  console.log(JSON.stringify(summary, null, 2));
  return summary.body.failed || summary.frames.failed ? 1 : 0;
}

if (isMain(import.meta.url)) {
  process.exitCode = await main();
}
