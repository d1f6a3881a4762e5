// Everything a section starts is closed, in reverse order, whatever happens.

/** Things started in a section, closed in reverse order whatever happens (each at most once). */
export class Closers {
  readonly #fns: (() => Promise<void>)[] = []
  /** registers `fn` and returns it, wrapped so that closing it early is not repeated at the end */
  push (fn: () => Promise<void>): () => Promise<void> {
    let done: Promise<void> | undefined
    const once = () => (done ??= fn())
    this.#fns.push(once)
    return once
  }

  async closeAll () {
    for (const fn of this.#fns.reverse()) {
      try {
        await fn()
      } catch (err) {
        console.error('  (cleanup failed)', err)
      }
    }
    this.#fns.length = 0
  }
}
