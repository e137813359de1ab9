/**
 * The capture command line: `remus-compress capture ...` and
 * `node dist/bench/capture.js ...` both run runCapture(). Captures a live
 * process's dirty pages into an RMTR trace, or streams them through a running
 * sender and receiver as a checkpoint controller would.
 */
import { statSync } from 'node:fs';
import { parseArgs } from 'node:util';
import {
  DEFAULT_MAX_PAGES,
  DEFAULT_PAGE_SIZE,
  captureToFile,
  captureToService,
  type CapturedEpoch,
  type CaptureOptions,
} from './capture.js';
import { ApiError } from './client.js';

/** Exit status for a bad command line. */
const EXIT_USAGE = 2;
/** Exit status for a failed capture, or a receiver whose image differs from the capture. */
const EXIT_FAILURE = 1;
const DEFAULT_EPOCHS = 10;
const DEFAULT_INTERVAL_MS = 100;
const MIB = 2 ** 20;

export const captureUsage = (program: string): string => `Usage: ${program} --pid N [options] (--out FILE | --sender URL --receiver URL)

Checkpoints a running process: every --interval-ms it stops the process
(SIGSTOP), reads its writable mappings through /proc/PID/mem, resumes it
(SIGCONT) and keeps the pages that changed since the previous checkpoint.
Epoch 0 is the whole image. Needs permission to ptrace the process (its
owner, or root).

Options:
  --pid N            the process to capture
  --epochs K         checkpoints to take (default ${DEFAULT_EPOCHS})
  --interval-ms M    start-to-start time between checkpoints (default ${DEFAULT_INTERVAL_MS})
  --out FILE         write an RMTR trace (../shared/TRACE.md)
  --sender URL       post each epoch to this sender (e.g. http://127.0.0.1:7000) ...
  --receiver URL     ... forward its frames to this receiver, and check the
                     receiver's pages and final image digest against the capture
  --page-size N      bytes per page (default ${DEFAULT_PAGE_SIZE}, the system's)
  --max-pages N      refuse an image larger than this (default ${DEFAULT_MAX_PAGES}, 1 GiB)
  --json             print the summary as one JSON object on stdout
  -h, --help         this help

Progress (one line per epoch) goes to stderr. Exit status: 0 done, 1 capture
failed or the receiver's image differs, 2 bad command line.`;

class UsageError extends Error {}

function wholeNumber(option: string, text: string | undefined, fallback: number, min: number, max: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n < min || n > max) {
    throw new UsageError(`--${option}: '${text}' is not a whole number from ${min} to ${max}`);
  }
  return n;
}

function progressLine(e: CapturedEpoch): string {
  return (
    `epoch ${e.epoch}: ${e.pfns.length} pages (${e.newPages} new, ${e.changedPages} changed; ` +
    `${e.unmappedPages} unmapped, ${e.unreadablePages} unreadable; ${e.mappedPages} mapped), paused ${e.pausedMs.toFixed(1)} ms\n`
  );
}

