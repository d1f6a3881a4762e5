/**
 * Supervised agents through the public API, with the fake CLI (test/fixtures/fake-claude.mjs) as
 * CLAUDE_BIN: the first message, idempotent retries and refusals, queueing behind a busy turn, idle
 * suspension and transparent resume, crashes, pause of a busy session, grandchildren, the agent's
 * environment and working directory, and first starts that fail.
 *
 * One app for the whole file (each subtest has its own sessions; its agents run in the bubblewrap
 * sandbox where bwrap works, AGENT_SANDBOX=auto), one with unconfined agents for the subtests that
 * run in both modes (grandchildren, the environment), plus one whose agents exit before init.
 * Waiting is bounded polling of
 * GET /events or GET /sessions/{id}; the only timed waits are the idle gaps a scenario needs.
 * Process checks read /proc; every process a subtest may leave is killed in teardown.
 */
import { readFile, realpath, rm } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { agentStateDir } from '../src/agents/agent-state.js'
import { EnvSchema } from '../src/config.js'
import { call, createSession, getSession, transition } from './helpers/api.js'
import {
  agentEnv,
  agentRoots,
  allEvents,
  cmdlineOf,
  cwdOf,
  environOf,
  grandchildPid,
  hostPidOf,
  isInit,
  isResult,
  isRunning,
  kinds,
  markedPids,
  procStat,
  recordedPid,
  replies,
  results,
  send,
  waitEvents,
  waitGone,
  waitResults,
  waitSession,
  waitStateEvent,
  waitUntil,
  type Frame
} from './helpers/agents.js'
import { build, TEST_USER } from './helpers/build.js'

// What the test process's environment holds and the agent must or must not see
process.env.ANTHROPIC_API_KEY = 'sk-test-agent-key'
process.env.MOBVIBE_TEST_PASSED = 'passed-on'
process.env.MOBVIBE_TEST_SECRET = 'must-not-leak'
process.env.KILL_GRACE_MS = '300' // a service setting in the parent's environment: not for the agent
// reaches only the agents of the app that lists it in AGENT_ENV_PASSTHROUGH
process.env.FAKE_CLAUDE_EXIT_BEFORE_INIT = '1'

const sessionIds: string[] = []
const strayPids: number[] = []
// Registered before the app, so it runs after the app has closed (teardowns run last-in first-out)
t.teardown(async () => {
  for (const id of sessionIds) strayPids.push(...await markedPids(id))
  for (const pid of strayPids) {
    try { process.kill(pid, 'SIGKILL') } catch {}
  }
})

const MESSAGE_MAX_BYTES = 1024
const { app, config } = await build(t, {
  env: agentEnv({ MESSAGE_MAX_BYTES: String(MESSAGE_MAX_BYTES), AGENT_ENV_PASSTHROUGH: 'ANTHROPIC_API_KEY,MOBVIBE_TEST_PASSED' })
})

async function newSession (body: Record<string, unknown> = {}) {
  const s = await createSession(app, body)
  sessionIds.push(s.id)
  return s
}

const after = (frames: Frame[], seq: number) => frames.filter((f) => f.seq > seq)
const userTexts = (frames: Frame[]) => frames.filter((f) => f.type === 'user').map((f) => f.data.text as string)

t.test('the first message to a pending session starts the agent and runs one turn', async (t) => {
  const s = await newSession()
  t.equal(s.state, 'pending')
  const res = await call(app, 'POST', `/v1/sessions/${s.id}/messages`, { text: '/slow 500 hello' })
  t.equal(res.status, 202)
  t.same(res.body, { seq: 1, duplicate: false }, 'the message is the session\'s first event')

  const started = await waitEvents(app, s.id, 'the turn\'s system/init', (f) => f.some(isInit))
  const during = await getSession(app, s.id)
  t.equal(results(started).length, 0, 'checked while the turn still runs')
  t.equal(during.state, 'active')
  t.equal(during.busy, true, 'busy during the turn')
  t.ok(app.agents.isLive(s.id), 'its agent is live')

  const frames = await waitResults(app, s.id, 1)
  t.same(kinds(frames), [
    'user:/slow 500 hello',
    'state:pending->active(first message)',
    'agent:system/init',
    'agent:assistant',
    'agent:result/success'
  ], 'user, state, then the agent\'s lines, in order')
  t.same(frames.map((f) => f.seq), [1, 2, 3, 4, 5], 'sequence numbers without gaps')
  t.match(frames[1]!.data, { from: 'pending', to: 'active', actor: 'system' })
  const init = frames.find(isInit)!
  const result = frames.find(isResult)!
  t.equal(result.data.result, 'echo: hello')

  const done = await waitSession(app, s.id, 'the turn accounted', (x) => !x.busy && x.usage.turns === 1)
  t.equal(done.state, 'active', 'still active after the turn')
  t.equal(done.busy, false, 'not busy after the turn')
  t.same({
    inputTokens: done.usage.inputTokens,
    outputTokens: done.usage.outputTokens,
    cacheReadTokens: done.usage.cacheReadTokens,
    cacheCreationTokens: done.usage.cacheCreationTokens,
    costUsd: done.usage.costUsd,
    turns: done.usage.turns
  }, {
    inputTokens: result.data.usage.input_tokens,
    outputTokens: result.data.usage.output_tokens,
    cacheReadTokens: result.data.usage.cache_read_input_tokens,
    cacheCreationTokens: result.data.usage.cache_creation_input_tokens,
    costUsd: result.data.total_cost_usd,
    turns: 1
  }, 'usage added from the result')
  t.same([done.usage.inputTokens, done.usage.outputTokens, done.usage.costUsd], [5, 11, 0.001], 'the fake\'s figures for "hello"')
  t.equal(done.agentSessionId, init.data.session_id, 'the agent session id is the conversation\'s')
  t.ok(done.lastActivityAt, 'lastActivityAt set')
  t.equal(done.lastError, null)
  t.equal(done.version, 2, 'a turn does not bump the version (only pending→active did)')
})

