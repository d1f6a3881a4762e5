// Database-incidental: uses a database only as storage for what it tests, so CI runs it once, in the PostgreSQL pass (.ci/run).
/**
 * Per-user request rates shared by several instances (src/plugins/rate-limits.ts, REDIS_URL):
 * two apps on the same Redis count a user's requests together, another user has counters of
 * their own, and a Redis that is unreachable (at start-up, or lost and back while running) never
 * takes the API down: requests go through uncounted, without RateLimit-* headers, until it is
 * back. Each app has its own data directory and database: the counters are all they share.
 *
 * Redis is expected on 127.0.0.1:6379 (.ci/run starts it; TEST_REDIS_URL points elsewhere).
 * Every key of a run carries a prefix of its own (ioredis takes `keyPrefix` from the URL's
 * query), so runs side by side never meet, and teardown deletes the run's keys.
 */
import { randomBytes } from 'node:crypto'
import { connect, createServer, type Server, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { call, type ApiResponse } from './helpers/api.js'
import { build, type Built } from './helpers/build.js'

const REDIS_BASE = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'
const PREFIX = `mobvibe-test-${randomBytes(6).toString('hex')}:`
/** the app's own prefix (src/plugins/rate-limits.ts) comes after the run's */
const KEYS = `${PREFIX}mobvibe:rate-limit:`
const JWT_SECRET = randomBytes(32).toString('base64url')
const LIMITS = { RATE_LIMIT_PER_MINUTE: '4', HEARTBEAT_RATE_LIMIT_PER_MINUTE: '3' }

const admin = new Redis(REDIS_BASE, { lazyConnect: true, connectTimeout: 2000, maxRetriesPerRequest: 1 })
await admin.connect()
t.teardown(async () => {
  let cursor = '0'
  do {
    const [next, keys] = await admin.scan(cursor, 'MATCH', `${PREFIX}*`, 'COUNT', 1000)
    if (keys.length > 0) await admin.del(...keys)
    cursor = next
  } while (cursor !== '0')
  await admin.quit()
})

/** `url` with the run's key prefix */
function redisUrl (url: string): string {
  const u = new URL(url)
  u.searchParams.set('keyPrefix', PREFIX)
  return u.toString()
}

async function instance (t: Test, env: Record<string, string> = {}): Promise<Built> {
  return build(t, { env: { REDIS_URL: redisUrl(REDIS_BASE), JWT_SECRET, ...LIMITS, ...env } })
}

const as = async (app: Built, user: string) => ({ authorization: `Bearer ${await app.tokenFor(user)}` })

const limitHeaders = (res: ApiResponse) => ({
  limit: res.headers['ratelimit-limit'],
  remaining: res.headers['ratelimit-remaining']
})

// two instances of the service behind one balancer
const one = await instance(t)
const two = await instance(t)

t.test("a user's requests split across two instances are counted together", async (t) => {
  const alice = await as(one, 'alice')
  const apps = [one.app, two.app, one.app, two.app]
  for (const [i, app] of apps.entries()) {
    const res = await call(app, 'GET', '/v1/sessions', undefined, alice)
    t.equal(res.status, 200, `request ${i + 1}, on instance ${(i % 2) + 1}`)
    t.same(limitHeaders(res), { limit: '4', remaining: String(3 - i) }, 'the shared count goes down on either')
  }
  for (const [name, app] of [['one', one.app], ['two', two.app]] as const) {
    const refused = await call(app, 'GET', '/v1/sessions', undefined, alice)
    t.equal(refused.status, 429, `the 5th and later are refused on instance ${name}`)
    t.equal(refused.body.code, 'RATE_LIMITED')
    t.match(refused.body.detail, /at most 4 a minute/)
    const retryAfter = Number(refused.headers['retry-after'])
    t.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `Retry-After is the seconds left in the window (${retryAfter})`)
    t.equal(refused.headers['ratelimit-remaining'], '0')
  }

  const bob = await call(two.app, 'GET', '/v1/sessions', undefined, await as(two, 'bob'))
  t.equal(bob.status, 200, 'another user is not affected')
  t.same(limitHeaders(bob), { limit: '4', remaining: '3' }, 'a counter of their own')

  t.equal(await admin.get(`${KEYS}requests:alice`), '6', "alice's counter is in Redis, under the service's prefix (refusals count too)")
  const ttl = await admin.pttl(`${KEYS}requests:alice`)
  t.ok(ttl > 0 && ttl <= 60_000, `and expires with its one-minute window (${ttl} ms left)`)
})

