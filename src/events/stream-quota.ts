/**
 * Open stream connections per user, at most `limit` at once (`MAX_STREAMS_PER_USER`). A slot is
 * taken when an upgrade is let through, so concurrent upgrades of one user cannot overshoot, and
 * given back exactly once when that connection ends, however it ends. In-process: each instance
 * of the service counts its own connections.
 */
export class StreamQuota {
  readonly limit: number
  readonly #open = new Map<string, number>()

  constructor (limit: number) {
    this.limit = limit
  }

  /** A slot for `user`: the function that gives it back (idempotent), or undefined at the limit. */
  tryAcquire (user: string): (() => void) | undefined {
    const open = this.#open.get(user) ?? 0
    if (open >= this.limit) return undefined
    this.#open.set(user, open + 1)
    let released = false
    return () => {
      if (released) return
      released = true
      const left = (this.#open.get(user) ?? 1) - 1
      if (left > 0) this.#open.set(user, left)
      else this.#open.delete(user)
    }
  }
}
