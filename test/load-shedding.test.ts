// Database-incidental: uses a database only as storage for what it tests, so CI runs it once, in the PostgreSQL pass (.ci/run).
/**
 * Load shedding (src/plugins/load-shedding.ts, @fastify/under-pressure): while the event loop is
 * saturated, every request but GET /healthz is answered 503 SERVICE_OVERLOADED problem+json with
 * Retry-After, and the service recovers by itself once the loop is free again.
 *
 * The test saturates the loop of its own process (the app runs in it) deterministically: every
 * turn of the loop spins for three times the threshold, so every delay sample is above it. Waits
 * are polls of a condition under a deadline, never fixed sleeps.
 */
import t from 'tap'
import WebSocket from 'ws'
import { authHeader, call } from './helpers/api.js'
import { build } from './helpers/build.js'

const THRESHOLD_MS = 50

/** Spins `ms` in every turn of the event loop until stopped. */
function saturate (ms: number): () => void {
  let on = true
  const spin = () => {
    if (!on) return
    const end = performance.now() + ms
    while (performance.now() < end) { /* busy */ }
    setImmediate(spin)
  }
  setImmediate(spin)
  return () => { on = false }
}

/** Calls `probe` until it returns true, at most `ms`; the last result is returned. */
async function until (probe: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  for (;;) {
    if (await probe()) return true
    if (Date.now() > deadline) return false
    await new Promise((resolve) => setImmediate(resolve))
  }
}

/** The status of a WebSocket upgrade: 101 when accepted, else the HTTP status and headers. */
function upgrade (url: string, headers: Record<string, string>): Promise<{ status: number, connection?: string | undefined }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, headers })
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('no answer to the upgrade')) }, 20_000)
    ws.on('error', () => {})
    ws.once('open', () => { clearTimeout(timer); ws.terminate(); resolve({ status: 101 }) })
    ws.once('unexpected-response', (req, res) => {
      clearTimeout(timer)
      res.resume()
      req.destroy()
      resolve({ status: res.statusCode ?? 0, connection: res.headers.connection })
    })
  })
}

t.test('a saturated event loop: 503 with Retry-After, /healthz still 200, then recovery', async (t) => {
  const { app, baseUrl } = await build(t, {
    listen: true,
    // rate limits off: the polls below would otherwise meet a 429
    env: { MAX_EVENT_LOOP_DELAY_MS: String(THRESHOLD_MS), RATE_LIMIT_PER_MINUTE: '0', HEARTBEAT_RATE_LIMIT_PER_MINUTE: '0' }
  })
  // a busy test machine may itself delay the loop now and then: start from a calm one
  let id = ''
  t.ok(await until(async () => {
    const created = await call(app, 'POST', '/v1/sessions', {})
    if (created.status === 201) id = created.body.id
    return id !== ''
  }, 20_000), 'served normally at first')

  const stop = saturate(3 * THRESHOLD_MS)
  let stopped = false
  t.teardown(() => { if (!stopped) stop() })

  let shed: Awaited<ReturnType<typeof call>> | undefined
  t.ok(await until(async () => {
    const res = await call(app, 'GET', `/v1/sessions/${id}`)
    if (res.status === 503) shed = res
    return shed !== undefined
  }, 20_000), 'requests are shed once the samples see the saturation')
  t.equal(shed?.contentType, 'application/problem+json')
  t.same(shed?.body, {
    type: 'https://mobvibe.dev/problems/service-overloaded',
    title: 'Service Unavailable',
    status: 503,
    instance: `/v1/sessions/${id}`,
    code: 'SERVICE_OVERLOADED',
    detail: 'The service is overloaded; retry in 5 s',
    requestId: (shed?.body as { requestId?: string } | undefined)?.requestId
  }, 'a plain problem: nothing about the measurement')
  t.equal(shed?.headers['retry-after'], '5')
  t.notOk(shed?.headers['ratelimit-limit'], 'with both rate-limit buckets off, no RateLimit-* headers')

  const health = await call(app, 'GET', '/healthz')
  t.equal(health.status, 200, '/healthz is never shed')
  const stillShed = await call(app, 'GET', '/v1/sessions')
  t.equal(stillShed.status, 503, 'while the rest still is')
  const unauthenticated = await call(app, 'GET', '/v1/sessions', undefined, { authorization: '' })
  t.equal(unauthenticated.status, 503, 'shed before authentication, the cheapest refusal')

  const refusedUpgrade = await upgrade(`${baseUrl.replace(/^http/, 'ws')}/v1/sessions/${id}/stream`, authHeader(app))
  t.equal(refusedUpgrade.status, 503, 'a stream upgrade is shed too')
  t.equal(refusedUpgrade.connection, 'close', 'and its socket is not kept')

  stop()
  stopped = true
  t.ok(await until(async () => (await call(app, 'GET', '/v1/sessions')).status === 200, 20_000), 'recovers once the loop is free')
})

t.test('MAX_EVENT_LOOP_DELAY_MS=0: never shed', async (t) => {
  const { app } = await build(t, { env: { MAX_EVENT_LOOP_DELAY_MS: '0', RATE_LIMIT_PER_MINUTE: '0' } })
  const stop = saturate(3 * THRESHOLD_MS)
  t.teardown(stop)
  // long enough for several samples at the interval a 50 ms threshold would have
  const statuses: number[] = []
  const started = Date.now()
  while (Date.now() - started < 1000) statuses.push((await call(app, 'GET', '/v1/sessions')).status)
  stop()
  t.ok(statuses.length > 0)
  t.same([...new Set(statuses)], [200], `${statuses.length} requests on a saturated loop, all served`)
})