t.test('a retried message is stored and delivered once', async (t) => {
  const s = await newSession()
  const first = await send(app, s.id, 'once', 'client-1')
  const retry = await send(app, s.id, 'once', 'client-1')
  t.same(first, { seq: 1, duplicate: false })
  t.same(retry, { seq: 1, duplicate: true }, 'same seq, flagged duplicate')
  // two retries racing each other
  const racing = await Promise.all([send(app, s.id, 'twice', 'client-2'), send(app, s.id, 'twice', 'client-2')])
  t.equal(racing[0].seq, racing[1].seq, 'racing retries get one seq')
  t.same(racing.map((r) => r.duplicate).sort(), [false, true], 'one of them is the duplicate')
  await waitResults(app, s.id, 2)
  await send(app, s.id, 'after')
  const frames = await waitResults(app, s.id, 3)
  t.same(userTexts(frames), ['once', 'twice', 'after'], 'each message stored once')
  t.same(replies(frames), ['echo: once', 'echo: twice | remembered: once', 'echo: after | remembered: once / twice'],
    'each delivered once: the agent saw every prompt once')
  t.equal(results(frames).length, 3, 'three turns, no more')
})

t.test('messages a session cannot take are refused', async (t) => {
  await t.test('paused: 409', async (t) => {
    const s = await newSession()
    await transition(app, s.id, 'active')
    t.equal((await call(app, 'POST', `/v1/sessions/${s.id}/pause`)).status, 200)
    const res = await call(app, 'POST', `/v1/sessions/${s.id}/messages`, { text: 'hello?' })
    t.equal(res.status, 409)
    t.equal(res.body.code, 'SESSION_NOT_ACCEPTING_MESSAGES')
    t.same(userTexts(await allEvents(app, s.id)), [], 'nothing stored')
    t.notOk(app.agents.isLive(s.id))
  })
  await t.test('completed: 409', async (t) => {
    const s = await newSession()
    await transition(app, s.id, 'completed')
    const res = await call(app, 'POST', `/v1/sessions/${s.id}/messages`, { text: 'hello?' })
    t.equal(res.status, 409)
    t.equal(res.body.code, 'SESSION_NOT_ACCEPTING_MESSAGES')
  })
  await t.test('too large: 413, counted in bytes', async (t) => {
    const s = await newSession()
    const big = await call(app, 'POST', `/v1/sessions/${s.id}/messages`, { text: 'x'.repeat(MESSAGE_MAX_BYTES + 1) })
    t.equal(big.status, 413)
    t.equal(big.body.code, 'MESSAGE_TOO_LARGE')
    const wide = await call(app, 'POST', `/v1/sessions/${s.id}/messages`, { text: 'é'.repeat(MESSAGE_MAX_BYTES / 2 + 1) })
    t.equal(wide.status, 413, `${MESSAGE_MAX_BYTES / 2 + 1} characters, ${MESSAGE_MAX_BYTES + 2} bytes`)
    t.same(await allEvents(app, s.id), [], 'nothing stored')
    t.equal((await getSession(app, s.id)).state, 'pending', 'nothing started')
    const exact = await call(app, 'POST', `/v1/sessions/${s.id}/messages`, { text: 'y'.repeat(MESSAGE_MAX_BYTES) })
    t.equal(exact.status, 202, 'exactly the limit is accepted')
    await waitResults(app, s.id, 1)
  })
  await t.test('empty or missing text: 400', async (t) => {
    const s = await newSession()
    t.equal((await call(app, 'POST', `/v1/sessions/${s.id}/messages`, { text: '' })).status, 400)
    t.equal((await call(app, 'POST', `/v1/sessions/${s.id}/messages`, {})).status, 400)
    t.same(await allEvents(app, s.id), [])
  })
  await t.test('unknown session: 404', async (t) => {
    const res = await call(app, 'POST', '/v1/sessions/00000000-0000-4000-8000-000000000000/messages', { text: 'hi' })
    t.equal(res.status, 404)
    t.equal(res.body.code, 'SESSION_NOT_FOUND')
  })
})

