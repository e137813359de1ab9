import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The package's root folder, found from this module whether it runs as
 * TypeScript source (tests) or compiled under dist/. Worker threads always
 * load compiled JavaScript, so they are resolved from here.
 */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('package.json not found above ' + fileURLToPath(import.meta.url));
    dir = parent;
  }
  return dir;
}

export const ENCODER_WORKER_FILE = join(packageRoot(), 'dist', 'workers', 'encoder.js');
