/**
 * The phone in the loop, through the public API with the fake CLI: the agent's permission asks
 * (can_use_tool) become `permission_request` / `question` events and `pendingPermissions`, the
 * first answer wins (HTTP or a stream frame, 409 after it, 404 for an unknown id), nobody answering
 * denies, an interrupt, a pause or the agent's end cancels; `remember` lets the same tool through
 * for the rest of the session; interrupting a turn keeps the queue; permission modes and models per
 * session, at create and by PATCH to a live agent.
 */
import { existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import WebSocket from 'ws'
import type { AttentionNotice } from '../src/agents/agent-supervisor.js'
import type { SessionView } from '../src/schemas/session.js'
import { call, createSession, getSession } from './helpers/api.js'
import {
  agentEnv,
  isInit,
  kinds,
  markedPids,
  replies,
  results,
  send,
  waitEvents,
  waitSession,
  waitUntil,
  type Frame
} from './helpers/agents.js'
import { build } from './helpers/build.js'

const sessionIds: string[] = []
t.teardown(async () => {
  for (const id of sessionIds) {
    for (const pid of await markedPids(id)) {
      try { process.kill(pid, 'SIGKILL') } catch {}
    }
  }
})

const { app, baseUrl, token } = await build(t, {
  env: agentEnv({ ALLOWED_PERMISSION_MODES: 'default,acceptEdits,plan' }),
  listen: true
})

const notices: AttentionNotice[] = []
app.agents.on('attention', (n) => notices.push(n))

async function newSession (body: Record<string, unknown> = {}): Promise<SessionView> {
  const s = await createSession(app, body)
  sessionIds.push(s.id)
  return s
}

/** The fake's directive for a tool use that needs permission (test/fixtures/fake-claude.mjs). */
const toolUse = (tool: string, input: Record<string, unknown>) => `/tool ${tool} ${JSON.stringify(input)}`
const ask = (questions: unknown[]) => `/ask ${JSON.stringify(questions)}`

const asks = (frames: Frame[]) => frames.filter((f) => f.type === 'permission_request' || f.type === 'question')

async function waitAsk (id: string, n = 1): Promise<Frame> {
  const frames = await waitEvents(app, id, `${n} permission ask(s)`, (f) => asks(f).length >= n)
  return asks(frames)[n - 1]!
}

const transitionTo = (id: string, to: string) => call(app, 'POST', `/v1/sessions/${id}/transitions`, { to })

const answer = (id: string, requestId: string, body: Record<string, unknown>) =>
  call(app, 'POST', `/v1/sessions/${id}/permissions/${encodeURIComponent(requestId)}`, body)

t.test('a tool use waits for the user, who allows it; a second answer is a 409', async (t) => {
  const s = await newSession()
  const sent = await send(app, s.id, toolUse('Write', { file_path: 'notes.txt', content: 'hello' }))
  const request = await waitAsk(s.id)
  t.equal(request.type, 'permission_request')
  t.equal(request.data.toolName, 'Write')
  t.equal(request.data.input.content, 'hello')
  t.match(request.data.input.file_path, /\/notes\.txt$/, 'the path as the CLI resolved it')
  t.type(request.data.requestId, 'string')
  t.ok(request.seq > sent.seq, 'after the message')
  t.ok(Date.parse(request.data.expiresAt) > Date.parse(request.at), 'an expiry in the future')
  // the CLI's control_request line is not stored twice: the event carries it
  const frames = await waitEvents(app, s.id, 'the ask', (f) => f.some((e) => e.seq === request.seq))
  t.notOk(frames.some((f) => f.type === 'agent' && f.data.type === 'control_request'), 'no raw control_request event')

  const waiting = await waitSession(app, s.id, 'the open request on the session', (v) => v.pendingPermissions.length === 1)
  t.equal(waiting.busy, true, 'the turn waits: busy')
  t.match(waiting.pendingPermissions[0], { requestId: request.data.requestId, kind: 'permission', toolName: 'Write', seq: request.seq })
  const listed = await call(app, 'GET', '/v1/sessions?waiting=true')
  t.equal(listed.status, 200)
  t.ok(listed.body.items.some((v: SessionView) => v.id === s.id), '?waiting=true lists it')
  t.ok(listed.body.items.every((v: SessionView) => v.pendingPermissions.length > 0), '?waiting=true lists only waiting sessions')

  const ok = await answer(s.id, request.data.requestId, { decision: 'allow' })
  t.equal(ok.status, 200, JSON.stringify(ok.body))
  t.match(ok.body, { requestId: request.data.requestId, decision: 'allow' })
  const done = await waitEvents(app, s.id, 'the turn\'s result', (f) => results(f).length === 1)
  t.match(replies(done)[0], /^tool Write allowed/, 'the tool ran')
  t.equal(await readFile(join(s.workdir, 'notes.txt'), 'utf8'), 'hello', 'the file was written in the session\'s workdir')
  const response = done.find((f) => f.type === 'permission_response')!
  t.equal(response.seq, ok.body.seq, 'the answer\'s seq is its event')
  t.match(response.data, { requestId: request.data.requestId, decision: 'allow', by: 'user', remember: false })
  t.ok(response.seq < results(done)[0]!.seq, 'the answer is stored before the turn it let go on ends')

  const after = await waitSession(app, s.id, 'idle again', (v) => !v.busy)
  t.same(after.pendingPermissions, [], 'nothing pending')
  const listedAfter = await call(app, 'GET', '/v1/sessions?waiting=true')
  t.notOk(listedAfter.body.items.some((v: SessionView) => v.id === s.id), 'no longer waiting')

  const again = await answer(s.id, request.data.requestId, { decision: 'deny' })
  t.equal(again.status, 409)
  t.match(again.body, { code: 'PERMISSION_REQUEST_CLOSED', requestStatus: 'allowed' })
  t.equal(again.contentType, 'application/problem+json')

  const unknown = await answer(s.id, 'no-such-request', { decision: 'allow' })
  t.equal(unknown.status, 404)
  t.equal(unknown.body.code, 'PERMISSION_REQUEST_NOT_FOUND')

  const kindsSeen = notices.filter((n) => n.sessionId === s.id).map((n) => n.kind)
  t.same(kindsSeen, ['permission_request', 'turn_ended'], 'attention: the ask, then the turn\'s end')
})

t.test('a denied tool use tells the agent why, and the turn goes on', async (t) => {
  const s = await newSession()
  await send(app, s.id, toolUse('Bash', { command: 'rm -rf build' }))
  const request = await waitAsk(s.id)
  const res = await answer(s.id, request.data.requestId, { decision: 'deny', message: 'not the build directory' })
  t.equal(res.status, 200)
  const done = await waitEvents(app, s.id, 'the result', (f) => results(f).length === 1)
  t.match(replies(done)[0], /denied: not the build directory/)
  await send(app, s.id, toolUse('Write', { file_path: 'denied.txt', content: 'no' }))
  const second = await waitAsk(s.id, 2)
  t.equal((await answer(s.id, second.data.requestId, { decision: 'deny' })).status, 200)
  const after = await waitEvents(app, s.id, 'the second result', (f) => results(f).length === 2)
  t.match(replies(after)[1], /denied: The user denied this tool use\./, 'a deny without a message tells the agent so')
  t.notOk(existsSync(join(s.workdir, 'denied.txt')), 'a denied write wrote nothing')
  t.match(done.find((f) => f.type === 'permission_response')?.data, { decision: 'deny', message: 'not the build directory', by: 'user' })
})

t.test('two answers at once: exactly one wins', async (t) => {
  const s = await newSession()
  await send(app, s.id, toolUse('Bash', { command: 'make' }))
  const request = await waitAsk(s.id)
  const answers = await Promise.all([
    answer(s.id, request.data.requestId, { decision: 'allow' }),
    answer(s.id, request.data.requestId, { decision: 'deny', message: 'no' }),
    answer(s.id, request.data.requestId, { decision: 'allow' })
  ])
  t.same(answers.map((a) => a.status).sort(), [200, 409, 409], JSON.stringify(answers.map((a) => a.body)))
  const done = await waitEvents(app, s.id, 'the result', (f) => results(f).length === 1)
  t.equal(done.filter((f) => f.type === 'permission_response').length, 1, 'one answer stored')
  const winner = answers.find((a) => a.status === 200)!.body.decision
  t.match(replies(done)[0], winner === 'allow' ? /allowed/ : /denied: no/, 'the winner is the one the agent got')
})

t.test('bad answers are 400s that change nothing', async (t) => {
  const s = await newSession()
  await send(app, s.id, toolUse('Bash', { command: 'ls' }))
  const request = await waitAsk(s.id)
  const bad = [
    {},
    { decision: 'maybe' },
    { decision: 'allow', extra: true },
    { decision: 'allow', updatedInput: 'rm -rf /' },
    { decision: 'allow', answers: { 'Which?': 'that' } }
  ]
  for (const body of bad) {
    const res = await answer(s.id, request.data.requestId, body)
    t.equal(res.status, 400, JSON.stringify(body))
    t.equal(res.contentType, 'application/problem+json')
  }
  t.equal((await answer(s.id, request.data.requestId, { decision: 'allow', answers: { 'Which?': 'that' } })).body.code, 'INVALID_PERMISSION_ANSWER')
  const still = await getSession(app, s.id)
  t.equal(still.pendingPermissions.length, 1, 'still open')
  t.equal((await answer(s.id, request.data.requestId, { decision: 'allow', updatedInput: { command: 'ls -la' } })).status, 200)
  const done = await waitEvents(app, s.id, 'the result', (f) => results(f).length === 1)
  t.match(replies(done)[0], /ls -la/, 'the changed input is what ran')
})

t.test('nobody answers: denied at the timeout, the turn goes on, a late answer is a 409', async (t) => {
  const s = await newSession({ permissionTimeoutSeconds: 1 })
  t.equal(s.permissionTimeoutSeconds, 1)
  await send(app, s.id, toolUse('Bash', { command: 'deploy' }))
  const request = await waitAsk(s.id)
  const done = await waitEvents(app, s.id, 'the result', (f) => results(f).length === 1)
  const response = done.find((f) => f.type === 'permission_response')!
  t.match(response.data, { decision: 'deny', by: 'timeout' })
  t.match(response.data.message, /within 1 s/)
  t.match(replies(done)[0], /denied: Nobody answered/)
  const late = await answer(s.id, request.data.requestId, { decision: 'allow' })
  t.equal(late.status, 409)
  t.equal(late.body.requestStatus, 'timed_out')
})

t.test('a waiting ask keeps the session from idling out', async (t) => {
  const s = await newSession({ idleTimeoutSeconds: 1 })
  await send(app, s.id, toolUse('Bash', { command: 'sleep' }))
  const request = await waitAsk(s.id)
  // two idle timeouts' worth of sweeps (every 50 ms) pass while it waits: still active and busy
  const first = await getSession(app, s.id)
  await waitUntil('two idle timeouts to pass', () => Date.now() - Date.parse(first.lastActivityAt ?? first.createdAt) > 2200)
  const v = await getSession(app, s.id)
  t.equal(v.state, 'active')
  t.equal(v.busy, true)
  t.equal((await answer(s.id, request.data.requestId, { decision: 'allow' })).status, 200)
  await waitEvents(app, s.id, 'the result', (f) => results(f).length === 1)
})

t.test('an interrupt ends the waiting turn and cancels its ask; a late answer is a 409', async (t) => {
  const s = await newSession()
  await send(app, s.id, toolUse('Bash', { command: 'make' }))
  const request = await waitAsk(s.id)
  const res = await call(app, 'POST', `/v1/sessions/${s.id}/interrupt`, {})
  t.equal(res.status, 200)
  t.same(res.body, { interrupted: true })
  const frames = await waitEvents(app, s.id, 'the interrupted result', (f) => results(f).length === 1)
  const cancelled = frames.find((f) => f.type === 'permission_cancelled')
  t.match(cancelled?.data, { requestIds: [request.data.requestId], reason: 'interrupt' })
  t.equal(results(frames)[0]!.data.is_error, true, 'the turn ended interrupted')
  const v = await waitSession(app, s.id, 'idle', (x) => !x.busy)
  t.equal(v.state, 'active', 'the session stays active')
  t.same(v.pendingPermissions, [])
  const late = await answer(s.id, request.data.requestId, { decision: 'allow' })
  t.equal(late.status, 409)
  t.equal(late.body.requestStatus, 'cancelled')
})

t.test('a pause cancels the waiting ask', async (t) => {
  const s = await newSession()
  await send(app, s.id, toolUse('Bash', { command: 'make' }))
  const request = await waitAsk(s.id)
  const paused = await call(app, 'POST', `/v1/sessions/${s.id}/pause`, {})
  t.equal(paused.status, 200)
  const frames = await waitEvents(app, s.id, 'the cancellation', (f) => f.some((e) => e.type === 'permission_cancelled'))
  t.match(frames.find((f) => f.type === 'permission_cancelled')?.data, { requestIds: [request.data.requestId], reason: 'pause' })
  t.equal((await answer(s.id, request.data.requestId, { decision: 'allow' })).status, 409)
  t.same((await getSession(app, s.id)).pendingPermissions, [])
})

t.test('the agent\'s crash cancels its waiting ask', async (t) => {
  const s = await newSession()
  await send(app, s.id, toolUse('Bash', { command: 'make' }))
  const request = await waitAsk(s.id)
  const pids = await markedPids(s.id)
  t.ok(pids.length > 0, 'the agent runs')
  // in the sandbox, the wrapper and the agent: the first kill may take the other with it
  for (const pid of pids) {
    try { process.kill(pid, 'SIGKILL') } catch {}
  }
  const frames = await waitEvents(app, s.id, 'the cancellation and the crash\'s error',
    (f) => f.some((e) => e.type === 'permission_cancelled') && f.some((e) => e.type === 'error'))
  t.match(frames.find((f) => f.type === 'permission_cancelled')?.data, { requestIds: [request.data.requestId], reason: 'crash' })
  t.equal(frames.find((f) => f.type === 'error')?.data.code, 'AGENT_CRASHED', 'the crash is told')
  const late = await answer(s.id, request.data.requestId, { decision: 'allow' })
  t.equal(late.status, 409)
  t.equal(late.body.requestStatus, 'cancelled')
  t.same((await waitSession(app, s.id, 'not busy', (v) => !v.busy)).pendingPermissions, [])
})

t.test('remember: the same tool is not asked again in this session', async (t) => {
  const s = await newSession()
  await send(app, s.id, toolUse('Bash', { command: 'npm test' }))
  const request = await waitAsk(s.id)
  t.ok(Array.isArray(request.data.suggestions), 'the CLI\'s suggestions are on the event')
  t.equal((await answer(s.id, request.data.requestId, { decision: 'allow', remember: true })).status, 200)
  await waitEvents(app, s.id, 'the first result', (f) => results(f).length === 1)
  await send(app, s.id, toolUse('Bash', { command: 'npm test' }))
  const frames = await waitEvents(app, s.id, 'the second result', (f) => results(f).length === 2)
  t.equal(asks(frames).length, 1, 'asked once only')
  t.match(replies(frames)[1], /allowed/)
  t.match(frames.find((f) => f.type === 'permission_response')?.data, { remember: true })
})

t.test('a question is answered with the user\'s choices', async (t) => {
  const s = await newSession()
  const questions = [{ question: 'Which runner?', header: 'Tests', options: [{ label: 'tap', description: 'node-tap' }, { label: 'vitest', description: 'Vitest' }], multiSelect: false }]
  await send(app, s.id, ask(questions))
  const q = await waitAsk(s.id)
  t.equal(q.type, 'question')
  t.same(q.data.questions, questions)
  const v = await waitSession(app, s.id, 'the open question', (x) => x.pendingPermissions.length === 1)
  t.equal(v.pendingPermissions[0]!.kind, 'question')
  const without = await answer(s.id, q.data.requestId, { decision: 'allow' })
  t.equal(without.status, 400)
  t.equal(without.body.code, 'INVALID_PERMISSION_ANSWER')
  const wrong = await answer(s.id, q.data.requestId, { decision: 'allow', answers: { 'Which database?': 'pg' } })
  t.equal(wrong.status, 400)
  const res = await answer(s.id, q.data.requestId, { decision: 'allow', answers: { 'Which runner?': 'tap' } })
  t.equal(res.status, 200)
  const done = await waitEvents(app, s.id, 'the result', (f) => results(f).length === 1)
  t.match(replies(done)[0], /tap/, 'the agent got the answer')
  t.same(done.find((f) => f.type === 'permission_response')?.data.answers, { 'Which runner?': 'tap' })
})

/** A stream client that collects events and replies. */
async function openStream (id: string) {
  const ws = new WebSocket(`${baseUrl.replace('http', 'ws')}/v1/sessions/${id}/stream`, { headers: { authorization: `Bearer ${token}` } })
  const events: Frame[] = []
  const replies: Record<string, unknown>[] = []
  const waiters = new Set<() => void>()
  ws.on('message', (data) => {
    const frame = JSON.parse(String(data)) as Record<string, unknown>
    if (typeof frame.seq === 'number') events.push(frame as unknown as Frame)
    else replies.push(frame)
    for (const w of [...waiters]) w()
  })
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject) })
  const until = (cond: () => boolean, what: string) => new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { waiters.delete(check); reject(new Error(`timed out waiting for ${what}: ${JSON.stringify(kinds(events))}`)) }, 15_000)
    const check = () => { if (cond()) { clearTimeout(timer); waiters.delete(check); resolve() } }
    waiters.add(check)
    check()
  })
  const request = async (frame: Record<string, unknown>) => {
    const n = replies.length
    ws.send(JSON.stringify(frame))
    await until(() => replies.length > n, `a reply to ${JSON.stringify(frame)}`)
    return replies[n]!
  }
  return { ws, events, until, request }
}

