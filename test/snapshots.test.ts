import { randomUUID } from 'node:crypto'
import { eq } from 'drizzle-orm'
import t from 'tap'
import { sessions } from '../src/db/schema.js'
import { call, createSession, getSession, transition } from './helpers/api.js'
import { build, manualClock } from './helpers/build.js'

const clock = manualClock()
const { app } = await build(t, { clock: clock.now, startWorker: false })

/** The fields that define a session and that resume must bring back. */
const settingsOf = (s: Record<string, unknown>) => ({
  title: s.title,
  workdir: s.workdir,
  model: s.model,
  idleTimeoutSeconds: s.idleTimeoutSeconds,
  ttlSeconds: s.ttlSeconds,
  agentSessionId: s.agentSessionId
})

// Stands in for the agent supervisor, which records the conversation id once an agent runs.
async function setAgentSessionId (id: string, agentSessionId: string) {
  await app.database.db.update(sessions).set({ agentSessionId }).where(eq(sessions.id, id))
}

t.test('pause captures the complete session state in a snapshot', async (t) => {
  const s = await createSession(app, { title: 'refactor', model: 'sonnet', idleTimeoutSeconds: 900, ttlSeconds: 7200, workdir: 'proj-a' })
  await transition(app, s.id, 'active')
  const agent = randomUUID()
  await setAgentSessionId(s.id, agent)
  clock.advance(4_000)
  const before = await getSession(app, s.id)
  const res = await call(app, 'POST', `/v1/sessions/${s.id}/pause`)
  t.equal(res.status, 200)
  t.equal(res.headers.etag, `"${before.version + 1}"`, 'the ETag is the paused session\'s version')
  t.same(res.body, {
    id: res.body.id,
    sessionId: s.id,
    version: before.version,
    createdAt: clock.now().toISOString(),
    data: {
      state: 'active',
      title: 'refactor',
      workdir: before.workdir,
      model: 'sonnet',
      idleTimeoutSeconds: 900,
      ttlSeconds: 7200,
      agentSessionId: agent,
      busy: false,
      lastError: null,
      lastActivityAt: null,
      usage: { ...before.usage, activeMs: 4_000 }
    }
  }, 'every field resume needs, the agent session id included')
  const paused = await getSession(app, s.id)
  t.equal(paused.state, 'paused')
  const listed = (await call(app, 'GET', `/v1/sessions/${s.id}/snapshots`)).body.items
  t.same(listed, [res.body], 'the snapshot is listed as returned')
})

t.test('resume restores exactly the state the snapshot holds', async (t) => {
  const s = await createSession(app, { title: 'original', idleTimeoutSeconds: 600, ttlSeconds: 3600 })
  await transition(app, s.id, 'active')
  const agent = randomUUID()
  await setAgentSessionId(s.id, agent)
  const snap = (await call(app, 'POST', `/v1/sessions/${s.id}/pause`)).body
  // Change everything that can change while paused
  await call(app, 'PATCH', `/v1/sessions/${s.id}`, { title: 'changed', idleTimeoutSeconds: 120, ttlSeconds: 600 })
  await setAgentSessionId(s.id, randomUUID())
  const changed = await getSession(app, s.id)
  t.not(changed.title, 'original')
  const res = await call(app, 'POST', `/v1/sessions/${s.id}/resume`, {}, { 'if-match': `"${changed.version}"` })
  t.equal(res.status, 200)
  t.equal(res.body.state, 'active')
  t.same(settingsOf(res.body), settingsOf({ ...snap.data }), 'deep equality with the snapshot')
  t.equal(res.body.agentSessionId, agent, 'the conversation comes back')
  t.same(settingsOf(await getSession(app, s.id)), settingsOf(snap.data), 'and it is stored so')
  const history = (await call(app, 'GET', `/v1/sessions/${s.id}/history`)).body.items
  t.match(history.at(-2), { from: 'active', to: 'paused', actor: 'user' })
  t.match(history.at(-1), { from: 'paused', to: 'active', actor: 'user', reason: `resumed from snapshot ${snap.id}` })
})

t.test('resume from a named snapshot', async (t) => {
  const s = await createSession(app, { title: 'first' })
  await transition(app, s.id, 'active')
  const first = (await call(app, 'POST', `/v1/sessions/${s.id}/pause`)).body
  await call(app, 'POST', `/v1/sessions/${s.id}/resume`)
  await call(app, 'PATCH', `/v1/sessions/${s.id}`, { title: 'second' })
  clock.advance(1)
  const second = (await call(app, 'POST', `/v1/sessions/${s.id}/pause`)).body
  t.equal(second.data.title, 'second')
  const listed = (await call(app, 'GET', `/v1/sessions/${s.id}/snapshots`)).body.items
  t.same(listed.map((x: { id: string }) => x.id), [second.id, first.id], 'newest first')
  const res = await call(app, 'POST', `/v1/sessions/${s.id}/resume`, { snapshotId: first.id })
  t.equal(res.status, 200)
  t.equal(res.body.title, 'first', 'the named snapshot is restored, not the latest')

  await call(app, 'POST', `/v1/sessions/${s.id}/pause`)
  const other = await createSession(app)
  await transition(app, other.id, 'active')
  const foreign = (await call(app, 'POST', `/v1/sessions/${other.id}/pause`)).body
  const wrong = await call(app, 'POST', `/v1/sessions/${s.id}/resume`, { snapshotId: foreign.id })
  t.equal(wrong.status, 404, 'another session\'s snapshot is not found here')
  t.equal(wrong.body.code, 'SNAPSHOT_NOT_FOUND')
  t.equal((await getSession(app, s.id)).state, 'paused', 'and nothing changed')
})

t.test('{to: paused} is POST /pause and {to: active} from paused is POST /resume', async (t) => {
  const s = await createSession(app, { title: 'via transitions' })
  await transition(app, s.id, 'active')
  const paused = await transition(app, s.id, 'paused')
  t.equal(paused.status, 200)
  t.equal(paused.body.state, 'paused')
  const snaps = (await call(app, 'GET', `/v1/sessions/${s.id}/snapshots`)).body.items
  t.equal(snaps.length, 1, 'a snapshot was taken')
  await call(app, 'PATCH', `/v1/sessions/${s.id}`, { title: 'edited while paused' })
  const resumed = await transition(app, s.id, 'active')
  t.equal(resumed.body.title, 'via transitions', 'the latest snapshot was restored')
})

t.test('a suspended session can be paused, and resumes from that snapshot', async (t) => {
  const s = await createSession(app, { title: 'sleepy' })
  await transition(app, s.id, 'active')
  await transition(app, s.id, 'suspended')
  const snap = (await call(app, 'POST', `/v1/sessions/${s.id}/pause`)).body
  t.equal(snap.data.state, 'suspended')
  t.equal((await call(app, 'POST', `/v1/sessions/${s.id}/resume`)).body.state, 'active')
})

t.test('pause and resume refuse what the table refuses', async (t) => {
  const s = await createSession(app)
  const pending = await call(app, 'POST', `/v1/sessions/${s.id}/pause`)
  t.equal(pending.status, 409)
  t.same(pending.body.allowedTargets, ['active', 'completed'])
  const notPaused = await call(app, 'POST', `/v1/sessions/${s.id}/resume`)
  t.equal(notPaused.status, 409)
  t.equal(notPaused.body.code, 'SESSION_INVALID_TRANSITION')
  t.equal((await call(app, 'GET', `/v1/sessions/${s.id}/snapshots`)).body.items.length, 0, 'no snapshot from a refused pause')
})
