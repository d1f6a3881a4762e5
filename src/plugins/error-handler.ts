import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { problemBody, toProblem, type Problem } from '../errors.js'
import { withoutAccessToken } from './request-id.js'

/** Sends a problem as application/problem+json (RFC 9457), with the headers it carries. */
export function sendProblem (reply: FastifyReply, request: FastifyRequest, problem: Problem): FastifyReply {
  return reply.status(problem.status).headers(problem.headers).type('application/problem+json')
    .send(problemBody(problem, { instance: withoutAccessToken(request.url), requestId: request.id }))
}

/** Renders every error through the one catalogue mapping; 5xx internals stay in the log. */
export default fp(async function errorHandler (app: FastifyInstance) {
  app.setErrorHandler((err: FastifyError, request, reply) => {
    const problem = toProblem(err)
    if (problem.status >= 500) {
      const why = problem.code === 'DATABASE_UNAVAILABLE' ? 'request failed: the database cannot be reached' : 'request failed'
      request.log.error({ err }, why)
    } else if (!err.validation) {
      request.log.info({ code: problem.code, status: problem.status }, err.message)
    }
    if (problem.code === 'UNSUPPORTED_MEDIA_TYPE') {
      problem.detail = `Content-Type ${request.headers['content-type'] ?? '(none)'} is not supported: send application/json`
    }
    return sendProblem(reply, request, problem)
  })

  app.setNotFoundHandler((request, reply) => sendProblem(reply, request, {
    status: 404,
    code: 'ROUTE_NOT_FOUND',
    detail: `No route for ${request.method} ${request.url.split('?')[0]}`,
    extra: {},
    headers: {}
  }))
}, { name: 'error-handler' })
