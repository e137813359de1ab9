/**
 * The bench suite: the single-thread kernel bench (ours against zstd, lz4,
 * deflate and a plain copy, on real and synthetic traces) and the end-to-end
 * load test over loopback HTTP. Writes bench/results/: results.json,
 * report.md, throughput.svg (dirty GB/s against workers) and latency.svg
 * (checkpoint latency distribution).
 *
 *   npm run bench              the quick suite (under 2 minutes on 2 cores)
 *   npm run bench -- --full    everything: more passes, profiles, workers, streams
 */
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { packageRoot } from '../src/package-root.js';
import { ProgressBar } from '../src/progress.js';
import { generateTrace, type TraceProfile } from '../src/trace-gen.js';
import { DEFAULT_TRACE, formatTable, measureKernel, prepareTrace, type KernelResult } from './kernel.js';
import { CEILING_READS, formatCeiling, formatLoad, runHttpCeiling, runLoad, type CeilingResult, type LoadConfig, type LoadResult } from './load.js';
import { lineChart } from './svg.js';

interface Suite {
  kernelPasses: number;
  profiles: TraceProfile[];
  /** Captured traces of real programs, when bench/capture-*.sh has made them. */
  capturedTraces: string[];
  load: LoadConfig[];
}

const root = packageRoot();
const capturedDir = join(root, 'bench', 'traces');

function suite(full: boolean): Suite {
  const captured = existsSync(capturedDir) ? readdirSync(capturedDir).filter((f) => f.endsWith('.rmtr')).map((f) => join(capturedDir, f)) : [];
  const load: LoadConfig[] = [];
  for (const transport of ['tcp', 'unix'] as const) {
    for (const workers of full ? [1, 2, 4] : [1, 2]) {
      for (const epochMiB of [1, 8, 32]) {
        for (const streams of full ? [1, 2] : [1]) load.push({ workers, epochMiB, streams, epochs: full ? 30 : 10, transport });
      }
    }
  }
  return {
    kernelPasses: full ? 7 : 2,
    profiles: full ? ['sparse', 'mixed', 'rewrite'] : ['mixed'],
    capturedTraces: full ? captured : [],
    load,
  };
}

function throughputChart(results: LoadResult[]): string {
  const sizes = [...new Set(results.map((r) => r.epochMiB))];
  const streamCounts = [...new Set(results.map((r) => r.streams))];
  const transports = [...new Set(results.map((r) => r.transport))];
  const series = transports.flatMap((transport) =>
    sizes.flatMap((size) =>
      streamCounts.map((streams) => ({
        name: `${transport}, ${size} MiB epochs${streamCounts.length > 1 ? `, ${streams} streams` : ''}`,
        points: results
          .filter((r) => r.transport === transport && r.epochMiB === size && r.streams === streams)
          .map((r) => ({ x: r.workers, y: r.throughputGBps })),
      })),
    ),
  );
  return lineChart(series, { title: 'Dirty-page throughput over local HTTP (loopback TCP, Unix socket)', xLabel: 'workers', yLabel: 'GB/s of dirty pages' });
}

