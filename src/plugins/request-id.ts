import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

/** What a client's X-Request-Id may hold: it lands in log lines, so nothing that could forge one. */
const CLIENT_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

/**
 * Fastify's `genReqId`: the client's X-Request-Id when it is a sane token (a phone's retry can be
 * traced across the client's and the service's logs), a fresh UUID otherwise.
 */
export function requestIdOf (request: IncomingMessage): string {
  const header = request.headers['x-request-id']
  return typeof header === 'string' && CLIENT_REQUEST_ID.test(header) ? header : randomUUID()
}

/** A URL as it may be logged or shown: an `access_token` query parameter's value replaced. */
export function withoutAccessToken (url: string): string {
  return url.includes('access_token') ? url.replace(/([?&]access_token=)[^&#]*/gi, '$1[redacted]') : url
}

/** Echoes the request id on every response; Fastify already binds it to every log line (`reqId`). */
export default fp(async function requestId (app: FastifyInstance) {
  // a callback hook, not an async one: this runs on every request, heartbeats included
  app.addHook('onRequest', (request, reply, done) => {
    reply.header('x-request-id', request.id)
    done()
  })
}, { name: 'request-id' })
