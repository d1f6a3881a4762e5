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
 */
export class HeartbeatBatcher {
  readonly #execute: Execute
  #queue: Waiting[] = []
  #scheduled = false

  constructor (execute: Execute) {
    this.#execute = execute
  }

  /** Null when nothing was written for this session (coalesced, wrong version, ended, unknown). */
  write (request: HeartbeatRequest): Promise<HeartbeatWrite | null> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ request, resolve, reject })
      if (!this.#scheduled) {
        this.#scheduled = true
        setImmediate(() => { this.#flush() })
      }
    })
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
    if (later.length > 0) {
      this.#queue.push(...later)
      this.#scheduled = true
      setImmediate(() => { this.#flush() })
    }
    const waiting = [...batch.values()]
    const now = waiting.reduce((max, w) => (w.request.now > max ? w.request.now : max), waiting[0]!.request.now)
    this.#execute({ now, items: waiting.map((w) => ({ id: w.request.id, v: w.request.versions })) }).then((rows) => {
      const byId = new Map(rows.map((r) => [r.id, r]))
      for (const w of waiting) w.resolve(byId.get(w.request.id) ?? null)
    }, (err: Error) => {
      for (const w of waiting) w.reject(err)
    })
  }
}
