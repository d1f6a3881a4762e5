/**
 * The real Claude Code CLI (pinned 2.1.330) asks the phone, through the service, against the fake
 * Anthropic Messages API on 127.0.0.1 scripted to answer with tool uses: an allowed Write (the file
 * is written in the session's working directory), a denied one (nothing written, the model reads
 * the deny message), an answer remembered for the session, a question answered with the user's
 * choice, and interrupts (of a turn waiting for a permission, and of a streaming turn).
 *
 * Not part of `npm test`: scripts/real-claude-integration.sh runs it with CLAUDE_BIN set. Everything
 * goes through the public API (HTTP, and the WebSocket stream for events and one answer); waits are
 * on events with generous bounds. The shapes the CLI speaks are in docs/AGENTS.md ("Permissions,
 * questions, interrupts and control requests").
 */
import { existsSync } from 'node:fs'
import { readFile, realpath } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import type { App } from '../src/app.js'
import { authHeader, call, createSession, getSession } from '../test/helpers/api.js'
import { build } from '../test/helpers/build.js'
import { REPLY_PREFIX, TOOL_RESULT_PREFIX, toolResultsOf } from './fake-anthropic-api.js'
import { PINNED_VERSION, StreamClient, isAgent, startRealClaude, type Frame } from './real-claude-helpers.js'

/** the first run of the 364 MiB binary may be slow to page in; later turns take ~0.3 s */
const WAIT_MS = 60_000
/** how long the service may take to clear `busy` once a turn's result is on the stream */
const SETTLE_MS = 10_000

const isType = (type: string) => (f: Frame) => f.type === type

/** The tool_result blocks of the stored `user` agent lines. */
const toolResultFrames = (frames: Frame[]): any[] => frames.filter(isAgent('user'))
  .flatMap((f) => Array.isArray(f.data.message?.content) ? f.data.message.content : [])
  .filter((b: any) => b?.type === 'tool_result')

/**
 * The session once the service has finished with the turn whose result is on the stream (`busy`
 * is cleared as the result is handled; no event says so, hence a bounded poll).
 */
async function settled (app: App, id: string): Promise<any> {
  const deadline = Date.now() + SETTLE_MS
  let session = await getSession(app, id)
  while (session.busy && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    session = await getSession(app, id)
  }
  return session
}

const useTool = (name: string, input: unknown) => `use-tool ${name} ${JSON.stringify(input)}`

