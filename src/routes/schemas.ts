/** JSON schemas shared by the route plugins. */

/** Every error answer: fastify's serialisation of a ServiceError (src/errors.ts). */
export const errorSchema = {
  type: 'object',
  properties: {
    statusCode: { type: 'integer' },
    code: { type: 'string' },
    error: { type: 'string' },
    message: { type: 'string' },
  },
  required: ['statusCode', 'code', 'message'],
} as const;
