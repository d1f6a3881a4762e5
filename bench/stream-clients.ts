import type { CollectResult, ResumeResult, StreamCommand } from './stream-worker.js'
import { WorkerRpc } from './worker-rpc.js'

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
 * The WebSocket clients of the stream figures, in one worker thread (see WorkerRpc), so that they
 * do not share the event loop of the server they measure. `headers` go with every upgrade and
 * POST (the bearer token), to the service and the anchors alike.
 */
export class StreamClients {
  readonly #rpc = new WorkerRpc(new URL('./stream-worker.ts', import.meta.url))
  #nextHandle = 0

  constructor (readonly headers: Record<string, string> = {}) {}

  #call<T> (msg: Without<StreamCommand>): Promise<T> {
    return this.#rpc.call<T>(msg)
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
      await this.#call({ cmd: 'open', handle, url, clients, latency: opts.latency ?? false, headers: this.headers })
    } catch (err) {
      await group.close().catch(() => {})
      throw err
    }
    return group
  }

  async close (): Promise<void> {
    await this.#rpc.close()
  }
}
