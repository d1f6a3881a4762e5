import { Ajv, type Options } from 'ajv'
import addFormatsModule from 'ajv-formats'
import type { FastifySchema, FastifySchemaCompiler } from 'fastify'

// ajv-formats is CommonJS with a default export
const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv

const base: Options = { removeAdditional: false, useDefaults: true, allErrors: true, strict: false }

/**
 * One validator per HTTP part. Query strings, params and headers arrive as text and must be
 * coerced ("50" → 50, a repeated parameter → an array); JSON bodies must not be: `{"title": 5}` or
 * `{"title": null}` is a client error, not a string.
 */
export function createValidatorCompiler (sharedSchemas: object[]): FastifySchemaCompiler<FastifySchema> {
  const make = (coerceTypes: Options['coerceTypes']) => {
    const ajv = addFormats(new Ajv({ ...base, coerceTypes }))
    for (const schema of sharedSchemas) ajv.addSchema(schema)
    return ajv
  }
  const byPart: Record<string, Ajv> = {
    body: make(false),
    querystring: make('array'),
    params: make(true),
    headers: make(true)
  }
  return ({ schema, httpPart }) => {
    const ajv = byPart[httpPart ?? 'body'] ?? byPart.body!
    return ajv.compile(schema as object)
  }
}
