import rateLimit, { type FastifyRateLimitStoreCtor } from '@fastify/rate-limit'
import type { FastifyBaseLogger, FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import type { Config } from '../config.js'
import { rateLimited } from '../errors.js'

interface RateLimitsOptions {
  config: Pick<Config, 'perUser' | 'redisUrl'>
  /**
   * Where the counters live, when neither the in-process store nor Redis (`REDIS_URL`) will do:
   * any class with @fastify/rate-limit's `incr`/`child`. Wins over `REDIS_URL`.
   */
  store?: FastifyRateLimitStoreCtor
}

type Bucket = 'requests' | 'heartbeats'

/** users (× 2 buckets) counted at once by the in-process store; the least recently seen go first */
const LOCAL_STORE_KEYS = 50_000

/**
 * The shared store (`REDIS_URL`). Every key is `mobvibe:rate-limit:<bucket>:<user>`, a counter
 * that expires with its window. The limiter must never hold a request up for long: a connection
 * attempt and a command each get a second, nothing is queued while the connection is down, and
 * nothing is retried.
 */
const REDIS = {
  keyPrefix: 'mobvibe:rate-limit:',
  connectTimeoutMs: 1000,
  commandTimeoutMs: 1000
} as const

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
 *
 * The counters live in this process, or in Redis with `REDIS_URL`, where every instance of the
 * service shares them. A limiter outage does not take the API down: while Redis is unreachable
 * requests go through uncounted (and without `RateLimit-*` headers), with a warning in the log
 * when the connection is lost and a line when it is back; a command that fails or times out on a
 * live connection lets its request through as well (`skipOnError`).
 */
export default fp(async function rateLimits (app: FastifyInstance, opts: RateLimitsOptions) {
  const limits: Record<Bucket, number> = {
    requests: opts.config.perUser.requestsPerMinute,
    heartbeats: opts.config.perUser.heartbeatsPerMinute
  }
  if (limits.requests === 0 && limits.heartbeats === 0) return
  const redis = opts.store === undefined && opts.config.redisUrl !== undefined
    ? await connectRedis(app, opts.config.redisUrl)
    : undefined
  await app.register(rateLimit, {
    global: true,
    hook: 'onRequest',
    timeWindow: 60_000,
    // `RateLimit-*` (the IETF draft's names) rather than `X-RateLimit-*`
    enableDraftSpec: true,
    ...(opts.store
      ? { store: opts.store }
      : redis
        ? { redis, nameSpace: REDIS.keyPrefix, skipOnError: true }
        : { cache: LOCAL_STORE_KEYS }),
    // the bucket is part of the key: one store, two independent counters per user
    keyGenerator: (request) => `${bucketOf(request)}:${request.user.userId}`,
    max: (request) => limits[bucketOf(request)],
    // a switched-off bucket is not counted at all (no headers either), nor is anything while the
    // shared store is unreachable
    allowList: (request) => limits[bucketOf(request)] === 0 || (redis !== undefined && redis.status !== 'ready'),
    errorResponseBuilder: (request, context) => rateLimited(bucketOf(request), context.max, Math.max(1, Math.ceil(context.ttl / 1000)))
  })
}, { name: 'rate-limits', dependencies: ['auth'] })

/**
 * The Redis client of the shared counters, closed with the app. Start-up waits for the first
 * connection attempt (so that counting starts with the first request), but never fails for it:
 * the client keeps reconnecting in the background, and the log says when Redis is lost or back.
 */
async function connectRedis (app: FastifyInstance, url: string): Promise<Redis> {
  const log = app.log.child({ component: 'rate-limits' })
  const redis = new Redis(url, {
    lazyConnect: true,
    connectTimeout: REDIS.connectTimeoutMs,
    commandTimeout: REDIS.commandTimeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0
  })
  // never the URL: it may hold a password
  const where = { host: redis.options.host, port: redis.options.port, db: redis.options.db }
  const unwatch = watchRedis(redis, log, where)
  app.addHook('onClose', async () => {
    unwatch()
    if (redis.status === 'ready') await redis.quit().catch(() => redis.disconnect())
    else redis.disconnect()
  })
  // connect() settles with the first attempt; a server that accepts but is not ready yet
  // (loading its data) keeps it pending, hence the bound
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, 2 * REDIS.connectTimeoutMs)
    redis.connect().catch(() => {}).finally(() => {
      clearTimeout(timer)
      resolve()
    })
  })
  if (redis.status === 'ready') log.info(where, 'per-user rate limits are counted in Redis, shared by every instance')
  return redis
}

/**
 * One warning when the connection is lost or cannot be made (not one per reconnection attempt),
 * one line when it is back. Returns the switch that silences it when the app closes.
 */
function watchRedis (redis: Redis, log: FastifyBaseLogger, where: object): () => void {
  let up: boolean | undefined
  let closing = false
  const lost = (err?: Error) => {
    if (closing || up === false) return
    up = false
    log.warn({ ...where, ...(err ? { err } : {}) }, 'Redis is unreachable: per-user rate limits are not enforced until it is back')
  }
  // an 'error' listener also keeps ioredis from printing every failed attempt to the console
  redis.on('error', (err: Error) => lost(err))
  redis.on('close', () => lost())
  redis.on('ready', () => {
    if (up === false) log.info(where, 'Redis is back: per-user rate limits are enforced again')
    up = true
  })
  return () => { closing = true }
}
