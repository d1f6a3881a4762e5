import { EventEmitter } from 'node:events'
import type { PubSub } from '../db/database.js'
import type { Log } from '../logger.js'

/** What one instance asks of the owner of a session (the rows say the rest). */
export type ControlMessage =
  /** the session's row or queue changed here: re-read it (stop an agent it no longer owns, deliver what is queued, apply settings) */
  | { op: 'sync', sid: string, release?: boolean }
  | { op: 'interrupt', sid: string, deliverQueued: boolean }
  /** a permission request of the owner's agent was answered here; the answer is the event at `seq` */
  | { op: 'answered', sid: string, requestId: string, seq: number }

/** Sessions whose events a commit stored: id, first and last seq. */
export type StoredRange = [sessionId: string, first: number, last: number]

export interface DoorbellEvents {
  /** another instance stored events of these sessions */
  events: [StoredRange[]]
  control: [ControlMessage]
  /** (re)connected: whatever was rung meanwhile is lost, so listeners catch up from the tables */
  listening: []
}

const CHANNELS = { events: 'mv_events', control: 'mv_ctl' } as const
/** NOTIFY payloads must stay under 8000 bytes */
const MAX_PAYLOAD = 7800

/**
 * LISTEN/NOTIFY between the instances on one PostgreSQL, as a doorbell only: a notice says "look
 * at the tables", never carries what is to be read, and may be lost (nothing is kept for a
 * listener that is reconnecting), so everyone who listens also catches up on `listening` and
 * polls now and then. On PGlite (one instance by construction) it rings nobody.
 */
export class Doorbell extends EventEmitter<DoorbellEvents> {
  readonly #pubsub: PubSub | undefined
  readonly #log: Log
  readonly #self: () => string | null
  /** every id this process has had: a notice from any of them is its own */
  readonly #ownIds = new Set<string>()
  /** sessions stored since the last ring went out: first and last seq */
  readonly #unrung = new Map<string, [number, number]>()
  #ringing = false
  #warned = 0

  constructor (opts: { pubsub: PubSub | undefined, logger: Log, self: () => string | null }) {
    super()
    this.#pubsub = opts.pubsub
    this.#log = opts.logger
    this.#self = opts.self
  }

  /** Whether other instances can exist at all (PostgreSQL) */
  get shared (): boolean {
    return this.#pubsub !== undefined
  }

  async start (): Promise<void> {
    const pubsub = this.#pubsub
    if (!pubsub) return
    const onListen = () => this.emit('listening')
    await pubsub.listen(CHANNELS.events, (payload) => this.#onEvents(payload), onListen)
    await pubsub.listen(CHANNELS.control, (payload) => this.#onControl(payload), () => {})
  }

  /** An instance id of this process (each registration adds one). */
  addOwnId (id: string): void {
    this.#ownIds.add(id)
  }

  /**
   * After a commit: these sessions have new events. Never waited for; a lost ring is caught up.
   * While one ring is on its way, what comes meanwhile is merged into the next (as the event log's
   * group commit does): an idle service rings at once, a busy one rings less often with more in it.
   */
  ringEvents (ranges: StoredRange[]): void {
    if (!this.#pubsub || ranges.length === 0) return
    for (const [sid, first, last] of ranges) {
      const known = this.#unrung.get(sid)
      this.#unrung.set(sid, known ? [Math.min(known[0], first), Math.max(known[1], last)] : [first, last])
    }
    if (!this.#ringing) this.#ring()
  }

  #ring (): void {
    const pubsub = this.#pubsub
    const self = this.#self()
    if (!pubsub || self === null || this.#unrung.size === 0) {
      this.#ringing = false
      return
    }
    this.#ringing = true
    const payloads: string[] = []
    let payload = self
    for (const [sid, [first, last]] of this.#unrung) {
      const entry = `;${sid}:${first}-${last}`
      if (payload.length + entry.length > MAX_PAYLOAD) {
        payloads.push(payload)
        payload = self
      }
      payload += entry
    }
    payloads.push(payload)
    this.#unrung.clear()
    Promise.all(payloads.map((text) => pubsub.notify(CHANNELS.events, text)))
      .catch((err: Error) => this.#warn(err, 'event notice not sent'))
      .finally(() => this.#ring())
  }

  /** Asks the instance `to` to act on one of its sessions. */
  async control (to: string, message: ControlMessage): Promise<void> {
    if (!this.#pubsub) return
    await this.#pubsub.notify(CHANNELS.control, JSON.stringify({ to, ...message }))
  }

  #onEvents (payload: string): void {
    const [from, ...entries] = payload.split(';')
    if (from === undefined || this.#ownIds.has(from)) return
    const ranges: StoredRange[] = []
    for (const entry of entries) {
      const match = /^([0-9a-f-]{36}):(\d+)-(\d+)$/.exec(entry)
      if (match) ranges.push([match[1]!, Number(match[2]), Number(match[3])])
    }
    if (ranges.length > 0) this.emit('events', ranges)
  }

  #onControl (payload: string): void {
    let message: ControlMessage & { to?: unknown }
    try {
      message = JSON.parse(payload) as ControlMessage & { to?: unknown }
    } catch {
      return
    }
    // addressed to this instance as it is now: what was sent to an id it lost concerns nobody
    if (message.to !== this.#self() || typeof message.sid !== 'string') return
    this.emit('control', message)
  }

  /** One warning per minute at most: a database away would otherwise log one per commit. */
  #warn (err: Error, msg: string): void {
    const now = Date.now()
    if (now - this.#warned < 60_000) return
    this.#warned = now
    this.#log.warn({ err }, msg)
  }
}
