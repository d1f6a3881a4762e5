import type { SessionState } from './state-machine.js'

/**
 * Why an agent process is stopped; the first reason asked for is the one recorded. Pure data.
 * `crash` is not among them: a process that ends on its own was stopped by nobody.
 */
export const STOP_REASONS = ['idle', 'eviction', 'pause', 'shutdown', 'expired', 'completed', 'failed', 'deleted', 'restart', 'user', 'failover'] as const
export type StopReason = typeof STOP_REASONS[number]

const BY_STATE: Partial<Record<SessionState, StopReason>> = {
  paused: 'pause', suspended: 'idle', completed: 'completed', failed: 'failed', expired: 'expired'
}

/**
 * Why a session's process stops when the session moves to `to` for `reason` (a transition's
 * recorded reason): the suspensions say what caused them, anything else is named by its state.
 */
export function stopReasonFor (to: SessionState, reason?: string | null): StopReason {
  if (to === 'suspended' && (reason === 'eviction' || reason === 'shutdown' || reason === 'restart')) return reason
  return BY_STATE[to] ?? 'user'
}
