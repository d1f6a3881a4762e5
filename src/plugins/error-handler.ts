import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { isDatabaseUnavailable } from '../db/database-errors.js'
import { detailsOf } from '../errors.js'

// Fastify's own client errors get codes in the service's vocabulary.
const FASTIFY_CODES: Record<string, string> = {
  FST_ERR_CTP_BODY_TOO_LARGE: 'BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'INVALID_CONTENT_LENGTH',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'INVALID_JSON',
  FST_ERR_CTP_INVALID_JSON_BODY: 'INVALID_JSON',
  FST_ERR_BAD_URL: 'BAD_URL'
}

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  412: 'Precondition Failed',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  500: 'Internal Server Error',
  503: 'Service Unavailable'
}

interface ValidationIssue {
  instancePath: string
  message?: string
  params: Record<string, unknown>
}

function fieldOf (context: string | undefined, issue: ValidationIssue): string {
  const extra = issue.params.missingProperty ?? issue.params.additionalProperty
  const path = issue.instancePath.split('/').filter(Boolean)
  if (typeof extra === 'string') path.push(extra)
  return [context ?? 'body', ...path].join('.')
}

export function sendProblem (reply: FastifyReply, request: FastifyRequest, status: number, body: Record<string, unknown>): FastifyReply {
  return reply.status(status).type('application/problem+json').send({
    type: `https://mobvibe.dev/problems/${String(body.code).toLowerCase().replaceAll('_', '-')}`,
    title: TITLES[status] ?? 'Error',
    status,
    instance: request.url,
    ...body
  })
}

/** Renders every error as RFC 9457 problem+json with a stable code; 5xx internals stay in the log. */
export default fp(async function errorHandler (app: FastifyInstance) {
  app.setErrorHandler((err: FastifyError & { validationContext?: string }, request, reply) => {
    if (err.validation) {
      const errors = (err.validation as ValidationIssue[]).map((issue) => ({
        field: fieldOf(err.validationContext, issue),
        message: issue.message ?? 'is invalid'
      }))
      const first = errors[0]
      return sendProblem(reply, request, 400, {
        code: 'VALIDATION_FAILED',
        detail: first ? `${first.field} ${first.message}` : err.message,
        errors
      })
    }
    if (isDatabaseUnavailable(err)) {
      request.log.error({ err }, 'request failed: the database cannot be reached')
      // retryable: the request did not run, or (a lost reply) ran once; messages are idempotent by clientMessageId
      return sendProblem(reply.header('retry-after', '1'), request, 503, {
        code: 'DATABASE_UNAVAILABLE',
        detail: 'The database cannot be reached right now; retry shortly'
      })
    }
    const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500
    if (status >= 500) {
      request.log.error({ err }, 'request failed')
      return sendProblem(reply, request, status, {
        code: status === 503 ? (err.code ?? 'SERVICE_UNAVAILABLE') : 'INTERNAL_ERROR',
        detail: status === 503 ? err.message : 'The service failed to handle this request; it has been logged'
      })
    }
    request.log.info({ code: err.code, status }, err.message)
    const code = (err.code && FASTIFY_CODES[err.code]) ?? err.code ?? 'BAD_REQUEST'
    return sendProblem(reply, request, status, {
      code,
      detail: code === 'UNSUPPORTED_MEDIA_TYPE'
        ? `Content-Type ${request.headers['content-type'] ?? '(none)'} is not supported: send application/json`
        : err.message,
      ...detailsOf(err)
    })
  })

  app.setNotFoundHandler((request, reply) => sendProblem(reply, request, 404, {
    code: 'ROUTE_NOT_FOUND',
    detail: `No route for ${request.method} ${request.url.split('?')[0]}`
  }))
}, { name: 'error-handler' })
