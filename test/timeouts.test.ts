import { once } from 'node:events'
import t from 'tap'
import type { SweepResult } from '../src/sessions/timeout-worker.js'
import { call, createSession, getSession, transition } from './helpers/api.js'
import { build, manualClock } from './helpers/build.js'

const clock = manualClock()
const env = { IDLE_TIMEOUT_MIN_SECONDS: '1', SESSION_TTL_MIN_SECONDS: '1' }
// The worker does not run on its own here: each test drives sweeps at chosen instants.
const { app } = await build(t, { clock: clock.now, startWorker: false, env })
const worker = app.timeoutWorker
const at = (ms: number) => new Date(clock.now().getTime() + ms)

t.test('a session expires at its TTL deadline, not a moment before', async (t) => {
  const s = await createSession(app, { ttlSeconds: 60 })
  t.equal(s.expiresAt, at(60_000).toISOString())
  const early = await worker.sweep(at(59_999))
  t.notOk(early.expired.includes(s.id), 'not yet')
  t.equal((await getSession(app, s.id)).state, 'pending')
  const due = await worker.sweep(at(60_000))
  t.ok(due.expired.includes(s.id), 'expired by the first sweep at or past the deadline')
  const expired = await getSession(app, s.id)
  t.equal(expired.state, 'expired')
  t.equal(expired.version, 2)
  t.equal(expired.endedAt, at(60_000).toISOString())
  const history = (await call(app, 'GET', `/v1/sessions/${s.id}/history`)).body.items
  t.match(history.at(-1), { from: 'pending', to: 'expired', actor: 'system', reason: 'ttl' })
  const again = await worker.sweep(at(120_000))
  t.notOk(again.expired.includes(s.id), 'a terminal session is not swept twice')
  const beat = await call(app, 'POST', `/v1/sessions/${s.id}/heartbeat`)
  t.equal(beat.status, 409, 'a heartbeat on a terminal session is a conflict')
  t.equal(beat.body.code, 'SESSION_TERMINAL')
})

t.test('every non-terminal state expires, paused and suspended included', async (t) => {
  const ids: Record<string, string> = {}
  for (const state of ['pending', 'active', 'suspended', 'paused'] as const) {
    const { id } = await createSession(app, { ttlSeconds: 30 })
    if (state !== 'pending') await transition(app, id, 'active')
    if (state === 'suspended' || state === 'paused') await transition(app, id, state)
    ids[state] = id
  }
  const result = await worker.sweep(at(30_000))
  for (const [state, id] of Object.entries(ids)) {
    t.ok(result.expired.includes(id), `${state} expired`)
    const history = (await call(app, 'GET', `/v1/sessions/${id}/history`)).body.items
    t.match(history.at(-1), { from: state, to: 'expired', actor: 'system' })
  }
})

t.test('heartbeats push the deadline out, never earlier, and small moves write nothing', async (t) => {
  const s = await createSession(app, { ttlSeconds: 100 })
  const start = clock.now().getTime()
  clock.advance(50_000)
  const beat = await call(app, 'POST', `/v1/sessions/${s.id}/heartbeat`)
  t.equal(beat.status, 200)
  t.equal(beat.body.expiresAt, new Date(start + 150_000).toISOString(), 'deadline = heartbeat + TTL')
  t.equal(beat.body.version, 1, 'a heartbeat does not bump the version')
  t.equal(beat.body.state, 'pending')
  t.equal(beat.body.serverTime, clock.now().toISOString())
  const after = await getSession(app, s.id)
  t.equal(after.lastHeartbeatAt, clock.now().toISOString())
  t.equal(after.version, 1)
  t.equal(after.updatedAt, s.updatedAt, 'liveness is not a change of the resource')

  // 4 s later the deadline would move by 4% of the TTL: coalesced, nothing written
  clock.advance(4_000)
  const small = await call(app, 'POST', `/v1/sessions/${s.id}/heartbeat`)
  t.equal(small.body.expiresAt, new Date(start + 150_000).toISOString(), 'a small move is skipped')
  t.equal((await getSession(app, s.id)).lastHeartbeatAt, after.lastHeartbeatAt, 'and costs no write')

  // 6 s after the written one: above 5% of the TTL, written
  clock.advance(2_000)
  const big = await call(app, 'POST', `/v1/sessions/${s.id}/heartbeat`)
  t.equal(big.body.expiresAt, new Date(start + 156_000).toISOString())

  t.notOk((await worker.sweep(new Date(start + 155_999))).expired.includes(s.id), 'alive until the pushed deadline')
  t.ok((await worker.sweep(new Date(start + 156_000))).expired.includes(s.id), 'expired at it')
})

t.test('a heartbeat never moves the deadline earlier', async (t) => {
  const s = await createSession(app, { ttlSeconds: 1000 })
  // Lower the TTL: the deadline is recomputed from creation (now), i.e. earlier
  const patched = await call(app, 'PATCH', `/v1/sessions/${s.id}`, { ttlSeconds: 10 })
  t.equal(patched.body.expiresAt, at(10_000).toISOString(), 'a TTL patch may move the deadline earlier')
  // Raise it again without a heartbeat: still computed from the last sign of life
  const raised = await call(app, 'PATCH', `/v1/sessions/${s.id}`, { ttlSeconds: 500 })
  t.equal(raised.body.expiresAt, at(500_000).toISOString())
  clock.advance(1000)
  const tiny = await call(app, 'POST', `/v1/sessions/${s.id}/heartbeat`)
  t.equal(tiny.body.expiresAt, at(499_000).toISOString(), 'a 1 s gain on a 500 s TTL is coalesced')
  clock.advance(29_000)
  const beat = await call(app, 'POST', `/v1/sessions/${s.id}/heartbeat`)
  t.equal(beat.body.expiresAt, at(500_000).toISOString(), 'a 30 s gain is written')
  // A lowered TTL after the heartbeat: the deadline follows the heartbeat, earlier than before
  const lowered = await call(app, 'PATCH', `/v1/sessions/${s.id}`, { ttlSeconds: 20 })
  t.equal(lowered.body.expiresAt, at(20_000).toISOString(), 'recomputed from the last heartbeat')
  const after = await call(app, 'POST', `/v1/sessions/${s.id}/heartbeat`)
  t.equal(after.body.expiresAt, at(20_000).toISOString(), 'no move: nothing to gain')
})

