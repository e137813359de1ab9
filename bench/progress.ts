/** A progress bar on stderr for long bench runs: redrawn in place on a terminal, one line per step otherwise. */
export class Progress {
  private done = 0;
  private readonly started = Date.now();

  constructor(
    private readonly total: number,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {}

  step(label: string): void {
    this.done++;
    const width = 30;
    const filled = Math.round((this.done / this.total) * width);
    const seconds = ((Date.now() - this.started) / 1000).toFixed(0);
    const line = `[${'#'.repeat(filled)}${' '.repeat(width - filled)}] ${this.done}/${this.total} ${seconds}s ${label}`;
    if (this.stream.isTTY) this.stream.write(`\r${line.padEnd(100)}${this.done === this.total ? '\n' : ''}`);
    else this.stream.write(`${line}\n`);
  }
}
