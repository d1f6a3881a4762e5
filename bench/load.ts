import type { LoadMessage } from './load-worker.js'
import { WorkerRpc } from './worker-rpc.js'

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

/**
 * The load generator: one worker thread running autocannon. `headers` go with every request, to the
 * service and its anchors alike (the bearer token: the same bytes on both sides).
 */
export class LoadDriver {
  readonly #rpc = new WorkerRpc(new URL('./load-worker.ts', import.meta.url))

  constructor (readonly headers: Record<string, string> = {}) {}

  async #once (opts: LoadOptions, durationS: number): Promise<LoadSummary> {
    const msg: Omit<LoadMessage, 'id'> = { url: opts.url, connections: opts.connections, durationS, requests: opts.requests, rate: opts.rate, headers: this.headers }
    return this.#rpc.call<LoadSummary>(msg)
  }

  /** A short warm-up (discarded: JIT, statement caches, pools), then the measured run. */
  async run (opts: LoadOptions): Promise<LoadSummary> {
    if (opts.warmupS > 0) await this.#once(opts, opts.warmupS)
    return this.#once(opts, opts.durationS)
  }

  async close (): Promise<void> {
    await this.#rpc.close()
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
