import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { asyncApiDocument } from '../schemas/asyncapi.js'
import { Problem } from '../schemas/common.js'
import { EVENT_SCHEMAS } from '../schemas/events.js'
import { SHARED_SCHEMAS } from '../schemas/session.js'

interface OpenApiOperation {
  requestBody?: { required?: boolean, content?: Record<string, { schema?: { required?: string[] } }> }
  responses?: Record<string, unknown>
  security?: unknown[]
}

const PROBLEM_CONTENT = { 'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } } }
const UNAUTHORIZED_RESPONSE = {
  description: 'No bearer token, or an invalid one (code UNAUTHORIZED)',
  headers: {
    'WWW-Authenticate': {
      description: '`Bearer realm="mobvibe"`, with `error="invalid_token"` and `error_description` when a token was sent',
      schema: { type: 'string' }
    }
  },
  content: PROBLEM_CONTENT
}
const RATE_LIMITED_RESPONSE = {
  description: 'Too many requests from this user (code RATE_LIMITED) or too many open streams (code TOO_MANY_STREAMS)',
  headers: {
    'Retry-After': { description: 'Seconds to wait before trying again', schema: { type: 'integer', minimum: 0 } },
    'RateLimit-Limit': { description: 'Requests allowed per window', schema: { type: 'integer', minimum: 0 } },
    'RateLimit-Remaining': { description: 'Requests left in this window', schema: { type: 'integer', minimum: 0 } },
    'RateLimit-Reset': { description: 'Seconds until the window resets', schema: { type: 'integer', minimum: 0 } }
  },
  content: PROBLEM_CONTENT
}

/**
 * Registers the shared schemas by $id and serves the OpenAPI 3.1 document built from the routes,
 * and the AsyncAPI 3.0 document of the WebSocket stream built from the frame schemas.
 */
export default fp(async function openapi (app: FastifyInstance, opts: { version: string }) {
  for (const schema of [Problem, ...SHARED_SCHEMAS, ...EVENT_SCHEMAS]) app.addSchema(schema)
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'MobVibe session service',
        version: opts.version,
        description: 'Coding sessions with a Claude Code agent, for the MobVibe mobile app. ' +
          'Every session response carries `ETag: "<version>"`; mutations honour `If-Match`. ' +
          'Errors are `application/problem+json` (RFC 9457) with a stable `code`. ' +
          'Every `/v1` operation needs `Authorization: Bearer <JWT>` (the user is the token\'s `sub`; another ' +
          'user\'s session is 404) and is rate-limited per user (429 with `Retry-After`). ' +
          'The WebSocket stream (`GET /v1/sessions/{id}/stream`) is not in this document: its frames are described ' +
          'by the AsyncAPI 3.0 document asyncapi.yaml, served as JSON at `/asyncapi.json`.'
      },
      servers: [{ url: '/' }],
      components: {
        securitySchemes: {
          bearerAuth: {
            type: 'http',
            scheme: 'bearer',
            bearerFormat: 'JWT',
            description: 'A JWT whose `sub` is the user: HS256 with `JWT_SECRET` (or the generated key, `npm run token`), ' +
              'or signed by the identity provider at `JWT_JWKS_URL`'
          }
        }
      },
      security: [{ bearerAuth: [] }],
      tags: [
        { name: 'sessions', description: 'Session resources and their lifecycle' },
        { name: 'agent', description: 'Messages to the Claude Code agent, its events, its permission requests and questions, interrupts, and the WebSocket stream' },
        { name: 'push', description: 'The user\'s devices (Expo, Web Push, webhooks) notified when a session nobody watches needs them' },
        { name: 'health', description: 'Liveness and readiness' }
      ]
    },
    transformObject: (documentObject) => {
      const { openapiObject } = documentObject as { openapiObject: { paths?: Record<string, object> } }
      for (const [url, path] of Object.entries(openapiObject.paths ?? {})) {
        for (const op of Object.values(path ?? {}) as OpenApiOperation[]) {
          // Fastify always gives a route with a body schema a body (at least {}), so swagger marks
          // every request body required; ours are optional unless their schema requires a member
          const schema = op?.requestBody?.content?.['application/json']?.schema
          if (op.requestBody && schema && !schema.required?.length) op.requestBody.required = false
          // every /v1 operation: the bearer token (declared globally) and the per-user rate limit,
          // so generated SDKs know both errors; the rest of the document is public
          if (url.startsWith('/v1/')) {
            // copies: a shared object would come out of the YAML writer as anchors and aliases
            op.responses = { ...op.responses, 401: structuredClone(UNAUTHORIZED_RESPONSE), 429: structuredClone(RATE_LIMITED_RESPONSE) }
          } else {
            op.security = []
          }
        }
      }
      return openapiObject as never
    },
    refResolver: {
      buildLocalReference: (json, _baseUri, _fragment, i) => String(json.$id ?? `def-${i}`)
    }
  })
  await app.register(swaggerUi, { routePrefix: '/docs' })
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())
  const asyncapi = asyncApiDocument(opts.version)
  app.get('/asyncapi.json', { schema: { hide: true } }, async () => asyncapi)
}, { name: 'openapi' })
