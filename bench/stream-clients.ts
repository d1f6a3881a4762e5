import { Worker } from 'node:worker_threads'
import type { CollectResult, ResumeResult, StreamCommand } from './stream-worker.js'

type Reply = { id: number, result: unknown } | { id: number, error: string }
type Without<T> = T extends unknown ? Omit<T, 'id'> : never

/** A group of WebSocket clients living in the stream worker. */
export interface ClientGroup {
  /** waits until every client has `expected` benchmark lines (or is closed, or the time is up) */
  collect (expected: number, timeoutMs: number): Promise<CollectResult>
  /** client 0 POSTs `body` to `url` and times the first agent frame and the result */
  resume (url: string, body: string, timeoutMs: number): Promise<ResumeResult>
  /** forgets the latencies recorded so far (those of a start-up phase) */
  resetLatency (): Promise<void>
  close (): Promise<void>
}

/**
 * The WebSocket clients of the stream figures, in one worker thread (tsx registered inside it, as
 * in LoadDriver), so that they do not share the event loop of the server they measure.
 */
export class StreamClients {
  readonly #worker: Worker
  readonly #pending = new Map<number, { resolve: (r: unknown) => void, reject: (e: Error) => void }>()
  #nextId = 0
  #nextHandle = 0

  constructor () {
    const api = import.meta.resolve('tsx/esm/api')
    const entry = new URL('./stream-worker.ts', import.meta.url).href
    const code = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}) })`
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

  #call<T> (msg: Without<StreamCommand>): Promise<T> {
    const id = this.#nextId++
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (r: unknown) => void, reject })
      this.#worker.postMessage({ ...msg, id })
    })
  }

  /** Opens `clients` WebSockets to `url`; resolves once all are open. */
  async open (url: string, clients: number, opts: { latency?: boolean } = {}): Promise<ClientGroup> {
    const handle = this.#nextHandle++
    const group: ClientGroup = {
      collect: (expected, timeoutMs) => this.#call<CollectResult>({ cmd: 'collect', handle, expected, timeoutMs }),
      resume: (postUrl, body, timeoutMs) => this.#call<ResumeResult>({ cmd: 'resume', handle, url: postUrl, body, timeoutMs }),
      resetLatency: () => this.#call<void>({ cmd: 'resetLatency', handle }),
      close: () => this.#call<void>({ cmd: 'close', handle })
    }
    try {
      await this.#call({ cmd: 'open', handle, url, clients, latency: opts.latency ?? false })
    } catch (err) {
      await group.close().catch(() => {})
      throw err
    }
    return group
  }

  async close (): Promise<void> {
    await this.#worker.terminate()
  }
}
