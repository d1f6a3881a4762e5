import { Worker } from 'node:worker_threads'

type Reply = { id: number, result: unknown } | { id: number, error: string }

/**
 * Request/reply with a worker thread whose entry is a .ts module. tsx is registered inside the
 * worker first: Node 20 does not pass the parent's loader hooks on. The worker answers each
 * `{ id, … }` message with `{ id, result }` or `{ id, error }`.
 */
export class WorkerRpc {
  readonly #worker: Worker
  readonly #pending = new Map<number, { resolve: (r: unknown) => void, reject: (e: Error) => void }>()
  #nextId = 0

  constructor (entry: URL) {
    const api = import.meta.resolve('tsx/esm/api')
    const code = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(entry.href)}) })`
    this.#worker = new Worker(code, { eval: true })
    this.#worker.on('message', (reply: Reply) => {
      const waiter = this.#pending.get(reply.id)
      this.#pending.delete(reply.id)
      if (!waiter) return
      if ('error' in reply) waiter.reject(new Error(reply.error))
      else waiter.resolve(reply.result)
    })
    this.#worker.on('error', (err) => {
      for (const waiter of this.#pending.values()) waiter.reject(err)
      this.#pending.clear()
    })
  }

  call<T> (message: object): Promise<T> {
    const id = this.#nextId++
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (r: unknown) => void, reject })
      this.#worker.postMessage({ ...message, id })
    })
  }

  async close (): Promise<void> {
    await this.#worker.terminate()
  }
}
