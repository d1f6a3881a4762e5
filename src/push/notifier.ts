import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type { DeviceRow } from '../db/schema.js'
import { mergeAttention, retryDelay, type AttentionGroup, type AttentionKind, type DeviceKind, type RetryPolicy } from '../domain/push-policy.js'
import type { Log } from '../logger.js'
import type { Notification, Sender, SendOutcome } from './delivery.js'

/** What the agent supervisor reports after storing an event the user may want to know about. */
export interface AttentionNotice {
  sessionId: string
  kind: AttentionKind
  seq: number
  at: Date
}

/** Numbers that shape delivery; named once. */
const DELIVERY = {
  /** requests to providers in flight at once, for everybody */
  concurrency: 16,
  /** at shutdown, requests in flight get this long before their connections are cut */
  closeGraceMs: 2000
} as const

interface Delivery {
  id: string
  device: DeviceRow
  notification: Notification
  attempts: number
  startedAt: number
}

interface DeliveryFacts { sessionId: string, deviceId: string, deviceKind: DeviceKind, attempts: number }

export interface NotifierEvents {
  /** a burst's notification went to no device: a stream client watches the session, or the user has none */
  skipped: [{ sessionId: string, kind: AttentionKind, seq: number, reason: 'watched' | 'no-devices' | 'no-session' }]
  /** a burst became one notification for each of these devices */
  notified: [{ sessionId: string, kind: AttentionKind, seq: number, devices: number }]
  delivered: [DeliveryFacts]
  retrying: [DeliveryFacts & { delayMs: number, reason: string }]
  /** the provider said the device is gone: it was removed */
  gone: [DeliveryFacts & { reason: string }]
  failed: [DeliveryFacts & { reason: string }]
  /** work the bounded queue or a shutdown refused, or a lookup that failed */
  dropped: [{ sessionId: string, reason: string }]
}

export interface PushNotifierOptions {
  /** the user's devices now, and the removal of one the provider says is gone */
  devices: { list (owner: string): Promise<DeviceRow[]>, removeGone (id: string): Promise<void> }
  senders: Record<DeviceKind, Sender>
  /** whether a stream client watches the session at this moment */
  isWatched: (sessionId: string) => boolean
  /**
   * The session's user and title, read when the notification is decided (so a session given to
   * a user since, or renamed, is told right); undefined when the session is gone
   */
  sessionInfo: (sessionId: string) => Promise<{ owner: string | null, title: string | null } | undefined>
  groupWindowMs: number
  retry: RetryPolicy
  /** deliveries waiting, running or between attempts, at most */
  queueMax: number
  logger: Log
  random?: () => number
}

/**
 * Push notifications for the sessions nobody watches. `notify` takes the supervisor's attention
 * notices and returns at once: nothing here runs on the agent's or the stream's path, and no error
 * goes back to the caller. A session's notices within the group window make one notification (the
 * most important kind, the latest seq), decided when the window ends: if a stream client watches
 * the session then, nothing is sent. Each device's delivery is retried with backoff within the
 * retry policy; a device its provider calls gone is removed. In memory, on purpose (docs/PUSH.md):
 * a notification still waiting at shutdown is dropped, and the events stay in the log for the app.
 */
export class PushNotifier extends EventEmitter<NotifierEvents> {
  readonly #o: PushNotifierOptions
  readonly #log: Log
  /** open bursts by session id */
  readonly #groups = new Map<string, { group: AttentionGroup, timer: NodeJS.Timeout }>()
  readonly #ready: Delivery[] = []
  readonly #backoffs = new Map<Delivery, NodeJS.Timeout>()
  readonly #running = new Set<Promise<void>>()
  /** deliveries queued, running or waiting for a retry */
  #pending = 0
  /** flushes reading the devices and the title */
  readonly #flushing = new Set<Promise<void>>()
  readonly #abort = new AbortController()
  #closed = false

  constructor (opts: PushNotifierOptions) {
    super()
    this.#o = opts
    this.#log = opts.logger
  }

