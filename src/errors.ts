/**
 * Every failure the service reports is a ServiceError: a stable machine code,
 * the HTTP status it maps to, and a message that names the field or byte
 * offset at fault. Fastify serialises it as
 * `{ statusCode, code, error, message }`, so clients switch on `code`.
 */
export class ServiceError extends Error {
  readonly code: string;
  readonly statusCode: number;
  /** Response headers that go with the error (fastify sets them), e.g. Retry-After on a 503. */
  readonly headers?: Record<string, string>;

  constructor(code: string, message: string, statusCode = 400, headers?: Record<string, string>) {
    super(message);
    this.name = 'ServiceError';
    this.code = code;
    this.statusCode = statusCode;
    if (headers !== undefined) this.headers = headers;
  }
}

/** A malformed page record or run: the decoder's only error type. */
export class CodecError extends ServiceError {
  /** Byte offset in the decoder's input where the problem was found. */
  readonly offset: number;

  constructor(code: string, message: string, offset: number) {
    super(code, `${message} (at byte ${offset})`, 400);
    this.name = 'CodecError';
    this.offset = offset;
  }
}

/** A frame the receiver refuses; nothing of it has been applied. */
export class FrameError extends ServiceError {
  constructor(code: string, message: string, statusCode = 400) {
    super(code, message, statusCode);
    this.name = 'FrameError';
  }
}

/** A malformed RMTR trace file or epoch body. */
export class TraceError extends ServiceError {
  readonly offset: number;

  constructor(code: string, message: string, offset: number) {
    super(code, `${message} (at byte ${offset})`, 400);
    this.name = 'TraceError';
    this.offset = offset;
  }
}
