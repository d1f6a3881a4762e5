/**
 * The session state machine: the only authority on which state may follow which, and who may ask.
 * Pure data and functions; no I/O.
 */
export const SESSION_STATES = ['pending', 'active', 'suspended', 'paused', 'completed', 'failed', 'expired'] as const
export type SessionState = typeof SESSION_STATES[number]

export const TERMINAL_STATES: readonly SessionState[] = ['completed', 'failed', 'expired']
export const LIVE_STATES: readonly SessionState[] = ['pending', 'active', 'suspended', 'paused']

export type Actor = 'user' | 'system'

type Edges = Readonly<Partial<Record<SessionState, readonly Actor[]>>>

const USER: readonly Actor[] = ['user']
const SYSTEM: readonly Actor[] = ['system']
const BOTH: readonly Actor[] = ['user', 'system']

export const TRANSITIONS: Readonly<Record<SessionState, Edges>> = {
  // pending → active may also come from the first message (the agent supervisor), hence both
  pending: { active: BOTH, completed: USER, failed: SYSTEM, expired: SYSTEM },
  active: { suspended: BOTH, paused: USER, completed: USER, failed: SYSTEM, expired: SYSTEM },
  // suspended → active by a message is the supervisor acting for the user
  suspended: { active: BOTH, paused: USER, completed: USER, failed: SYSTEM, expired: SYSTEM },
  paused: { active: USER, completed: USER, expired: SYSTEM },
  completed: {},
  failed: {},
  expired: {}
}

export function isTerminal (state: SessionState): boolean {
  return TERMINAL_STATES.includes(state)
}

export function canTransition (from: SessionState, to: SessionState, actor: Actor): boolean {
  return TRANSITIONS[from][to]?.includes(actor) ?? false
}

/** The targets `actor` may move a session in `from` to, in the table's order. */
export function allowedTargets (from: SessionState, actor: Actor): SessionState[] {
  const edges = TRANSITIONS[from]
  return SESSION_STATES.filter((to) => edges[to]?.includes(actor) ?? false)
}
