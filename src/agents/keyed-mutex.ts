/**
 * Runs tasks one at a time per key, in the order they were asked for: one writer per
 * conversation, whatever asks (a message, a restart, a turn's end).
 */
export class KeyedMutex {
  readonly #tails = new Map<string, Promise<void>>()

  run<T> (key: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#tails.get(key) ?? Promise.resolve()
    const run = previous.then(fn, fn)
    const settled = run.then(() => {}, () => {})
    this.#tails.set(key, settled)
    settled.then(() => { if (this.#tails.get(key) === settled) this.#tails.delete(key) })
    return run
  }

  /** Resolves once every task asked for so far under `key` has finished. */
  async settled (key: string): Promise<void> {
    await this.#tails.get(key)
  }
}
