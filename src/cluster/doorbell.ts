import { EventEmitter } from 'node:events'
import type { PubSub } from '../db/database.js'
import type { Log } from '../logger.js'
import { decodeEventNotice, encodeEventNotices, EVENTS_CHANNEL, mergeRuns, type StoredRun } from './event-notice.js'

/** What one instance asks of the owner of a session (the rows say the rest). */
export type ControlMessage =
  /** the session's row or queue changed here: re-read it (stop an agent it no longer owns, deliver what is queued, apply settings) */
  | { op: 'sync', sid: string, release?: boolean }
  | { op: 'interrupt', sid: string, deliverQueued: boolean }
  /** a permission request of the owner's agent was answered here; the answer is the event at `seq` */
  | { op: 'answered', sid: string, requestId: string, seq: number }

export interface DoorbellEvents {
  /** another instance stored events of these sessions (with their frames, when small) */
  events: [StoredRun[]]
  control: [ControlMessage]
  /** (re)connected: whatever was rung meanwhile is lost, so listeners catch up from the tables */
  listening: []
}

const CHANNELS = { events: EVENTS_CHANNEL, control: 'mv_ctl' } as const
/**
 * Rings on the wire at once (pipelined on the notice connection, so they arrive in order): a
 * commit rings without waiting for the previous ring's round trip, and a database that slows
 * down gets fewer, fuller notices instead of a growing queue.
 */
export const RINGS_IN_FLIGHT = 4

/**
 * LISTEN/NOTIFY between the instances on one PostgreSQL, as a doorbell: a notice says "look at
 * the tables" and may be lost (nothing is kept for a listener that is reconnecting), so everyone
 * who listens also catches up on `listening` and polls now and then. An event notice also carries
 * the frames of small runs (src/cluster/event-notice.ts), which spares the receiver a read of
 * what it would read anyway; the tables stay the truth. On PGlite (one instance by construction)
 * it rings nobody.
 */
export class Doorbell extends EventEmitter<DoorbellEvents> {
  readonly #pubsub: PubSub | undefined
  readonly #log: Log
  readonly #self: () => string | null
  /** every id this process has had: a notice from any of them is its own */
  readonly #ownIds = new Set<string>()
  /** sessions stored since the last ring went out */
  readonly #unrung = new Map<string, StoredRun>()
  #inFlight = 0
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

  /**
   * The id to sign event notices with, for a statement that sends its own (the event log's
   * appends): null when there is nobody to tell (PGlite) or no id (the lease lost).
   */
  noticeFrom (): string | null {
    return this.#pubsub ? this.#self() : null
  }

  /** An instance id of this process (each registration adds one). */
  addOwnId (id: string): void {
    this.#ownIds.add(id)
  }

  /**
   * After a commit: these sessions have new events. Never waited for; a lost ring is caught up.
   * While RINGS_IN_FLIGHT rings are on their way, what comes meanwhile is merged into the next (as
   * the event log's group commit does).
   */
  ringEvents (runs: StoredRun[]): void {
    if (!this.#pubsub || runs.length === 0) return
    for (const run of runs) {
      const known = this.#unrung.get(run.sessionId)
      this.#unrung.set(run.sessionId, known ? mergeRuns(known, run) : run)
    }
    this.#ring()
  }

  #ring (): void {
    const pubsub = this.#pubsub
    const self = this.#self()
    // without an id (the lease lost) what is unrung waits for the next commit
    if (!pubsub || self === null || this.#unrung.size === 0 || this.#inFlight >= RINGS_IN_FLIGHT) return
    this.#inFlight++
    const notices = encodeEventNotices(self, [...this.#unrung.values()])
    this.#unrung.clear()
    pubsub.notify(CHANNELS.events, notices)
      .catch((err: Error) => this.#warn(err, 'event notice not sent'))
      .finally(() => {
        this.#inFlight--
        this.#ring()
      })
  }

  /** Asks the instance `to` to act on one of its sessions. */
  async control (to: string, message: ControlMessage): Promise<void> {
    if (!this.#pubsub) return
    await this.#pubsub.notify(CHANNELS.control, [JSON.stringify({ to, ...message })])
  }

  #onEvents (payload: string): void {
    const { from, runs } = decodeEventNotice(payload)
    if (this.#ownIds.has(from)) return
    if (runs.length > 0) this.emit('events', runs)
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
