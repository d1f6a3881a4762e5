import t from 'tap'
import { build } from './helpers/build.js'

// Real concurrent requests over real sockets: every racer is in flight before any answer arrives.
// The racers on a session are its owner's (one token, as one phone); another user's racers get 404.
const { baseUrl, token, tokenFor } = await build(t, {
  listen: true,
  startWorker: false,
  // no load shedding: the tallies below are about the races, and 40 requests at once on a busy
  // 2-core CI box may lag the loop past a second (a 503 SERVICE_OVERLOADED); it has its own test
  env: { MAX_EVENT_LOOP_DELAY_MS: '0' }
})
const OWNER = { authorization: `Bearer ${token}` }
const INTRUDER = { authorization: `Bearer ${await tokenFor('concurrency-intruder')}` }

interface Res { status: number, body: any, etag: string | null }

/** A request as the owner of the sessions, unless `headers` carry another authorization. */
async function http (method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Res> {
  const sent = { ...OWNER, ...headers }
  const res = await fetch(baseUrl + path, {
    method,
    headers: body === undefined ? sent : { 'content-type': 'application/json', ...sent },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })
  const text = await res.text()
  return { status: res.status, body: text ? JSON.parse(text) : undefined, etag: res.headers.get('etag') }
}

async function newSession (state: 'pending' | 'active' = 'pending'): Promise<{ id: string, version: number }> {
  const created = await http('POST', '/v1/sessions', {})
  if (state === 'pending') return { id: created.body.id, version: 1 }
  const active = await http('POST', `/v1/sessions/${created.body.id}/transitions`, { to: 'active' })
  return { id: created.body.id, version: active.body.version }
}

const RACERS = 20

function tally (results: Res[]): Record<number, number> {
  const counts: Record<number, number> = {}
  for (const r of results) counts[r.status] = (counts[r.status] ?? 0) + 1
  return counts
}

async function historyOf (id: string): Promise<{ from: string | null, to: string, version: number, actor: string }[]> {
  return (await http('GET', `/v1/sessions/${id}/history?limit=1000`)).body.items
}

t.test('20 racers with the same If-Match: exactly one wins, the others get 412', async (t) => {
  const { id, version } = await newSession('active')
  const results = await Promise.all(Array.from({ length: RACERS }, () =>
    http('POST', `/v1/sessions/${id}/pause`, {}, { 'if-match': `"${version}"` })))
  t.same(tally(results), { 200: 1, 412: RACERS - 1 })
  for (const r of results.filter((r) => r.status === 412)) {
    t.equal(r.body.code, 'SESSION_VERSION_CONFLICT')
  }
  const session = (await http('GET', `/v1/sessions/${id}`)).body
  t.equal(session.state, 'paused')
  t.equal(session.version, version + 1, 'one write: one version')
  const history = await historyOf(id)
  t.equal(history.filter((h) => h.to === 'paused').length, 1, 'exactly the winning row is in the history')
  t.equal(history.length, 3)
  const snapshots = (await http('GET', `/v1/sessions/${id}/snapshots`)).body.items
  t.equal(snapshots.length, 1, 'exactly one snapshot')
})

t.test('20 racers without If-Match on the same edge: one wins, the others are re-checked (409)', async (t) => {
  const { id } = await newSession('pending')
  const results = await Promise.all(Array.from({ length: RACERS }, () =>
    http('POST', `/v1/sessions/${id}/transitions`, { to: 'completed' })))
  t.same(tally(results), { 200: 1, 409: RACERS - 1 })
  for (const r of results.filter((r) => r.status === 409)) {
    t.equal(r.body.code, 'SESSION_INVALID_TRANSITION')
    t.equal(r.body.state, 'completed', 'the loser sees the state that won')
    t.same(r.body.allowedTargets, [])
  }
  const session = (await http('GET', `/v1/sessions/${id}`)).body
  t.equal(session.version, 2)
  t.equal((await historyOf(id)).length, 2)
})

t.test('20 racers asking for different targets: every 2xx is one write, no write is lost or doubled', async (t) => {
  const { id, version } = await newSession('active')
  const targets = ['suspended', 'paused', 'completed', 'active']
  const results = await Promise.all(Array.from({ length: RACERS }, (_, i) =>
    http('POST', `/v1/sessions/${id}/transitions`, { to: targets[i % targets.length] })))
  const wins = results.filter((r) => r.status === 200)
  t.ok(wins.length >= 1, 'someone wins')
  for (const r of results) t.ok([200, 409].includes(r.status), `status ${r.status} is a win or a re-checked refusal`)
  const session = (await http('GET', `/v1/sessions/${id}`)).body
  t.equal(session.version, version + wins.length, 'the final version equals the number of successful writes')
  const history = await historyOf(id)
  t.equal(history.length, version + wins.length, 'one history row per successful write (plus creation and activation)')
  t.same(history.map((h) => h.version), Array.from({ length: history.length }, (_, i) => i + 1), 'no version twice, none skipped')
  const winningVersions = wins.map((r) => r.body.version).sort((a, b) => a - b)
  t.same(winningVersions, history.slice(version).map((h) => h.version), 'each winner saw its own version')
  for (let i = 1; i < history.length; i++) t.equal(history[i]!.from, history[i - 1]!.to, 'the history is a chain')
})

t.test('20 PATCH racers with If-Match: one wins, 19 get 412, the winner\'s title stays', async (t) => {
  const { id, version } = await newSession('pending')
  const results = await Promise.all(Array.from({ length: RACERS }, (_, i) =>
    http('PATCH', `/v1/sessions/${id}`, { title: `racer ${i}` }, { 'if-match': `"${version}"` })))
  t.same(tally(results), { 200: 1, 412: RACERS - 1 })
  const winner = results.find((r) => r.status === 200)!
  const session = (await http('GET', `/v1/sessions/${id}`)).body
  t.equal(session.title, winner.body.title, 'the winner\'s write is the one that stands')
  t.equal(session.version, version + 1)
})

t.test('heartbeats racing a transition never bump the version nor block it', async (t) => {
  const { id, version } = await newSession('active')
  const beats = Array.from({ length: RACERS }, () => http('POST', `/v1/sessions/${id}/heartbeat`))
  const pause = http('POST', `/v1/sessions/${id}/pause`, {}, { 'if-match': `"${version}"` })
  const [pauseRes, ...beatRes] = await Promise.all([pause, ...beats])
  t.equal(pauseRes!.status, 200, 'the pause wins against heartbeats: they do not change the version')
  for (const b of beatRes) t.equal(b.status, 200)
  const session = (await http('GET', `/v1/sessions/${id}`)).body
  t.equal(session.version, version + 1)
  t.equal(session.state, 'paused')
})

t.test('20 racers deleting: one 204, the rest 404 or 412, and the session is gone', async (t) => {
  const { id, version } = await newSession('active')
  const results = await Promise.all(Array.from({ length: RACERS }, () =>
    http('DELETE', `/v1/sessions/${id}`, undefined, { 'if-match': `"${version}"` })))
  const counts = tally(results)
  t.equal(counts[204], 1)
  t.equal((counts[404] ?? 0) + (counts[412] ?? 0), RACERS - 1)
  t.equal((await http('GET', `/v1/sessions/${id}`)).status, 404)
})

t.test('another user\'s racers among the owner\'s: all 404, the owner\'s race decided as if they were not there', async (t) => {
  const { id, version } = await newSession('active')
  const owners = Array.from({ length: RACERS }, () => http('POST', `/v1/sessions/${id}/pause`, {}, { 'if-match': `"${version}"` }))
  const intruders = Array.from({ length: RACERS }, (_, i) => {
    const ifMatch = { ...INTRUDER, 'if-match': `"${version}"` }
    switch (i % 6) {
      case 0: return http('POST', `/v1/sessions/${id}/pause`, {}, ifMatch)
      case 1: return http('POST', `/v1/sessions/${id}/transitions`, { to: 'completed' }, INTRUDER)
      case 2: return http('PATCH', `/v1/sessions/${id}`, { title: `intruder ${i}` }, ifMatch)
      case 3: return http('POST', `/v1/sessions/${id}/heartbeat`, undefined, INTRUDER)
      case 4: return http('DELETE', `/v1/sessions/${id}`, undefined, ifMatch)
      default: return http('GET', `/v1/sessions/${id}`, undefined, INTRUDER)
    }
  })
  const [ownerRes, intruderRes] = await Promise.all([Promise.all(owners), Promise.all(intruders)])
  t.same(tally(ownerRes), { 200: 1, 412: RACERS - 1 }, 'the owner\'s race: one winner')
  t.same(tally(intruderRes), { 404: RACERS }, 'every request of the other user is a 404')
  for (const r of intruderRes) t.equal(r.body.code, 'SESSION_NOT_FOUND')
  const session = (await http('GET', `/v1/sessions/${id}`)).body
  t.match(session, { state: 'paused', version: version + 1, title: null }, 'one write, the owner\'s; no title, no deletion')
  const history = await historyOf(id)
  t.same(history.map((h) => h.to), ['pending', 'active', 'paused'], 'the history has the owner\'s writes only')
  t.equal((await http('GET', `/v1/sessions/${id}/snapshots`)).body.items.length, 1, 'one snapshot')
  t.same((await http('GET', '/v1/sessions', undefined, INTRUDER)).body.items, [], 'the other user lists nothing')
})
