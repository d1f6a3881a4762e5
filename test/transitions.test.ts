import t from 'tap'
import { SESSION_STATES, type SessionState } from '../src/domain/state-machine.js'
import { call, createSession, getSession, transition } from './helpers/api.js'
import { build } from './helpers/build.js'

// The table of docs/SESSION-LIFECYCLE.md ("States"), restated here so the test does not trust the module it checks.
const USER_EDGES: Record<SessionState, SessionState[]> = {
  pending: ['active', 'completed'],
  active: ['suspended', 'paused', 'completed'],
  suspended: ['active', 'paused', 'completed'],
  paused: ['active', 'completed'],
  completed: [],
  failed: [],
  expired: []
}
const SYSTEM_EDGES: Record<SessionState, SessionState[]> = {
  pending: ['active', 'failed', 'expired'],
  active: ['suspended', 'failed', 'expired'],
  suspended: ['active', 'failed', 'expired'],
  paused: ['expired'],
  completed: [],
  failed: [],
  expired: []
}

const { app } = await build(t, { startWorker: false })

/** A fresh session brought to `state` through the public API (and the system for system-only states). */
async function sessionIn (state: SessionState): Promise<{ id: string, version: number }> {
  const { id } = await createSession(app, { title: `in ${state}` })
  const steps: Record<SessionState, [SessionState, 'user' | 'system'][]> = {
    pending: [],
    active: [['active', 'user']],
    suspended: [['active', 'user'], ['suspended', 'user']],
    paused: [['active', 'user'], ['paused', 'user']],
    completed: [['completed', 'user']],
    failed: [['failed', 'system']],
    expired: [['expired', 'system']]
  }
  for (const [to, actor] of steps[state]) {
    if (actor === 'user') {
      const res = await transition(app, id, to)
      if (res.status !== 200) throw new Error(`setup ${state}: ${res.status} ${JSON.stringify(res.body)}`)
    } else {
      await app.sessions.transitionState(id, to, { actor: 'system', reason: 'test setup' })
    }
  }
  const s = await getSession(app, id)
  if (s.state !== state) throw new Error(`setup reached ${s.state}, wanted ${state}`)
  return { id, version: s.version }
}

t.test('every (from, to) pair asked by a user over HTTP', async (t) => {
  for (const from of SESSION_STATES) {
    for (const to of SESSION_STATES) {
      const { id, version } = await sessionIn(from)
      const res = await transition(app, id, to)
      const allowed = USER_EDGES[from].includes(to)
      if (allowed) {
        t.equal(res.status, 200, `${from} → ${to} is allowed`)
        t.equal(res.body.state, to)
        t.equal(res.body.version, version + 1, `${from} → ${to} bumps the version once`)
        t.equal(res.headers.etag, `"${version + 1}"`)
        const history = await call(app, 'GET', `/v1/sessions/${id}/history`)
        const last = history.body.items.at(-1)
        t.match(last, { from, to, actor: 'user', version: version + 1 }, `${from} → ${to} is in the history`)
      } else {
        t.equal(res.status, 409, `${from} → ${to} is refused`)
        t.equal(res.contentType, 'application/problem+json')
        t.equal(res.body.code, 'SESSION_INVALID_TRANSITION')
        t.equal(res.body.state, from)
        t.same(res.body.allowedTargets, USER_EDGES[from], `${from}: allowed targets are listed`)
        const after = await getSession(app, id)
        t.equal(after.version, version, `${from} → ${to}: refused, nothing written`)
        t.equal(after.state, from)
      }
    }
  }
})

t.test('every (from, to) pair asked by the system goes through the same transition()', async (t) => {
  for (const from of SESSION_STATES) {
    for (const to of SESSION_STATES) {
      const { id, version } = await sessionIn(from)
      const allowed = SYSTEM_EDGES[from].includes(to)
      if (allowed) {
        const row = await app.sessions.transitionState(id, to, { actor: 'system', reason: 'test' })
        t.equal(row.state, to, `system ${from} → ${to}`)
        t.equal(row.version, version + 1)
      } else {
        await t.rejects(app.sessions.transitionState(id, to, { actor: 'system' }), { statusCode: 409, code: 'SESSION_INVALID_TRANSITION' }, `system ${from} → ${to} is refused`)
        t.equal((await getSession(app, id)).version, version)
      }
    }
  }
})

t.test('timestamps and counters follow the transitions', async (t) => {
  const { id } = await createSession(app)
  const created = await getSession(app, id)
  t.equal(created.startedAt, null)
  t.equal(created.endedAt, null)
  t.equal(created.transitionCount, 0)
  const active = (await transition(app, id, 'active')).body
  t.ok(active.startedAt, 'startedAt is set on the first activation')
  const suspended = (await transition(app, id, 'suspended')).body
  const again = (await transition(app, id, 'active')).body
  t.equal(again.startedAt, active.startedAt, 'startedAt stays the first activation')
  t.ok(suspended.stateChangedAt >= active.stateChangedAt)
  const done = (await transition(app, id, 'completed')).body
  t.ok(done.endedAt, 'endedAt is set on a terminal state')
  t.equal(done.transitionCount, 4)
  t.equal(done.busy, false)
})

t.test('rapid sequential transitions keep version, history and counters in step', async (t) => {
  const { id } = await createSession(app)
  const cycle: SessionState[] = ['active', 'suspended', 'active', 'paused', 'active', 'suspended', 'paused']
  let etag = '"1"'
  let writes = 0
  for (let round = 0; round < 6; round++) {
    for (const to of cycle) {
      const res = await transition(app, id, to, { 'if-match': etag })
      t.equal(res.status, 200, `round ${round}: → ${to}`)
      etag = String(res.headers.etag)
      writes++
    }
    // back to a state the cycle can start from
    const res = await transition(app, id, 'active', { 'if-match': etag })
    t.equal(res.status, 200)
    etag = String(res.headers.etag)
    writes++
    const back = await transition(app, id, 'suspended', { 'if-match': etag })
    etag = String(back.headers.etag)
    writes++
  }
  const final = await getSession(app, id)
  t.equal(final.version, 1 + writes, 'the version counts every write')
  t.equal(final.transitionCount, writes)
  const history = await call(app, 'GET', `/v1/sessions/${id}/history?limit=1000`)
  t.equal(history.body.items.length, 1 + writes, 'one history row per write, plus creation')
  t.same(history.body.items.map((h: { version: number }) => h.version), Array.from({ length: 1 + writes }, (_, i) => i + 1),
    'history versions are consecutive')
  for (let i = 1; i < history.body.items.length; i++) {
    t.equal(history.body.items[i].from, history.body.items[i - 1].to, `history row ${i} starts where the previous ended`)
  }
})

t.test('history pages with a cursor', async (t) => {
  const { id } = await createSession(app)
  for (const to of ['active', 'suspended', 'active', 'suspended', 'active'] as const) await transition(app, id, to)
  const seen: number[] = []
  let cursor: string | null = null
  do {
    const qs: string = cursor ? `&cursor=${cursor}` : ''
    const page = await call(app, 'GET', `/v1/sessions/${id}/history?limit=2${qs}`)
    t.equal(page.status, 200)
    t.ok(page.body.items.length <= 2)
    seen.push(...page.body.items.map((h: { version: number }) => h.version))
    cursor = page.body.nextCursor
  } while (cursor)
  t.same(seen, [1, 2, 3, 4, 5, 6])
})
