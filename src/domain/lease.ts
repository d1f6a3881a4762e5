/**
 * The arithmetic of an instance's lease, pure. The lease is judged by the database's clock
 * (`heartbeat_at > now() - lease`); the instance measures its own side with a monotonic clock from
 * the moment it *sent* its last renewal that succeeded, which is never later than the moment the
 * database wrote it. So when the instance gives up at three quarters of the lease, the others are
 * still a quarter of the lease away from taking over: that quarter is the time its agents have to
 * die. Its watchdog (which acts when the instance itself is frozen and can do nothing) fires at
 * half the lease.
 */
export interface LeasePlan {
  leaseMs: number
  /** how often the row is renewed: four chances per lease */
  renewEveryMs: number
  /** without a good renewal for this long, the instance stops its agents and owns nothing */
  fenceAfterMs: number
  /** the agents' dead man's switch: a frozen instance's agents are killed after this */
  watchdogMs: number
}

export function leasePlan (leaseSeconds: number): LeasePlan {
  const leaseMs = leaseSeconds * 1000
  return { leaseMs, renewEveryMs: leaseMs / 4, fenceAfterMs: leaseMs * 0.75, watchdogMs: leaseMs / 2 }
}

/**
 * Whether the lease is fresh: renewed within a quarter of it (its renewal period) and a little.
 * The watchdog is fed only then, so that an instance whose renewals fail and which then freezes
 * has its agents killed at most `freshMs + watchdogMs` after its last good renewal: before the lease runs out.
 */
export function leaseFresh (plan: LeasePlan, lastGoodSentAt: number, now: number): boolean {
  return now - lastGoodSentAt <= plan.leaseMs * 0.35
}

/** Whether the lease must be taken as lost: the last good renewal was sent too long ago. */
export function leaseLost (plan: LeasePlan, lastGoodSentAt: number, now: number): boolean {
  return now - lastGoodSentAt >= plan.fenceAfterMs
}

/**
 * A claim on a session: the instance that runs its agent and the claim's epoch. Every write of
 * that agent carries it, and is refused once another claim has replaced it.
 */
export interface Fence {
  worker: string
  epoch: number
}

/** The fence as the statements compare it: `worker_id::text || ':' || worker_epoch`. */
export function fenceKey (fence: Fence): string {
  return `${fence.worker}:${fence.epoch}`
}
