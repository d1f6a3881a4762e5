import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { ServiceUnavailable } from '../errors.js'
import { problems } from '../schemas/common.js'

const Health = Type.Object({ status: Type.Literal('ok') })
const Ready = Type.Object({ status: Type.Literal('ready'), database: Type.String() })

const healthRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('/healthz', {
    schema: {
      tags: ['health'],
      operationId: 'health',
      summary: 'Liveness: the process serves requests',
      description: 'Always 200 while the process runs; it does not touch the database.',
      response: { 200: Health }
    }
  }, async () => ({ status: 'ok' as const }))

  app.get('/readyz', {
    schema: {
      tags: ['health'],
      operationId: 'ready',
      summary: 'Readiness: the database answers',
      description: 'Pings the database: 200 with the driver in use (`pglite` or `postgres`), or 503 ' +
        'SERVICE_UNAVAILABLE when it does not answer.',
      response: { 200: Ready, ...problems(503) }
    }
  }, async () => {
    try {
      await app.database.ping()
    } catch (err) {
      app.log.warn({ err }, 'readiness check failed')
      throw new ServiceUnavailable('the database does not answer')
    }
    return { status: 'ready' as const, database: app.database.driver }
  })
}

export default healthRoutes