t.test('answers and interrupts as stream frames', async (t) => {
  const s = await newSession()
  const stream = await openStream(s.id)
  t.teardown(() => stream.ws.close())
  const ack = await stream.request({ type: 'message', text: toolUse('Bash', { command: 'make' }) })
  t.equal(ack.type, 'ack')
  await stream.until(() => stream.events.some((e) => e.type === 'permission_request'), 'the ask on the stream')
  const request = stream.events.find((e) => e.type === 'permission_request')!
  const reply = await stream.request({ type: 'permission', requestId: request.data.requestId, decision: 'allow' })
  t.match(reply, { type: 'permission', requestId: request.data.requestId, decision: 'allow' })
  t.type(reply.responseSeq, 'number')
  await stream.until(() => stream.events.some((e) => e.seq === reply.responseSeq && e.type === 'permission_response'), 'the response event')
  const again = await stream.request({ type: 'permission', requestId: request.data.requestId, decision: 'deny' })
  t.match(again, { type: 'error', code: 'PERMISSION_REQUEST_CLOSED', requestId: request.data.requestId })
  const malformed = await stream.request({ type: 'permission', requestId: request.data.requestId })
  t.match(malformed, { type: 'error', code: 'INVALID_FRAME' })
  await stream.until(() => stream.events.some((e) => isResultFrame(e)), 'the result')

  // an interrupt frame on a running turn
  await stream.request({ type: 'message', text: '/slow 20000 long' })
  await stream.until(() => stream.events.filter(isInit).length === 2, 'the second turn\'s start')
  const interrupted = await stream.request({ type: 'interrupt' })
  t.same(interrupted, { type: 'interrupt', interrupted: true })
  await stream.until(() => stream.events.filter(isResultFrame).length === 2, 'the interrupted result')
  const idle = await stream.request({ type: 'interrupt' })
  t.same(idle, { type: 'interrupt', interrupted: false }, 'nothing to interrupt: harmless')
})