t.test('messages to a busy session queue behind its turn: one process, one turn at a time', async (t) => {
  const s = await newSession()
  const accepted = [await send(app, s.id, '/slow 400 a'), await send(app, s.id, 'b'), await send(app, s.id, 'c')]
  t.same(accepted.map((a) => a.duplicate), [false, false, false], 'all accepted')
  t.ok(accepted[0]!.seq < accepted[1]!.seq && accepted[1]!.seq < accepted[2]!.seq, 'in order')
  // An agent is one host process unconfined, three under bwrap (bwrap, bwrap as the namespace's
  // init, the CLI): agents are counted by their roots (marked processes whose parent is not
  // marked) and by the pid the supervisor records for each start; a second start shows in both
  const roots = new Set<number>()
  const recorded = new Set<number>()
  const frames = await waitUntil('three results', async () => {
    for (const pid of await agentRoots(s.id)) roots.add(pid)
    const pid = await recordedPid(config, s.id)
    if (pid !== undefined) recorded.add(pid)
    const f = await allEvents(app, s.id)
    return results(f).length >= 3 ? f : undefined
  })
  t.equal(roots.size, 1, `one agent for the three messages (its root processes: ${[...roots].join(', ')})`)
  t.same([...recorded], [...roots], 'the recorded pid is that agent\'s, and was never another')
  t.same(replies(frames), ['echo: a', 'echo: b | remembered: a', 'echo: c | remembered: a / b'], 'results in order a, b, c')
  // between a turn's init and its result no other turn starts
  const turns = frames.filter((f) => isInit(f) || isResult(f)).map((f) => (isInit(f) ? 'init' : 'result'))
  t.same(turns, ['init', 'result', 'init', 'result', 'init', 'result'], 'turns never overlap')
})

t.test('idle suspension stops the agent silently; the next message resumes it transparently', async (t) => {
  const s = await newSession({ idleTimeoutSeconds: 1 })
  await send(app, s.id, 'remember me')
  const first = await waitResults(app, s.id, 1)
  const resultSeq = first.find(isResult)!.seq
  const pid = await recordedPid(config, s.id)
  t.ok(pid && await isRunning(pid), 'the agent runs after its turn')

  const { frames: quiet } = await waitStateEvent(app, s.id, 'suspended', { timeoutMs: 5_000 })
  const suspended = await getSession(app, s.id)
  t.equal(suspended.state, 'suspended')
  // the state event comes first; the graceful stop of the process follows it
  await waitUntil('the supervisor to finish the stop', () => !app.agents.isLive(s.id))
  await waitGone(pid!, 'the agent process to end')
  t.equal(await procStat(pid!), undefined, 'reaped: no zombie')
  t.same(await markedPids(s.id), [], 'no process of the session left')
  t.equal(await recordedPid(config, s.id), undefined, 'its registry record is gone')
  t.equal(suspended.agentSessionId, first.find(isInit)!.data.session_id, 'the conversation id is kept')
  t.equal(suspended.lastError, null, 'suspension is not an error')
  t.same(kinds(after(quiet, resultSeq)), ['state:active->suspended(idle)'], 'nothing but the state event after the turn')
  t.match(after(quiet, resultSeq)[0]!.data, { actor: 'system' })

  // transparent resume
  const before = quiet.at(-1)!.seq
  await send(app, s.id, 'second')
  const frames = await waitResults(app, s.id, 2)
  const story = kinds(after(frames, before))
  t.same(story, [
    'user:second',
    'status:Resuming session…',
    'state:suspended->active(message)',
    'agent:system/init',
    'agent:assistant',
    'agent:result/success'
  ], 'the status first, then the state change, then the reply')
  t.equal(replies(frames)[1], 'echo: second | remembered: remember me', 'the agent remembers the conversation')
  const resumed = await waitSession(app, s.id, 'the second turn accounted', (x) => x.usage.turns === 2 && !x.busy)
  t.equal(resumed.agentSessionId, suspended.agentSessionId, 'the same conversation')
  t.equal(results(frames)[1]!.data.total_cost_usd, 0.002, 'the CLI\'s cost is cumulative across the resume')
  t.ok(Math.abs(resumed.usage.costUsd - 0.002) < 1e-9, `costUsd counts the conversation once (${resumed.usage.costUsd})`)
})

