/**
 * The real Claude Code CLI (@anthropic-ai/claude-code, pinned 2.1.330) run by the service against a
 * fake Anthropic Messages API on 127.0.0.1: message → streamed reply → idle suspension → message →
 * transparent resume, where the fake API sees the first turn in the second request.
 *
 * Not part of `npm test`: run it with scripts/real-claude-integration.sh, which installs the pinned
 * CLI outside the repo and sets CLAUDE_BIN. Everything goes through the public API (HTTP and the
 * WebSocket stream); waits are on events with generous bounds, never on sleeps.
 */
import { readFile, readdir, realpath } from 'node:fs/promises'
import { basename } from 'node:path'
import t from 'tap'
import { AGENT_MARKER } from '../src/agents/claude-command.js'
import { findByEnvMarker } from '../src/system/proc.js'
import { authHeader, call, createSession, getSession } from '../test/helpers/api.js'
import { build } from '../test/helpers/build.js'
import { REPLY_PREFIX, textOf } from './fake-anthropic-api.js'
import { PINNED_VERSION, StreamClient, isAgent, startRealClaude, type Frame } from './real-claude-helpers.js'

/** the first run of the 364 MiB binary may be slow to page in; later turns take ~0.3 s */
const TURN_TIMEOUT_MS = 60_000
/** idleTimeoutSeconds is 1 and the sweep runs every 100 ms */
const SUSPEND_TIMEOUT_MS = 20_000
const MODEL = 'claude-fake-model-1'
const FIRST_PROMPT = 'Remember the word PELICAN-7316, please.'
const SECOND_PROMPT = 'Which word did I ask you to remember?'

/** The first word of a process's command line ('' when it is gone). */
async function argv0Of (pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0')[0] ?? ''
}

/** The text of an `assistant` line's text blocks. */
const assistantText = (f: Frame): string =>
  (f.data.message?.content ?? []).filter((b: any) => b.type === 'text').map((b: any) => b.text).join('')

/** What the fake API was sent as a conversation: role and text of each message, reminders left out. */
function conversationOf (body: any): Array<{ role: string, text: string }> {
  return (body.messages as any[]).map((m) => ({ role: m.role, text: textOf(m.content) })).filter((m) => m.text !== '')
}

