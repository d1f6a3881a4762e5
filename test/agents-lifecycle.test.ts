/**
 * Agent supervision that needs an app of its own: a resume the agent refuses, the cap on live
 * agents, an agent that ignores EOF and SIGTERM, and a graceful shutdown
 * followed by a start on the same data directory and database (orphans of a previous run reaped,
 * active sessions suspended, nothing started until a message).
 *
 * Each subtest builds its app (closed in its teardown); FAKE_CLAUDE_* switches are set in this
 * process and reach only the agents of an app that lists them in AGENT_ENV_PASSTHROUGH. Waiting is
 * bounded polling; the only timed waits watch for something that must NOT happen.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { mkdir, readdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import type { App } from '../src/app.js'
import { call, createSession, getSession, transition } from './helpers/api.js'
import {
  agentEnv,
  allEvents,
  isInit,
  isRunning,
  kinds,
  markedPids,
  procStat,
  recordedPid,
  replies,
  send,
  waitEvents,
  waitGone,
  waitResults,
  waitSession,
  waitStateEvent,
  waitUntil,
  type Frame
} from './helpers/agents.js'
import { build } from './helpers/build.js'

process.env.FAKE_CLAUDE_REFUSE_RESUME = '1'
process.env.FAKE_CLAUDE_EXIT_BEFORE_INIT = '1'
process.env.FAKE_CLAUDE_IGNORE_TERM = '1'

const KILL_GRACE_MS = 300

/** Kills whatever still carries the marker of these sessions once the test is over. */
function reapAfter (t: Test, ids: () => string[]): void {
  t.teardown(async () => {
    for (const id of ids()) {
      for (const pid of await markedPids(id)) {
        try { process.kill(pid, 'SIGKILL') } catch {}
      }
    }
  })
}

const after = (frames: Frame[], seq: number) => frames.filter((f) => f.seq > seq)
const lastSeq = async (app: App, id: string) => (await allEvents(app, id)).at(-1)?.seq ?? 0
const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

t.test('a refused resume keeps the message and waits for the user; restart starts a fresh conversation', async (t) => {
  const ids: string[] = []
  reapAfter(t, () => ids)
  const { app } = await build(t, { env: agentEnv({ AGENT_ENV_PASSTHROUGH: 'FAKE_CLAUDE_REFUSE_RESUME' }) })
  const s = await createSession(app)
  ids.push(s.id)
  await send(app, s.id, 'first')
  await waitResults(app, s.id, 1)
  const original = (await getSession(app, s.id)).agentSessionId
  t.ok(original, 'the first conversation has an id')
  await transition(app, s.id, 'suspended')
  await waitStateEvent(app, s.id, 'suspended')

  const before = await lastSeq(app, s.id)
  await send(app, s.id, 'kept')
  const { frames } = await waitStateEvent(app, s.id, 'suspended', { afterSeq: before })
  t.same(kinds(after(frames, before)), [
    'user:kept',
    'status:Resuming session…',
    'state:suspended->active(message)',
    'agent:result/error_during_execution',
    'error:AGENT_RESUME_FAILED',
    'state:active->suspended(resume failed)'
  ], 'the user is told; the session is suspended again')
  const failed = await getSession(app, s.id)
  t.equal(failed.state, 'suspended')
  t.match(failed.lastError, /No conversation found/, 'lastError says why')
  t.equal(failed.agentSessionId, original, 'the conversation id is kept')
  t.equal(failed.busy, false)
  t.notOk(app.agents.isLive(s.id), 'no agent left running')
  t.same(await markedPids(s.id), [])

  // nothing starts fresh on its own
  const settled = await lastSeq(app, s.id)
  await pause(500)
  t.equal(await lastSeq(app, s.id), settled, 'no event while nobody writes')
  t.equal((await getSession(app, s.id)).state, 'suspended')

  // sending again retries the resume, which fails again: both messages are kept
  await send(app, s.id, 'again')
  await waitStateEvent(app, s.id, 'suspended', { afterSeq: settled })
  const retried = await allEvents(app, s.id)
  t.equal(retried.filter((f) => f.type === 'error' && f.data.code === 'AGENT_RESUME_FAILED').length, 2, 'the retry failed too')

  const beforeRestart = retried.at(-1)!.seq
  const restarted = await call(app, 'POST', `/v1/sessions/${s.id}/restart`)
  t.equal(restarted.status, 200)
  t.equal(restarted.body.state, 'active')
  const done = await waitEvents(app, s.id, 'the kept messages answered', (f) => replies(f).length >= 3)
  const fresh = after(done, beforeRestart)
  t.same(kinds(fresh).slice(0, 2), ['state:suspended->active(restart: fresh conversation)', 'status:Starting a fresh conversation…'])
  t.same(replies(done), ['echo: first', 'echo: kept', 'echo: again | remembered: kept'],
    'the kept messages delivered in order, in a conversation that does not remember the old one')
  const session = await waitSession(app, s.id, 'the turns accounted', (x) => x.usage.turns === 3 && !x.busy)
  t.ok(session.agentSessionId && session.agentSessionId !== original, 'a new agent session id')
  t.equal(session.agentSessionId, fresh.find(isInit)!.data.session_id)
  t.equal(session.lastError, null, 'a turn that ran clears lastError')
  t.ok(Math.abs(session.usage.costUsd - 0.003) < 1e-9, `cost of both conversations: ${session.usage.costUsd}`)
})

