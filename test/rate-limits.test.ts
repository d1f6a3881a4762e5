// Database-incidental: uses a database only as storage for what it tests, so CI runs it once, in the PostgreSQL pass (.ci/run).
/**
 * Per-user request rates (src/plugins/rate-limits.ts): RATE_LIMIT_PER_MINUTE for every /v1
 * request, HEARTBEAT_RATE_LIMIT_PER_MINUTE for heartbeats in a bucket of their own, 0 = off.
 * A refusal is 429 RATE_LIMITED problem+json with Retry-After and the RateLimit-* headers, and
 * does nothing; every counted response carries the RateLimit-* headers.
 */
import t from 'tap'
import { call, createSession, type ApiResponse } from './helpers/api.js'
import { build } from './helpers/build.js'

// load shedding off: on a busy test machine it could answer 503 where a 429 or 200 is expected
const NO_SHEDDING = { MAX_EVENT_LOOP_DELAY_MS: '0' }

// one app for the limits of 5 requests and 3 heartbeats a minute: each subtest uses its own users
const main = await build(t, { env: { ...NO_SHEDDING, RATE_LIMIT_PER_MINUTE: '5', HEARTBEAT_RATE_LIMIT_PER_MINUTE: '3' } })
const { app } = main

/** The Authorization header of `user` on the main app. */
async function as (user: string): Promise<{ authorization: string }> {
  return { authorization: `Bearer ${await main.tokenFor(user)}` }
}

const RATE_HEADERS = ['ratelimit-limit', 'ratelimit-remaining', 'ratelimit-reset'] as const

function rateHeaders (res: ApiResponse) {
  return Object.fromEntries(RATE_HEADERS.map((h) => [h, res.headers[h]]))
}

t.test('the general bucket: the 6th request of a user is 429; another user is not affected', async (t) => {
  const bob = await as('bob')

  const first = await call(app, 'GET', '/v1/sessions')
  t.equal(first.status, 200)
  t.same(rateHeaders(first), { 'ratelimit-limit': '5', 'ratelimit-remaining': '4', 'ratelimit-reset': '60' }, 'a success carries the headers')
  t.notOk(first.headers['retry-after'], 'and no Retry-After')
  t.notOk(first.headers['x-ratelimit-limit'], 'only the draft names, not X-RateLimit-*')
  for (let i = 2; i <= 5; i++) {
    const res = await call(app, 'GET', '/v1/sessions')
    t.equal(res.status, 200, `request ${i}`)
    t.equal(res.headers['ratelimit-remaining'], String(5 - i))
  }

  const refused = await call(app, 'GET', '/v1/sessions')
  t.equal(refused.status, 429, 'the 6th is refused')
  t.equal(refused.contentType, 'application/problem+json')
  t.match(refused.body, {
    type: 'https://mobvibe.dev/problems/rate-limited',
    title: 'Too Many Requests',
    status: 429,
    code: 'RATE_LIMITED',
    instance: '/v1/sessions',
    detail: /at most 5 a minute/
  })
  const retryAfter = Number(refused.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 60, `Retry-After is the seconds left in the window (${retryAfter})`)
  t.equal(refused.headers['ratelimit-limit'], '5')
  t.equal(refused.headers['ratelimit-remaining'], '0')
  t.equal(refused.headers['ratelimit-reset'], String(retryAfter))

  const other = await call(app, 'GET', '/v1/sessions', undefined, bob)
  t.equal(other.status, 200, 'another user still gets 200')
  t.equal(other.headers['ratelimit-remaining'], '4', 'from a bucket of their own')

  const unauthenticated = await call(app, 'GET', '/v1/sessions', undefined, { authorization: '' })
  t.equal(unauthenticated.status, 401, 'no token is a 401, not a 429: authentication runs first')
  t.notOk(unauthenticated.headers['ratelimit-limit'], 'and it is not counted')

  const health = await call(app, 'GET', '/healthz')
  t.equal(health.status, 200, '/healthz is not rate-limited')
  t.notOk(health.headers['ratelimit-limit'])
})

t.test('a 429 does nothing: a refused PATCH leaves the session as it was', async (t) => {
  const erin = await as('erin')
  const created = await call(app, 'POST', '/v1/sessions', { title: 'before' }, erin)
  t.equal(created.status, 201)
  const session = created.body as { id: string }
  t.equal((await call(app, 'PATCH', `/v1/sessions/${session.id}`, { title: 'second' }, erin)).status, 200)
  t.equal((await call(app, 'GET', `/v1/sessions/${session.id}`, undefined, erin)).status, 200)
  t.equal((await call(app, 'GET', `/v1/sessions/${session.id}`, undefined, erin)).status, 200)
  t.equal((await call(app, 'GET', `/v1/sessions/${session.id}`, undefined, erin)).status, 200, 'the 5th')
  const before = await app.sessions.get(session.id)

  const refused = await call(app, 'PATCH', `/v1/sessions/${session.id}`, { title: 'refused' }, erin)
  t.equal(refused.status, 429)
  t.equal(refused.body.code, 'RATE_LIMITED')
  const after = await app.sessions.get(session.id)
  t.equal(after.version, before.version, 'the version did not move')
  t.equal(after.title, 'second', 'nor did the title')

  const badBody = await call(app, 'PATCH', `/v1/sessions/${session.id}`, { nope: true }, erin)
  t.equal(badBody.status, 429, 'a limited request is refused before its body is even validated')
})

