import { EventEmitter } from 'node:events'
import type { Log } from '../logger.js'
import type { SessionLifecycleManager } from './lifecycle-manager.js'

export interface SweepResult {
  at: Date
  expired: string[]
  suspended: string[]
  /** active sessions of dead instances, suspended */
  orphaned: string[]
}

export interface TimeoutWorkerEvents {
  sweep: [SweepResult]
}

/**
 * Enforces TTL expiry and idle suspension with one set-based statement each per sweep, and suspends
 * what dead instances left active. Sweeps never
 * overlap: the next one is scheduled when the previous one ends, so the interval bounds precision.
 */
export class SessionTimeoutWorker extends EventEmitter<TimeoutWorkerEvents> {
  readonly #manager: SessionLifecycleManager
  readonly #intervalMs: number
  readonly #log: Log
  readonly #housekeeping: () => Promise<void>
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> | undefined
  #started = false

  constructor (opts: { manager: SessionLifecycleManager, intervalMs: number, logger: Log, housekeeping?: () => Promise<void> }) {
    super()
    this.#manager = opts.manager
    this.#housekeeping = opts.housekeeping ?? (async () => {})
    this.#intervalMs = opts.intervalMs
    this.#log = opts.logger
  }

  /** Starts sweeping; the first sweep runs at once (whatever fell due while the service was down). */
  start (): void {
    if (this.#started) return
    this.#started = true
    this.#schedule(0)
  }

  /** Stops sweeping and waits for a sweep in progress to finish. */
  async stop (): Promise<void> {
    this.#started = false
    clearTimeout(this.#timer)
    this.#timer = undefined
    await this.#running
  }

  /** One sweep now (also what the timer runs). */
  async sweep (now: Date = this.#manager.now()): Promise<SweepResult> {
    await this.#housekeeping()
    const orphaned = await this.#manager.suspendOrphans(now)
    const expired = await this.#manager.checkExpiration(now)
    const suspended = await this.#manager.suspendIdle(now)
    const result = { at: now, expired, suspended, orphaned }
    this.emit('sweep', result)
    return result
  }

  #schedule (delay: number): void {
    this.#timer = setTimeout(() => {
      // a failed sweep (the database away for a moment) is retried at the next tick
      this.#running = this.sweep().then(() => {}, (err: Error) => {
        this.#log.error({ err }, 'timeout sweep failed')
      }).finally(() => {
        this.#running = undefined
        if (this.#started) this.#schedule(this.#intervalMs)
      })
    }, delay)
  }
}