t.test('an agent that ignores EOF and SIGTERM', async (t) => {
  const ids: string[] = []
  reapAfter(t, () => ids)
  const { app, config } = await build(t, { env: agentEnv({ AGENT_ENV_PASSTHROUGH: 'FAKE_CLAUDE_IGNORE_TERM', KILL_GRACE_MS: String(KILL_GRACE_MS) }) })

  await t.test('is ended by SIGKILL after two grace periods', async (t) => {
    const s = await createSession(app)
    ids.push(s.id)
    await send(app, s.id, 'stubborn')
    await waitResults(app, s.id, 1)
    const pid = await recordedPid(config, s.id)
    t.ok(pid && await isRunning(pid))
    const started = Date.now()
    const res = await transition(app, s.id, 'suspended')
    const took = Date.now() - started
    t.equal(res.status, 200)
    t.ok(took >= 2 * KILL_GRACE_MS - 20, `waited for EOF and for SIGTERM first (${took} ms)`)
    t.ok(took < 2 * KILL_GRACE_MS + 1000, `then SIGKILL, without delay (${took} ms)`)
    t.notOk(await isRunning(pid!), 'the process is gone')
    t.same(await markedPids(s.id), [])
  })

  await t.test('a message that arrives while its idle suspension is stopping it is still answered', async (t) => {
    const s = await createSession(app, { idleTimeoutSeconds: 1 })
    ids.push(s.id)
    await send(app, s.id, 'first')
    await waitResults(app, s.id, 1)
    // the row says suspended as soon as the sweep commits; the stop takes 2 × KILL_GRACE_MS more
    await waitSession(app, s.id, 'the idle suspension', (x) => x.state === 'suspended', 5_000)
    t.ok(app.agents.isLive(s.id), 'the message arrives while the agent is being stopped')
    await send(app, s.id, 'during the stop')
    const frames = await waitEvents(app, s.id, 'a reply to the message', (f) => replies(f).length >= 2, 3_000)
      .catch(async (err: Error) => {
        const events = await allEvents(app, s.id)
        t.fail(`the message was never answered: ${err.message.split('\n')[0]}`, {
          session: await getSession(app, s.id),
          events: events.map((f) => `${f.seq} ${kinds([f])[0]}${f.type === 'state' ? ` v${f.data.version}` : ''}`)
        })
        return null
      })
    if (frames) t.equal(replies(frames)[1], 'echo: during the stop | remembered: first')
    const versions = (await allEvents(app, s.id)).filter((f) => f.type === 'state').map((f) => f.data.version as number)
    t.same(versions, [...versions].sort((a, b) => a - b), `state events in version order (${versions.join(', ')})`)
  })
})

