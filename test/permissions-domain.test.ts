// Database-independent: opens no database, so CI runs it once, in the PGlite pass (.ci/run).
/**
 * The pure side of permission asks (src/domain/permissions.ts): reading the CLI's can_use_tool,
 * checking an answer against its ask, and the control_response the agent gets; and the
 * configuration of the modes a session may choose.
 */
import t from 'tap'
import { claudeCommand } from '../src/agents/claude-command.js'
import { ConfigError, loadConfig } from '../src/config.js'
import {
  answerProblem,
  cliResponse,
  parseCanUseTool,
  rememberable,
  sessionRules,
  timeoutAnswer,
  type PermissionAsk
} from '../src/domain/permissions.js'

const canUseTool = (request: Record<string, unknown>, requestId: unknown = 'r-1') =>
  ({ type: 'control_request', request_id: requestId, request: { subtype: 'can_use_tool', ...request } })

t.test('a can_use_tool request is read; anything else is not one', async (t) => {
  const ask = parseCanUseTool(canUseTool({
    tool_name: 'Bash',
    input: { command: 'make' },
    tool_use_id: 'toolu_1',
    permission_suggestions: [{ type: 'addRules', rules: [{ toolName: 'Bash', ruleContent: 'make:*' }], behavior: 'allow', destination: 'localSettings' }],
    blocked_path: '/etc',
    decision_reason: 'asks'
  }))
  t.match(ask, { requestId: 'r-1', kind: 'permission', toolName: 'Bash', input: { command: 'make' }, toolUseId: 'toolu_1' })
  t.equal(ask?.suggestions.length, 1)
  t.same(ask?.context, { blocked_path: '/etc', decision_reason: 'asks' }, 'the rest is kept as context')
  t.equal(parseCanUseTool(canUseTool({ tool_name: 'AskUserQuestion', input: { questions: [] } }))?.kind, 'question')
  t.same(parseCanUseTool(canUseTool({ tool_name: 'Bash', input: 'not an object' }))?.input, {}, 'a malformed input becomes {}')
  t.equal(parseCanUseTool(canUseTool({ tool_name: 'Bash' }))?.toolUseId, null)
  t.equal(parseCanUseTool(canUseTool({ tool_name: 'Bash' }, ''))?.requestId, undefined, 'no request id: not an ask')
  t.equal(parseCanUseTool({ type: 'control_request', request_id: 'x', request: { subtype: 'interrupt' } }), null)
  t.equal(parseCanUseTool({ type: 'control_request', request_id: 'x', request: { subtype: 'can_use_tool' } }), null, 'no tool name')
  t.equal(parseCanUseTool({ type: 'assistant' }), null)
})

const permission: PermissionAsk = {
  requestId: 'r-1', kind: 'permission', toolName: 'Write', input: { file_path: '/w/a.txt', content: 'x' }, toolUseId: 'toolu_1', suggestions: [], context: {}
}
const question: PermissionAsk = {
  requestId: 'r-2',
  kind: 'question',
  toolName: 'AskUserQuestion',
  input: { questions: [{ question: 'Which runner?', header: 'Tests', options: [{ label: 'tap' }], multiSelect: false }] },
  toolUseId: 'toolu_2',
  suggestions: [],
  context: {}
}

t.test('answers are checked against their ask', async (t) => {
  t.equal(answerProblem(permission, { decision: 'allow' }), null)
  t.equal(answerProblem(permission, { decision: 'deny', message: 'no' }), null)
  t.match(answerProblem(permission, { decision: 'allow', answers: { a: 'b' } }), /for questions/)
  t.match(answerProblem(question, { decision: 'allow' }), /answers/)
  t.match(answerProblem(question, { decision: 'allow', answers: {} }), /answers/)
  t.match(answerProblem(question, { decision: 'allow', answers: { 'Which database?': 'pg' } }), /did not ask "Which database\?"/)
  t.equal(answerProblem(question, { decision: 'allow', answers: { 'Which runner?': 'tap' } }), null)
  t.equal(answerProblem(question, { decision: 'deny' }), null, 'a question may be declined')
})

