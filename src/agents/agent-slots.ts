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

  /** Waits for a slot in FIFO order. */
  acquire (): Promise<void> {
    if (this.tryAcquire()) return Promise.resolve()
    return new Promise((resolve) => { this.#waiters.push(resolve) })
  }

  release (): void {
    const next = this.#waiters.shift()
    // the slot passes straight to the next waiter: the count stays
    if (next) next()
    else this.#used = Math.max(0, this.#used - 1)
  }
}
