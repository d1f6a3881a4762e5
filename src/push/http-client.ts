import { Agent, request } from 'undici'
import { guardedLookup, refuseUrl, type AddressPolicy, type ResolveName } from './address-policy.js'
import { outcomeOfError, outcomeOfStatus, retryAfterMs, type SendOutcome } from './delivery.js'

export interface PostOptions {
  headers: Record<string, string>
  body: string | Buffer
  signal: AbortSignal
  /** the statuses that say the device or receiver is gone for good */
  gone: readonly number[]
}

/**
 * POSTs to the addresses users gave (Web Push endpoints, webhooks): within the address policy,
 * checked before each request and again on each connection's DNS answer; every phase bounded by
 * the timeout; no redirects followed; the response body read only to free the connection.
 */
export class PushHttpClient {
  readonly #policy: AddressPolicy
  readonly #agent: Agent

  /** `resolve`: how host names are resolved, node's DNS lookup unless a test brings its own */
  constructor (opts: { policy: AddressPolicy, timeoutMs: number, resolve?: ResolveName }) {
    this.#policy = opts.policy
    this.#agent = new Agent({
      connect: { timeout: opts.timeoutMs, lookup: guardedLookup(opts.policy, opts.resolve) },
      headersTimeout: opts.timeoutMs,
      bodyTimeout: opts.timeoutMs,
      // a few idle connections per provider host are kept: bursts go to the same few hosts
      connections: 16
    })
  }

  async post (url: string, o: PostOptions): Promise<SendOutcome> {
    const refused = refuseUrl(url, this.#policy)
    if (refused !== null) return { status: 'failed', reason: `the address ${refused}` }
    try {
      const res = await request(url, { method: 'POST', headers: o.headers, body: o.body, signal: o.signal, dispatcher: this.#agent })
      await res.body.dump()
      return outcomeOfStatus(res.statusCode, o.gone, retryAfterMs(res.headers['retry-after']))
    } catch (err) {
      return outcomeOfError(err)
    }
  }

  /** Ends every connection, aborting requests still in flight. */
  async close (): Promise<void> {
    await this.#agent.destroy()
  }
}
