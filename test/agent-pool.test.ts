/**
 * Who makes room at MAX_LIVE_AGENTS (src/agents/agent-pool.ts), through the service: the order
 * of activity decides, not the clock; an agent already on its way out frees its slot without
 * anyone else being evicted. Waiting is bounded polling on events.
 */
import t from 'tap'
import { createSession, getSession, transition } from './helpers/api.js'
import { agentEnv, allEvents, markedPids, send, waitResults, waitStateEvent } from './helpers/agents.js'
import { build, manualClock } from './helpers/build.js'

const stateEvents = async (app: Parameters<typeof allEvents>[0], id: string) =>
  (await allEvents(app, id)).filter((f) => f.type === 'state').map((f) => `${String(f.data.to)}(${String(f.data.reason)})`)

t.test('with the clock standing still, the least recently active idle agent is the one evicted', async (t) => {
  // an injected clock that never moves: every agent's activity happens at the same instant
  const clock = manualClock()
  const { app } = await build(t, { clock: clock.now, env: agentEnv({ MAX_LIVE_AGENTS: '2' }) })
  const [a, b, c] = [(await createSession(app)).id, (await createSession(app)).id, (await createSession(app)).id]
  await send(app, a, 'a1')
  await waitResults(app, a, 1)
  await send(app, b, 'b1')
  await waitResults(app, b, 1)
  // a talks again: b is now the least recently active
  await send(app, a, 'a2')
  await waitResults(app, a, 2)
  await send(app, c, 'c1')
  await waitResults(app, c, 1)
  const { event } = await waitStateEvent(app, b, 'suspended')
  t.match(event.data, { reason: 'eviction', actor: 'system' })
  t.ok(app.agents.isLive(a), 'a, active more recently, still runs')
  t.ok(app.agents.isLive(c))
  t.same(await stateEvents(app, a), ['active(first message)'], 'a was never suspended')
})

t.test('an idle agent already stopping makes room by itself: nobody else is evicted', async (t) => {
  const ids: string[] = []
  t.teardown(async () => {
    for (const id of ids) for (const pid of await markedPids(id)) try { process.kill(pid, 'SIGKILL') } catch {}
  })
  // this agent ignores stdin EOF and SIGTERM: its stop takes the whole kill grace
  process.env.FAKE_CLAUDE_IGNORE_TERM = '1'
  t.teardown(() => { delete process.env.FAKE_CLAUDE_IGNORE_TERM })
  const { app } = await build(t, {
    env: agentEnv({ MAX_LIVE_AGENTS: '2', KILL_GRACE_MS: '1500', AGENT_ENV_PASSTHROUGH: 'FAKE_CLAUDE_IGNORE_TERM' })
  })
  const [leaving, idle, next] = [(await createSession(app)).id, (await createSession(app)).id, (await createSession(app)).id]
  ids.push(leaving, idle, next)
  await send(app, leaving, 'one')
  await waitResults(app, leaving, 1)
  await send(app, idle, 'two')
  await waitResults(app, idle, 1)
  // the user suspends the least recently active one; its agent takes a while to go
  const stopping = transition(app, leaving, 'suspended')
  await waitStateEvent(app, leaving, 'suspended')
  t.ok(app.agents.isLive(leaving), 'its agent is still on its way out')
  await send(app, next, 'three')
  await waitResults(app, next, 1)
  t.equal((await stopping).status, 200)
  t.same(await stateEvents(app, idle), ['active(first message)'], 'the other idle agent was not evicted')
  t.ok(app.agents.isLive(idle))
  t.notOk(app.agents.isLive(leaving))
  t.notOk((await allEvents(app, next)).some((f) => f.type === 'status'), 'the start did not have to wait for a busy agent')
  t.equal((await getSession(app, idle)).state, 'active')
})
