/**
 * Trace tools: check, summarise and generate RMTR traces (../shared/TRACE.md).
 *
 *   node dist/bench/trace-tool.js summary <trace.rmtr> [--json]
 *   node dist/bench/trace-tool.js validate <trace.rmtr>
 *   node dist/bench/trace-tool.js generate <out.rmtr> [--profile mixed] [--seed 1] [--epochs 20] [--pages 4096]
 *                                          [--page-size 4096] [--dirty-fraction 0.1] [--raw-fraction 0.01]
 */
import { parseArgs } from 'node:util';
import { isMain } from '../src/is-main.js';
import { openTrace, summarizeTrace } from '../src/trace.js';
import { generateTraceFile, type TraceProfile } from '../src/trace-gen.js';

const USAGE = `Usage:
  trace-tool summary <trace.rmtr> [--json]     epochs, pages, dirty pages per epoch
  trace-tool validate <trace.rmtr>             read every record; report the first error with its offset
  trace-tool generate <out.rmtr> [options]     a seeded synthetic trace
     --profile sparse|mixed|rewrite|zeros (default mixed)   --seed N (1)   --epochs N (20)
     --pages N (4096)   --page-size N (4096)   --dirty-fraction F (0.1)   --raw-fraction F (0.01)`;

const PROFILES: readonly TraceProfile[] = ['sparse', 'mixed', 'rewrite', 'zeros'];

function number(option: string, text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isFinite(value)) throw new Error(`--${option}: '${text}' is not a number`);
  return value;
}

export async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      json: { type: 'boolean' },
      profile: { type: 'string' },
      seed: { type: 'string' },
      epochs: { type: 'string' },
      pages: { type: 'string' },
      'page-size': { type: 'string' },
      'dirty-fraction': { type: 'string' },
      'raw-fraction': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const [command, path] = positionals;
  if (values.help || command === undefined) {
    console.log(USAGE);
    return values.help ? 0 : 2;
  }
  if (path === undefined) throw new Error(`${command} needs a trace file`);
  switch (command) {
    case 'summary':
    case 'validate': {
      const trace = await openTrace(path);
      try {
        const summary = await summarizeTrace(trace.epochs());
        if (command === 'validate') console.log(`${path}: valid, ${summary.epochs} epochs, page size ${trace.pageSize}`);
        else if (values.json) console.log(JSON.stringify({ pageSize: trace.pageSize, ...summary }));
        else {
          console.log(`${path}: page size ${trace.pageSize}, ${summary.epochs} epochs, ${summary.totalPages} pages (${summary.pageBytes} bytes)`);
          console.log(`epoch 0: ${summary.imagePages} pages; dirty epochs: min ${summary.dirtyPages.min}, mean ${summary.dirtyPages.mean.toFixed(1)}, max ${summary.dirtyPages.max} pages`);
          console.log(`raw pages ${summary.rawPages}, zero pages ${summary.zeroPages}`);
        }
      } finally {
        await trace.close();
      }
      return 0;
    }
    case 'generate': {
      const profile = (values.profile ?? 'mixed') as TraceProfile;
      if (!PROFILES.includes(profile)) throw new Error(`--profile: '${profile}' is not one of ${PROFILES.join(', ')}`);
      await generateTraceFile(path, {
        profile,
        seed: number('seed', values.seed, 1),
        epochs: number('epochs', values.epochs, 20),
        pages: number('pages', values.pages, 4096),
        pageSize: number('page-size', values['page-size'], 4096),
        dirtyFraction: number('dirty-fraction', values['dirty-fraction'], 0.1),
        rawFraction: number('raw-fraction', values['raw-fraction'], 0.01),
      });
      console.log(`wrote ${path}`);
      return 0;
    }
    default:
      throw new Error(`unknown command '${command}'\n${USAGE}`);
  }
}

if (isMain(import.meta.url)) {
  try {
    process.exitCode = await main(process.argv.slice(2));
  } catch (err) {
    const e = err as Error & { code?: string };
    console.error(`trace-tool: ${e.code ? `${e.code}: ` : ''}${e.message}`);
    process.exitCode = 1;
  }
}