  /** deliveries queued, running or waiting for a retry */
  get pending (): number { return this.#pending }

  /** Takes one notice. Never throws, never waits. */
  notify (notice: AttentionNotice): void {
    if (this.#closed) return
    try {
      const event = { kind: notice.kind, seq: notice.seq, at: notice.at }
      const open = this.#groups.get(notice.sessionId)
      if (open) {
        open.group = mergeAttention(open.group, event)
        return
      }
      const timer = setTimeout(() => this.#flush(notice.sessionId), this.#o.groupWindowMs)
      this.#groups.set(notice.sessionId, { group: event, timer })
    } catch (err) {
      this.#log.error({ err, sessionId: notice.sessionId }, 'push: a notice could not be taken')
    }
  }

  /** Resolves once every open burst is decided and every delivery has ended (tests, the bench). */
  async idle (): Promise<void> {
    while (this.#groups.size > 0 || this.#flushing.size > 0 || this.#pending > 0 || this.#running.size > 0) {
      await new Promise((resolve) => setTimeout(resolve, 5))
    }
  }

  /**
   * Shutdown: no new notices; the bursts not yet decided are dropped (the streams are closing, so
   * "nobody watches" would be true of every session), retries are cancelled, and the requests in
   * flight get a short grace before their connections are cut.
   */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    const bursts = this.#groups.size
    for (const { timer } of this.#groups.values()) clearTimeout(timer)
    this.#groups.clear()
    const retries = this.#backoffs.size + this.#ready.length
    for (const timer of this.#backoffs.values()) clearTimeout(timer)
    this.#backoffs.clear()
    this.#ready.length = 0
    if (bursts + retries > 0) this.#log.info({ bursts, deliveries: retries }, 'push: notifications not sent at shutdown were dropped')
    await Promise.allSettled([...this.#flushing])
    const grace = new Promise((resolve) => setTimeout(resolve, DELIVERY.closeGraceMs).unref())
    await Promise.race([Promise.allSettled([...this.#running]), grace])
    this.#abort.abort()
    await Promise.allSettled(Object.values(this.#o.senders).map((s) => s.close()))
    await Promise.allSettled([...this.#running])
  }

  #flush (sessionId: string): void {
    const open = this.#groups.get(sessionId)
    if (!open) return
    this.#groups.delete(sessionId)
    const flushing = this.#fanOut(sessionId, open.group)
      .catch((err: unknown) => {
        this.#log.warn({ err, sessionId }, 'push: the notification could not be prepared; dropped')
        this.emit('dropped', { sessionId, reason: 'lookup failed' })
      })
      .finally(() => this.#flushing.delete(flushing))
    this.#flushing.add(flushing)
  }

  async #fanOut (sessionId: string, group: AttentionGroup): Promise<void> {
    const facts = { sessionId, kind: group.kind, seq: group.seq }
    if (this.#o.isWatched(sessionId)) {
      this.emit('skipped', { ...facts, reason: 'watched' })
      return
    }
    const session = await this.#o.sessionInfo(sessionId)
    // a session created before users existed is nobody's: nobody to tell
    if (session === undefined || session.owner === null) {
      this.emit('skipped', { ...facts, reason: 'no-session' })
      return
    }
    const devices = await this.#o.devices.list(session.owner)
    const sessionTitle = session.title
    if (devices.length === 0) {
      this.emit('skipped', { ...facts, reason: 'no-devices' })
      return
    }
    if (this.#closed) return
    const notification: Notification = { sessionId, seq: group.seq, kind: group.kind, at: group.at, sessionTitle }
    let queued = 0
    for (const device of devices) {
      if (this.#pending >= this.#o.queueMax) {
        this.#log.warn({ sessionId, queueMax: this.#o.queueMax }, 'push: the delivery queue is full; notification dropped for a device')
        this.emit('dropped', { sessionId, reason: 'queue full' })
        continue
      }
      this.#pending++
      queued++
      this.#ready.push({ id: randomUUID(), device, notification, attempts: 0, startedAt: Date.now() })
    }
    this.emit('notified', { ...facts, devices: queued })
    this.#pump()
  }

  #pump (): void {
    while (!this.#closed && this.#running.size < DELIVERY.concurrency && this.#ready.length > 0) {
      const delivery = this.#ready.shift()!
      const running: Promise<void> = this.#attempt(delivery)
        .catch((err: unknown) => {
          // #attempt handles every outcome; this is a bug, kept out of the supervisor's way
          this.#log.error({ err, sessionId: delivery.notification.sessionId }, 'push: a delivery failed unexpectedly')
          this.#pending--
        })
        .finally(() => {
          this.#running.delete(running)
          this.#pump()
        })
      this.#running.add(running)
    }
  }

  async #attempt (d: Delivery): Promise<void> {
    const { sessionId } = d.notification
    const facts: DeliveryFacts = { sessionId, deviceId: d.device.id, deviceKind: d.device.kind, attempts: d.attempts }
    // the user may have opened the session since the burst was decided: a retry is then moot
    if (d.attempts > 0 && this.#o.isWatched(sessionId)) {
      this.#pending--
      this.emit('skipped', { sessionId, kind: d.notification.kind, seq: d.notification.seq, reason: 'watched' })
      return
    }
    d.attempts++
    facts.attempts = d.attempts
    let outcome: SendOutcome
    try {
      outcome = await this.#o.senders[d.device.kind].send(d.device, d.notification, { deliveryId: d.id, signal: this.#abort.signal })
    } catch (err) {
      outcome = { status: 'retry', reason: String((err as Error).message ?? err) }
    }
    if (this.#closed && outcome.status === 'retry') {
      this.#pending--
      return
    }
    const log = this.#log.child({ sessionId, deviceId: d.device.id, deviceKind: d.device.kind, attempts: d.attempts })
    switch (outcome.status) {
      case 'delivered':
        this.#pending--
        log.debug('push: delivered')
        this.emit('delivered', facts)
        return
      case 'gone':
        log.info({ reason: outcome.reason }, 'push: the provider says the device is gone; removed')
        await this.#o.devices.removeGone(d.device.id)
          .catch((err: unknown) => log.warn({ err }, 'push: a gone device could not be removed'))
        this.#pending--
        this.emit('gone', { ...facts, reason: outcome.reason })
        return
      case 'failed':
        this.#pending--
        log.warn({ reason: outcome.reason }, 'push: the provider refused the notification')
        this.emit('failed', { ...facts, reason: outcome.reason })
        return
      case 'retry': {
        const delayMs = retryDelay(this.#o.retry, {
          attempts: d.attempts,
          elapsedMs: Date.now() - d.startedAt,
          retryAfterMs: outcome.retryAfterMs,
          ...(this.#o.random ? { random: this.#o.random } : {})
        })
        if (delayMs === null) {
          this.#pending--
          log.warn({ reason: outcome.reason }, 'push: gave up after the last attempt')
          this.emit('failed', { ...facts, reason: `gave up: ${outcome.reason}` })
          return
        }
        log.debug({ reason: outcome.reason, delayMs }, 'push: attempt failed; retrying')
        this.emit('retrying', { ...facts, delayMs, reason: outcome.reason })
        this.#backoffs.set(d, setTimeout(() => {
          this.#backoffs.delete(d)
          this.#ready.push(d)
          this.#pump()
        }, delayMs))
      }
    }
  }
}