t.test('shutdown stops every agent; a start on the same data reaps orphans, suspends, starts nothing', async (t) => {
  const ids: string[] = []
  const sleeps: ChildProcess[] = []
  reapAfter(t, () => ids)
  t.teardown(() => { for (const p of sleeps) p.kill('SIGKILL') })
  const first = await build(t, { env: agentEnv() })

  // a session with an idle agent, one busy in a turn, one active with no process, one pending
  const idle = await createSession(first.app)
  const busy = await createSession(first.app)
  const bare = await createSession(first.app)
  const pending = await createSession(first.app)
  ids.push(idle.id, busy.id, bare.id, pending.id)
  await send(first.app, idle.id, 'before the restart')
  await waitResults(first.app, idle.id, 1)
  await send(first.app, busy.id, '/slow 5000 cut short')
  await waitEvents(first.app, busy.id, 'the busy turn to start', (f) => f.some(isInit))
  await transition(first.app, bare.id, 'active')
  const pids = [await recordedPid(first.config, idle.id), await recordedPid(first.config, busy.id)]
  t.ok(pids.every((p) => p !== undefined), 'both agents recorded')
  const published: Record<string, string[]> = { [idle.id]: [], [busy.id]: [] }
  for (const id of [idle.id, busy.id]) {
    first.app.eventBus.subscribe(id, (frame) => published[id]!.push(frame.bytes.toString('utf8')))
  }

  await first.app.close()
  for (const pid of pids) t.equal(await procStat(pid!), undefined, `agent ${pid} stopped and reaped`)
  for (const id of ids) t.same(await markedPids(id), [], 'nothing of the session runs')
  for (const id of [idle.id, busy.id]) {
    const states = published[id]!.map((b) => JSON.parse(b) as Frame).filter((f) => f.type === 'state')
    t.match(states.at(-1)?.data, { from: 'active', to: 'suspended', reason: 'shutdown' }, 'suspended (shutdown) on the way out')
  }
  t.same(await readdir(join(first.config.dataDir, 'agents')).catch(() => []), [], 'no process left on the record')

  // what a crashed previous run could have left: records of processes, some ours, some not
  const agentsDir = join(first.config.dataDir, 'agents')
  await mkdir(agentsDir, { recursive: true })
  const sleep = async (env: Record<string, string>) => {
    const p = spawn('sleep', ['600'], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...env }, detached: true, stdio: 'ignore' })
    sleeps.push(p)
    await once(p, 'spawn')
    const stat = await waitUntil('the sleep to run', () => procStat(p.pid!))
    return { proc: p, pid: p.pid!, startTime: stat.startTime }
  }
  const record = (sessionId: string, pid: number, startTime: string) =>
    writeFile(join(agentsDir, `${sessionId}.json`), JSON.stringify({ sessionId, pid, startTime }))
  const orphanSession = randomUUID()
  const orphan = await sleep({ MOBVIBE_AGENT_SESSION: orphanSession })
  await record(orphanSession, orphan.pid, orphan.startTime)
  // a recorded agent that is gone, whose escaped descendant still carries its marker
  const escapedSession = randomUUID()
  const escaped = await sleep({ MOBVIBE_AGENT_SESSION: escapedSession, MOBVIBE_AGENT_HOME: first.config.dataDir })
  // the same session's agent started by another instance on this host (a failover): not this one's to end
  const elsewhere = await sleep({ MOBVIBE_AGENT_SESSION: escapedSession, MOBVIBE_AGENT_HOME: '/another/instance/data' })
  const gone = await sleep({})
  gone.proc.kill('SIGKILL')
  await once(gone.proc, 'exit')
  await record(escapedSession, gone.pid, gone.startTime)
  // pids reused by someone else: a different start time, or the right start time but no marker
  const reused = await sleep({})
  await record(randomUUID(), reused.pid, String(Number(reused.startTime) - 1))
  const stranger = await sleep({ MOBVIBE_AGENT_SESSION: randomUUID() })
  await record(randomUUID(), stranger.pid, stranger.startTime)

  const second = await build(t, {
    env: agentEnv({
      MOBVIBE_DATA_DIR: first.config.dataDir,
      MOBVIBE_WORKSPACE_ROOT: first.config.workspaceRoot,
      ...(first.config.databaseUrl ? { DATABASE_URL: first.config.databaseUrl } : {})
    })
  })
  const app = second.app
  for (const [what, p] of [['the recorded orphan', orphan], ['the escaped descendant', escaped]] as const) {
    await waitGone(p.pid, `${what} to be killed`, 5_000)
    t.pass(`${what} was killed`)
  }
  t.ok(await isRunning(reused.pid), 'a pid with another start time is not signalled')
  t.ok(await isRunning(stranger.pid), 'a pid without our marker is not signalled')
  t.ok(await isRunning(elsewhere.pid), 'a process of the session started by another instance (another data directory) is not signalled')
  t.same(await readdir(agentsDir), [], 'the records are cleared')

  t.equal(app.agents.liveCount, 0, 'no agent started')
  const states = Object.fromEntries(await Promise.all([idle, busy, bare, pending].map(async (s) => [s.id, await getSession(app, s.id)] as const)))
  t.equal(states[idle.id]!.state, 'suspended')
  t.equal(states[busy.id]!.state, 'suspended')
  t.equal(states[busy.id]!.busy, false, 'no longer busy')
  t.equal(states[bare.id]!.state, 'suspended', 'active with no process: suspended too')
  t.equal(states[pending.id]!.state, 'pending', 'pending stays pending')
  const reasons = async (id: string) => (await call(app, 'GET', `/v1/sessions/${id}/history`)).body.items.map((h: { reason: string }) => h.reason)
  t.equal((await reasons(idle.id)).at(-1), 'shutdown')
  t.equal((await reasons(busy.id)).at(-1), 'shutdown')
  t.equal((await reasons(bare.id)).at(-1), 'shutdown', 'the shutdown hands back every session the instance owned, with a process or not')
  for (const id of ids) t.same(await markedPids(id), [], 'nothing started before a message')

  // a message resumes with memory
  const seq = await lastSeq(app, idle.id)
  await send(app, idle.id, 'after the restart')
  const frames = await waitResults(app, idle.id, 2)
  t.same(kinds(after(frames, seq)).slice(0, 3), ['user:after the restart', 'status:Resuming session…', 'state:suspended->active(message)'])
  t.equal(replies(frames)[1], 'echo: after the restart | remembered: before the restart')
  // the turn cut short by the shutdown is in the transcript and is not sent again
  const bseq = await lastSeq(app, busy.id)
  await send(app, busy.id, 'and now')
  const bframes = await waitEvents(app, busy.id, 'the reply', (f) => replies(f).length >= 1)
  t.same(replies(bframes), ['echo: and now | remembered: cut short'], 'the cut-short message is remembered, not re-sent')
  t.equal(after(bframes, bseq).filter((f) => f.type === 'user').length, 1)
})