t.test('heartbeats are shared as well, in their own bucket', async (t) => {
  const carol = [await as(one, 'carol'), await as(two, 'carol')] as const
  // each instance has its own database here, so each gets a session of its own
  const sessions = [
    (await call(one.app, 'POST', '/v1/sessions', {}, carol[0])).body.id as string,
    (await call(two.app, 'POST', '/v1/sessions', {}, carol[1])).body.id as string
  ]
  const beat = async (i: number) => call([one.app, two.app][i % 2]!, 'POST', `/v1/sessions/${sessions[i % 2]!}/heartbeat`, undefined, carol[i % 2]!)
  for (let i = 0; i < 3; i++) {
    const res = await beat(i)
    t.equal(res.status, 200, `heartbeat ${i + 1}`)
    t.same(limitHeaders(res), { limit: '3', remaining: String(2 - i) })
  }
  const fourth = await beat(3)
  t.equal(fourth.status, 429, 'the 4th heartbeat across both is refused')
  t.match(fourth.body.detail, /heartbeats .*at most 3 a minute/)
  const get = await call(one.app, 'GET', `/v1/sessions/${sessions[0]!}`, undefined, carol[0])
  t.equal(get.status, 200, 'the general bucket is not touched by heartbeats')
  t.equal(get.headers['ratelimit-remaining'], '1', 'two creations and this GET')
})

/** A closed port: listened on, then closed. */
async function closedPort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as { port: number }
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

t.test('Redis unreachable at start-up: the app starts and requests go through uncounted', async (t) => {
  const port = await closedPort()
  const started = Date.now()
  const down = await instance(t, { REDIS_URL: `redis://127.0.0.1:${port}`, RATE_LIMIT_PER_MINUTE: '2' })
  t.ok(Date.now() - started < 15_000, 'start-up does not wait for Redis')
  for (let i = 1; i <= 6; i++) {
    const res = await call(down.app, 'GET', '/v1/sessions')
    t.equal(res.status, 200, `request ${i} of a limit of 2`)
    t.equal(res.headers['ratelimit-limit'], undefined, 'no RateLimit-* headers: nothing was counted')
  }
})

/** A TCP proxy to Redis that the test can cut and restore, on a port that stays the same. */
async function redisProxy () {
  const target = new URL(REDIS_BASE)
  const sockets = new Set<Socket>()
  let server: Server | undefined
  let port = 0
  const open = async () => {
    server = createServer((client) => {
      const upstream = connect(Number(target.port || 6379), target.hostname)
      for (const s of [client, upstream]) {
        sockets.add(s)
        s.on('close', () => sockets.delete(s))
        s.on('error', () => {})
      }
      client.pipe(upstream).pipe(client)
    })
    await new Promise<void>((resolve) => server!.listen(port, '127.0.0.1', resolve))
    port = (server.address() as { port: number }).port
  }
  const cut = async () => {
    const closed = new Promise<void>((resolve) => server!.close(() => resolve()))
    for (const s of sockets) s.destroy()
    await closed
  }
  await open()
  return { url: () => `redis://127.0.0.1:${port}`, cut, restore: open }
}

t.test('Redis lost while running: requests go through uncounted; counting resumes when it is back', async (t) => {
  const proxy = await redisProxy()
  t.teardown(proxy.cut)
  const app = (await instance(t, { REDIS_URL: redisUrl(proxy.url()), RATE_LIMIT_PER_MINUTE: '3' })).app
  const dave = await as(one, 'dave')

  const first = await call(app, 'GET', '/v1/sessions', undefined, dave)
  t.same(limitHeaders(first), { limit: '3', remaining: '2' }, 'counted while Redis is there')

  await proxy.cut()
  // the app sees the connection close a moment later: until then a request may still try Redis
  // (and be let through by skipOnError)
  for (let i = 0; i < 50; i++) {
    const res = await call(app, 'GET', '/v1/sessions', undefined, dave)
    t.equal(res.status, 200, 'never refused while Redis goes away')
    if (res.headers['ratelimit-limit'] === undefined) break
    await sleep(100)
  }
  for (let i = 1; i <= 5; i++) {
    const res = await call(app, 'GET', '/v1/sessions', undefined, dave)
    t.equal(res.status, 200, `request ${i} while Redis is gone`)
    t.equal(res.headers['ratelimit-limit'], undefined, 'uncounted')
  }

  await proxy.restore()
  // ioredis reconnects on its own, at most 2 s apart
  let res: ApiResponse | undefined
  for (let i = 0; i < 100; i++) {
    res = await call(app, 'GET', '/v1/sessions', undefined, dave)
    if (res.headers['ratelimit-limit'] !== undefined) break
    await sleep(100)
  }
  t.same(limitHeaders(res!), { limit: '3', remaining: '1' }, 'counted again, from the count Redis kept')
  t.equal((await call(app, 'GET', '/v1/sessions', undefined, dave)).status, 200)
  t.equal((await call(app, 'GET', '/v1/sessions', undefined, dave)).status, 429, 'and limited again')
})
