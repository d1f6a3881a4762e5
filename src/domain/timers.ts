/**
 * Timer arithmetic that runs in the process: pure functions of timestamps. The deadlines stored in
 * the database (expiry, idle) are computed in SQL, atomically with the activity they depend on.
 */

/** A heartbeat that would move the deadline by less than this share of the TTL writes nothing. */
const HEARTBEAT_COALESCE_FRACTION = 0.05

export function addSeconds (at: Date, seconds: number): Date {
  return new Date(at.getTime() + seconds * 1000)
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
