import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { FastifyInstance } from 'fastify';

/** Routes reachable without a token: liveness only. */
const OPEN_ROUTES = new Set(['/health']);

/**
 * Require `Authorization: Bearer <token>` on every route but /health, as an
 * onRequest hook (before any body is read). Refusal: 401 UNAUTHORIZED JSON.
 * The comparison takes the same time whatever the token sent: both sides are
 * hashed to 32 bytes first, then compared with timingSafeEqual. Neither the
 * expected token nor the one sent is ever logged or echoed.
 */
export function installBearerAuth(app: FastifyInstance, token: string): void {
  const authorized = bearerTokenCheck(token);
  app.addHook('onRequest', async (request, reply) => {
    if (OPEN_ROUTES.has(request.routeOptions.url ?? '')) return;
    const header = request.headers.authorization;
    if (authorized(header)) return;
    reply.header('www-authenticate', 'Bearer realm="remus-compress"').header('connection', 'close');
    return reply.code(401).send({
      statusCode: 401,
      code: 'UNAUTHORIZED',
      error: 'Unauthorized',
      message: header === undefined ? 'this service needs an Authorization: Bearer <token> header' : 'the bearer token is not valid',
    });
  });
}

/** Whether an Authorization header carries `token` (the epoch fast path asks this too). */
export function bearerTokenCheck(token: string): (header: string | undefined) => boolean {
  if (token.length === 0) throw new RangeError('the bearer token must not be empty');
  const expected = digest(token);
  return (header) => {
    const match = typeof header === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    return match !== null && timingSafeEqual(digest(match[1]), expected);
  };
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

/** A security setting that cannot be used (the command lines turn it into a usage error). */
export class AuthConfigError extends Error {}

export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

/**
 * The bearer token: the first line of `file`, else the REMUS_TOKEN
 * environment variable, else none. Never printed.
 */
export function readBearerToken(file: string | undefined, fromEnv: string | undefined = process.env.REMUS_TOKEN): string | undefined {
  let token: string | undefined;
  if (file !== undefined) {
    try {
      token = readFileSync(file, 'utf8').split(/\r?\n/, 1)[0].trim();
    } catch (err) {
      throw new AuthConfigError(`--token-file: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    if (token.length === 0) throw new AuthConfigError(`--token-file: ${file} is empty`);
  } else if (fromEnv !== undefined) {
    token = fromEnv.trim();
    if (token.length === 0) throw new AuthConfigError('REMUS_TOKEN is set but empty');
  }
  if (token !== undefined && /\s/.test(token)) throw new AuthConfigError('the bearer token must not contain white space');
  return token;
}

/** A non-loopback address only with --allow-remote, and then only with a token. */
export function checkListenAddress(host: string, allowRemote: boolean, token: string | undefined): void {
  if (isLoopbackHost(host)) return;
  if (!allowRemote) {
    throw new AuthConfigError(`--host ${host} is not a loopback address; listening beyond this machine needs --allow-remote and a bearer token`);
  }
  if (token === undefined) throw new AuthConfigError('--allow-remote needs a bearer token: --token-file PATH, or the token in REMUS_TOKEN');
}
