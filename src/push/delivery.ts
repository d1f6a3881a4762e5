import type { DeviceRow } from '../db/schema.js'
import { describeAttention, type AttentionKind } from '../domain/push-policy.js'

/** One notification, as every provider gets it: what happened where, never the agent's output. */
export interface Notification {
  sessionId: string
  /** the latest event of the burst: where the app opens the session */
  seq: number
  kind: AttentionKind
  /** when it happened */
  at: Date
  /** the session's title, which its user chose; null when it has none */
  sessionTitle: string | null
}

/** How one attempt to deliver to one device ended. */
export type SendOutcome =
  | { status: 'delivered' }
  /** the provider says the device is gone for good: it is removed */
  | { status: 'gone', reason: string }
  /** a failure that may pass: tried again after a backoff (at least `retryAfterMs`) */
  | { status: 'retry', reason: string, retryAfterMs?: number | undefined }
  /** a refusal that another attempt would meet again */
  | { status: 'failed', reason: string }

export interface Attempt {
  /** the same on every attempt of one delivery: a receiver's key to drop duplicates */
  deliveryId: string
  /** aborted when the service shuts down */
  signal: AbortSignal
}

/** A provider: Expo, Web Push or webhooks. `send` never throws: every failure is an outcome. */
export interface Sender {
  send (device: DeviceRow, notification: Notification, attempt: Attempt): Promise<SendOutcome>
  close (): Promise<void>
}

/** The lines a phone or browser shows. */
export function headline (n: Notification): { title: string, body: string } {
  return { title: n.sessionTitle ?? 'MobVibe session', body: describeAttention(n.kind) }
}

/** What the app needs to open the session at the right place. */
export function openData (n: Notification): { sessionId: string, seq: number, kind: AttentionKind } {
  return { sessionId: n.sessionId, seq: n.seq, kind: n.kind }
}

/**
 * An HTTP answer of a push endpoint or webhook as an outcome: 2xx delivered; `gone` statuses remove
 * the device; 408, 425, 429 and 5xx are retried; any other status is a refusal that a retry would
 * meet again (a redirect included: push requests follow none).
 */
export function outcomeOfStatus (status: number, gone: readonly number[], retryAfterMs?: number): SendOutcome {
  if (status >= 200 && status < 300) return { status: 'delivered' }
  if (gone.includes(status)) return { status: 'gone', reason: `HTTP ${status}` }
  if (status === 408 || status === 425 || status === 429 || status >= 500) return { status: 'retry', reason: `HTTP ${status}`, retryAfterMs }
  return { status: 'failed', reason: `HTTP ${status}` }
}

/** A thrown error as an outcome: the network, a timeout or a refused address. */
export function outcomeOfError (err: unknown): SendOutcome {
  const e = err as { code?: unknown, message?: unknown, name?: unknown }
  const reason = typeof e.code === 'string' ? e.code : String(e.message ?? err)
  // a name that leads where push may not go stays refused until the user registers another URL
  if (e.code === 'EPUSHADDRESS') return { status: 'failed', reason: String(e.message) }
  return { status: 'retry', reason }
}

/** `Retry-After` as milliseconds: delay-seconds or an HTTP date; undefined when absent or unreadable. */
export function retryAfterMs (header: string | string[] | undefined, now = Date.now()): number | undefined {
  const value = Array.isArray(header) ? header[0] : header
  if (value === undefined || value.trim() === '') return undefined
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000
  const at = Date.parse(value)
  return Number.isNaN(at) ? undefined : Math.max(0, at - now)
}