t.test('the control_response the agent gets', async (t) => {
  t.same(cliResponse(permission, { decision: 'allow' }), {
    type: 'control_response',
    response: { subtype: 'success', request_id: 'r-1', response: { behavior: 'allow', updatedInput: permission.input, toolUseID: 'toolu_1' } }
  }, 'allow: the input as asked')
  const changed = cliResponse(permission, { decision: 'allow', updatedInput: { file_path: '/w/b.txt', content: 'y' } })
  t.same((changed.response as any).response.updatedInput, { file_path: '/w/b.txt', content: 'y' }, 'allow with a changed input')
  t.same((cliResponse(permission, { decision: 'deny', message: 'not now' }).response as any).response,
    { behavior: 'deny', message: 'not now', toolUseID: 'toolu_1' })
  t.match((cliResponse(permission, { decision: 'deny' }).response as any).response.message, /denied/, 'a deny always carries a message')
  const answered = (cliResponse(question, { decision: 'allow', answers: { 'Which runner?': 'tap' } }).response as any).response
  t.same(answered.updatedInput, { ...question.input, answers: { 'Which runner?': 'tap' } }, 'a question\'s answers ride in the input')
  t.notOk('updatedPermissions' in answered, 'nothing remembered unless asked')
  t.notOk('updatedPermissions' in (cliResponse(question, { decision: 'allow', remember: true, answers: { 'Which runner?': 'tap' } }).response as any).response, 'a question\'s answer is not remembered')
  const remembered = (cliResponse(permission, { decision: 'allow', remember: true }).response as any).response
  t.same(remembered.updatedPermissions, [{ type: 'addRules', rules: [{ toolName: 'Write' }], behavior: 'allow', destination: 'session' }])
  t.notOk('updatedPermissions' in (cliResponse(permission, { decision: 'deny', remember: true }).response as any).response, 'a deny remembers nothing')
  const noToolUse = cliResponse({ ...permission, toolUseId: null }, { decision: 'allow' })
  t.notOk('toolUseID' in (noToolUse.response as any).response)
})

t.test('remember keeps the CLI\'s suggestions for this session only', async (t) => {
  const rules = sessionRules({
    toolName: 'Bash',
    input: { command: 'npm test' },
    suggestions: [
      { type: 'addRules', rules: [{ toolName: 'Bash', ruleContent: 'npm test:*' }], behavior: 'allow', destination: 'localSettings' },
      { type: 'setMode', mode: 'acceptEdits', destination: 'userSettings' },
      'not a suggestion'
    ]
  })
  t.same(rules, [
    { type: 'addRules', rules: [{ toolName: 'Bash', ruleContent: 'npm test:*' }], behavior: 'allow', destination: 'session' }
  ], 'no settings file is written: every destination is the session; the mode stays the session\'s setting')
  t.same(sessionRules({ toolName: 'Write', input: {}, suggestions: [{ type: 'setMode', mode: 'acceptEdits', destination: 'session' }] }),
    [{ type: 'addRules', rules: [{ toolName: 'Write' }], behavior: 'allow', destination: 'session' }], 'only a mode switch suggested, an edit: edits')
  t.same(sessionRules({ toolName: 'Bash', input: { command: 'echo x > f' }, suggestions: [{ type: 'setMode', mode: 'acceptEdits', destination: 'session' }] }),
    [{ type: 'addRules', rules: [{ toolName: 'Bash', ruleContent: 'echo x > f' }], behavior: 'allow', destination: 'session' }], 'a Bash command: that command only, never every command')
  t.same(sessionRules({ toolName: 'WebFetch', input: { url: 'https://x' }, suggestions: [] }), [], 'another tool without suggestions: nothing to remember')
  t.notOk(rememberable({ kind: 'permission', toolName: 'WebFetch', input: {}, suggestions: [] }))
  t.notOk(rememberable({ kind: 'question', toolName: 'AskUserQuestion', input: {}, suggestions: [] }), 'a question is never remembered')
  t.ok(rememberable({ kind: 'permission', toolName: 'Bash', input: { command: 'ls' }, suggestions: [] }))
})