t.test('the real Claude Code CLI: message, streamed reply, idle suspension, transparent resume', async (t) => {
  const real = await startRealClaude(t)
  if (!real) return
  const { bin, home, api } = real
  const { app, baseUrl, config } = await build(t, {
    listen: true,
    env: {
      CLAUDE_BIN: bin,
      AGENT_ENV_PASSTHROUGH: 'ANTHROPIC_API_KEY,ANTHROPIC_BASE_URL,CLAUDE_CODE_MAX_RETRIES,IS_SANDBOX',
      // acceptEdits runs as root too (bypassPermissions would refuse without IS_SANDBOX=1)
      CLAUDE_PERMISSION_MODE: 'acceptEdits',
      // no CLAUDE.md or settings from the workspace's parents (`=`: the variable is split on
      // whitespace, so `--setting-sources ""` would pass two quote characters); token-level deltas
      CLAUDE_EXTRA_ARGS: '--setting-sources= --include-partial-messages',
      IDLE_TIMEOUT_MIN_SECONDS: '1',
      SWEEP_INTERVAL_MS: '100'
    }
  })
  t.equal(config.agent.bin, bin)

  const session = await createSession(app, { title: 'real claude', idleTimeoutSeconds: 1, model: MODEL })
  const id = session.id
  const liveAgents = () => findByEnvMarker(AGENT_MARKER, id)
  const describe = async () => {
    const s = await getSession(app, id).catch((err: Error) => ({ error: err.message }))
    const requests = api.requests.map((r) => `${r.method} ${r.url}`).join(', ')
    return `session: ${JSON.stringify(s)}\nfake API requests: ${requests}`
  }
  // the HTTP calls (call, createSession, getSession) send the default user's token; the stream too
  const stream = await StreamClient.open(t, baseUrl, id, authHeader(app), { timeoutMs: TURN_TIMEOUT_MS, describe })
  t.same(await liveAgents(), [], 'no process before the first message')

  // ---- turn 1: a new conversation -----------------------------------------------------------
  const t0 = Date.now()
  const first = await call(app, 'POST', `/v1/sessions/${id}/messages`, { text: FIRST_PROMPT })
  t.equal(first.status, 202, 'the first message is accepted')
  const init1 = await stream.next(isAgent('system', 'init'), 'system/init of turn 1', first.body.seq)
  const result1 = await stream.next(isAgent('result'), 'result of turn 1', init1.seq)
  const tResult1 = Date.now()
  // under bwrap an agent is three marked processes (bwrap, bwrap as the namespace's init, the CLI):
  // the CLIs are the marked processes that are not bwrap
  const procs1 = await Promise.all((await liveAgents()).map(async (pid) => ({ pid, argv0: await argv0Of(pid) })))
  const clis1 = procs1.filter((p) => basename(p.argv0) !== 'bwrap')
  t.equal(clis1.length, 1, `one live CLI process while active (${JSON.stringify(procs1)})`)
  t.equal(procs1.length - clis1.length, app.agents.sandbox === 'bwrap' ? 2 : 0,
    `${app.agents.sandbox === 'bwrap' ? 'in its sandbox: bwrap and bwrap as init' : 'unconfined: no bwrap'}`)
  const turn1 = stream.between(first.body.seq, result1.seq)

  t.match(init1.data, {
    claude_code_version: PINNED_VERSION,
    model: MODEL,
    permissionMode: 'acceptEdits'
  }, 'the pinned CLI started with the model and permission mode of the configuration')
  t.equal(init1.data.session_id, (await getSession(app, id)).agentSessionId, 'in the conversation the session records (--session-id)')
  const agentSessionId = init1.data.session_id as string
  const reply1 = `${REPLY_PREFIX}${FIRST_PROMPT}`
  const assistant1 = turn1.filter(isAgent('assistant'))
  t.ok(assistant1.some((f) => assistantText(f) === reply1), `the assistant line carries the fake API's reply "${reply1}"`)
  const deltas1 = turn1.filter((f) => isAgent('stream_event')(f) && f.data.event?.delta?.type === 'text_delta')
  t.ok(deltas1.length >= 2, 'the reply streamed token by token (stream_event text deltas)')
  t.equal(deltas1.map((f) => f.data.event.delta.text).join(''), reply1, 'the deltas add up to the reply')
  t.match(result1.data, { subtype: 'success', is_error: false, result: reply1 }, 'the turn ended with a successful result')
  t.ok(turn1.findIndex(isAgent('assistant')) < turn1.findIndex(isAgent('result')), 'the reply came before the result')

  t.equal(api.messageRequests().length, 1, 'one request to the Messages API')
  const request1 = api.messageRequests()[0]!
  t.equal(request1.body.model, MODEL, 'the API was asked for the session\'s model')
  t.equal(request1.body.stream, true, 'as a stream')
  t.equal(request1.headers['x-api-key'], 'test-key', 'with the key passed through the allow-list')
  t.same(api.unknown, [], 'the CLI called nothing the fake does not serve')

  // busy off and usage added once the result is stored
  let afterTurn1 = await getSession(app, id)
  for (let i = 0; afterTurn1.busy && i < 100; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    afterTurn1 = await getSession(app, id)
  }
  t.match(afterTurn1, { state: 'active', busy: false, agentSessionId }, 'active, not busy, after the turn')
  t.match(afterTurn1.usage, { turns: 1, inputTokens: api.usage.inputTokens, outputTokens: api.usage.outputTokens },
    'the turn\'s tokens were added to the session')
  t.ok(afterTurn1.usage.costUsd > 0, `the CLI's cost estimate was recorded (${afterTurn1.usage.costUsd})`)

  // the CLI kept its state in the service's CLAUDE_CONFIG_DIR, not in HOME
  t.equal(await realpath(init1.data.cwd), await realpath(session.workdir), 'the CLI ran in the session\'s working directory')
  // (the agents' state root: a session's own config directory is somewhere inside it)
  const transcripts = (await readdir(config.agent.configDir, { recursive: true })).map(String)
  t.ok(transcripts.some((f) => f.endsWith(`${agentSessionId}.jsonl`) && f.split('/').includes('projects')),
    'the transcript is in a projects directory under the agents\' state root')
  t.same(await readdir(home), [], 'nothing was written to HOME')

  // ---- idle suspension ----------------------------------------------------------------------
  const suspended = await stream.next((f) => f.type === 'state' && f.data.to === 'suspended', 'suspension after 1 s idle',
    result1.seq, SUSPEND_TIMEOUT_MS)
  const tSuspended = Date.now()
  t.match(suspended.data, { from: 'active', to: 'suspended', reason: 'idle', actor: 'system' }, 'suspended as idle by the system')
  t.notOk(stream.between(result1.seq, suspended.seq).some((f) => f.type === 'error'), 'silently: no error event')
  const deadline = Date.now() + SUSPEND_TIMEOUT_MS
  while ((app.agents.isLive(id) || (await liveAgents()).length > 0) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.notOk(app.agents.isLive(id), 'the supervisor holds no agent for the session')
  t.same(await liveAgents(), [], 'no CLI process (nor descendant) is left')
  t.match(await getSession(app, id), { state: 'suspended', agentSessionId, busy: false, lastError: null }, 'suspended, conversation id kept')

  // ---- turn 2: transparent resume -----------------------------------------------------------
  const t2 = Date.now()
  const second = await call(app, 'POST', `/v1/sessions/${id}/messages`, { text: SECOND_PROMPT })
  t.equal(second.status, 202, 'a message to the suspended session is accepted')
  const status = await stream.next((f) => f.type === 'status', 'the resume status', second.body.seq)
  t.equal(status.data.message, 'Resuming session…', 'the user is told first')
  const init2 = await stream.next(isAgent('system', 'init'), 'system/init of turn 2', second.body.seq)
  t.ok(status.seq < init2.seq, 'the status came before the agent\'s output')
  const result2 = await stream.next(isAgent('result'), 'result of turn 2', init2.seq)
  const tResult2 = Date.now()
  const turn2 = stream.between(second.body.seq, result2.seq)
  t.notOk(turn2.some((f) => f.type === 'error'), `no error on resume: ${JSON.stringify(turn2.filter((f) => f.type === 'error').map((f) => f.data))}`)
  t.equal(init2.data.session_id, agentSessionId, 'the same conversation (--resume)')
  const reply2 = `${REPLY_PREFIX}${SECOND_PROMPT}`
  t.ok(turn2.filter(isAgent('assistant')).some((f) => assistantText(f) === reply2), 'the second reply streamed')
  t.match(result2.data, { subtype: 'success', is_error: false, result: reply2 }, 'the second turn succeeded')

  // the proof that --resume restored the conversation: the API got the first turn with the second
  t.equal(api.messageRequests().length, 2, 'a second request to the Messages API')
  const conversation = conversationOf(api.messageRequests()[1]!.body)
  const userTexts = conversation.filter((m) => m.role === 'user').map((m) => m.text)
  const assistantTexts = conversation.filter((m) => m.role === 'assistant').map((m) => m.text)
  t.ok(userTexts.includes(FIRST_PROMPT), 'the second request holds the first turn\'s prompt')
  t.ok(assistantTexts.includes(reply1), 'and the first turn\'s reply')
  t.equal(userTexts.at(-1), SECOND_PROMPT, 'and ends with the new prompt')
  t.ok(conversation.findIndex((m) => m.text === FIRST_PROMPT) < conversation.findIndex((m) => m.text === reply1) &&
    conversation.findIndex((m) => m.text === reply1) < conversation.findIndex((m) => m.text === SECOND_PROMPT), 'in order')
  t.same(api.unknown, [], 'still nothing unknown asked of the fake')

  let afterTurn2 = await getSession(app, id)
  for (let i = 0; (afterTurn2.busy || afterTurn2.usage.turns < 2) && i < 100; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20))
    afterTurn2 = await getSession(app, id)
  }
  t.match(afterTurn2.usage, { turns: 2, inputTokens: 2 * api.usage.inputTokens, outputTokens: 2 * api.usage.outputTokens },
    'both turns\' tokens are on the session')
  t.ok(afterTurn2.usage.costUsd >= afterTurn1.usage.costUsd, 'the cost is cumulative (the latest, not a sum)')

  // the stream delivered every event in order, without gap or duplicate
  t.same(stream.frames.map((f) => f.seq), stream.frames.map((_, i) => i + 1), 'stream frames 1..n, no gap, no duplicate')
  t.comment(`stream: ${stream.summary()}`)
  t.comment(`timings: message → result ${tResult1 - t0} ms (new conversation); result → suspended ${tSuspended - tResult1} ms ` +
    `(idle timeout 1 s); message → result ${tResult2 - t2} ms (resume)`)
  stream.socket.close()
})