const isResultFrame = (f: Frame) => f.type === 'agent' && f.data.type === 'result'

t.test('an interrupt keeps the queue until the next message, in order', async (t) => {
  const s = await newSession()
  await send(app, s.id, '/slow 20000 first')
  await waitEvents(app, s.id, 'the first turn', (f) => f.some(isInit))
  await send(app, s.id, 'second')
  const res = await call(app, 'POST', `/v1/sessions/${s.id}/interrupt`, {})
  t.same(res.body, { interrupted: true })
  const v = await waitSession(app, s.id, 'idle', (x) => !x.busy)
  t.equal(v.state, 'active')
  // the queued message waits: the next message lets both go, the older first
  await send(app, s.id, 'third')
  const frames = await waitEvents(app, s.id, 'three results', (f) => results(f).length === 3)
  t.same(replies(frames).slice(-2).map((r) => r.split(' | ')[0]), ['echo: second', 'echo: third'], 'in order')
  t.equal(results(frames)[0]!.data.is_error, true, 'the first was interrupted')
})

t.test('an interrupt with deliverQueued goes on with the queue at once', async (t) => {
  const s = await newSession()
  await send(app, s.id, '/slow 20000 first')
  await waitEvents(app, s.id, 'the first turn', (f) => f.some(isInit))
  await send(app, s.id, 'second')
  const res = await call(app, 'POST', `/v1/sessions/${s.id}/interrupt`, { deliverQueued: true })
  t.same(res.body, { interrupted: true })
  const frames = await waitEvents(app, s.id, 'two results', (f) => results(f).length === 2)
  t.match(replies(frames)[0], /^echo: second/)
})

