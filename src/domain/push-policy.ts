/**
 * What push notifications are about and when they are tried again: pure data and arithmetic,
 * shared by the devices table, the device schemas and the notifier (src/push).
 */

/** Where a device's notifications go: the Expo push service, a browser's Web Push endpoint, a webhook. */
export const DEVICE_KINDS = ['expo', 'webpush', 'webhook'] as const
export type DeviceKind = typeof DEVICE_KINDS[number]

/** What happened in a session that the user may want to know while not looking. */
export type AttentionKind = 'turn_ended' | 'permission_request' | 'question' | 'error'

/**
 * The most important kind of a burst wins: a request that blocks the agent until the user answers,
 * then a failure, then a turn that simply ended.
 */
const RANK: Record<AttentionKind, number> = { permission_request: 3, question: 3, error: 2, turn_ended: 1 }

/** What a notification says, in a few words: never anything the agent wrote. */
const SAYS: Record<AttentionKind, string> = {
  turn_ended: 'The agent finished its turn',
  permission_request: 'The agent asks for permission to use a tool',
  question: 'The agent has a question for you',
  error: 'The agent stopped with an error'
}

export function describeAttention (kind: AttentionKind): string {
  return SAYS[kind]
}

/** A request that blocks the agent: sent with the providers' high priority. */
export function isUrgent (kind: AttentionKind): boolean {
  return RANK[kind] === RANK.permission_request
}

/** One session's pending notification: the burst so far. */
export interface AttentionGroup {
  kind: AttentionKind
  /** the latest event's seq: where the app opens the session */
  seq: number
  /** when the latest event happened */
  at: Date
}

/** The burst with one more event: the more important kind (the later one on a tie), the latest seq. */
export function mergeAttention (group: AttentionGroup, next: AttentionGroup): AttentionGroup {
  return {
    kind: RANK[next.kind] >= RANK[group.kind] ? next.kind : group.kind,
    seq: Math.max(group.seq, next.seq),
    at: next.at.getTime() >= group.at.getTime() ? next.at : group.at
  }
}

export interface RetryPolicy {
  maxAttempts: number
  baseMs: number
  /** no attempt starts later than this after the first one */
  windowMs: number
}

/**
 * The delay before the next attempt after `attempts` failed ones, or null to give up: exponential
 * (base, 2×base, 4×base…) with "equal jitter" (half fixed, half random) so that the deliveries a
 * provider's outage failed together do not come back together; at least the provider's
 * `Retry-After`; never past the policy's window.
 */
export function retryDelay (policy: RetryPolicy, o: {
  attempts: number
  elapsedMs: number
  retryAfterMs?: number | undefined
  random?: () => number
}): number | null {
  if (o.attempts >= policy.maxAttempts) return null
  const exponential = policy.baseMs * 2 ** Math.min(o.attempts - 1, 30)
  const jittered = exponential / 2 + (o.random ?? Math.random)() * exponential / 2
  const delay = Math.max(Math.round(jittered), o.retryAfterMs ?? 0)
  return o.elapsedMs + delay > policy.windowMs ? null : delay
}