t.test('MAX_LIVE_AGENTS: idle agents make room, busy ones never do, and a start waits for a slot', async (t) => {
  const ids: string[] = []
  reapAfter(t, () => ids)
  const built = await build(t, { env: agentEnv({ MAX_LIVE_AGENTS: '2', AGENT_ENV_PASSTHROUGH: 'FAKE_CLAUDE_START_DELAY_MS' }) })
  const { app } = built
  const session = async () => {
    const s = await createSession(app)
    ids.push(s.id)
    return s.id
  }

  await t.test('at the cap, the least recently active idle agent is suspended (eviction)', async (t) => {
    const [a, b, c] = [await session(), await session(), await session()]
    await send(app, a, 'a')
    await waitResults(app, a, 1)
    await send(app, b, 'b')
    await waitResults(app, b, 1)
    t.equal(app.agents.liveCount, 2)
    const pidA = await recordedPid(built.config, a)
    await send(app, c, 'c')
    await waitResults(app, c, 1)
    const { event } = await waitStateEvent(app, a, 'suspended')
    t.match(event.data, { from: 'active', to: 'suspended', reason: 'eviction', actor: 'system' })
    t.notOk(app.agents.isLive(a), 'a was evicted')
    t.notOk(pidA && await isRunning(pidA), 'its process is gone')
    t.ok(app.agents.isLive(b) && app.agents.isLive(c), 'b and c live')
    t.equal(app.agents.liveCount, 2)
    t.notOk((await allEvents(app, c)).some((f) => f.type === 'status'), 'c did not have to wait')
    await transition(app, b, 'suspended')
    await transition(app, c, 'suspended')
  })

  await t.test('a busy agent is never evicted, even the least recently active one', async (t) => {
    const [busy, idle, next] = [await session(), await session(), await session()]
    await send(app, busy, '/slow 2000 busy')
    await waitEvents(app, busy, 'the busy turn to start', (f) => f.some(isInit))
    await send(app, idle, 'idle')
    await waitResults(app, idle, 1)
    // busy is now the least recently active of the two, but it is in a turn
    await send(app, next, 'next')
    await waitResults(app, next, 1)
    const { event } = await waitStateEvent(app, idle, 'suspended')
    t.equal(event.data.reason, 'eviction', 'the idle one made room')
    t.ok(app.agents.isLive(busy), 'the busy one still runs')
    const done = await waitResults(app, busy, 1)
    t.same(replies(done), ['echo: busy'], 'and its turn completes')
    t.notOk(done.some((f) => f.type === 'state' && f.data.to === 'suspended'), 'it was never suspended')
    await transition(app, busy, 'suspended')
    await transition(app, next, 'suspended')
  })

  await t.test('with every live agent busy, a start waits (and says so), then proceeds when a turn ends', async (t) => {
    const [x, y, z] = [await session(), await session(), await session()]
    await send(app, x, '/slow 1500 x')
    await send(app, y, '/slow 1500 y')
    await Promise.all([x, y].map((id) => waitEvents(app, id, 'the turn to start', (f) => f.some(isInit))))
    t.equal(app.agents.liveCount, 2)
    await send(app, z, 'z')
    const waiting = await waitEvents(app, z, 'the waiting notice', (f) => f.some((e) => e.type === 'status'))
    t.same(waiting.filter((f) => f.type === 'status').map((f) => f.data.message), ['Waiting for a free agent slot…'])
    t.notOk(app.agents.isLive(z), 'z does not start while both are busy')
    await Promise.all([waitResults(app, x, 1), waitResults(app, y, 1)])
    // once a turn has ended its agent is idle, so it can make room for z (idle timeout: 10 min)
    const done = await waitResults(app, z, 1, 3_000).catch(async (err: Error) => {
      t.fail(`z still waits after both turns ended: ${err.message.split('\n')[0]}`, {
        events: kinds(await allEvents(app, z)), live: { x: app.agents.isLive(x), y: app.agents.isLive(y), z: app.agents.isLive(z) }
      })
      return null
    })
    if (done) t.same(replies(done), ['echo: z'])
    else {
      // a process that ends does free its slot: z starts once x is suspended
      await transition(app, x, 'suspended')
      t.same(replies(await waitResults(app, z, 1)), ['echo: z'], 'z started when x\'s process ended')
    }
    t.ok(app.agents.liveCount <= 2, 'the cap holds')
    for (const id of [x, y, z]) await transition(app, id, 'suspended')
    t.equal(app.agents.liveCount, 0)
  })

  await t.test('a session paused while its start waits for a slot gets no agent until it is resumed', async (t) => {
    const [u, v, w] = [await session(), await session(), await session()]
    await send(app, u, '/slow 1500 u')
    await send(app, v, '/slow 1500 v')
    await Promise.all([u, v].map((id) => waitEvents(app, id, 'the turn to start', (f) => f.some(isInit))))
    await send(app, w, 'w')
    await waitEvents(app, w, 'the waiting notice', (f) => f.some((e) => e.type === 'status'))
    // w is active with its turn claimed but no process yet: nothing for the pause to stop
    t.equal((await call(app, 'POST', `/v1/sessions/${w}/pause`)).status, 200)
    await Promise.all([waitResults(app, u, 1), waitResults(app, v, 1)])
    // an idle one is evicted to make room for w's pending start, which then goes on while w is paused
    await Promise.race([u, v].map((id) => waitStateEvent(app, id, 'suspended')))
    await app.agents.settled(w)
    t.notOk(app.agents.isLive(w), 'the agent that started for the paused session was stopped')
    t.equal((await call(app, 'POST', `/v1/sessions/${w}/resume`)).status, 200)
    const done = await waitResults(app, w, 1)
    t.same(replies(done), ['echo: w'], 'the kept message answered once')
    const paused = done.findIndex((f) => f.type === 'state' && f.data.to === 'paused')
    const resumed = done.findIndex((f, i) => i > paused && f.type === 'state' && f.data.to === 'active')
    t.ok(paused !== -1 && resumed > paused, 'paused, then resumed')
    t.same(done.slice(paused, resumed).filter((f) => f.type === 'agent'), [], 'no agent output while paused')
    t.equal(done.filter(isInit).length, 1, 'one turn started, after the resume')
    t.ok(done.findIndex(isInit) > resumed)
    for (const id of [u, v, w]) await transition(app, id, 'suspended')
  })

  await t.test('a start still waiting for a slot at shutdown starts nothing', async (t) => {
    const [p, q, r] = [await session(), await session(), await session()]
    await send(app, p, '/slow 3000 p')
    await send(app, q, '/slow 3000 q')
    await Promise.all([p, q].map((id) => waitEvents(app, id, 'the turn to start', (f) => f.some(isInit))))
    await send(app, r, 'r')
    await waitEvents(app, r, 'the waiting notice', (f) => f.some((e) => e.type === 'status'))
    // should r's agent start anyway, it stays silent instead of writing to a closed database
    process.env.FAKE_CLAUDE_START_DELAY_MS = '20000'
    t.teardown(() => { delete process.env.FAKE_CLAUDE_START_DELAY_MS })
    await app.close()
    for (const id of [p, q]) t.same(await markedPids(id), [], 'the busy agents were stopped')
    // watch for a late start (a bounded watch for something that must not happen)
    const late = await waitUntil('a late start', async () => {
      const pids = await markedPids(r)
      return pids.length > 0 ? pids : undefined
    }, { timeoutMs: 1_000 }).catch(() => [] as number[])
    t.same(late, [], 'no agent started for the waiting session after the app closed')
    for (const pid of late) process.kill(pid, 'SIGKILL')
    for (const id of ids) t.same(await markedPids(id), [], 'nothing runs after the app closed')
  })
})
