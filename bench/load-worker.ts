// Runs autocannon in its own thread so the load generator does not share the servers' event loop.
import { parentPort } from 'node:worker_threads'
import autocannon, { type Options } from 'autocannon'
import type { LoadRequest, LoadSummary } from './load.js'

export interface LoadMessage {
  id: number
  url: string
  connections: number
  durationS: number
  /** connection i cycles through requests[i % requests.length] */
  requests: LoadRequest[][]
  /** overall requests per second (paced), or undefined for as fast as the server answers */
  rate?: number | undefined
  /** sent with every request (the bearer token) */
  headers?: Record<string, string> | undefined
}

async function runLoad (msg: LoadMessage): Promise<LoadSummary> {
  let next = 0
  const opts: Options = {
    url: msg.url,
    connections: msg.connections,
    duration: msg.durationS,
    timeout: 30,
    ...(msg.rate ? { overallRate: msg.rate } : {}),
    ...(msg.headers ? { headers: msg.headers } : {}),
    setupClient: (client) => {
      client.setRequests(msg.requests[next++ % msg.requests.length]!.map((r) => ({ ...r })))
    }
  }
  const raw = await autocannon(opts)
  // Off the main thread autocannon hands back per-thread data: aggregate it as its manager does
  const r = autocannon.aggregateResult([raw as Record<string, unknown>], opts)
  const statusCodes: Record<string, number> = {}
  for (const [code, { count }] of Object.entries(r.statusCodeStats)) statusCodes[code] = count
  return {
    ok: r['2xx'],
    non2xx: r.non2xx,
    errors: r.errors,
    timeouts: r.timeouts,
    durationS: r.duration,
    rps: r['2xx'] / r.duration,
    p50: r.latency.p50,
    p99: r.latency.p99,
    meanLatency: r.latency.average,
    statusCodes
  }
}

parentPort?.on('message', (msg: LoadMessage) => {
  runLoad(msg).then(
    (result) => parentPort?.postMessage({ id: msg.id, result }),
    (err: unknown) => parentPort?.postMessage({ id: msg.id, error: String((err as Error)?.stack ?? err) })
  )
})
