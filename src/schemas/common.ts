import { Type, type Static, type TSchema } from 'typebox'

// A plain pattern as well as the format: ajv's uuid format also accepts `urn:uuid:…`, which
// Postgres refuses
export const Uuid = Type.String({ format: 'uuid', pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$', description: 'A UUID' })
/** Postgres text cannot hold NUL: refuse it at the door instead of failing in the database */
export const NO_NUL = '^[^\\u0000]*$'
export const DateTime = Type.String({ format: 'date-time' })
export const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()])

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
  errors: Type.Optional(Type.Array(Type.Object({
    field: Type.String(),
    message: Type.String()
  }, { additionalProperties: true }))),
  state: Type.Optional(Type.String()),
  allowedTargets: Type.Optional(Type.Array(Type.String())),
  currentVersion: Type.Optional(Type.Integer())
}, { $id: 'Problem', additionalProperties: true, description: 'RFC 9457 problem details' })

export const ProblemRef = ref(Problem)

const ProblemResponse = {
  description: 'A problem (RFC 9457)',
  content: { 'application/problem+json': { schema: ProblemRef } }
}

/**
 * Error responses a route may give, by status, as application/problem+json. Every route that uses
 * the database may also answer 503 `DATABASE_UNAVAILABLE` (with Retry-After) when it cannot be
 * reached, so that is always listed.
 */
export function problems (...statuses: number[]): Record<number, typeof ProblemResponse> {
  return Object.fromEntries([...new Set([...statuses, 503])].map((s) => [s, ProblemResponse]))
}

export const IfMatchHeaders = Type.Object({
  'if-match': Type.Optional(Type.String({ description: 'The ETag of the version this change was based on; 412 if stale' }))
})
