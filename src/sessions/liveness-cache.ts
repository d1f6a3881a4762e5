import type { SessionState } from '../domain/state-machine.js'

export interface LivenessEntry {
  state: SessionState
  version: number
  expiresAt: Date
  ttlSeconds: number
  cachedAt: number
}

/** A database read in flight whose answer may go into the cache, unless a write came meanwhile. */
export interface LivenessRead {
  readonly id: string
  /** a write invalidated the entry while the read was in flight: its answer may be older */
  stale: boolean
}

/**
 * What a coalesced heartbeat needs to answer without touching the database. This instance's
 * lifecycle manager invalidates an entry on every write it makes; entries also age out quickly so
 * a change made by another instance is seen within MAX_AGE_MS. A read that a write overtook
 * (the read's statement ran before the write committed, its answer arrived after) is not cached:
 * it would serve the replaced version until it aged out.
 */
export class LivenessCache {
  static readonly MAX_AGE_MS = 5000
  readonly #entries = new Map<string, LivenessEntry>()
  /** reads in flight, by session: only sessions being read right now have an entry */
  readonly #reads = new Map<string, Set<LivenessRead>>()
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
    const reads = this.#reads.get(id)
    if (reads) for (const read of reads) read.stale = true
  }

  /** Call before reading the database for `id`; end it with endRead, whatever happens. */
  beginRead (id: string): LivenessRead {
    const read = { id, stale: false }
    let reads = this.#reads.get(id)
    if (!reads) {
      reads = new Set()
      this.#reads.set(id, reads)
    }
    reads.add(read)
    return read
  }

  /** The read is over; its answer (if any) is cached unless a write invalidated it meanwhile. */
  endRead (read: LivenessRead, entry?: LivenessEntry): void {
    const reads = this.#reads.get(read.id)
    reads?.delete(read)
    if (reads?.size === 0) this.#reads.delete(read.id)
    if (entry && !read.stale) this.set(read.id, entry)
  }

  /** reads in flight (for tests: nothing may be left once requests are answered) */
  get readsInFlight (): number {
    let n = 0
    for (const reads of this.#reads.values()) n += reads.size
    return n
  }

  get size (): number {
    return this.#entries.size
  }
}