t.test('idle active sessions are suspended at their idle deadline', async (t) => {
  const s = await createSession(app, { idleTimeoutSeconds: 10, ttlSeconds: 3600 })
  const activeAt = clock.now().getTime()
  await transition(app, s.id, 'active')
  t.notOk((await worker.sweep(new Date(activeAt + 9_999))).suspended.includes(s.id), 'not before the timeout')
  const result = await worker.sweep(new Date(activeAt + 10_000))
  t.ok(result.suspended.includes(s.id), 'suspended at it')
  const suspended = await getSession(app, s.id)
  t.equal(suspended.state, 'suspended')
  t.equal(suspended.usage.activeMs, 10_000, 'active time counts exactly the stretch in active')
  const history = (await call(app, 'GET', `/v1/sessions/${s.id}/history`)).body.items
  t.match(history.at(-1), { from: 'active', to: 'suspended', actor: 'system', reason: 'idle' })
})

t.test('idle suspension applies to active sessions only, each with its own timeout', async (t) => {
  const start = clock.now().getTime()
  const fast = await createSession(app, { idleTimeoutSeconds: 5 })
  const slow = await createSession(app, { idleTimeoutSeconds: 50 })
  const pending = await createSession(app, { idleTimeoutSeconds: 5 })
  const paused = await createSession(app, { idleTimeoutSeconds: 5 })
  for (const s of [fast, slow, paused]) await transition(app, s.id, 'active')
  await transition(app, paused.id, 'paused')
  const first = await worker.sweep(new Date(start + 5_000))
  t.ok(first.suspended.includes(fast.id))
  t.notOk(first.suspended.includes(slow.id), 'the other session keeps its own timer')
  t.notOk(first.suspended.includes(pending.id), 'pending is not idle-suspended')
  t.notOk(first.suspended.includes(paused.id), 'paused is not idle-suspended')
  t.ok((await worker.sweep(new Date(start + 50_000))).suspended.includes(slow.id))
})

t.test('a PATCH of the idle timeout moves the idle deadline of an active session', async (t) => {
  const s = await createSession(app, { idleTimeoutSeconds: 100 })
  const start = clock.now().getTime()
  await transition(app, s.id, 'active')
  clock.advance(5_000)
  await call(app, 'PATCH', `/v1/sessions/${s.id}`, { idleTimeoutSeconds: 10 })
  t.notOk((await worker.sweep(new Date(start + 9_999))).suspended.includes(s.id))
  t.ok((await worker.sweep(new Date(start + 10_000))).suspended.includes(s.id), 'deadline = entered active + new timeout')
})

t.test('a user transition counts as liveness and restarts the idle timer', async (t) => {
  const s = await createSession(app, { ttlSeconds: 100, idleTimeoutSeconds: 30 })
  clock.advance(90_000)
  const active = await transition(app, s.id, 'active')
  t.equal(active.body.expiresAt, at(100_000).toISOString(), 'activating pushes the TTL deadline')
  t.notOk((await worker.sweep(at(29_999))).suspended.includes(s.id))
})

t.test('activeMs accumulates across stretches and excludes paused and suspended time', async (t) => {
  const s = await createSession(app, { idleTimeoutSeconds: 3600 })
  await transition(app, s.id, 'active')
  clock.advance(7_000)
  await transition(app, s.id, 'paused')
  clock.advance(60_000)
  await transition(app, s.id, 'active')
  clock.advance(3_000)
  t.equal((await getSession(app, s.id)).usage.activeMs, 10_000, 'the running stretch counts while active')
  await transition(app, s.id, 'suspended')
  clock.advance(50_000)
  t.equal((await getSession(app, s.id)).usage.activeMs, 10_000, 'suspended time does not count')
})

t.test('with the worker running on real time, due sessions are swept without any request', async (t) => {
  const { app: live } = await build(t, { env: { ...env, SWEEP_INTERVAL_MS: '50' } })
  const expiring = await createSession(live, { ttlSeconds: 1 })
  const idle = await createSession(live, { idleTimeoutSeconds: 1 })
  await transition(live, idle.id, 'active')
  const seen = { expired: false, suspended: false }
  while (!seen.expired || !seen.suspended) {
    const [sweep] = await once(live.timeoutWorker, 'sweep') as [SweepResult]
    if (sweep.expired.includes(expiring.id)) seen.expired = true
    if (sweep.suspended.includes(idle.id)) seen.suspended = true
  }
  const expired = await getSession(live, expiring.id)
  t.equal(expired.state, 'expired')
  t.ok(new Date(expired.stateChangedAt) >= new Date(expiring.expiresAt), 'not before the deadline')
  t.equal((await getSession(live, idle.id)).state, 'suspended')
})