t.test('never suspended while a turn runs', async (t) => {
  const s = await newSession({ idleTimeoutSeconds: 1 })
  await send(app, s.id, '/slow 2500 long')
  await waitEvents(app, s.id, 'the turn\'s system/init', (f) => f.some(isInit))
  const seen = new Set<string>()
  let polls = 0
  const frames = await waitUntil('the long turn\'s result', async () => {
    const session = await getSession(app, s.id)
    const f = await allEvents(app, s.id)
    if (results(f).length > 0) return f
    polls++
    seen.add(`${session.state}/${session.busy ? 'busy' : 'idle'}`)
    return undefined
  }, { intervalMs: 50 })
  t.ok(polls > 10, `watched the whole turn (${polls} polls)`)
  t.same([...seen], ['active/busy'], 'active and busy throughout, well past the 1 s timeout')
  t.equal(replies(frames)[0], 'echo: long')
  const resultAt = Date.parse(results(frames)[0]!.at)
  const { event: end } = await waitStateEvent(app, s.id, 'suspended', { timeoutMs: 5_000 })
  t.equal(end.data.reason, 'idle')
  t.ok(Date.parse(end.at) - resultAt >= 1000, `the timer started at the result (${Date.parse(end.at) - resultAt} ms after it)`)
})

t.test('activity resets the idle timer', async (t) => {
  const s = await newSession({ idleTimeoutSeconds: 1 })
  await send(app, s.id, 'one')
  const firstAt = Date.parse(results(await waitResults(app, s.id, 1))[0]!.at)
  // an idle gap shorter than the timeout (a scenario, not a synchronisation), then more activity
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, firstAt + 600 - Date.now())))
  await send(app, s.id, 'two')
  const secondAt = Date.parse(results(await waitResults(app, s.id, 2))[1]!.at)
  t.ok(secondAt - firstAt >= 600, 'the second turn ended after the gap')
  // past the first turn's deadline (with a margin for the sweep), the session is still active
  await waitUntil('the first deadline to pass', () => Date.now() >= firstAt + 1150, { intervalMs: 10 })
  t.equal((await getSession(app, s.id)).state, 'active', 'not suspended at the first turn\'s deadline')
  const { event: end } = await waitStateEvent(app, s.id, 'suspended', { timeoutMs: 5_000 })
  t.ok(Date.parse(end.at) - secondAt >= 1000, `suspended a full timeout after the last activity (${Date.parse(end.at) - secondAt} ms)`)
})

t.test('each live session has its own idle timer', async (t) => {
  const short = await newSession({ idleTimeoutSeconds: 1 })
  const long = await newSession({ idleTimeoutSeconds: 2 })
  await Promise.all([send(app, short.id, 'short'), send(app, long.id, 'long')])
  const [sf, lf] = await Promise.all([waitResults(app, short.id, 1), waitResults(app, long.id, 1)])
  const { event: shortEnd } = await waitStateEvent(app, short.id, 'suspended', { timeoutMs: 5_000 })
  const other = await getSession(app, long.id)
  t.equal(other.state, 'active', 'the other session, with a longer timeout, is still active')
  t.ok(app.agents.isLive(long.id), 'and its agent still runs')
  const { event: longEnd } = await waitStateEvent(app, long.id, 'suspended', { timeoutMs: 5_000 })
  t.ok(Date.parse(shortEnd.at) - Date.parse(results(sf)[0]!.at) >= 1000, '1 s session: at least 1 s idle')
  t.ok(Date.parse(longEnd.at) - Date.parse(results(lf)[0]!.at) >= 2000, '2 s session: at least 2 s idle')
})

t.test('a crash mid-turn: persisted output, an error, suspended; resume does not re-send the message', async (t) => {
  const s = await newSession()
  // while the first turn runs, the crashing message and one more queue behind it
  await send(app, s.id, '/slow 500 one')
  await send(app, s.id, '/crash boom')
  await send(app, s.id, 'queued')
  await waitEvents(app, s.id, 'the first turn to start', (f) => f.some(isInit))
  const pid = await recordedPid(config, s.id)
  await waitStateEvent(app, s.id, 'suspended')
  const suspended = await getSession(app, s.id)
  await waitUntil('the crashed agent to be reaped', async () => (await procStat(pid!)) === undefined, { timeoutMs: 2_000 })
  t.pass('the crashed agent was reaped: no zombie')
  t.match(suspended.lastError, /exit code 3/, 'lastError says how it ended')
  t.notOk(app.agents.isLive(s.id))
  t.same(await markedPids(s.id), [], 'no process left')
  const story = await allEvents(app, s.id)
  const fromCrash = kinds(story.slice(story.findIndex((f) => isResult(f)) + 1))
  t.same(fromCrash, [
    'agent:system/init',
    'agent:assistant',
    'agent:unparsed',
    'error:AGENT_CRASHED',
    'state:active->suspended(crash)'
  ], 'what the agent streamed before it died is persisted, the cut-off line included, then the error')
  t.ok(story.some((f) => f.type === 'agent' && f.data.message?.content?.[0]?.text === 'partial: boom'), 'the partial reply is kept')
  t.ok(story.some((f) => f.type === 'agent' && f.data.type === 'unparsed' && String(f.data.line).includes('cut o')), 'the cut-off line is kept')
  t.equal(replies(story).length, 1, 'the queued message was not delivered: nothing starts on its own')

  const last = story.at(-1)!.seq
  await send(app, s.id, 'next')
  const resumed = await waitResults(app, s.id, 3)
  t.same(kinds(after(resumed, last)).slice(0, 3), ['user:next', 'status:Resuming session…', 'state:suspended->active(message)'])
  t.same(replies(resumed), [
    'echo: one',
    'echo: queued | remembered: one / boom',
    'echo: next | remembered: one / boom / queued'
  ], 'the queued message first; the crashed one is remembered once, not sent again')
  t.equal(userTexts(resumed).filter((x) => x === '/crash boom').length, 1, 'the crashed message appears once')
  const fine = await waitSession(app, s.id, 'the turns accounted', (x) => x.usage.turns === 3 && !x.busy)
  t.equal(fine.lastError, null, 'a turn that ran clears lastError')
})

