import { withoutNul } from '../domain/text.js'

/**
 * What the supervisor needs to know of a stdout line of the CLI (stream-json): the start of a turn
 * (`system/init`), its end (`result`), a control request of the CLI, or anything else. Pure; unknown types are tolerated.
 */
export type AgentLine =
  | { kind: 'init', json: string, message: Record<string, unknown> }
  | { kind: 'result', json: string, message: Record<string, unknown> }
  /** the CLI asks something of the service (`can_use_tool`…) and waits for a control_response */
  | { kind: 'control_request', json: string, message: Record<string, unknown> }
  /** the CLI withdraws a control request it made */
  | { kind: 'control_cancel', json: string, message: Record<string, unknown> }
  /** the CLI answers a control request of the service */
  | { kind: 'control_response', json: string, message: Record<string, unknown> }
  | { kind: 'other', json: string }

export function parseAgentLine (line: string): AgentLine {
  let message: unknown
  try {
    message = JSON.parse(line)
  } catch {
    // not JSON: stored all the same (nothing the agent printed is lost), wrapped to stay valid JSON
    return { kind: 'other', json: JSON.stringify({ type: 'unparsed', line: withoutNul(line) }) }
  }
  if (message === null || typeof message !== 'object' || Array.isArray(message)) {
    return { kind: 'other', json: JSON.stringify({ type: 'unparsed', line: withoutNul(line) }) }
  }
  // Postgres text and jsonb cannot hold U+0000: such a line is stored, and read, with U+FFFD in its
  // place (what the supervisor takes from the message, a permission ask, is stored too)
  let json = line
  let m = message as Record<string, unknown>
  if (line.includes('\\u0000')) {
    json = JSON.stringify(message, (_k, v: unknown) => (typeof v === 'string' ? withoutNul(v) : v))
    m = JSON.parse(json) as Record<string, unknown>
  }
  if (m.type === 'system' && m.subtype === 'init') return { kind: 'init', json, message: m }
  if (m.type === 'result') return { kind: 'result', json, message: m }
  if (m.type === 'control_request') return { kind: 'control_request', json, message: m }
  if (m.type === 'control_cancel_request') return { kind: 'control_cancel', json, message: m }
  if (m.type === 'control_response') return { kind: 'control_response', json, message: m }
  return { kind: 'other', json }
}

const count = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? Math.floor(v) : 0)

/** A result's token usage (this turn) and total_cost_usd (cumulative for the conversation). */
export function turnUsage (result: Record<string, unknown>) {
  const usage = (typeof result.usage === 'object' && result.usage !== null ? result.usage : {}) as Record<string, unknown>
  const cost = result.total_cost_usd
  return {
    inputTokens: count(usage.input_tokens),
    outputTokens: count(usage.output_tokens),
    cacheReadTokens: count(usage.cache_read_input_tokens),
    cacheCreationTokens: count(usage.cache_creation_input_tokens),
    totalCostUsd: typeof cost === 'number' && Number.isFinite(cost) && cost >= 0 ? cost : 0
  }
}
