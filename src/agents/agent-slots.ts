/**
 * The cap on live agent processes. A start takes a slot; at the cap the caller is told to make
 * room (evict an idle agent) or waits its turn, first come first served.
 */
export class AgentSlots {
  readonly #max: number
  #used = 0
  readonly #waiters: (() => void)[] = []

  constructor (max: number) {
    this.#max = max
  }

  get used (): number { return this.#used }
  get waiting (): number { return this.#waiters.length }

  /** Takes a slot if one is free and nobody queues ahead. */
  tryAcquire (): boolean {
    if (this.#used < this.#max && this.#waiters.length === 0) {
      this.#used++
      return true
    }
    return false
  }

  /** Waits for a slot in FIFO order; the signal abandons the wait. */
  acquire (signal?: AbortSignal): Promise<void> {
    if (this.tryAcquire()) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const grant = () => {
        signal?.removeEventListener('abort', abort)
        resolve()
      }
      const abort = () => {
        const i = this.#waiters.indexOf(grant)
        if (i !== -1) this.#waiters.splice(i, 1)
        reject(signal?.reason ?? new Error('aborted'))
      }
      signal?.addEventListener('abort', abort, { once: true })
      this.#waiters.push(grant)
    })
  }

  release (): void {
    const next = this.#waiters.shift()
    // the slot passes straight to the next waiter: the count stays
    if (next) next()
    else this.#used = Math.max(0, this.#used - 1)
  }
}