t.test('three crashes in a row fail the session', async (t) => {
  const s = await newSession()
  for (const n of [1, 2, 3]) {
    await send(app, s.id, `/crash c${n}`)
    await waitEvents(app, s.id, `crash ${n} and its state event`,
      (f) => f.filter((x) => x.type === 'state' && x.data.reason === 'crash').length >= n)
  }
  const frames = await allEvents(app, s.id)
  const errors = frames.filter((f) => f.type === 'error')
  t.same(errors.map((e) => e.data.code), ['AGENT_CRASHED', 'AGENT_CRASHED', 'AGENT_CRASHED'])
  t.match(errors[2]!.data.message, /3 times/)
  t.match(frames.at(-1)!.data, { from: 'active', to: 'failed', reason: 'crash' })
  const failed = await getSession(app, s.id)
  t.equal(failed.state, 'failed')
  t.ok(failed.lastError)
  t.same(await markedPids(s.id), [], 'no process left')
  t.equal((await call(app, 'POST', `/v1/sessions/${s.id}/messages`, { text: 'more' })).status, 409, 'a failed session takes no messages')
})

t.test('a turn that completes resets the crash count', async (t) => {
  const s = await newSession()
  for (const text of ['/crash c1', 'fine', '/crash c2', '/crash c3']) {
    const n = (await allEvents(app, s.id)).filter((f) => f.type === 'state' && f.data.to === 'suspended').length
    await send(app, s.id, text)
    if (text.startsWith('/crash')) await waitEvents(app, s.id, `${text} handled`, (f) => f.filter((x) => x.type === 'state' && x.data.to === 'suspended').length > n)
    else await waitResults(app, s.id, 1)
  }
  const session = await getSession(app, s.id)
  t.equal(session.state, 'suspended', 'two crashes in a row since the last good turn: still resumable')
  t.same((await allEvents(app, s.id)).filter((f) => f.type === 'error').map((f) => f.data.message.includes('has failed')), [false, false, false])
})

t.test('an agent killed from outside while idle: error event, suspended, resumable', async (t) => {
  const s = await newSession()
  await send(app, s.id, 'before')
  await waitResults(app, s.id, 1)
  const pid = await recordedPid(config, s.id)
  t.ok(pid && await isRunning(pid))
  process.kill(pid!, 'SIGKILL')
  const { frames } = await waitStateEvent(app, s.id, 'suspended')
  t.same(kinds(frames).slice(-2), ['error:AGENT_CRASHED', 'state:active->suspended(crash)'])
  const session = await getSession(app, s.id)
  t.match(session.lastError, /SIGKILL/)
  t.equal(session.busy, false)
  t.notOk(app.agents.isLive(s.id))
  await send(app, s.id, 'after')
  t.equal(replies(await waitResults(app, s.id, 2))[1], 'echo: after | remembered: before', 'resumed with memory')
})

t.test('restart', async (t) => {
  await t.test('of a pending or paused session: 409', async (t) => {
    const s = await newSession()
    const res = await call(app, 'POST', `/v1/sessions/${s.id}/restart`)
    t.equal(res.status, 409)
    await transition(app, s.id, 'active')
    await call(app, 'POST', `/v1/sessions/${s.id}/pause`)
    t.equal((await call(app, 'POST', `/v1/sessions/${s.id}/restart`)).status, 409)
  })
  await t.test('of an active session with a live agent: the agent stops, the next message starts a fresh conversation', async (t) => {
    const s = await newSession()
    await send(app, s.id, 'old')
    await waitResults(app, s.id, 1)
    const pid = await recordedPid(config, s.id)
    const res = await call(app, 'POST', `/v1/sessions/${s.id}/restart`)
    t.equal(res.status, 200)
    t.equal(res.body.state, 'active')
    t.equal(res.body.agentSessionId, null, 'the old conversation is forgotten')
    await waitGone(pid!, 'the old agent to stop')
    await send(app, s.id, 'new')
    const frames = await waitResults(app, s.id, 2)
    t.same(replies(frames), ['echo: old', 'echo: new'], 'the new conversation does not remember the old one')
    const inits = frames.filter(isInit).map((f) => f.data.session_id)
    t.not(inits[1], inits[0], 'a new agent session id')
    t.equal((await getSession(app, s.id)).agentSessionId, inits[1])
  })
})