t.test('a retry of a held message, or a restart, lets the held queue go', async (t) => {
  const s = await newSession()
  await send(app, s.id, '/slow 20000 first')
  await waitEvents(app, s.id, 'the first turn', (f) => f.some(isInit))
  await send(app, s.id, 'second', 'cm-second')
  t.same((await call(app, 'POST', `/v1/sessions/${s.id}/interrupt`, {})).body, { interrupted: true })
  await waitSession(app, s.id, 'idle', (x) => !x.busy)
  // the phone did not see its ack and sends the same message again: stored once, and it goes
  const retry = await send(app, s.id, 'second', 'cm-second')
  t.equal(retry.duplicate, true)
  let frames = await waitEvents(app, s.id, 'the held message\'s turn', (f) => results(f).length === 2)
  t.match(replies(frames)[0], /^echo: second/)

  await send(app, s.id, '/slow 20000 third')
  await waitEvents(app, s.id, 'the third turn', (f) => f.filter(isInit).length === 3)
  await send(app, s.id, 'fourth')
  t.same((await call(app, 'POST', `/v1/sessions/${s.id}/interrupt`, {})).body, { interrupted: true })
  const restarted = await call(app, 'POST', `/v1/sessions/${s.id}/restart`, {})
  t.equal(restarted.status, 200)
  frames = await waitEvents(app, s.id, 'the held message after the restart', (f) => replies(f).some((r) => r.startsWith('echo: fourth')))
  t.ok(frames.some((f) => f.type === 'status' && f.data.message === 'Starting a fresh conversation…'))
})

