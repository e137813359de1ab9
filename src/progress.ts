/**
 * A progress bar on a terminal: redrawn in place on one line. Callers draw it
 * only when the stream is a TTY; otherwise they print their own lines.
 */
export class ProgressBar {
  private readonly started = Date.now();
  private lastWidth = 0;

  constructor(private readonly stream: NodeJS.WriteStream = process.stderr) {}

  /** Redraw with `fraction` (0..1) done and a label after the bar. */
  update(fraction: number, label: string): void {
    const width = 30;
    const f = Math.max(0, Math.min(1, fraction));
    const filled = Math.round(f * width);
    const seconds = ((Date.now() - this.started) / 1000).toFixed(0);
    const line = `[${'#'.repeat(filled)}${' '.repeat(width - filled)}] ${(f * 100).toFixed(0).padStart(3)}% ${seconds}s ${label}`;
    const columns = this.stream.columns ?? 100;
    const shown = line.length >= columns ? line.slice(0, columns - 1) : line;
    this.stream.write(`\r${shown.padEnd(this.lastWidth)}`);
    this.lastWidth = shown.length;
  }

  /** Leave the bar's line (the next output starts on a fresh line). */
  finish(): void {
    if (this.lastWidth > 0) this.stream.write('\n');
    this.lastWidth = 0;
  }
}
