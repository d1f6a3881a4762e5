import { readFileSync } from 'node:fs'
import websocket from '@fastify/websocket'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Fastify from 'fastify'
import type { Logger } from 'pino'
import type { Config } from './config.js'
import { toProblem } from './errors.js'
import agents from './plugins/agents.js'
import auth from './plugins/auth.js'
import cluster from './plugins/cluster.js'
import database from './plugins/database.js'
import errorHandler, { sendProblem } from './plugins/error-handler.js'
import events from './plugins/events.js'
import loadShedding from './plugins/load-shedding.js'
import openapi from './plugins/openapi.js'
import push from './plugins/push.js'
import rateLimits from './plugins/rate-limits.js'
import requestId, { requestIdOf, withoutAccessToken } from './plugins/request-id.js'
import { createValidatorCompiler } from './plugins/validators.js'
import { Problem } from './schemas/common.js'
import { EVENT_SCHEMAS } from './schemas/events.js'
import { SHARED_SCHEMAS } from './schemas/session.js'
import sessions from './plugins/sessions.js'
import webSecurity from './plugins/web-security.js'
import deviceRoutes from './routes/devices.js'
import healthRoutes from './routes/health.js'
import sessionActionRoutes from './routes/session-actions.js'
import sessionControlRoutes from './routes/session-control.js'
import sessionRecordRoutes from './routes/session-records.js'
import sessionMessageRoutes from './routes/session-messages.js'
import sessionStreamRoutes from './routes/session-stream.js'
import sessionRoutes from './routes/sessions.js'
import usageRoutes from './routes/usage.js'

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
  }
}

export interface BuildAppOptions {
  config: Config
  logger: Logger
  clock?: () => Date
  /** false: the timeout worker does not start on its own (tests and the bench drive sweeps) */
  startWorker?: boolean
}

/**
 * Fastify's `trustProxy`: the addresses and ranges as they are; a number of hops as the hops
 * nearest, whoever the peer is (Fastify itself now takes a bare number as "trust nobody"): meant
 * for a balancer that is the only way in, as in docker-compose.yml, where no instance publishes a
 * port. Anywhere else, name the balancers.
 */
function trustedProxies (trust: number | string[]): string[] | ((address: string, hop: number) => boolean) {
  return typeof trust === 'number' ? (_address, hop) => hop < trust : trust
}

/**
 * The whole service as a Fastify instance, without listening: the launcher, the tests and the
 * OpenAPI generator all build it the same way.
 */