t.test('a PATCH while the agent waits for a slot is the agent\'s mode when it starts', async (t) => {
  const capped = await build(t, { env: agentEnv({ MAX_LIVE_AGENTS_PER_USER: '1' }) })
  const busy = await createSession(capped.app, {})
  const waiting = await createSession(capped.app, { permissionMode: 'acceptEdits' })
  sessionIds.push(busy.id, waiting.id)
  await send(capped.app, busy.id, '/slow 20000 hold the slot')
  await waitEvents(capped.app, busy.id, 'the busy turn', (f) => f.some(isInit))
  await send(capped.app, waiting.id, 'hello')
  await waitEvents(capped.app, waiting.id, 'the wait for a slot', (f) => f.some((e) => e.type === 'status' && /free agent slot/.test(e.data.message)))
  t.equal((await call(capped.app, 'PATCH', `/v1/sessions/${waiting.id}`, { permissionMode: 'plan', model: 'model-late' })).status, 200)
  await call(capped.app, 'POST', `/v1/sessions/${busy.id}/interrupt`, {})
  const frames = await waitEvents(capped.app, waiting.id, 'its turn', (f) => results(f).length === 1)
  t.match(frames.find(isInit)?.data, { permissionMode: 'plan', model: 'model-late' }, 'started with the settings of now')
})

