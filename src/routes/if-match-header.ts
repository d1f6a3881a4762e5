import type { FastifyRequest } from 'fastify'
import { parseIfMatch, type IfMatch } from '../domain/if-match.js'
import { InvalidIfMatch } from '../errors.js'

/** The request's If-Match precondition; a malformed header is a 400, never ignored. */
export function ifMatchOf (request: FastifyRequest): IfMatch | undefined {
  const header = request.headers['if-match']
  const parsed = parseIfMatch(Array.isArray(header) ? header.join(',') : header)
  if (parsed === null) throw new InvalidIfMatch(JSON.stringify(header))
  return parsed
}
