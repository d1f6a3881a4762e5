/**
 * Timer arithmetic for idle suspension and expiry: pure functions of timestamps, so the worker, the
 * manager and the tests agree on every deadline without a clock of their own.
 */

/** A heartbeat that would move the deadline by less than this share of the TTL writes nothing. */
export const HEARTBEAT_COALESCE_FRACTION = 0.05

export function addSeconds (at: Date, seconds: number): Date {
  return new Date(at.getTime() + seconds * 1000)
}

function latest (...dates: (Date | null | undefined)[]): Date {
  let max: Date | undefined
  for (const d of dates) if (d && (!max || d > max)) max = d
  if (!max) throw new TypeError('latest() needs at least one date')
  return max
}

/** Expiry counts from the last sign of life: heartbeat, activity, or creation. */
export function expiryDeadline (input: {
  createdAt: Date
  lastHeartbeatAt: Date | null
  lastActivityAt: Date | null
  ttlSeconds: number
}): Date {
  return addSeconds(latest(input.createdAt, input.lastHeartbeatAt, input.lastActivityAt), input.ttlSeconds)
}

/**
 * The idle deadline of an active session: from entering `active` or the last activity, whichever is
 * later. Null while a turn runs: the timer only starts when the turn's result arrives.
 */
export function idleDeadline (input: {
  activeSince: Date
  lastActivityAt: Date | null
  idleTimeoutSeconds: number
  busy: boolean
}): Date | null {
  if (input.busy) return null
  return addSeconds(latest(input.activeSince, input.lastActivityAt), input.idleTimeoutSeconds)
}

export interface HeartbeatPlan {
  /** false: the move is too small to be worth a write */
  write: boolean
  expiresAt: Date
}

/** A heartbeat never moves the deadline earlier, and skips writes for small moves. */
export function planHeartbeat (input: {
  now: Date
  expiresAt: Date
  ttlSeconds: number
  coalesceFraction?: number
}): HeartbeatPlan {
  const proposed = addSeconds(input.now, input.ttlSeconds)
  const gainMs = proposed.getTime() - input.expiresAt.getTime()
  const thresholdMs = input.ttlSeconds * 1000 * (input.coalesceFraction ?? HEARTBEAT_COALESCE_FRACTION)
  if (gainMs <= 0 || gainMs < thresholdMs) return { write: false, expiresAt: input.expiresAt }
  return { write: true, expiresAt: proposed }
}

/** Time spent in `active` so far, counting the running stretch when the session is active now. */
export function activeMsAt (input: { activeMs: number, activeSince: Date | null, now: Date }): number {
  if (!input.activeSince) return input.activeMs
  return input.activeMs + Math.max(0, input.now.getTime() - input.activeSince.getTime())
}
