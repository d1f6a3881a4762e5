import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { readFile, rename, writeFile } from 'node:fs/promises'
import { hostname } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { leaseFresh, leaseLost, leasePlan, type LeasePlan } from '../domain/lease.js'
import type { Log } from '../logger.js'
import type { InstanceRepository } from './instance-repository.js'

export interface InstanceLeaseEvents {
  /** the lease is lost: every agent of this instance must stop now, and it owns nothing */
  lost: [{ id: string, why: string }]
  /** registered (again) under a new id: it may own sessions from now on */
  registered: [{ id: string }]
}

/** The file in the data directory that names the instance running on it. */
const ID_FILE = 'instance-id'

/**
 * This process as one instance of the service on a shared database: a row it renews (its lease).
 * While the lease holds, `id` names it and it may own sessions; when a renewal has not succeeded
 * for three quarters of the lease (the database is away, the process was frozen) or its row was
 * stopped by a peer, it emits `lost` at once, owns nothing, and registers again under a new id as
 * soon as it can. The id of the previous instance on the same data directory (gone for sure:
 * the data directory's lock says so) is kept, so that start-up takes over exactly what it left.
 */
export class InstanceLease extends EventEmitter<InstanceLeaseEvents> {
  readonly plan: LeasePlan
  readonly #repo: InstanceRepository
  readonly #dataDir: string
  readonly #leaseSeconds: number
  readonly #log: Log
  #id: string | null = null
  #lastGoodSentAt = 0
  #timer: NodeJS.Timeout | undefined
  #fenceTimer: NodeJS.Timeout | undefined
  #closed = false
  /** the id this instance lost, until it is registered again */
  #lost: string | null = null

  readonly #fencing: boolean

  /**
   * `fencing`: whether other instances may take this one's sessions over (a shared PostgreSQL).
   * Without them (PGlite, one instance by construction) a late renewal costs nothing: the lease
   * is never given up, whatever the database's delays.
   */
  constructor (opts: { repo: InstanceRepository, dataDir: string, leaseSeconds: number, logger: Log, fencing: boolean }) {
    super()
    this.#fencing = opts.fencing
    this.#repo = opts.repo
    this.#dataDir = opts.dataDir
    this.#leaseSeconds = opts.leaseSeconds
    this.#log = opts.logger
    this.plan = leasePlan(opts.leaseSeconds)
  }

  /** This instance's id while its lease holds; null while it has none (lost, not yet registered again). */
  get id (): string | null {
    return this.#id
  }

  /** The lease is held and was renewed lately (the agents' watchdog is fed only then). */
  fresh (): boolean {
    return this.#id !== null && (!this.#fencing || leaseFresh(this.plan, this.#lastGoodSentAt, performance.now()))
  }

  /**
   * Registers this instance; returns the id of the previous instance on this data directory, if
   * one ran here before. Renewals start.
   */
  async start (): Promise<{ id: string, previous: string | null }> {
    const previous = await this.#previousId()
    const id = await this.#register()
    this.#schedule()
    return { id, previous }
  }

  async #previousId (): Promise<string | null> {
    try {
      const text = (await readFile(join(this.#dataDir, ID_FILE), 'utf8')).trim()
      return /^[0-9a-f-]{36}$/.test(text) ? text : null
    } catch {
      return null
    }
  }

  async #register (): Promise<string> {
    const id = randomUUID()
    const sentAt = performance.now()
    await this.#repo.register({ id, host: hostname(), pid: process.pid, dataDir: this.#dataDir, leaseSeconds: this.#leaseSeconds })
    // whole or not at all: a start that reads a half-written id would take over nothing
    const file = join(this.#dataDir, ID_FILE)
    await writeFile(`${file}.tmp`, id)
    await rename(`${file}.tmp`, file)
    this.#id = id
    this.#renewed(sentAt)
    this.#log.info({ instanceId: id, leaseSeconds: this.#leaseSeconds }, 'instance registered')
    return id
  }

  #schedule (): void {
    if (this.#closed) return
    this.#timer = setTimeout(() => { this.#tick().finally(() => this.#schedule()) }, this.plan.renewEveryMs)
    this.#timer.unref()
  }

  async #tick (): Promise<void> {
    const sentAt = performance.now()
    try {
      if (this.#id === null) {
        const id = await this.#register()
        // the lost id is dead for good: its sessions may be taken over now, not after its lease
        const lost = this.#lost
        this.#lost = null
        this.emit('registered', { id })
        if (lost !== null) await this.#repo.stop(lost).catch((err: Error) => this.#log.warn({ err }, 'could not mark the lost instance id stopped: its lease runs out by itself'))
        return
      }
      const id = this.#id
      const renewed = await this.#repo.renew(id, !this.#fencing)
      const tookMs = performance.now() - sentAt
      // a renewal slower than half its period eats into the margin before the fence: worth a look
      if (this.#fencing && tookMs > this.plan.renewEveryMs / 2) this.#log.warn({ instanceId: id, tookMs: Math.round(tookMs) }, 'instance lease renewal slow')
      if (renewed) {
        if (this.#id === id) this.#renewed(sentAt)
      } else {
        this.#lose('its row was stopped: a peer judged it dead')
      }
    } catch (err) {
      this.#log.warn({ err, instanceId: this.#id }, 'instance lease renewal failed')
    }
  }

  /** A renewal sent at `sentAt` succeeded: the lease is lost at the fence time after it, unless renewed again. */
  #renewed (sentAt: number): void {
    this.#lastGoodSentAt = sentAt
    clearTimeout(this.#fenceTimer)
    if (!this.#fencing) return
    this.#fenceTimer = setTimeout(() => this.#checkFence(), Math.max(0, sentAt + this.plan.fenceAfterMs - performance.now()))
    this.#fenceTimer.unref()
  }

  #checkFence (): void {
    if (this.#id !== null && leaseLost(this.plan, this.#lastGoodSentAt, performance.now())) {
      this.#lose(`no renewal succeeded for ${Math.round(performance.now() - this.#lastGoodSentAt)} ms`)
    }
  }

  #lose (why: string): void {
    const id = this.#id
    if (id === null) return
    this.#id = null
    this.#lost = id
    clearTimeout(this.#fenceTimer)
    this.#log.error({ instanceId: id, why }, 'instance lease lost: its agents are stopped and it owns nothing until it registers again')
    this.emit('lost', { id, why })
  }

  /** Shutdown, once this instance has handed its sessions back: peers need not wait for the lease. */
  async close (): Promise<void> {
    this.#closed = true
    clearTimeout(this.#timer)
    clearTimeout(this.#fenceTimer)
    const id = this.#id
    this.#id = null
    if (id !== null) await this.#repo.stop(id).catch((err: Error) => this.#log.warn({ err }, 'could not mark the instance stopped'))
  }
}
