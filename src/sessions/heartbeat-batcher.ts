import type { SessionState } from '../domain/state-machine.js'

export interface HeartbeatRequest {
  id: string
  now: Date
  /** null: any version; otherwise the versions the client's If-Match names */
  versions: number[] | null
}

export interface HeartbeatWrite {
  id: string
  state: SessionState
  version: number
  expiresAt: Date
  ttlSeconds: number
}

type Execute = (batch: { now: Date, items: { id: string, v: number[] | null }[] }) => Promise<HeartbeatWrite[]>

interface Waiting {
  request: HeartbeatRequest
  resolve: (w: HeartbeatWrite | null) => void
  reject: (err: Error) => void
}

/**
 * Heartbeats that arrive together are written together: one UPDATE (one commit) for everything
 * that came in during the same tick, each caller still getting its own row back. A fleet of phones
 * pinging at once costs a statement per tick, not one per phone.
 *
 * With `maxInFlight`, at most that many statements run at once and what arrives meanwhile waits
 * for the next one (group commit). PGlite runs one statement at a time anyway: there, statements
 * queued behind each other would each pay their own overhead for a handful of rows.
 */
export class HeartbeatBatcher {
  readonly #execute: Execute
  readonly #maxInFlight: number
  #queue: Waiting[] = []
  #scheduled = false
  #inFlight = 0

  constructor (execute: Execute, opts: { maxInFlight?: number } = {}) {
    this.#execute = execute
    this.#maxInFlight = opts.maxInFlight ?? Infinity
  }

  /** Null when nothing was written for this session (coalesced, wrong version, ended, unknown). */
  write (request: HeartbeatRequest): Promise<HeartbeatWrite | null> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ request, resolve, reject })
      this.#schedule()
    })
  }

  #schedule (): void {
    if (this.#scheduled || this.#queue.length === 0 || this.#inFlight >= this.#maxInFlight) return
    this.#scheduled = true
    setImmediate(() => { this.#flush() })
  }

  #flush (): void {
    this.#scheduled = false
    const queue = this.#queue
    this.#queue = []
    // one row per session per statement: a second ping for the same session waits for the next one
    const batch = new Map<string, Waiting>()
    const later: Waiting[] = []
    for (const w of queue) {
      if (batch.has(w.request.id)) later.push(w)
      else batch.set(w.request.id, w)
    }
    this.#queue.push(...later)
    const waiting = [...batch.values()]
    const now = waiting.reduce((max, w) => (w.request.now > max ? w.request.now : max), waiting[0]!.request.now)
    this.#inFlight++
    this.#execute({ now, items: waiting.map((w) => ({ id: w.request.id, v: w.request.versions })) }).then((rows) => {
      const byId = new Map(rows.map((r) => [r.id, r]))
      for (const w of waiting) w.resolve(byId.get(w.request.id) ?? null)
    }, (err: Error) => {
      for (const w of waiting) w.reject(err)
    }).finally(() => {
      this.#inFlight--
      this.#schedule()
    })
    this.#schedule()
  }
}
