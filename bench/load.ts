import { Worker } from 'node:worker_threads'
import type { LoadMessage } from './load-worker.js'

export interface LoadRequest {
  method: 'GET' | 'POST'
  path: string
}

/** One autocannon run; only 2xx responses count as served. */
export interface LoadSummary {
  ok: number
  non2xx: number
  errors: number
  timeouts: number
  durationS: number
  /** 2xx responses per second */
  rps: number
  p50: number
  p99: number
  meanLatency: number
  statusCodes: Record<string, number>
}

export interface LoadOptions {
  url: string
  connections: number
  durationS: number
  warmupS: number
  requests: LoadRequest[][]
  /** requests per second from all connections together (autocannon's overallRate); unpaced if unset */
  rate?: number | undefined
}

type Reply = { id: number, summary: LoadSummary } | { id: number, error: string }

/**
 * The load generator: one worker thread running autocannon. A worker with a .ts entry needs tsx
 * registered inside it first (Node 20 does not pass the parent's loader hooks on).
 */
export class LoadDriver {
  readonly #worker: Worker
  readonly #pending = new Map<number, { resolve: (s: LoadSummary) => void, reject: (e: Error) => void }>()
  #nextId = 0

  constructor () {
    const api = import.meta.resolve('tsx/esm/api')
    const entry = new URL('./load-worker.ts', import.meta.url).href
    const code = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}) })`
    this.#worker = new Worker(code, { eval: true })
    this.#worker.on('message', (reply: Reply) => {
      const waiter = this.#pending.get(reply.id)
      this.#pending.delete(reply.id)
      if (!waiter) return
      if ('error' in reply) waiter.reject(new Error(reply.error))
      else waiter.resolve(reply.summary)
    })
    this.#worker.on('error', (err) => {
      for (const waiter of this.#pending.values()) waiter.reject(err)
      this.#pending.clear()
    })
  }

  async #once (opts: LoadOptions, durationS: number): Promise<LoadSummary> {
    const id = this.#nextId++
    const msg: LoadMessage = { id, url: opts.url, connections: opts.connections, durationS, requests: opts.requests, rate: opts.rate }
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject })
      this.#worker.postMessage(msg)
    })
  }

  /** A short warm-up (discarded: JIT, statement caches, pools), then the measured run. */
  async run (opts: LoadOptions): Promise<LoadSummary> {
    if (opts.warmupS > 0) await this.#once(opts, opts.warmupS)
    return this.#once(opts, opts.durationS)
  }

  async close (): Promise<void> {
    await this.#worker.terminate()
  }
}

/** Two runs of the same figure as one: rates over the total time, the worse p99. */
export function combine (a: LoadSummary, b: LoadSummary): LoadSummary {
  const statusCodes = { ...a.statusCodes }
  for (const [code, n] of Object.entries(b.statusCodes)) statusCodes[code] = (statusCodes[code] ?? 0) + n
  const ok = a.ok + b.ok
  const durationS = a.durationS + b.durationS
  return {
    ok,
    non2xx: a.non2xx + b.non2xx,
    errors: a.errors + b.errors,
    timeouts: a.timeouts + b.timeouts,
    durationS,
    rps: ok / durationS,
    p50: (a.p50 + b.p50) / 2,
    p99: Math.max(a.p99, b.p99),
    meanLatency: (a.meanLatency * a.ok + b.meanLatency * b.ok) / Math.max(1, ok),
    statusCodes
  }
}
