import underPressure, { type FastifyUnderPressureOptions } from '@fastify/under-pressure'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { problemBody, serviceOverloaded, toProblem } from '../errors.js'
import { withoutAccessToken } from './request-id.js'

/** what a refused client is told to wait: long enough for a saturated loop to drain */
const RETRY_AFTER_SECONDS = 5
/** at most one warning per this many milliseconds while requests are being shed */
const WARN_EVERY_MS = 10_000

/**
 * How often @fastify/under-pressure samples the event-loop delay: the threshold itself, at
 * most 1 s (its default) and at least 10 ms (its histogram's resolution).
 *
 * What it compares with the threshold is the *mean* of the per-tick delays recorded (every
 * 10 ms) since the previous sample. Each tick counts once however late it is, so one isolated
 * stall (a GC pause, one slow synchronous task) is averaged with the interval's punctual ticks
 * and does not trip it; a saturated loop, where every tick is late by the threshold or more,
 * does, whatever the interval. The interval then sets how stale the decision is: shedding starts
 * within about two intervals of saturation and stops within about two intervals of recovery (a
 * sample taken on a saturated loop is itself late). An interval as long as the threshold keeps
 * that lag on the scale the operator chose, and is long enough not to follow the noise.
 */
function sampleIntervalMs (maxEventLoopDelayMs: number): number {
  return Math.min(1000, Math.max(10, maxEventLoopDelayMs))
}

/**
 * Load shedding: while the event loop's delay is above `MAX_EVENT_LOOP_DELAY_MS` (0: never),
 * every request but `GET /healthz` is answered 503 SERVICE_OVERLOADED with `Retry-After` at
 * once, in the first onRequest hooks, instead of queueing without bound. Registered at the root.
 */
export default fp(async function loadShedding (app: FastifyInstance, opts: { config: Pick<Config, 'maxEventLoopDelayMs'> }) {
  const maxEventLoopDelay = opts.config.maxEventLoopDelayMs
  if (maxEventLoopDelay === 0) return
  // the same for every refusal but the request's URL and id
  const problem = toProblem(serviceOverloaded(RETRY_AFTER_SECONDS))
  let lastWarnAt = 0
  let shedSinceWarn = 0
  // Start-up (migrations, compiling schemas, the embedded database's first load) blocks the loop
  // before the first request can arrive, and the samples taken meanwhile would shed the first
  // requests of a service that is in fact idle: decisions count from two samples after ready on
  const interval = sampleIntervalMs(maxEventLoopDelay)
  let trustedFrom = Infinity
  app.addHook('onReady', async () => { trustedFrom = Date.now() + 2 * interval })
  /**
   * What under-pressure does with a request while the loop is saturated: nothing for `/healthz`,
   * else the problem, returned as the hook's reply. under-pressure sends any value returned other
   * than a promise or nullish (its README), which its types do not say. A thrown 503 would also
   * be logged as a failed request each time, and overload is the moment not to write a line per
   * request.
   */
  function shed (request: FastifyRequest, reply: FastifyReply, _type: string, value: number | undefined): Record<string, unknown> | undefined {
    // liveness: an overloaded process is alive; a failing probe would get it restarted
    if (request.routeOptions.url === '/healthz' || Date.now() < trustedFrom) return undefined
    shedSinceWarn++
    const now = Date.now()
    if (now - lastWarnAt >= WARN_EVERY_MS) {
      request.log.warn({ eventLoopDelayMs: Math.round(value ?? 0), maxEventLoopDelayMs: maxEventLoopDelay, shed: shedSinceWarn }, 'event loop saturated: shedding requests with 503')
      lastWarnAt = now
      shedSinceWarn = 0
    }
    reply.status(problem.status).headers(problem.headers).type('application/problem+json')
    // A refused WebSocket upgrade: this hook runs before @fastify/websocket's own, which would
    // otherwise destroy the socket after the answer; nothing else ends a socket taken by an upgrade
    if (request.headers.upgrade !== undefined) {
      reply.header('connection', 'close')
      reply.raw.once('finish', () => request.raw.socket.destroy())
    }
    return problemBody(problem, { instance: withoutAccessToken(request.url), requestId: request.id })
  }
  const pressureHandler = shed as unknown as FastifyUnderPressureOptions['pressureHandler']

  await app.register(underPressure, {
    maxEventLoopDelay,
    sampleInterval: interval,
    // no status route: the measurements stay inside the service (and in its log)
    exposeStatusRoute: false,
    pressureHandler
  })
}, { name: 'load-shedding' })