t.test('pause of a busy session interrupts the turn, stops the agent, keeps the queue', async (t) => {
  const s = await newSession()
  await send(app, s.id, '/slow 3000 long')
  await waitEvents(app, s.id, 'the turn\'s system/init', (f) => f.some(isInit))
  const pid = await recordedPid(config, s.id)
  await send(app, s.id, 'queued')
  const startedAt = Date.now()
  const paused = await call(app, 'POST', `/v1/sessions/${s.id}/pause`)
  const took = Date.now() - startedAt
  t.equal(paused.status, 200)
  t.ok(took < 2500, `the turn was interrupted, not waited for (${took} ms)`)
  t.equal(paused.body.data.agentSessionId, (await allEvents(app, s.id)).find(isInit)!.data.session_id, 'the snapshot holds the conversation id')
  t.notOk(app.agents.isLive(s.id), 'no live agent once the pause returned')
  t.notOk(pid && await isRunning(pid), 'the process is gone')
  const { event } = await waitStateEvent(app, s.id, 'paused')
  const frames = await waitEvents(app, s.id, 'the interrupted turn\'s result', (f) => results(f).length > 0)
  const result = results(frames)[0]
  t.match(result?.data, { type: 'result', subtype: 'error_during_execution', is_error: true }, 'the interrupted turn\'s result')
  t.ok(result && result.seq > event.seq, 'after the state event: the pause is written first, then the turn is interrupted')
  t.match(event.data, { from: 'active', to: 'paused', actor: 'user' }, 'state paused')
  t.equal(replies(frames).length, 0, 'the queued message was not delivered')
  const session = await getSession(app, s.id)
  t.equal(session.state, 'paused')
  t.equal(session.busy, false)

  const resumed = await call(app, 'POST', `/v1/sessions/${s.id}/resume`)
  t.equal(resumed.status, 200)
  t.equal(resumed.body.state, 'active')
  // the kept message is delivered after the resume without another message from the user
  const delivered = await waitEvents(app, s.id, 'the kept message answered', (f) => replies(f).length >= 1)
  t.same(replies(delivered), ['echo: queued | remembered: long'], 'the kept message, in the same conversation')
  await send(app, s.id, 'after')
  const done = await waitEvents(app, s.id, 'two replies', (f) => replies(f).length >= 2)
  t.same(replies(done), ['echo: queued | remembered: long', 'echo: after | remembered: long / queued'],
    'then the next one, in order')
})

t.test('the resume of a paused session with nothing kept starts nothing', async (t) => {
  const s = await newSession()
  await send(app, s.id, 'hello')
  await waitEvents(app, s.id, 'the reply', (f) => replies(f).length >= 1)
  t.equal((await call(app, 'POST', `/v1/sessions/${s.id}/pause`)).status, 200)
  t.notOk(app.agents.isLive(s.id))
  t.equal((await call(app, 'POST', `/v1/sessions/${s.id}/resume`)).status, 200)
  const paused = await waitStateEvent(app, s.id, 'paused')
  await waitStateEvent(app, s.id, 'active', { afterSeq: paused.event.seq! })
  await app.events.flush()
  t.notOk(app.agents.isLive(s.id), 'no agent started')
  t.equal(await recordedPid(config, s.id), undefined, 'no process recorded')
  await send(app, s.id, 'next')
  const done = await waitEvents(app, s.id, 'the next reply', (f) => replies(f).length >= 2)
  t.same(replies(done).at(-1), 'echo: next | remembered: hello', 'the next message resumes the conversation')
})

/**
 * The app of this file runs its agents in the sandbox when bwrap works here (AGENT_SANDBOX=auto);
 * the subtests whose claims hold in both modes, with different means, also run with one whose
 * agents are unconfined (built on first use).
 */
let unconfined: Awaited<ReturnType<typeof build>> | undefined
async function appsByMode (): Promise<Array<{ mode: 'bwrap' | 'none', app: typeof app, config: typeof config }>> {
  const apps = [{ mode: app.agents.sandbox, app, config }]
  if (app.agents.sandbox === 'none') return apps
  unconfined ??= await build(t, {
    env: agentEnv({ AGENT_SANDBOX: 'none', AGENT_ENV_PASSTHROUGH: 'ANTHROPIC_API_KEY,MOBVIBE_TEST_PASSED' })
  })
  return [...apps, { mode: 'none', app: unconfined.app, config: unconfined.config }]
}

