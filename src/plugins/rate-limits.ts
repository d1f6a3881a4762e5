import rateLimit, { type FastifyRateLimitStoreCtor } from '@fastify/rate-limit'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { rateLimited } from '../errors.js'

interface RateLimitsOptions {
  config: Pick<Config, 'perUser'>
  /**
   * Where the counters live. Default: @fastify/rate-limit's in-process LRU store, so every
   * instance of the service counts on its own. Several instances behind one balancer need one
   * shared store (its RedisStore, or any class with the same `incr`/`child`).
   */
  store?: FastifyRateLimitStoreCtor
}

type Bucket = 'requests' | 'heartbeats'

/** users (× 2 buckets) counted at once by the in-process store; the least recently seen go first */
const LOCAL_STORE_KEYS = 50_000

/** Heartbeats have a bucket of their own: a phone sends them on a timer, whatever else it does. */
function bucketOf (request: FastifyRequest): Bucket {
  return request.method === 'POST' && request.routeOptions.url?.endsWith('/sessions/:id/heartbeat') === true
    ? 'heartbeats'
    : 'requests'
}

/**
 * Per-user request rates on every route registered after it in the same context (the /v1
 * routes): `RATE_LIMIT_PER_MINUTE` for everything (a stream upgrade included), and
 * `HEARTBEAT_RATE_LIMIT_PER_MINUTE` for `POST /sessions/:id/heartbeat`; 0 switches a bucket off.
 * Fixed one-minute windows keyed by `request.user.userId`: the check runs as a route onRequest
 * hook, which Fastify runs after the context's own (authentication), and before the body is read.
 * Every counted response carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`;
 * a refusal is 429 RATE_LIMITED with `Retry-After` too, before the route did anything.
 * Stream frames are not HTTP requests and are not counted.
 */
export default fp(async function rateLimits (app: FastifyInstance, opts: RateLimitsOptions) {
  const limits: Record<Bucket, number> = {
    requests: opts.config.perUser.requestsPerMinute,
    heartbeats: opts.config.perUser.heartbeatsPerMinute
  }
  if (limits.requests === 0 && limits.heartbeats === 0) return
  await app.register(rateLimit, {
    global: true,
    hook: 'onRequest',
    timeWindow: 60_000,
    // `RateLimit-*` (the IETF draft's names) rather than `X-RateLimit-*`
    enableDraftSpec: true,
    ...(opts.store ? { store: opts.store } : { cache: LOCAL_STORE_KEYS }),
    // the bucket is part of the key: one store, two independent counters per user
    keyGenerator: (request) => `${bucketOf(request)}:${request.user.userId}`,
    max: (request) => limits[bucketOf(request)],
    // a switched-off bucket is not counted at all (no headers either)
    allowList: (request) => limits[bucketOf(request)] === 0,
    errorResponseBuilder: (request, context) => rateLimited(bucketOf(request), context.max, Math.max(1, Math.ceil(context.ttl / 1000)))
  })
}, { name: 'rate-limits', dependencies: ['auth'] })
