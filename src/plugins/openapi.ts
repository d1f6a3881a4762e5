import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { asyncApiDocument } from '../schemas/asyncapi.js'
import { Problem } from '../schemas/common.js'
import { EVENT_SCHEMAS } from '../schemas/events.js'
import { SHARED_SCHEMAS } from '../schemas/session.js'

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
          'The WebSocket stream (`GET /v1/sessions/{id}/stream`) is not in this document: its frames are described ' +
          'by the AsyncAPI 3.0 document asyncapi.yaml, served as JSON at `/asyncapi.json`.'
      },
      servers: [{ url: '/' }],
      tags: [
        { name: 'sessions', description: 'Session resources and their lifecycle' },
        { name: 'agent', description: 'Messages to the Claude Code agent, its events, and the WebSocket stream' },
        { name: 'health', description: 'Liveness and readiness' }
      ]
    },
    // Fastify always gives a route with a body schema a body (at least {}), so swagger marks every
    // request body required; ours are optional unless their schema requires a member
    transformObject: (documentObject) => {
      const { openapiObject } = documentObject as { openapiObject: { paths?: Record<string, object> } }
      for (const path of Object.values(openapiObject.paths ?? {})) {
        for (const op of Object.values(path ?? {}) as { requestBody?: { required?: boolean, content?: Record<string, { schema?: { required?: string[] } }> } }[]) {
          const schema = op?.requestBody?.content?.['application/json']?.schema
          if (op.requestBody && schema && !schema.required?.length) op.requestBody.required = false
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
