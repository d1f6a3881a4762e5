// Database-incidental: uses a database only as storage for what it tests, so CI runs it once, in the PostgreSQL pass (.ci/run).
/**
 * Open streams per user (MAX_STREAMS_PER_USER, src/events/stream-quota.ts): one more is refused
 * before the upgrade with 429 TOO_MANY_STREAMS problem+json, another user is not affected, and
 * a slot comes back however the connection ends (client close, ping timeout). Every wait is for
 * an event or a condition under a deadline, never a fixed sleep.
 */
import type { IncomingHttpHeaders } from 'node:http'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { StreamQuota } from '../src/events/stream-quota.js'
import { authHeader, call, createSession } from './helpers/api.js'
import { build } from './helpers/build.js'

const LIMIT = 2

type Attempt =
  | { opened: true, ws: WebSocket, closed: Promise<number> }
  | { opened: false, status: number, headers: IncomingHttpHeaders, body: any }

/** One upgrade: the open socket (closed at the end of the test), or the HTTP answer that refused it. */
function connect (t: Test, url: string, options: WebSocket.ClientOptions = {}): Promise<Attempt> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, ...options })
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('no answer to the upgrade')) }, 10_000)
    ws.on('error', () => {})
    const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)))
    ws.once('open', () => {
      clearTimeout(timer)
      t.teardown(() => { ws.terminate() })
      resolve({ opened: true, ws, closed })
    })
    ws.once('unexpected-response', (req, res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { text += chunk })
      res.on('end', () => {
        clearTimeout(timer)
        req.destroy()
        resolve({ opened: false, status: res.statusCode ?? 0, headers: res.headers, body: text === '' ? undefined : JSON.parse(text) })
      })
    })
  })
}

async function mustOpen (t: Test, url: string, options: WebSocket.ClientOptions = {}) {
  const attempt = await connect(t, url, options)
  if (!attempt.opened) throw new Error(`upgrade refused: ${attempt.status} ${JSON.stringify(attempt.body)}`)
  return attempt
}

/** Tries the upgrade until it is accepted (a slot freed on the server), for at most `ms`. */
async function openWhenFree (t: Test, url: string, options: WebSocket.ClientOptions, ms = 5000) {
  const deadline = Date.now() + ms
  for (;;) {
    const attempt = await connect(t, url, options)
    if (attempt.opened) return attempt
    if (attempt.status !== 429 || Date.now() > deadline) throw new Error(`still refused: ${attempt.status}`)
    await new Promise((resolve) => setImmediate(resolve))
  }
}

t.test('StreamQuota counts per user and gives a slot back once', async (t) => {
  const quota = new StreamQuota(2)
  const a1 = quota.tryAcquire('a')
  const a2 = quota.tryAcquire('a')
  t.ok(a1 && a2, 'two slots for a')
  t.equal(quota.tryAcquire('a'), undefined, 'not a third')
  t.ok(quota.tryAcquire('b'), 'b has slots of their own')
  a1!()
  a1!()
  const a3 = quota.tryAcquire('a')
  t.ok(a3, 'a released slot can be taken again')
  t.equal(quota.tryAcquire('a'), undefined, 'but releasing twice gave back only one')
})

t.test('over a real server', async (top) => {
  const t = top
  const { app, baseUrl, tokenFor } = await build(t, {
    listen: true,
    // a short ping interval, for the ping-timeout path; load shedding off so that a busy test
    // machine cannot answer 503 where the quota is expected
    // the general bucket on (build() turns it off): a refused upgrade counts as a request
    env: { MAX_STREAMS_PER_USER: String(LIMIT), WS_PING_INTERVAL_MS: '200', MAX_EVENT_LOOP_DELAY_MS: '0', RATE_LIMIT_PER_MINUTE: '1200' }
  })
  const ws = baseUrl.replace(/^http/, 'ws')
  const alice = { headers: authHeader(app) }
  const { id } = await createSession(app)
  const url = `${ws}/v1/sessions/${id}/stream`

  const first = await mustOpen(t, url, alice)
  const second = await mustOpen(t, `${url}?after=0`, alice)

  await t.test('one stream more than the limit is refused before the upgrade', async (t) => {
    const refused = await connect(t, url, alice)
    if (refused.opened) return t.fail('the third stream was accepted')
    t.equal(refused.status, 429)
    t.match(refused.headers['content-type'], /^application\/problem\+json/)
    t.match(refused.body, {
      type: 'https://mobvibe.dev/problems/too-many-streams',
      status: 429,
      code: 'TOO_MANY_STREAMS',
      limit: LIMIT,
      instance: `/v1/sessions/${id}/stream`
    })
    t.equal(refused.headers['retry-after'], '1', 'Retry-After: one ping interval, rounded up to a second')
    t.ok(refused.headers['ratelimit-limit'], 'the upgrade request was counted in the general bucket')

    const again = await connect(t, `${url}?access_token=${authHeader(app).authorization.slice('Bearer '.length)}`)
    t.equal(again.opened ? 101 : again.status, 429, 'the same with the token in the URL')
    if (!again.opened) {
      t.equal(Number(again.headers['ratelimit-remaining']), Number(refused.headers['ratelimit-remaining']) - 1, 'each refused upgrade counts as a request')
      t.notOk(JSON.stringify(again.body).includes(authHeader(app).authorization.slice('Bearer '.length)), 'the token is not echoed in the problem')
    }
  })

  await t.test('an unknown session is still a 404 at the limit', async (t) => {
    const unknown = await connect(t, `${ws}/v1/sessions/00000000-0000-4000-8000-000000000000/stream`, alice)
    t.equal(unknown.opened ? 101 : unknown.status, 404)
  })

  await t.test('a plain GET of the stream route takes no slot', async (t) => {
    const plain = await call(app, 'GET', `/v1/sessions/${id}/stream`)
    t.equal(plain.status, 404)
  })

  await t.test('another user is not affected', async (t) => {
    const bob = { headers: { authorization: `Bearer ${await tokenFor('bob')}` } }
    const created = await call(app, 'POST', '/v1/sessions', {}, bob.headers)
    t.equal(created.status, 201)
    const bobUrl = `${ws}/v1/sessions/${created.body.id as string}/stream`
    const streams = [await mustOpen(t, bobUrl, bob), await mustOpen(t, bobUrl, bob)]
    t.equal(streams.length, LIMIT, 'bob opens his own two')
    const third = await connect(t, bobUrl, bob)
    t.equal(third.opened ? 101 : third.status, 429, 'and is refused a third himself')
  })

  await t.test('a client that closes frees its slot', async (t) => {
    first.ws.close(1000, 'done')
    t.equal(await first.closed, 1000, 'closed')
    // kept open for the next subtest (closed with the whole test)
    const replacement = await openWhenFree(top, url, alice)
    t.ok(replacement.opened, 'a new stream is accepted once the server has seen the close')
    const over = await connect(t, url, alice)
    t.equal(over.opened ? 101 : over.status, 429, 'and the limit holds again')
  })

  await t.test('a connection the server ends (ping timeout) frees its slot', async (t) => {
    second.ws.close()
    await second.closed
    const deaf = await openWhenFree(t, url, { ...alice, autoPong: false })
    t.equal((await connect(t, url, alice)).opened, false, 'at the limit again')
    t.equal(await deaf.closed, 1006, 'the client that does not answer pings is terminated by the server')
    const after = await openWhenFree(t, url, alice)
    t.ok(after.opened, 'and its slot is free again')
  })
})