export async function buildApp (opts: BuildAppOptions) {
  const { config } = opts
  const app = Fastify({
    loggerInstance: opts.logger,
    bodyLimit: config.limits.bodyBytes,
    // Clients retry over flaky mobile links; never let one hang a socket forever
    requestTimeout: 30_000,
    // the embedded database's first start on a loaded machine (or a long migration) takes a while
    pluginTimeout: 120_000,
    forceCloseConnections: 'idle',
    // the client's address (request.ip, in the logs) from X-Forwarded-For, only past the proxies named
    ...(config.trustProxy === undefined ? {} : { trustProxy: trustedProxies(config.trustProxy) }),
    // X-Request-Id from the client when sane, else a fresh UUID: echoed, logged, in problems
    genReqId: requestIdOf,
    // a WebSocket client's token may ride in the URL (?access_token=): never into a log line
    childLoggerFactory: (logger, bindings, opts, rawReq) => logger.child(bindings, {
      ...opts,
      serializers: {
        ...opts.serializers,
        req: (req: { method?: string, url?: string, host?: string, ip?: string, socket?: { remotePort?: number } }) => ({
          method: req.method,
          url: withoutAccessToken(req.url ?? rawReq.url ?? ''),
          host: req.host,
          remoteAddress: req.ip,
          remotePort: req.socket?.remotePort
        })
      }
    }),
    // errors Fastify raises before routing (a malformed URL) get the same problem+json
    frameworkErrors: (err, request, reply) => {
      const problem = toProblem(err.statusCode ? err : Object.assign(err, { statusCode: 400 }))
      if (problem.status >= 500) request.log.error({ err }, 'request failed before routing')
      return sendProblem(reply, request, problem)
    }
  }).withTypeProvider<TypeBoxTypeProvider>()
  app.setValidatorCompiler(createValidatorCompiler([Problem, ...SHARED_SCHEMAS, ...EVENT_SCHEMAS]))

  // A POST without a body (pause, resume, heartbeat) is common from mobile clients even when they
  // send a JSON content type: treat an empty JSON body as no body.
  const parseJson = app.getDefaultJsonParser('error', 'error')
  // Every body of this API is JSON: anything else is a 415, not a confusing validation error
  app.removeContentTypeParser('text/plain')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (body === '' || (typeof body === 'string' && body.trim() === '')) return done(null, undefined)
    return parseJson(request, body as string, done)
  })

  // Every body in this API is an object with optional members, or has required members that are
  // better reported by name than as "body must be object"
  app.addHook('preValidation', async (request) => {
    if (request.body === undefined || request.body === null) request.body = {}
  })

  app.decorate('config', config)
  // database first: Fastify runs onClose hooks in reverse, so it closes last
  await app.register(database, { config })
  await app.register(requestId)
  await app.register(webSecurity, { config })
  await app.register(loadShedding, { config })
  await app.register(errorHandler)
  await app.register(auth, { config })
  await app.register(openapi, { version: pkg.version })
  await app.register(websocket, {
    options: { maxPayload: config.limits.wsFrameBytes },
    // the stream routes close their own clients with 1001 first; this ends the server
    preClose: async function (this: { websocketServer: { close: () => void } }) { this.websocketServer.close() }
  })
  // The components load in the order the data flows: sessions (the state) → events (the log and
  // its fan-out, which records every transition) → agents (which write both)
  const clock = opts.clock ? { clock: opts.clock } : {}
  // this instance's lease first: a session may be claimed only under one
  await app.register(cluster, { config })
  await app.register(sessions, { config, ...clock })
  await app.register(events, clock)
  await app.register(agents, { config, ...clock })
  // push notifications listen to the agents' attention events
  await app.register(push, { config })
  // Start-up order: orphans of a previous run are ended and active sessions suspended before the
  // first sweep or request
  app.addHook('onReady', async () => {
    await app.agents.start(app.previousInstances)
    if (opts.startWorker !== false) app.timeoutWorker.start()
  })
  await app.register(healthRoutes)
  await app.register(async (v1) => {
    // Every /v1 route needs a valid bearer token; health, docs and the API documents stay public
    v1.addHook('onRequest', app.authenticate)
    await v1.register(rateLimits, { config })
    // A session id is a key in memory (agents, locks, subscribers) as well as in the database:
    // one spelling for it, whatever case the client sends (iOS prints UUIDs in upper case)
    v1.addHook('preValidation', async (request) => {
      const params = request.params as { id?: unknown }
      if (typeof params.id === 'string') params.id = params.id.toLowerCase()
    })
    // Another user's session is a 404 on every route that names one, the stream included (this
    // runs before the upgrade), before any handler reads or writes it
    v1.addHook('preHandler', async (request) => {
      const { id } = request.params as { id?: string }
      if (id !== undefined) await app.sessions.assertOwned(id, request.user.userId)
    })
    await v1.register(sessionRoutes)
    await v1.register(sessionActionRoutes)
    await v1.register(sessionRecordRoutes)
    await v1.register(sessionMessageRoutes)
    await v1.register(sessionControlRoutes)
    await v1.register(sessionStreamRoutes)
    await v1.register(usageRoutes)
    await v1.register(deviceRoutes)
  }, { prefix: '/v1' })
  return app
}

export type App = Awaited<ReturnType<typeof buildApp>>
