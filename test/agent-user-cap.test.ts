/**
 * MAX_LIVE_AGENTS_PER_USER (src/agents/agent-pool.ts, docs/AGENTS.md): at a user's cap, starting
 * another of their agents suspends their own least recently active idle agent (reason
 * `eviction`), or waits (FIFO, with the status event) until one of theirs ends its turn; another
 * user's agents are never evicted for it. Two users, cap 1, with the fake CLI.
 */
import t from 'tap'
import type { Frame } from './helpers/agents.js'
import { fakeAgentEnv, events, killLeftovers, newSession, send, session, turn, userOf, waitFor, resultsOf } from './helpers/as-user.js'
import { build } from './helpers/build.js'

const sessionIds: string[] = []
t.teardown(() => killLeftovers(sessionIds))

const evicted = (f: Frame[]) => f.some((e) => e.type === 'state' && e.data.to === 'suspended' && e.data.reason === 'eviction')
const waited = (f: Frame[]) => f.some((e) => e.type === 'status' && e.data.message === 'Waiting for a free agent slot…')

t.test('a user at their cap evicts their own idle agent, or waits for their own busy one; never another user\'s', async (t) => {
  const built = await build(t, { env: fakeAgentEnv({ MAX_LIVE_AGENTS_PER_USER: '1', MAX_LIVE_AGENTS: '10' }) })
  const { app } = built
  const alice = await userOf(built, 'alice')
  const bob = await userOf(built, 'bob')

  const b1 = await newSession(bob, sessionIds)
  await turn(bob, b1.id, 'bob first')
  const a1 = await newSession(alice, sessionIds)
  await turn(alice, a1.id, 'alice first')
  t.ok(app.agents.isLive(b1.id) && app.agents.isLive(a1.id), 'one live agent each: bob\'s did not count against alice\'s cap')

  // alice's second agent: her own idle a1 is evicted; bob's b1 (idle, and less recently active) is not
  const a2 = await newSession(alice, sessionIds)
  t.equal(await turn(alice, a2.id, 'alice second'), 'echo: alice second')
  t.ok(evicted(await events(alice, a1.id)), 'alice\'s idle agent was suspended (eviction)')
  t.equal((await session(alice, a1.id)).state, 'suspended')
  t.notOk(app.agents.isLive(a1.id))
  t.notOk(evicted(await events(bob, b1.id)), 'bob\'s agent was not evicted')
  t.ok(app.agents.isLive(b1.id), 'and still runs')
  t.equal((await session(bob, b1.id)).state, 'active')

  // alice's a2 is busy: a third start of hers waits, and starts when a2's turn is over
  await send(alice, a2.id, '/slow 1500 long')
  await waitFor(alice, a2.id, 'the long turn to start', (f) => f.filter((e) => e.type === 'agent' && e.data.subtype === 'init').length >= 2)
  const a3 = await newSession(alice, sessionIds)
  await send(alice, a3.id, 'alice third')
  const waiting = await waitFor(alice, a3.id, 'the wait notice', waited)
  t.notOk(waiting.some((e) => e.type === 'agent'), 'nothing started while alice\'s only slot is busy')
  t.equal(resultsOf(await events(alice, a2.id)).length, 1, 'the long turn is still running')
  t.ok(app.agents.isLive(b1.id), 'bob\'s idle agent was not taken for it')

  const done = await waitFor(alice, a3.id, 'the third reply', (f) => resultsOf(f).length >= 1)
  t.equal(String(resultsOf(done)[0]!.data.result), 'echo: alice third')
  const a2Events = await events(alice, a2.id)
  t.equal(resultsOf(a2Events).length, 2, 'after the long turn had ended')
  t.ok(evicted(a2Events), 'whose agent was then evicted to make room')
  t.ok(app.agents.isLive(b1.id) && !evicted(await events(bob, b1.id)), 'bob\'s agent lived through it all')

  // bob is not limited by alice's cap: his second start evicts his own b1
  const b2 = await newSession(bob, sessionIds)
  await turn(bob, b2.id, 'bob second')
  t.ok(evicted(await events(bob, b1.id)), 'bob\'s own idle agent made room for him')
  t.ok(app.agents.isLive(a3.id), 'alice\'s live agent untouched')
})