t.test('the timeout\'s answer denies and says why', async (t) => {
  const a = timeoutAnswer(90)
  t.equal(a.decision, 'deny')
  t.match(a.message, /within 90 s/)
})

t.test('ALLOWED_PERMISSION_MODES and PERMISSION_TIMEOUT_SECONDS', async (t) => {
  const base = { JWT_SECRET: 'x'.repeat(32) }
  t.same(loadConfig(base).agent.allowedPermissionModes, ['default', 'acceptEdits', 'plan'], 'bypassPermissions is off by default')
  t.equal(loadConfig(base).agent.permissionTimeoutSeconds, 1800)
  t.same(loadConfig({ ...base, ALLOWED_PERMISSION_MODES: ' plan , bypassPermissions,plan' }).agent.allowedPermissionModes, ['plan', 'bypassPermissions'])
  t.throws(() => loadConfig({ ...base, ALLOWED_PERMISSION_MODES: 'default,yolo' }), ConfigError)
  t.throws(() => loadConfig({ ...base, ALLOWED_PERMISSION_MODES: 'default,yolo' }), /ALLOWED_PERMISSION_MODES has "yolo"/)
  t.throws(() => loadConfig({ ...base, PERMISSION_TIMEOUT_SECONDS: '0' }), /PERMISSION_TIMEOUT_SECONDS/)
})

t.test('the command line: permission asks over stdio, the session\'s mode, bypass only where it can start', async (t) => {
  const config = (allowed: string) => loadConfig({ JWT_SECRET: 'x'.repeat(32), ALLOWED_PERMISSION_MODES: allowed, CLAUDE_PERMISSION_MODE: 'acceptEdits' })
  const args = (o: { allowed?: string, mode?: string | null, asRoot?: boolean, env?: NodeJS.ProcessEnv, passthrough?: boolean }) => {
    const c = config(o.allowed ?? 'default,acceptEdits,plan')
    if (o.passthrough) c.agent.envPassthrough.push('IS_SANDBOX')
    return claudeCommand({
      agent: c.agent,
      sessionId: 's',
      model: null,
      permissionMode: o.mode ?? null,
      conversation: { mode: 'new', agentSessionId: '00000000-0000-4000-8000-000000000000' },
      parentEnv: o.env ?? {},
      tmpDir: '/tmp/x',
      asRoot: o.asRoot ?? false
    }).args.join(' ')
  }
  t.match(args({}), /--permission-prompt-tool stdio/)
  t.match(args({}), /--permission-mode acceptEdits/, 'the configured default')
  t.match(args({ mode: 'plan' }), /--permission-mode plan/, 'the session\'s own wins')
  t.notMatch(args({}), /dangerously/, 'bypass not allowed: no flag')
  t.match(args({ allowed: 'default,bypassPermissions' }), /--allow-dangerously-skip-permissions/, 'allowed: the flag')
  t.notMatch(args({ allowed: 'default,bypassPermissions', mode: 'bypassPermissions' }), /dangerously/, 'not when it starts in that mode')
  t.notMatch(args({ allowed: 'default,bypassPermissions', asRoot: true }), /dangerously/, 'as root the CLI would not start with it')
  t.match(args({ allowed: 'default,bypassPermissions', asRoot: true, passthrough: true, env: { IS_SANDBOX: '1' } }), /--allow-dangerously-skip-permissions/,
    'as root with IS_SANDBOX=1 passed on, it would')
})
