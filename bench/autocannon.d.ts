// The part of autocannon 9's API the benchmark uses (the package ships no types).
declare module 'autocannon' {
  interface Request {
    method?: string
    path?: string
    headers?: Record<string, string>
    body?: string
  }

  interface Client {
    setRequests (requests: Request[]): void
  }

  interface Options {
    url: string
    connections?: number
    duration?: number
    timeout?: number
    overallRate?: number
    headers?: Record<string, string>
    requests?: Request[]
    setupClient?: (client: Client) => void
  }

  interface Histogram {
    average: number
    mean: number
    p50: number
    p90: number
    p99: number
    max: number
  }

  interface Result {
    duration: number
    errors: number
    timeouts: number
    non2xx: number
    '2xx': number
    statusCodeStats: Record<string, { count: number }>
    latency: Histogram
    requests: Histogram & { total: number, sent: number }
  }

  /** A raw per-thread result: in a worker thread autocannon leaves aggregation to the caller. */
  type RawResult = Record<string, unknown>

  interface Instance extends PromiseLike<Result | RawResult> {
    stop (): void
  }

  interface Autocannon {
    (opts: Options): Instance
    aggregateResult (results: RawResult[], opts: Options): Result
  }

  const autocannon: Autocannon
  export default autocannon
  export type { Client, Options, Request, Result }
}
