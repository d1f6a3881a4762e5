/**
 * The CLI's permission asks (`control_request` / `can_use_tool`, with `--permission-prompt-tool
 * stdio`) and the answers the service writes back: pure shapes, no I/O. docs/AGENTS.md has the
 * protocol as the CLI speaks it.
 */

/** The tool through which the agent asks the user a question; it reaches can_use_tool like any other. */
const QUESTION_TOOL = 'AskUserQuestion'

type AskKind = 'permission' | 'question'

/** A permission ask as the service keeps it: the CLI's request, named. */
export interface PermissionAsk {
  requestId: string
  kind: AskKind
  toolName: string
  input: Record<string, unknown>
  toolUseId: string | null
  /** the CLI's `permission_suggestions`: rules that would let this through next time */
  suggestions: unknown[]
  /** what the CLI adds to explain the ask (`blocked_path`, `decision_reason`…), passed on as is */
  context: Record<string, unknown>
}

export interface PermissionAnswer {
  decision: 'allow' | 'deny'
  /** a deny's reason, for the agent (the model reads it) */
  message?: string | undefined
  /** allow with a changed tool input */
  updatedInput?: object | undefined
  /** allow this for the rest of the session: the CLI's suggestions, kept in its session */
  remember?: boolean | undefined
  /** a question's answers: each question's text → the chosen label(s) */
  answers?: Record<string, string> | undefined
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

/** Fields of a can_use_tool request the service names; the rest is kept as `context`. */
const NAMED = new Set(['subtype', 'tool_name', 'input', 'tool_use_id', 'permission_suggestions'])

/** A stdout `control_request` of subtype can_use_tool, or null for anything else. */
export function parseCanUseTool (message: Record<string, unknown>): PermissionAsk | null {
  if (message.type !== 'control_request' || typeof message.request_id !== 'string' || message.request_id === '') return null
  const request = message.request
  if (!isObject(request) || request.subtype !== 'can_use_tool' || typeof request.tool_name !== 'string') return null
  const context: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(request)) if (!NAMED.has(k)) context[k] = v
  return {
    requestId: message.request_id,
    kind: request.tool_name === QUESTION_TOOL ? 'question' : 'permission',
    toolName: request.tool_name,
    input: isObject(request.input) ? request.input : {},
    toolUseId: typeof request.tool_use_id === 'string' ? request.tool_use_id : null,
    suggestions: Array.isArray(request.permission_suggestions) ? request.permission_suggestions : [],
    context
  }
}

/** The questions of an AskUserQuestion input: their texts, in order. */
function questionTexts (input: Record<string, unknown>): string[] {
  const questions = Array.isArray(input.questions) ? input.questions : []
  return questions.flatMap((q) => (isObject(q) && typeof q.question === 'string' ? [q.question] : []))
}

/** Why an answer does not fit its ask, or null when it does. */
export function answerProblem (ask: Pick<PermissionAsk, 'kind' | 'input'>, answer: PermissionAnswer): string | null {
  if (ask.kind === 'permission') {
    if (answer.answers !== undefined) return '`answers` is for questions; this is a tool permission request'
    return null
  }
  if (answer.decision === 'deny') return null
  if (answer.answers === undefined || Object.keys(answer.answers).length === 0) {
    return 'a question is answered with `answers`: each question\'s text → the chosen option\'s label'
  }
  const asked = new Set(questionTexts(ask.input))
  const unknown = Object.keys(answer.answers).find((q) => !asked.has(q))
  if (unknown !== undefined) return `the agent did not ask ${JSON.stringify(unknown)}; it asked ${JSON.stringify([...asked])}`
  return null
}

/** Tools whose every use is a file edit: "always allow this" means edits, as the CLI's acceptEdits does. */
const EDIT_TOOLS = new Set(['Write', 'Edit', 'MultiEdit', 'NotebookEdit'])

/**
 * What `remember` keeps, for this session only: the CLI's suggestions, scoped down to its session
 * (never written to the user's or the project's settings files), without those that switch the
 * permission mode (the mode is the session's setting, `permissionMode` within
 * ALLOWED_PERMISSION_MODES, which the session shows). With no suggestion left: this exact Bash
 * command, or the edit tool; for any other tool nothing, since a rule for the whole tool would
 * allow far more than what the user saw.
 */
export function sessionRules (ask: Pick<PermissionAsk, 'toolName' | 'suggestions' | 'input'>): unknown[] {
  const suggestions = ask.suggestions.filter((s) => isObject(s) && s.type !== 'setMode') as Record<string, unknown>[]
  if (suggestions.length > 0) return suggestions.map((s) => ({ ...s, destination: 'session' }))
  const rule = (r: Record<string, string>) => [{ type: 'addRules', rules: [r], behavior: 'allow', destination: 'session' }]
  if (ask.toolName === 'Bash' && typeof ask.input.command === 'string') return rule({ toolName: 'Bash', ruleContent: ask.input.command })
  if (EDIT_TOOLS.has(ask.toolName)) return rule({ toolName: ask.toolName })
  return []
}

/** Whether `remember` can keep anything for this ask (a question's answer is never remembered). */
export function rememberable (ask: Pick<PermissionAsk, 'kind' | 'toolName' | 'suggestions' | 'input'>): boolean {
  return ask.kind === 'permission' && sessionRules(ask).length > 0
}

/** The message a denied tool use carries to the model when the user gave none. */
const DEFAULT_DENY_MESSAGE = 'The user denied this tool use.'

/** The `control_response` line that answers an ask on the agent's stdin. */
export function cliResponse (ask: PermissionAsk, answer: PermissionAnswer): Record<string, unknown> {
  const toolUse = ask.toolUseId !== null ? { toolUseID: ask.toolUseId } : {}
  let response: Record<string, unknown>
  if (answer.decision === 'deny') {
    response = { behavior: 'deny', message: answer.message ?? DEFAULT_DENY_MESSAGE, ...toolUse }
  } else {
    const input = (answer.updatedInput ?? ask.input) as Record<string, unknown>
    response = {
      behavior: 'allow',
      updatedInput: ask.kind === 'question' ? { ...input, answers: answer.answers ?? {} } : input,
      ...(answer.remember === true && rememberable(ask) ? { updatedPermissions: sessionRules(ask) } : {}),
      ...toolUse
    }
  }
  return { type: 'control_response', response: { subtype: 'success', request_id: ask.requestId, response } }
}

/** What the service answers for the user when nobody did in time. */
export function timeoutAnswer (seconds: number): PermissionAnswer {
  return {
    decision: 'deny',
    message: `Nobody answered this permission request within ${seconds} s, so it was denied. Carry on without it, or ask again later.`
  }
}
