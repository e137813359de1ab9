import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    setupFiles: ['test/setup.ts'],
    // End-to-end tests start worker pools and HTTP servers; two cores do not
    // gain from running many files at once, and timeouts are generous because
    // the machine is shared (no test asserts on time).
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 60_000,
  },
});