t.test('interrupting an idle session is harmless; an unknown one is a 404', async (t) => {
  const s = await newSession()
  const res = await call(app, 'POST', `/v1/sessions/${s.id}/interrupt`)
  t.equal(res.status, 200)
  t.same(res.body, { interrupted: false })
  t.equal((await getSession(app, s.id)).state, 'pending', 'nothing changed')
  const unknown = await call(app, 'POST', '/v1/sessions/00000000-0000-4000-8000-000000000000/interrupt', {})
  t.equal(unknown.status, 404)
  const bad = await call(app, 'POST', `/v1/sessions/${s.id}/interrupt`, { deliverQueued: 'yes' })
  t.equal(bad.status, 400)
  t.equal((await transitionTo(s.id, 'completed')).status, 200)
  t.same((await call(app, 'POST', `/v1/sessions/${s.id}/interrupt`, {})).body, { interrupted: false }, 'an ended session: nothing to stop')
})

t.test('permission modes and models per session', async (t) => {
  const refused = await call(app, 'POST', '/v1/sessions', { permissionMode: 'bypassPermissions' })
  t.equal(refused.status, 400)
  t.match(refused.body, { code: 'PERMISSION_MODE_NOT_ALLOWED', allowed: ['default', 'acceptEdits', 'plan'] })
  t.equal((await call(app, 'POST', '/v1/sessions', { permissionMode: 'yolo' })).status, 400)

  const s = await newSession({ permissionMode: 'acceptEdits', model: 'model-one' })
  t.equal(s.permissionMode, 'acceptEdits')
  t.equal(s.model, 'model-one')
  await send(app, s.id, 'hello')
  let frames = await waitEvents(app, s.id, 'the first result', (f) => results(f).length === 1)
  t.match(frames.find(isInit)?.data, { permissionMode: 'acceptEdits', model: 'model-one' }, 'the flags of a start')

  // a live agent gets a change at once
  const patched = await call(app, 'PATCH', `/v1/sessions/${s.id}`, { permissionMode: 'plan', model: 'model-two' })
  t.equal(patched.status, 200)
  t.match(patched.body, { permissionMode: 'plan', model: 'model-two' })
  await send(app, s.id, 'again')
  frames = await waitEvents(app, s.id, 'the second result', (f) => results(f).length === 2)
  t.match(frames.filter(isInit)[1]?.data, { permissionMode: 'plan', model: 'model-two' }, 'the running agent switched')
  const controlReplies = frames.filter((f) => f.type === 'agent' && f.data.type === 'control_response')
  t.ok(controlReplies.length >= 2 && controlReplies.every((f) => f.data.response?.subtype === 'success'), 'the CLI accepted both control requests')

  const notAllowed = await call(app, 'PATCH', `/v1/sessions/${s.id}`, { permissionMode: 'bypassPermissions' })
  t.equal(notAllowed.status, 400)
  t.equal(notAllowed.body.code, 'PERMISSION_MODE_NOT_ALLOWED')
  t.equal((await getSession(app, s.id)).permissionMode, 'plan', 'unchanged')

  // back to the defaults: null
  const reset = await call(app, 'PATCH', `/v1/sessions/${s.id}`, { permissionMode: null, model: null })
  t.match(reset.body, { permissionMode: null, model: null })

  // acceptEdits lets a file edit through without asking (the fake mirrors the CLI)
  const edits = await newSession({ permissionMode: 'acceptEdits' })
  await send(app, edits.id, toolUse('Write', { file_path: 'a.txt', content: 'x' }))
  const done = await waitEvents(app, edits.id, 'the result', (f) => results(f).length === 1)
  t.equal(asks(done).length, 0, 'not asked')
  t.match(replies(done)[0], /allowed/)
})

