/**
 * Local stand-ins for the push providers, on 127.0.0.1: the Expo push API, a Web Push endpoint and
 * a webhook receiver. Each records the requests it gets and answers from a script (one answer per
 * request, in order, then the default), so that a test can make a provider fail, then recover, or
 * report a device gone. `next()` waits for the next request: tests await requests, never sleep.
 */
import { createHmac, timingSafeEqual } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { gunzipSync } from 'node:zlib'
import type { Test } from 'tap'

export interface Recorded {
  method: string
  path: string
  headers: IncomingHttpHeaders
  body: Buffer
  at: number
}

export interface Answer {
  status: number
  headers?: Record<string, string>
  /** JSON-encoded unless a string */
  body?: unknown
}

export interface FakeProvider {
  /** `http://127.0.0.1:<port>` */
  url: string
  requests: Recorded[]
  /** answers for the next requests, in order; afterwards `fallback` */
  script: Answer[]
  /** resolves with the next request not yet taken by `next()` */
  next (timeoutMs?: number): Promise<Recorded>
}

/** An HTTP server that records every request and answers `script`, then `fallback(request)`. */
async function fakeServer (t: Test, fallback: (r: Recorded) => Answer): Promise<FakeProvider> {
  const requests: Recorded[] = []
  const script: Answer[] = []
  let taken = 0
  const waiters: Array<() => void> = []
  const server = createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      let body = Buffer.concat(chunks)
      if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body)
      const recorded: Recorded = { method: req.method ?? '', path: req.url ?? '', headers: req.headers, body, at: Date.now() }
      requests.push(recorded)
      const answer = script.shift() ?? fallback(recorded)
      const text = answer.body === undefined ? '' : typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body)
      res.writeHead(answer.status, { 'content-type': 'application/json', ...answer.headers })
      res.end(text)
      for (const wake of waiters.splice(0)) wake()
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    script,
    async next (timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs
      while (requests.length <= taken) {
        if (Date.now() > deadline) throw new Error(`no request reached the fake provider within ${timeoutMs} ms (${requests.length} so far)`)
        await Promise.race([
          new Promise<void>((resolve) => waiters.push(resolve)),
          new Promise((resolve) => setTimeout(resolve, Math.max(1, deadline - Date.now())))
        ])
      }
      return requests[taken++]!
    }
  }
}

export interface ExpoMessage { to: string, title?: string, body?: string, data?: Record<string, unknown>, priority?: string }

/** The messages of a request to the fake Expo API. */
export const expoMessages = (r: Recorded): ExpoMessage[] => JSON.parse(r.body.toString('utf8')) as ExpoMessage[]

/** The Expo push API: `{data: [{status: "ok", id}]}` for every message unless scripted. */
export async function fakeExpo (t: Test): Promise<FakeProvider> {
  return fakeServer(t, (r) => ({ status: 200, body: { data: expoMessages(r).map((_, i) => ({ status: 'ok', id: `ticket-${i}` })) } }))
}

/** Expo's answer for a token that is no longer registered. */
export const EXPO_DEVICE_NOT_REGISTERED: Answer = {
  status: 200,
  body: { data: [{ status: 'error', message: '"ExponentPushToken[x]" is not a registered push notification recipient', details: { error: 'DeviceNotRegistered' } }] }
}

/** A Web Push endpoint (push service): 201 Created unless scripted. */
export async function fakeWebPush (t: Test): Promise<FakeProvider> {
  return fakeServer(t, () => ({ status: 201 }))
}

/** A webhook receiver: 204 unless scripted. */
export async function fakeWebhook (t: Test): Promise<FakeProvider> {
  return fakeServer(t, () => ({ status: 204 }))
}

/** What a webhook receiver checks, as docs/PUSH.md tells it: the signature over the raw body, in constant time. */
export function verifyWebhook (r: Recorded, secret: string): boolean {
  const header = r.headers['x-mobvibe-signature']
  if (typeof header !== 'string' || !header.startsWith('sha256=')) return false
  const expected = Buffer.from(createHmac('sha256', secret).update(r.body).digest('hex'))
  const given = Buffer.from(header.slice('sha256='.length))
  return given.length === expected.length && timingSafeEqual(given, expected)
}