t.test('heartbeats have a bucket of their own, both ways', async (t) => {
  await t.test('exhausting the general bucket does not stop heartbeats', async (t) => {
    const dave = await as('dave')
    const created = await call(app, 'POST', '/v1/sessions', {}, dave)
    t.equal(created.status, 201)
    const id = created.body.id as string
    let spent = 1
    while ((await call(app, 'GET', `/v1/sessions/${id}`, undefined, dave)).status !== 429) spent++
    t.equal(spent, 5, 'the general bucket is spent')
    for (let i = 1; i <= 3; i++) {
      const beat = await call(app, 'POST', `/v1/sessions/${id}/heartbeat`, undefined, dave)
      t.equal(beat.status, 200, `heartbeat ${i}`)
      t.equal(beat.headers['ratelimit-limit'], '3', 'counted against the heartbeat limit')
      t.equal(beat.headers['ratelimit-remaining'], String(3 - i))
    }
    const fourth = await call(app, 'POST', `/v1/sessions/${id}/heartbeat`, undefined, dave)
    t.equal(fourth.status, 429, 'the heartbeat bucket has its own limit')
    t.equal(fourth.body.code, 'RATE_LIMITED')
    t.match(fourth.body.detail, /heartbeats .*at most 3 a minute/)
    t.equal(fourth.headers['ratelimit-limit'], '3')
    t.ok(Number(fourth.headers['retry-after']) >= 1)
  })

  await t.test('exhausting the heartbeats does not stop other requests', async (t) => {
    const carol = await as('carol')
    const created = await call(app, 'POST', '/v1/sessions', {}, carol)
    t.equal(created.status, 201)
    const id = created.body.id as string
    for (let i = 1; i <= 3; i++) t.equal((await call(app, 'POST', `/v1/sessions/${id}/heartbeat`, undefined, carol)).status, 200)
    t.equal((await call(app, 'POST', `/v1/sessions/${id}/heartbeat`, undefined, carol)).status, 429, 'heartbeats spent')
    const get = await call(app, 'GET', `/v1/sessions/${id}`, undefined, carol)
    t.equal(get.status, 200, 'other requests go on')
    t.equal(get.headers['ratelimit-limit'], '5')
    t.equal(get.headers['ratelimit-remaining'], '3', 'the creation and this GET only')
  })
})

t.test('0 switches a bucket off', async (t) => {
  await t.test('RATE_LIMIT_PER_MINUTE=0: no limit and no headers, heartbeats still limited', async (t) => {
    const { app } = await build(t, { env: { ...NO_SHEDDING, RATE_LIMIT_PER_MINUTE: '0', HEARTBEAT_RATE_LIMIT_PER_MINUTE: '2' } })
    const { id } = await createSession(app)
    for (let i = 0; i < 30; i++) {
      const res = await call(app, 'GET', `/v1/sessions/${id}`)
      if (res.status !== 200 || res.headers['ratelimit-limit'] !== undefined) {
        t.fail(`request ${i}: ${res.status} ${String(res.headers['ratelimit-limit'])}`)
        return
      }
    }
    t.pass('30 requests, none limited, none with RateLimit-* headers')
    t.equal((await call(app, 'POST', `/v1/sessions/${id}/heartbeat`)).status, 200)
    t.equal((await call(app, 'POST', `/v1/sessions/${id}/heartbeat`)).status, 200)
    t.equal((await call(app, 'POST', `/v1/sessions/${id}/heartbeat`)).status, 429, 'the heartbeat bucket still counts')
  })

  await t.test('HEARTBEAT_RATE_LIMIT_PER_MINUTE=0: heartbeats unlimited, the rest still limited', async (t) => {
    const { app } = await build(t, { env: { ...NO_SHEDDING, RATE_LIMIT_PER_MINUTE: '2', HEARTBEAT_RATE_LIMIT_PER_MINUTE: '0' } })
    const { id } = await createSession(app)
    for (let i = 0; i < 30; i++) {
      const res = await call(app, 'POST', `/v1/sessions/${id}/heartbeat`)
      if (res.status !== 200 || res.headers['ratelimit-limit'] !== undefined) {
        t.fail(`heartbeat ${i}: ${res.status}`)
        return
      }
    }
    t.pass('30 heartbeats, none limited')
    t.equal((await call(app, 'GET', `/v1/sessions/${id}`)).status, 200, 'the second request of the general bucket')
    t.equal((await call(app, 'GET', `/v1/sessions/${id}`)).status, 429, 'the third is refused')
  })
})