t.test('the agent\'s command line asks permissions over stdio', async (t) => {
  const s = await newSession()
  await send(app, s.id, '/slow 20000 hold')
  await waitEvents(app, s.id, 'the turn', (f) => f.some(isInit))
  const [pid] = await waitUntil('the agent process', async () => {
    const pids = await markedPids(s.id)
    return pids.length > 0 ? pids : undefined
  })
  const cmdline = (await readFile(join('/proc', String(pid), 'cmdline'), 'utf8')).split('\0')
  const i = cmdline.indexOf('--permission-prompt-tool')
  t.ok(i > 0 && cmdline[i + 1] === 'stdio', cmdline.join(' '))
  await call(app, 'POST', `/v1/sessions/${s.id}/interrupt`, {})
})

t.test('where the operator allows bypassPermissions, a live agent switches to it', async (t) => {
  // as root, the CLI starts with --allow-dangerously-skip-permissions only when IS_SANDBOX=1 reaches it
  const before = process.env.IS_SANDBOX
  process.env.IS_SANDBOX = '1'
  t.teardown(() => { if (before === undefined) delete process.env.IS_SANDBOX; else process.env.IS_SANDBOX = before })
  const bypass = await build(t, { env: agentEnv({ ALLOWED_PERMISSION_MODES: 'default,bypassPermissions', AGENT_ENV_PASSTHROUGH: 'IS_SANDBOX' }) })
  const s = await createSession(bypass.app, {})
  sessionIds.push(s.id)
  await send(bypass.app, s.id, 'hello')
  await waitEvents(bypass.app, s.id, 'the first result', (f) => results(f).length === 1)
  const patched = await call(bypass.app, 'PATCH', `/v1/sessions/${s.id}`, { permissionMode: 'bypassPermissions' })
  t.equal(patched.status, 200)
  await send(bypass.app, s.id, toolUse('Bash', { command: 'make' }))
  const frames = await waitEvents(bypass.app, s.id, 'the second result', (f) => results(f).length === 2)
  const switched = frames.find((f) => f.type === 'agent' && f.data.type === 'control_response' && f.data.response?.response?.mode === 'bypassPermissions')
  t.equal(switched?.data.response.subtype, 'success', 'the CLI took the switch (it was launched able to)')
  t.equal(asks(frames).length, 0, 'nothing asked in bypassPermissions')
  t.match(replies(frames)[1], /allowed/)
  t.notOk(frames.some((f) => f.type === 'status' && /could not/.test(f.data.message)), 'no refusal reported')
})