/** The capture command; `program` is how the usage names it. Returns the exit status. */
export async function runCapture(argv: string[], program = 'remus-compress capture'): Promise<number> {
  const USAGE = captureUsage(program);
  let stopResumingOnSignal: (() => void) | null = null;
  try {
    let parsed;
    try {
      parsed = parseArgs({
        args: argv,
        strict: true,
        allowPositionals: false,
        options: {
          pid: { type: 'string' },
          epochs: { type: 'string' },
          'interval-ms': { type: 'string' },
          out: { type: 'string' },
          sender: { type: 'string' },
          receiver: { type: 'string' },
          'page-size': { type: 'string' },
          'max-pages': { type: 'string' },
          json: { type: 'boolean' },
          help: { type: 'boolean', short: 'h' },
        },
      });
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    const { values } = parsed;
    if (values.help) {
      console.log(USAGE);
      return 0;
    }
    if (values.pid === undefined) throw new UsageError('--pid is required');
    const streaming = values.sender !== undefined || values.receiver !== undefined;
    if (streaming && values.out !== undefined) throw new UsageError('--out cannot be combined with --sender/--receiver');
    if (streaming && (values.sender === undefined || values.receiver === undefined)) {
      throw new UsageError('--sender and --receiver go together');
    }
    if (!streaming && values.out === undefined) throw new UsageError('say where the capture goes: --out FILE, or --sender URL --receiver URL');
    for (const option of ['sender', 'receiver'] as const) {
      const url = values[option];
      if (url !== undefined && !URL.canParse(url)) throw new UsageError(`--${option}: '${url}' is not a URL`);
    }

    const json = values.json === true;
    const options: CaptureOptions = {
      pid: wholeNumber('pid', values.pid, 0, 1, 2 ** 22),
      epochs: wholeNumber('epochs', values.epochs, DEFAULT_EPOCHS, 1, 0xffff_ffff),
      intervalMs: wholeNumber('interval-ms', values['interval-ms'], DEFAULT_INTERVAL_MS, 0, 3_600_000),
      pageSize: wholeNumber('page-size', values['page-size'], DEFAULT_PAGE_SIZE, 512, 65536),
      maxPages: wholeNumber('max-pages', values['max-pages'], DEFAULT_MAX_PAGES, 1, Number.MAX_SAFE_INTEGER),
      onEpoch: (e) => process.stderr.write(progressLine(e)),
    };

    // From here on the target may be stopped at any moment: a signal that
    // ends this process must resume it first (the capture's own finally
    // would not run).
    stopResumingOnSignal = resumeOnSignal(options.pid);
    if (values.out !== undefined) {
      const result = await captureToFile(values.out, options);
      const bytes = statSync(values.out).size;
      const summary = { out: values.out, ...result, bytes };
      console.log(json ? JSON.stringify(summary) : `wrote ${values.out}: ${result.epochs} epochs, ${result.pages} pages, ${(bytes / MIB).toFixed(1)} MiB`);
      return 0;
    }
    const result = await captureToService({ ...options, senderUrl: values.sender as string, receiverUrl: values.receiver as string });
    if (json) {
      console.log(JSON.stringify(result));
    } else {
      for (const e of result.epochs) {
        console.log(
          `epoch ${e.epoch}: ${e.pages} pages, ${e.bytesIn} -> ${e.bytesOut} bytes (ratio ${e.ratio.toFixed(4)}), ` +
            `paused ${e.pausedMs.toFixed(1)} ms, shipped in ${e.shipMs.toFixed(1)} ms, ${e.mismatches} of ${e.pagesVerified} pages differ`,
        );
      }
      console.log(
        result.imageEqual
          ? `receiver image ${result.imageId} equals the capture: ${result.imagePages} pages, digest equal`
          : `MISMATCH: receiver image ${result.imageId} differs from the capture (digest equal: ${result.digestEqual})`,
      );
    }
    return result.imageEqual ? 0 : EXIT_FAILURE;
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`capture: ${err.message}\n\n${USAGE}`);
      return EXIT_USAGE;
    }
    if (err instanceof ApiError) {
      // Its message already carries the status and the service's code.
      console.error(`capture: the service answered ${err.message}`);
      return EXIT_FAILURE;
    }
    // CaptureError and system errors carry a code; fetch failures (service not
    // running) hide the reason in their cause.
    const e = err as Error & { code?: string; cause?: { message?: string } };
    const cause = e.cause?.message === undefined ? '' : ` (${e.cause.message})`;
    console.error(`capture: ${e.code ? `${e.code}: ` : ''}${e.message}${cause}`);
    return EXIT_FAILURE;
  } finally {
    stopResumingOnSignal?.();
  }
}

/** Exit status for a signal, as a shell reports it: 128 + its number. */
const SIGNAL_EXIT: Partial<Record<NodeJS.Signals, number>> = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };

/**
 * While a capture runs, SIGINT, SIGTERM or SIGHUP sends the target SIGCONT
 * before this process exits: a checkpoint interrupted between its SIGSTOP
 * and its SIGCONT would otherwise leave the target stopped (and a stopped
 * process does not act on SIGTERM either). Returns the uninstaller.
 */
function resumeOnSignal(pid: number): () => void {
  const handler = (signal: NodeJS.Signals): void => {
    try {
      process.kill(pid, 'SIGCONT');
    } catch {
      // The target is gone: nothing to resume.
    }
    process.exit(SIGNAL_EXIT[signal] ?? EXIT_FAILURE);
  };
  const signals = Object.keys(SIGNAL_EXIT) as NodeJS.Signals[];
  for (const s of signals) process.on(s, handler);
  return () => {
    for (const s of signals) process.off(s, handler);
  };
}