t.test('grandchildren in their own session do not outlive the agent', async (t) => {
  // Unconfined, the stop sequence finds the escaped `sleep` by the session's marker; in the
  // sandbox, the PID namespace ends it with the agent. Either way nothing may be left.
  for (const { mode, app, config } of await appsByMode()) {
    const stops: Array<[string, (id: string) => Promise<{ status: number }>]> = [
      ['suspend', (id) => transition(app, id, 'suspended')],
      ['pause', (id) => call(app, 'POST', `/v1/sessions/${id}/pause`)],
      ['delete', (id) => call(app, 'DELETE', `/v1/sessions/${id}`)]
    ]
    for (const [what, stop] of stops) {
      await t.test(`${mode}: ${what}`, async (t) => {
        const s = await createSession(app)
        sessionIds.push(s.id)
        await send(app, s.id, '/grandchild gc')
        const reply = replies(await waitResults(app, s.id, 1))[0]!
        // the pid the agent reports is its namespace's under bwrap: the host's is found by the marker
        const gc = await hostPidOf(s.id, grandchildPid(reply))
        t.ok(gc, `the grandchild runs on the host, marked (reported as ${grandchildPid(reply)})`)
        strayPids.push(gc!)
        if (mode === 'none') t.equal(gc, grandchildPid(reply), 'unconfined, the reported pid is the host\'s')
        t.equal(await cmdlineOf(gc!), 'sleep 600', 'it is the detached sleep')
        const sid = (await readFile(`/proc/${gc}/stat`, 'utf8')).split(') ')[1]!.split(' ')[3]
        t.equal(Number(sid), gc, 'in a session of its own (setsid), out of reach of a group kill')
        const agent = await recordedPid(config, s.id)
        const res = await stop(s.id)
        t.ok(res.status < 300, `${what}: ${res.status}`)
        await waitGone(gc!, 'the grandchild to end', 5_000)
        t.notOk(agent && await isRunning(agent), 'the agent is gone')
        t.same(await markedPids(s.id), [], 'nothing of the session runs')
      })
    }
  }
})

t.test('the agent gets an allow-listed environment and runs in the session\'s workdir', async (t) => {
  for (const { mode, app, config } of await appsByMode()) {
    await t.test(mode, async (t) => {
      const s = await createSession(app)
      sessionIds.push(s.id)
      await send(app, s.id, 'env')
      await waitResults(app, s.id, 1)
      const pid = await recordedPid(config, s.id)
      t.ok(pid, 'the agent\'s pid is recorded')
      t.same(await agentRoots(s.id), [pid], 'one agent, the recorded pid its root')
      // the CLI: the recorded process itself unconfined; under bwrap, bwrap → bwrap (init) → the CLI
      const marked = await markedPids(s.id)
      let cli = pid!
      if (mode === 'bwrap') {
        t.equal(marked.length, 3, 'under bwrap: bwrap, bwrap as init, the CLI')
        const childOf = async (parent: number) => {
          const found = []
          for (const p of marked) if ((await procStat(p))?.ppid === parent) found.push(p)
          return found
        }
        const [init] = await childOf(pid!)
        t.ok(init, 'bwrap\'s child, the init of the namespace')
        const [inner] = await childOf(init!)
        t.ok(inner, 'and its child, the CLI')
        cli = inner!
        t.match(await cmdlineOf(pid!), /^\S*\/bwrap /, 'the recorded pid is bwrap\'s')
      } else {
        t.same(marked, [pid], 'the recorded pid is the one process with the marker')
      }
      t.match(await cmdlineOf(cli), /fake-claude\.mjs/, `the CLI: ${await cmdlineOf(cli)}`)
      const env = await environOf(cli)
      const stateDir = agentStateDir(config.agent.configDir, TEST_USER, s.id)
      t.equal(env.get('MOBVIBE_AGENT_SESSION'), s.id, 'the session marker')
      t.equal(env.get('MOBVIBE_AGENT_HOME'), config.dataDir, 'the instance marker: its data directory')
      t.equal(env.get('CLAUDE_CONFIG_DIR'), stateDir, 'the session\'s own state dir')
      if (mode === 'bwrap') {
        t.equal(env.get('HOME'), await realpath(stateDir), 'HOME: the state dir (the service user\'s home is hidden)')
        t.equal(env.get('CLAUDE_CODE_TMPDIR'), '/tmp', 'the temp dir: /tmp inside')
      } else {
        t.equal(env.get('HOME'), process.env.HOME, 'HOME: the service\'s')
        t.equal(env.get('CLAUDE_CODE_TMPDIR'), join(config.dataDir, 'tmp', s.id), 'the session\'s temp dir')
      }
      t.equal(env.get('ANTHROPIC_API_KEY'), 'sk-test-agent-key', 'a passthrough variable')
      t.equal(env.get('MOBVIBE_TEST_PASSED'), 'passed-on', 'another passthrough variable')
      t.notOk(env.has('MOBVIBE_TEST_SECRET'), 'not what is not listed')
      t.notOk(env.has('DATABASE_URL'), 'not DATABASE_URL')
      const settings = Object.keys(EnvSchema.properties).filter((name) => name !== 'CLAUDE_CONFIG_DIR')
      t.same(settings.filter((name) => env.has(name)), [], 'no service setting')
      const allowed = new Set(['PATH', 'HOME', 'LANG', 'CLAUDE_CONFIG_DIR', 'CLAUDE_CODE_TMPDIR', 'CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC',
        'DISABLE_AUTOUPDATER', 'MOBVIBE_AGENT_SESSION', 'MOBVIBE_AGENT_HOME', 'ANTHROPIC_API_KEY', 'MOBVIBE_TEST_PASSED'])
      // tap's process-info hook patches child_process.spawn and adds these to every child's environment
      const harness = (e: Map<string, string>, k: string) => k.startsWith('_TAPJS_PROCESSINFO_') || (k === 'NODE_OPTIONS' && e.get(k)!.includes('@tapjs/processinfo'))
      const beyond = (e: Map<string, string>) => [...e.keys()].filter((k) => !allowed.has(k) && !harness(e, k))
      t.same(beyond(await environOf(pid!)), [], 'the service gives nothing beyond the allow-list')
      const workdir = await realpath(s.workdir)
      if (mode === 'bwrap') {
        // bwrap's --chdir sets PWD for what it runs, to the directory it moved to
        t.same(beyond(env), ['PWD'], 'the CLI: nothing beyond the allow-list but the PWD bwrap sets')
        // tap's process-info hook adds its NODE_OPTIONS to the spawn of bwrap, as APM preloaders do
        t.notOk(env.has('NODE_OPTIONS'), 'no NODE_OPTIONS reaches the CLI: a preload of the service is not the agent\'s')
        t.equal(env.get('PWD'), workdir, 'PWD: the workdir')
      } else {
        t.same(beyond(env), [], 'the CLI: nothing beyond the allow-list')
      }
      t.equal(await cwdOf(cli), workdir, 'cwd is the session\'s workdir')
    })
  }
})

