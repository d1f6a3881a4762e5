/**
 * The session state machine: the only authority on which state may follow which, and who may ask.
 * Pure data and functions; no I/O.
 */
export const SESSION_STATES = ['pending', 'active', 'suspended', 'paused', 'completed', 'failed', 'expired'] as const
export type SessionState = typeof SESSION_STATES[number]

export const TERMINAL_STATES = ['completed', 'failed', 'expired'] as const satisfies readonly SessionState[]
/** every state that is not terminal: these expire, take heartbeats, and show in the sweep indexes */
export const LIVE_STATES = ['pending', 'active', 'suspended', 'paused'] as const satisfies readonly SessionState[]

export const ACTORS = ['user', 'system'] as const
export type Actor = typeof ACTORS[number]

type Edges = Readonly<Partial<Record<SessionState, readonly Actor[]>>>

const USER: readonly Actor[] = ['user']
const SYSTEM: readonly Actor[] = ['system']
const BOTH: readonly Actor[] = ['user', 'system']

const TRANSITIONS: Readonly<Record<SessionState, Edges>> = {
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
  return (TERMINAL_STATES as readonly SessionState[]).includes(state)
}

export function canTransition (from: SessionState, to: SessionState, actor: Actor): boolean {
  return TRANSITIONS[from][to]?.includes(actor) ?? false
}

/** The targets `actor` may move a session in `from` to, in the table's order. */
export function allowedTargets (from: SessionState, actor: Actor): SessionState[] {
  const edges = TRANSITIONS[from]
  return SESSION_STATES.filter((to) => edges[to]?.includes(actor) ?? false)
}