t.test('a live switch the CLI refuses is told, and applies from the next start', async (t) => {
  // without IS_SANDBOX, a service running as root starts its agents unable to switch to bypassPermissions
  const asRoot = process.getuid?.() === 0
  const bypass = await build(t, { env: agentEnv({ ALLOWED_PERMISSION_MODES: 'default,bypassPermissions' }) })
  const s = await createSession(bypass.app, {})
  sessionIds.push(s.id)
  await send(bypass.app, s.id, 'hello')
  await waitEvents(bypass.app, s.id, 'the first result', (f) => results(f).length === 1)
  t.equal((await call(bypass.app, 'PATCH', `/v1/sessions/${s.id}`, { permissionMode: 'bypassPermissions' })).status, 200)
  await send(bypass.app, s.id, 'again')
  const frames = await waitEvents(bypass.app, s.id, 'the second result', (f) => results(f).length === 2)
  const refusal = frames.find((f) => f.type === 'status' && /could not switch to the permission mode bypassPermissions/.test(f.data.message))
  if (asRoot) {
    t.ok(refusal, 'as root: the refusal is told')
    t.match(refusal?.data.message, /bypass|dangerously/i, 'with the CLI\'s reason')
    t.equal(frames.filter(isInit)[1]?.data.permissionMode, 'default', 'the running agent kept its mode')
  } else {
    t.notOk(refusal, 'not root: the switch is taken')
    t.equal(frames.filter(isInit)[1]?.data.permissionMode, 'bypassPermissions')
  }
  t.equal((await getSession(bypass.app, s.id)).permissionMode, 'bypassPermissions', 'the setting holds for the next start')
})
