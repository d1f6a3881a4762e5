import { Type, type Static, type TSchema } from 'typebox'

// A plain pattern as well as the format: ajv's uuid format also accepts `urn:uuid:…`, which
// Postgres refuses
export const Uuid = Type.String({ format: 'uuid', pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$', description: 'A UUID' })
/** Postgres text cannot hold NUL: refuse it at the door instead of failing in the database */
export const NO_NUL = '^[^\\u0000]*$'
export const DateTime = Type.String({ format: 'date-time' })
export const Nullable = <T extends TSchema>(schema: T, options: { description?: string } = {}) => Type.Union([schema, Type.Null()], options)

/** A `$ref` to a schema registered by `$id`, keeping its static type. */
export function ref<T extends TSchema> (schema: T) {
  const id = (schema as { $id?: unknown }).$id
  if (typeof id !== 'string') throw new TypeError('ref() needs a schema with an $id')
  return Type.Unsafe<Static<T>>(Type.Ref(id))
}

export const Problem = Type.Object({
  type: Type.String({ description: 'A URI naming the problem type' }),
  title: Type.String(),
  status: Type.Integer(),
  detail: Type.String(),
  code: Type.String({ description: 'Stable, machine-readable error code' }),
  instance: Type.Optional(Type.String()),
  requestId: Type.Optional(Type.String({ description: 'The request\'s id, as in the X-Request-Id response header and the service\'s log lines' })),
  errors: Type.Optional(Type.Array(Type.Object({
    field: Type.String(),
    message: Type.String()
  }, { additionalProperties: true }))),
  state: Type.Optional(Type.String()),
  allowedTargets: Type.Optional(Type.Array(Type.String())),
  currentVersion: Type.Optional(Type.Integer())
}, { $id: 'Problem', additionalProperties: true, description: 'RFC 9457 problem details' })

const ProblemRef = ref(Problem)

/**
 * Response headers, as @fastify/swagger reads them: a `headers` map on a route's response schema
 * becomes the response's `headers` in the OpenAPI document. Fastify itself ignores the member
 * (it neither validates nor sets headers from it): the handlers set them.
 */
type ResponseHeaders = Record<string, TSchema>

/** `ETag: "<version>"`, set by every response that carries a session's version */
export const ETagHeader = Type.String({
  pattern: '^"[0-9]+"$',
  description: 'The session\'s version as a strong entity tag, `"<version>"`: send it back in `If-Match`'
})

/** `Location` of a created resource */
export const LocationHeader = Type.String({ description: 'The path of the new session: `/v1/sessions/{id}`' })

/** `Retry-After` (delay-seconds) of a 503 */
const RetryAfterHeader = Type.Integer({
  minimum: 0,
  description: 'Seconds to wait before retrying: `1` with `DATABASE_UNAVAILABLE`'
})

/** The same response schema, with the headers the response carries declared for the document. */
export function withHeaders<T extends TSchema> (schema: T, headers: ResponseHeaders): T {
  return { ...schema, headers } as T
}

const ProblemResponse = {
  description: 'A problem (RFC 9457)',
  content: { 'application/problem+json': { schema: ProblemRef } }
}

type ProblemResponseSchema = typeof ProblemResponse & { headers?: ResponseHeaders }

/**
 * Error responses a route may give, by status, as application/problem+json. Every route that uses
 * the database may also answer 503 `DATABASE_UNAVAILABLE` (with Retry-After) when it cannot be
 * reached, so that is always listed, with its header.
 */
export function problems (...statuses: number[]): Record<number, ProblemResponseSchema> {
  return Object.fromEntries([...new Set([...statuses, 503])].map((s) => [
    s,
    s === 503 ? { ...ProblemResponse, headers: { 'Retry-After': RetryAfterHeader } } : ProblemResponse
  ]))
}

export const IfMatchHeaders = Type.Object({
  'if-match': Type.Optional(Type.String({ description: 'The ETag of the version this change was based on; 412 if stale' }))
})
