import type { SessionState } from '../domain/state-machine.js'

export interface LivenessEntry {
  state: SessionState
  version: number
  expiresAt: Date
  ttlSeconds: number
  cachedAt: number
}

/**
 * What a coalesced heartbeat needs to answer without touching the database. This instance's
 * lifecycle manager invalidates an entry on every write it makes; entries also age out quickly so
 * a change made by another instance is seen within MAX_AGE_MS.
 */
export class LivenessCache {
  static readonly MAX_AGE_MS = 5000
  readonly #entries = new Map<string, LivenessEntry>()
  readonly #maxEntries: number

  constructor (maxEntries = 100_000) {
    this.#maxEntries = maxEntries
  }

  get (id: string, nowMs: number): LivenessEntry | undefined {
    const entry = this.#entries.get(id)
    if (entry && nowMs - entry.cachedAt > LivenessCache.MAX_AGE_MS) {
      this.#entries.delete(id)
      return undefined
    }
    return entry
  }

  set (id: string, entry: LivenessEntry): void {
    this.#entries.delete(id)
    if (this.#entries.size >= this.#maxEntries) {
      // Map iteration order is insertion order: the first key is the oldest entry
      const oldest = this.#entries.keys().next().value
      if (oldest !== undefined) this.#entries.delete(oldest)
    }
    this.#entries.set(id, entry)
  }

  delete (id: string): void {
    this.#entries.delete(id)
  }

  get size (): number {
    return this.#entries.size
  }
}