function latencyChart(results: LoadResult[]): string {
  const series = results
    .filter((r) => r.streams === 1)
    .map((r) => {
      const sorted = [...r.latencyMs.samples].sort((a, b) => a - b);
      return {
        name: `${r.transport} ${r.workers}w ${r.epochMiB} MiB`,
        points: sorted.map((ms, i) => ({ x: ms, y: (i + 1) / sorted.length })),
      };
    });
  return lineChart(series, { title: 'Checkpoint latency distribution (1 stream)', xLabel: 'ms, first request byte to last frame byte', yLabel: 'fraction of epochs' });
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { full: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) {
    console.log('Usage: npm run bench [-- --full]   (results in bench/results/)');
    return;
  }
  const plan = suite(values.full === true);
  const kernelSources: { name: string; load: () => Promise<Uint8Array> }[] = [];
  if (existsSync(DEFAULT_TRACE)) kernelSources.push({ name: 'python-small.rmtr (real)', load: () => readFile(DEFAULT_TRACE) });
  for (const path of plan.capturedTraces) kernelSources.push({ name: path, load: () => readFile(path) });
  for (const profile of plan.profiles) {
    kernelSources.push({ name: `synthetic ${profile}, 4096 pages, 20 epochs`, load: async () => generateTrace({ seed: 1, epochs: 20, pages: 4096, profile }) });
  }

  const ceilingRuns = [...new Set(plan.load.map((c) => `${c.transport} ${c.epochMiB}`))].flatMap((key) => {
    const [transport, epochMiB] = key.split(' ');
    return CEILING_READS.map((read) => ({ transport: transport as LoadConfig['transport'], epochMiB: Number(epochMiB), read }));
  });
  const steps = kernelSources.length + plan.load.length + ceilingRuns.length;
  let done = 0;
  const bar = process.stderr.isTTY ? new ProgressBar() : null;
  const step = (label: string): void => {
    done++;
    if (bar !== null) bar.update(done / steps, label);
    else process.stderr.write(`${done}/${steps} ${label}\n`);
  };
  const started = Date.now();
  const loadBefore = loadavg();
  const kernel: KernelResult[] = [];
  for (const source of kernelSources) {
    kernel.push(measureKernel(prepareTrace(source.name, await source.load()), { passes: plan.kernelPasses }));
    step(`kernel: ${source.name}`);
  }
  const load: LoadResult[] = [];
  for (const config of plan.load) {
    load.push(await runLoad(config));
    step(`load: ${config.transport}, ${config.workers} workers, ${config.epochMiB} MiB, ${config.streams} streams`);
  }
  const ceiling: CeilingResult[] = [];
  for (const { transport, epochMiB, read } of ceilingRuns) {
    ceiling.push(await runHttpCeiling(epochMiB, plan.load[0].epochs, transport, read));
    step(`transfer ceiling: ${transport}, ${epochMiB} MiB, ${read}`);
  }
  bar?.finish();

  const machine = `node ${process.version}, ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}, load average ${loadBefore[0].toFixed(2)} -> ${loadavg()[0].toFixed(2)}`;
  const seconds = (Date.now() - started) / 1000;
  const outDir = join(root, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  const report = [
    `# Bench report (${new Date().toISOString()})`,
    '',
    `${machine}; ${seconds.toFixed(0)} s; command: npm run bench${values.full ? ' -- --full' : ''}`,
    '',
    '## Kernel (one thread, no HTTP)',
    '',
    ...kernel.map((k) => formatTable(k) + '\n'),
    '## End to end over local HTTP',
    '',
    'Server in its own process, reached over loopback TCP (127.0.0.1) or a Unix socket (serve --socket); epoch 0 (the image) is sent first and not timed; dirty epochs change ~14 words per page. Latency: first request byte to last frame byte.',
    '',
    formatLoad(load),
    '',
    'Transfer ceiling, same run: the same dirty epochs POSTed to a bare server in its own process that only puts the body in a SharedArrayBuffer (no compression, no frames), through node:http or read straight into it as the epoch fast path does.',
    '',
    formatCeiling(ceiling),
    '',
    '![throughput](throughput.svg) ![latency](latency.svg)',
    '',
  ].join('\n');
  const json = {
    date: new Date().toISOString(),
    machine,
    seconds,
    full: values.full === true,
    kernel,
    load: load.map((r) => ({ ...r, latencyMs: { ...r.latencyMs } })),
    ceiling,
  };
  await Promise.all([
    writeFile(join(outDir, 'results.json'), JSON.stringify(json, null, 2) + '\n'),
    writeFile(join(outDir, 'report.md'), report),
    writeFile(join(outDir, 'throughput.svg'), throughputChart(load)),
    writeFile(join(outDir, 'latency.svg'), latencyChart(load)),
  ]);
  console.log(report);
  console.log(`results in ${outDir}`);
}

await main();
