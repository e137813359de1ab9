/**
 * Load for bench/workloads/lru-server.ts over loopback: --concurrency
 * request loops on keep-alive connections, each a seeded mix of GET and PUT
 * on record ids skewed toward the low ones (a hot set that stays cached and
 * a long tail that misses and evicts). Stops after --seconds or --requests,
 * whichever comes first, or on SIGTERM, and prints what it did. With --rate,
 * requests start on a fixed schedule of RATE a second in all (late ones start
 * at once, as pgbench -R does), so the load does not depend on how much CPU
 * the service gets; 0 sends them back to back.
 *
 *   node dist/bench/workloads/lru-load.js --port P [--concurrency 4] [--rate 0] [--keys 50000] [--put 0.3] [--seconds 60] [--requests 2000000]
 */
import { Agent, request } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { xorshiftUnit } from '../../src/xorshift.js';

const TAGS = ['red', 'green', 'blue', 'cyan', 'magenta', 'yellow', 'black', 'white', 'grey', 'orange'];

function call(agent: Agent, port: number, method: string, path: string, body?: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
    const req = request({ host: '127.0.0.1', port, method, path, agent, headers }, (res) => {
      res.on('data', () => undefined);
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      port: { type: 'string' },
      concurrency: { type: 'string', default: '4' },
      rate: { type: 'string', default: '0' },
      keys: { type: 'string', default: '50000' },
      put: { type: 'string', default: '0.3' },
      seconds: { type: 'string', default: '60' },
      requests: { type: 'string', default: '2000000' },
      seed: { type: 'string', default: '1' },
    },
  });
  if (values.port === undefined) throw new Error('--port is required');
  const port = Number(values.port);
  const concurrency = Number(values.concurrency);
  const keys = Number(values.keys);
  const putFraction = Number(values.put);
  const maxRequests = Number(values.requests);
  /** Seconds between two requests of one loop; 0 for back to back. */
  const period = Number(values.rate) > 0 ? concurrency / Number(values.rate) : 0;
  let deadline = Date.now() + Number(values.seconds) * 1000;
  // SIGTERM (the capture script stopping the load) ends the loops after their running requests.
  process.once('SIGTERM', () => {
    deadline = 0;
  });
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  let sent = 0;
  let failed = 0;

  const loop = async (n: number): Promise<void> => {
    const rand = xorshiftUnit(Number(values.seed) * 1000 + n + 1);
    // Loops start spread over one period, so the requests do not come in bursts.
    const start = Date.now() + (period * 1000 * n) / concurrency;
    for (let k = 0; sent < maxRequests && Date.now() < deadline; k++) {
      const wait = start + k * period * 1000 - Date.now();
      if (wait > 0) await sleep(wait);
      sent++;
      // r^3 skews toward low ids: about a third of the requests go to the first 4% of the keys.
      const id = Math.floor(keys * rand() ** 3);
      const status =
        rand() < putFraction
          ? await call(agent, port, 'PUT', `/items/${id}`, JSON.stringify({ delta: Math.floor(rand() * 2000) - 1000, tag: TAGS[Math.floor(rand() * TAGS.length)] }))
          : await call(agent, port, 'GET', `/items/${id}`);
      if (status !== 200) failed++;
    }
  };
  const started = Date.now();
  await Promise.all(Array.from({ length: concurrency }, (_, n) => loop(n)));
  agent.destroy();
  const seconds = (Date.now() - started) / 1000;
  console.log(`lru-load: ${sent} requests in ${seconds.toFixed(1)} s (${(sent / seconds).toFixed(0)}/s), ${failed} failed`);
  if (failed > 0) process.exitCode = 1;
}

await main();