t.test('the real Claude Code CLI asks the phone: approvals, denials, questions, interrupts', async (t) => {
  const real = await startRealClaude(t)
  if (!real) return
  const { bin, api } = real
  const { app, baseUrl } = await build(t, {
    listen: true,
    env: {
      CLAUDE_BIN: bin,
      AGENT_ENV_PASSTHROUGH: 'ANTHROPIC_API_KEY,ANTHROPIC_BASE_URL,CLAUDE_CODE_MAX_RETRIES',
      // no CLAUDE.md or settings from the workspace's parents (see integration/README.md)
      CLAUDE_EXTRA_ARGS: '--setting-sources='
    }
  })

  /** A session in `default` mode (every write is asked), its stream, and its working directory. */
  async function open (t: Test, title: string) {
    const session = await createSession(app, { title, permissionMode: 'default' })
    t.equal(session.permissionMode, 'default')
    const stream = await StreamClient.open(t, baseUrl, session.id, authHeader(app), { timeoutMs: WAIT_MS })
    return { id: session.id, stream, workdir: await realpath(session.workdir) }
  }

  async function send (id: string, text: string): Promise<number> {
    const sent = await call(app, 'POST', `/v1/sessions/${id}/messages`, { text })
    if (sent.status !== 202) throw new Error(`message refused: ${sent.status} ${JSON.stringify(sent.body)}`)
    return sent.body.seq as number
  }

  const answer = (id: string, requestId: string, body: Record<string, unknown>) =>
    call(app, 'POST', `/v1/sessions/${id}/permissions/${requestId}`, body)

  /** The tool_result the CLI sent to the model in the latest Messages request. */
  const lastToolResultToModel = () => toolResultsOf(api.messageRequests().at(-1)!.body)[0]

  await t.test('an allowed Write: asked, approved over HTTP, the file is written in the session\'s working directory', async (t) => {
    const { id, stream, workdir } = await open(t, 'allow')
    const sent = await send(id, useTool('Write', { file_path: 'approved.txt', content: 'written by the real CLI' }))
    const init = await stream.next(isAgent('system', 'init'), 'system/init', sent)
    t.match(init.data, { claude_code_version: PINNED_VERSION, permissionMode: 'default' }, 'the CLI runs in the session\'s mode')
    const asked = await stream.next(isType('permission_request'), 'the permission_request', sent)
    const toolUse = stream.between(sent, asked.seq).filter(isAgent('assistant')).flatMap((f) => f.data.message.content)
      .find((b: any) => b.type === 'tool_use')
    t.match(toolUse, { type: 'tool_use', name: 'Write', id: /^toolu_fake_/ }, 'the model\'s tool_use came first')
    t.match(asked.data, {
      requestId: /\S/,
      toolName: 'Write',
      input: { file_path: join(workdir, 'approved.txt'), content: 'written by the real CLI' },
      toolUseId: toolUse.id,
      suggestions: [{ type: 'setMode', mode: 'acceptEdits', destination: 'session' }],
      expiresAt: /^\d{4}-/
    }, 'the CLI\'s request: the tool, its input (the path made absolute), the suggestions')
    t.notOk(stream.frames.some(isAgent('control_request')), 'the raw control_request line is not stored as agent output')
    const requestId = asked.data.requestId as string

    const waiting = await getSession(app, id)
    t.match(waiting, { state: 'active', busy: true }, 'busy while the CLI waits')
    t.match(waiting.pendingPermissions, [{ requestId, kind: 'permission', toolName: 'Write', seq: asked.seq }], 'the pending request is on the session')
    const listed = await call(app, 'GET', '/v1/sessions?waiting=true')
    t.ok(listed.body.items.some((s: any) => s.id === id), 'the session is listed as waiting for the user')
    t.notOk(existsSync(join(workdir, 'approved.txt')), 'nothing written before the answer')

    const allowed = await answer(id, requestId, { decision: 'allow' })
    t.equal(allowed.status, 200, 'the answer is taken')
    t.match(allowed.body, { requestId, decision: 'allow', seq: Number })
    const response = await stream.next(isType('permission_response'), 'the permission_response', asked.seq)
    t.equal(response.seq, allowed.body.seq, 'the answer\'s seq is its permission_response event')
    t.match(response.data, { requestId, decision: 'allow', remember: false, by: 'user' })
    const result = await stream.next(isAgent('result'), 'the result', asked.seq)
    t.match(toolResultFrames(stream.between(asked.seq, result.seq)), [{ tool_use_id: toolUse.id, content: /^File created successfully at: approved\.txt/ }],
      'the tool ran')
    t.notOk(toolResultFrames(stream.between(asked.seq, result.seq))[0].is_error, 'without error')
    t.match(result.data, { subtype: 'success', is_error: false, result: `${TOOL_RESULT_PREFIX}: File created successfully at: approved.txt`, permission_denials: [] },
      'the model got the tool\'s success')
    t.equal(await readFile(join(workdir, 'approved.txt'), 'utf8'), 'written by the real CLI', 'the file is in the session\'s working directory')
    t.match(lastToolResultToModel(), { tool_use_id: toolUse.id, content: /^File created successfully/ })

    const again = await answer(id, requestId, { decision: 'deny' })
    t.equal(again.status, 409, 'a second answer is refused')
    t.match(again.body, { code: 'PERMISSION_REQUEST_CLOSED' })
    t.match(await settled(app, id), { state: 'active', busy: false, pendingPermissions: [] }, 'active, idle, nothing pending')
    const notWaiting = await call(app, 'GET', '/v1/sessions?waiting=true')
    t.notOk(notWaiting.body.items.some((s: any) => s.id === id), 'no longer listed as waiting')
  })

  await t.test('a denied Write: nothing written, the model reads the deny message', async (t) => {
    const { id, stream, workdir } = await open(t, 'deny')
    const sent = await send(id, useTool('Write', { file_path: 'denied.txt', content: 'must not exist' }))
    const asked = await stream.next(isType('permission_request'), 'the permission_request', sent)
    const message = 'Not in this repository, please.'
    const denied = await answer(id, asked.data.requestId, { decision: 'deny', message })
    t.match(denied, { status: 200, body: { decision: 'deny' } })
    const result = await stream.next(isAgent('result'), 'the result', asked.seq)
    t.match(stream.between(asked.seq, result.seq).find(isType('permission_response'))?.data, { decision: 'deny', message, by: 'user' })
    t.match(toolResultFrames(stream.between(asked.seq, result.seq)), [{ tool_use_id: asked.data.toolUseId, is_error: true, content: message }],
      'the tool_result is the deny message')
    t.match(lastToolResultToModel(), { tool_use_id: asked.data.toolUseId, is_error: true, content: message }, 'the model was sent the message as is')
    t.match(result.data, {
      subtype: 'success', is_error: false, result: `${TOOL_RESULT_PREFIX} (is_error): ${message}`, permission_denials: [{ tool_name: 'Write' }]
    }, 'the turn went on to an ordinary end')
    t.notOk(existsSync(join(workdir, 'denied.txt')), 'the file was not written')
    t.match(await settled(app, id), { state: 'active', busy: false, pendingPermissions: [] })
  })

  await t.test('remember: the same command runs unasked for the rest of the session, another one is asked', async (t) => {
    const { id, stream } = await open(t, 'remember')
    const command = (c: string) => useTool('Bash', { command: c, description: 'run node' })
    const first = await send(id, command('node -e 1'))
    const asked = await stream.next(isType('permission_request'), 'the permission_request', first)
    t.match(asked.data.suggestions, [{ type: 'addRules', rules: [{ toolName: 'Bash', ruleContent: 'node -e 1' }], behavior: 'allow' }])
    t.match(await answer(id, asked.data.requestId, { decision: 'allow', remember: true }), { status: 200 })
    const result1 = await stream.next(isAgent('result'), 'the first result', asked.seq)
    t.match(result1.data, { subtype: 'success', result: `${TOOL_RESULT_PREFIX}: (Bash completed with no output)` }, 'the command ran')
    await settled(app, id)

    const second = await send(id, command('node -e 1'))
    const result2 = await stream.next(isAgent('result'), 'the second result', second)
    t.notOk(stream.between(second, result2.seq).some(isType('permission_request')), 'the same command again: not asked')
    t.match(result2.data, { subtype: 'success', result: `${TOOL_RESULT_PREFIX}: (Bash completed with no output)` }, 'and it ran')
    t.match(stream.between(second, result2.seq).find(isAgent('system', 'init'))?.data, { permissionMode: 'default' }, 'the mode is unchanged')
    await settled(app, id)

    const third = await send(id, command('node -e 2'))
    const asked3 = await stream.next(isType('permission_request'), 'the third permission_request', third)
    t.equal(asked3.data.input.command, 'node -e 2', 'another command is asked')
    await answer(id, asked3.data.requestId, { decision: 'deny' })
    await stream.next(isAgent('result'), 'the third result', asked3.seq)
    t.match(await settled(app, id), { state: 'active', busy: false, pendingPermissions: [] })
  })

  await t.test('remember on a Write: later writes run unasked, and the session keeps its mode', async (t) => {
    const { id, stream, workdir } = await open(t, 'remember a write')
    const first = await send(id, useTool('Write', { file_path: 'first.txt', content: 'one' }))
    const asked = await stream.next(isType('permission_request'), 'the permission_request', first)
    // the CLI's only suggestion for a Write is to switch the whole session to acceptEdits
    t.match(asked.data.suggestions, [{ type: 'setMode', mode: 'acceptEdits' }])
    t.match(await answer(id, asked.data.requestId, { decision: 'allow', remember: true }), { status: 200 })
    await stream.next(isAgent('result'), 'the first result', asked.seq)
    await settled(app, id)

    const second = await send(id, useTool('Write', { file_path: 'second.txt', content: 'two' }))
    const result2 = await stream.next(isAgent('result'), 'the second result', second)
    t.notOk(stream.between(second, result2.seq).some(isType('permission_request')), 'another Write: not asked')
    t.equal(await readFile(join(workdir, 'second.txt'), 'utf8'), 'two', 'and written')
    t.match(stream.between(second, result2.seq).find(isAgent('system', 'init'))?.data, { permissionMode: 'default' },
      'the CLI is still in the session\'s mode')
    t.match(await settled(app, id), { state: 'active', busy: false, permissionMode: 'default', pendingPermissions: [] })
  })

  await t.test('a question, answered on the stream: the model gets the user\'s choice', async (t) => {
    const { id, stream } = await open(t, 'question')
    const questions = [{
      question: 'Which color should the button be?',
      header: 'Color',
      options: [{ label: 'Red', description: 'warm' }, { label: 'Blue', description: 'cool' }],
      multiSelect: false
    }]
    const sent = await send(id, useTool('AskUserQuestion', { questions }))
    const asked = await stream.next(isType('question'), 'the question', sent)
    t.match(asked.data, { requestId: /\S/, toolUseId: /^toolu_fake_/, questions, expiresAt: /^\d{4}-/ }, 'the questions as the model asked them')
    t.notOk(stream.between(sent, asked.seq).some(isType('permission_request')), 'a question, not a permission request')
    t.match((await getSession(app, id)).pendingPermissions, [{ requestId: asked.data.requestId, kind: 'question', seq: asked.seq }])

    const answers = { 'Which color should the button be?': 'Blue' }
    stream.send({ type: 'permission', requestId: asked.data.requestId, decision: 'allow', answers })
    const taken = await stream.reply((f) => f.type === 'permission' || f.type === 'error', 'the answer to the permission frame')
    t.match(taken, { type: 'permission', requestId: asked.data.requestId, decision: 'allow' }, 'the stream took the answer')
    const result = await stream.next(isAgent('result'), 'the result', asked.seq)
    t.match(stream.between(asked.seq, result.seq).find(isType('permission_response'))?.data, { decision: 'allow', answers, by: 'user' })
    const expected = 'Your questions have been answered: "Which color should the button be?"="Blue". You can now continue with these answers in mind.'
    t.match(lastToolResultToModel(), { tool_use_id: asked.data.toolUseId, content: expected }, 'the model was sent the choice')
    t.notOk(lastToolResultToModel()?.is_error, 'not as an error')
    t.match(result.data, { subtype: 'success', result: `${TOOL_RESULT_PREFIX}: ${expected}` })
    t.match(await settled(app, id), { state: 'active', busy: false, pendingPermissions: [] })
  })

  await t.test('interrupt while a permission waits: cancelled, the turn ends, the session stays active and idle', async (t) => {
    const { id, stream, workdir } = await open(t, 'interrupt a wait')
    const sent = await send(id, useTool('Write', { file_path: 'never.txt', content: 'x' }))
    const asked = await stream.next(isType('permission_request'), 'the permission_request', sent)
    const interrupted = await call(app, 'POST', `/v1/sessions/${id}/interrupt`, {})
    t.match(interrupted, { status: 200, body: { interrupted: true } })
    const cancelled = await stream.next(isType('permission_cancelled'), 'the permission_cancelled', asked.seq)
    t.match(cancelled.data, { requestIds: [asked.data.requestId], reason: 'interrupt' })
    const result = await stream.next(isAgent('result'), 'the interrupted turn\'s result', asked.seq)
    t.match(result.data, { subtype: 'error_during_execution', is_error: true, terminal_reason: 'aborted_tools' }, 'the turn ended')
    t.match(await settled(app, id), { state: 'active', busy: false, pendingPermissions: [] }, 'active, idle, nothing pending')
    const late = await answer(id, asked.data.requestId, { decision: 'allow' })
    t.match(late, { status: 409, body: { code: 'PERMISSION_REQUEST_CLOSED' } }, 'the cancelled request cannot be answered')
    t.notOk(existsSync(join(workdir, 'never.txt')), 'the tool did not run')

    const next = await send(id, 'after the interrupt')
    const nextResult = await stream.next(isAgent('result'), 'the next result', next)
    t.match(nextResult.data, { subtype: 'success', result: `${REPLY_PREFIX}after the interrupt` }, 'the same process takes the next message')
    t.match(await settled(app, id), { state: 'active', busy: false })
  })

  await t.test('interrupt a streaming turn: it ends with a result, the session stays active and idle', async (t) => {
    const { id, stream } = await open(t, 'interrupt a stream')
    const before = api.messageRequests().length
    const started = Date.now()
    const sent = await send(id, 'slow 60000 take your time')
    await stream.next(isAgent('system', 'init'), 'system/init', sent)
    await api.messageRequest(before + 1)
    t.match((await getSession(app, id)), { busy: true }, 'busy while the model streams')
    const interrupted = await call(app, 'POST', `/v1/sessions/${id}/interrupt`, {})
    t.match(interrupted, { status: 200, body: { interrupted: true } })
    const result = await stream.next(isAgent('result'), 'the interrupted turn\'s result', sent)
    t.match(result.data, { subtype: 'error_during_execution', is_error: true, terminal_reason: 'aborted_streaming' }, 'the turn ended')
    t.ok(Date.now() - started < 30_000, 'long before the model would have answered')
    t.ok(stream.between(sent, result.seq).some((f) => isAgent('user')(f) &&
      f.data.message?.content?.[0]?.text === '[Request interrupted by user]'), 'the CLI\'s interrupted marker is stored')
    t.match(await settled(app, id), { state: 'active', busy: false }, 'active and idle')
    const idle = await call(app, 'POST', `/v1/sessions/${id}/interrupt`, {})
    t.match(idle, { status: 200, body: { interrupted: false } }, 'interrupting an idle session is harmless')

    const next = await send(id, 'and now quickly')
    const nextResult = await stream.next(isAgent('result'), 'the next result', next)
    t.match(nextResult.data, { subtype: 'success', result: `${REPLY_PREFIX}and now quickly` }, 'the session goes on')
  })

  t.same(api.unknown, [], 'the CLI called nothing the fake does not serve')
})