t.test('a first start that cannot spawn fails the pending session', async (t) => {
  const s = await newSession()
  // the working directory vanished: the spawn itself fails
  await rm(s.workdir, { recursive: true, force: true })
  await send(app, s.id, 'hello')
  const { frames } = await waitStateEvent(app, s.id, 'failed')
  const failed = await getSession(app, s.id)
  t.equal(failed.state, 'failed')
  t.ok(failed.lastError, `lastError: ${failed.lastError}`)
  const error = frames.find((f) => f.type === 'error')
  t.equal(error?.data.code, 'AGENT_START_FAILED')
  t.match(frames.at(-1)!.data, { from: 'active', to: 'failed', reason: 'start failed' })
  t.notOk(app.agents.isLive(s.id))
})

t.test('a first start that exits before init fails the pending session', async (t) => {
  const { app: failing } = await build(t, { env: agentEnv({ AGENT_ENV_PASSTHROUGH: 'FAKE_CLAUDE_EXIT_BEFORE_INIT' }) })
  const s = await createSession(failing)
  sessionIds.push(s.id)
  await send(failing, s.id, 'hello')
  const { frames } = await waitStateEvent(failing, s.id, 'failed')
  t.same(kinds(frames), ['user:hello', 'state:pending->active(first message)', 'error:AGENT_START_FAILED', 'state:active->failed(start failed)'])
  const failed = await getSession(failing, s.id)
  t.equal(failed.state, 'failed')
  t.match(failed.lastError, /exit code 1.*EXIT_BEFORE_INIT/, 'lastError holds the exit and the stderr tail')
  t.equal(failed.agentSessionId, null, 'no conversation was recorded')
  t.notOk(failing.agents.isLive(s.id))
  t.same(await markedPids(s.id), [])
  t.equal((await call(failing, 'POST', `/v1/sessions/${s.id}/messages`, { text: 'again' })).status, 409, 'a failed session takes no messages')
})

t.test('a CLAUDE_BIN that does not exist fails the first start', async (t) => {
  const { app: missing } = await build(t, { env: agentEnv({ CLAUDE_BIN: '/nonexistent/claude' }) })
  const s = await createSession(missing)
  sessionIds.push(s.id)
  await send(missing, s.id, 'hello')
  const { frames } = await waitStateEvent(missing, s.id, 'failed')
  t.same(kinds(frames), ['user:hello', 'state:pending->active(first message)', 'error:AGENT_START_FAILED', 'state:active->failed(start failed)'])
  const failed = await getSession(missing, s.id)
  t.match(failed.lastError, /ENOENT/)
  t.equal(missing.agents.liveCount, 0)
})
