// The phone figures' clients, in their own thread (not on the service's event loop): a phone on a
// session's stream that answers every permission request at once, and a webhook receiver standing
// in for a push provider. Times are wall-clock ms with sub-ms precision (performance.timeOrigin +
// performance.now()), the clock of the benchmark agent's `input.t` and result `t`.
import { createHmac } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { parentPort } from 'node:worker_threads'
import WebSocket from 'ws'

export type PhoneCommand =
  | { id: number, cmd: 'open', handle: number, url: string, headers: Record<string, string> }
  | { id: number, cmd: 'run', handle: number, post: { url: string, body: string, headers: Record<string, string> } | null, timeoutMs: number }
  | { id: number, cmd: 'close', handle: number }
  | { id: number, cmd: 'receiverStart', secret: string }
  | { id: number, cmd: 'receiverWait', sessionId: string, afterSeq: number, timeoutMs: number }
  | { id: number, cmd: 'receiverAll' }
  | { id: number, cmd: 'receiverStop' }

export interface AsksResult {
  /** the agent's can_use_tool write (`input.t`) → the `permission_request` frame at the client (ms) */
  toFrame: number[]
  /** the client's `permission` frame sent → the agent read the `control_response` line (ms) */
  toAgent: number[]
  /** the client's `permission` frame sent → the `permission` reply at the client (ms) */
  toReply: number[]
  /** `permission_request` frames received */
  asked: number
  /** answers the agent read, and how many of them allowed */
  answered: number
  allowed: number
  /** `error` frames (the reply to a refused answer, among others) */
  errors: string[]
  resultOk: boolean
  timedOut: boolean
  /** the socket closed before the result */
  closedEarly: boolean
}

export interface PushRecord {
  /** wall-clock ms when the request's head was read */
  arrival: number
  sessionId: string
  seq: number
  kind: string
  /** X-MobVibe-Signature matched the body with the device's secret */
  signatureOk: boolean
}

const wallMs = () => performance.timeOrigin + performance.now()

interface Phone {
  ws: WebSocket
  r: AsksResult
  /** when each answer was sent, by request id */
  sentAt: Map<string, number>
  done: (() => void) | null
}

const phones = new Map<number, Phone>()

function emptyResult (): AsksResult {
  return { toFrame: [], toAgent: [], toReply: [], asked: 0, answered: 0, allowed: 0, errors: [], resultOk: false, timedOut: false, closedEarly: false }
}

interface Frame {
  seq?: number
  type: string
  requestId?: string
  message?: string
  data?: {
    type?: string
    requestId?: string
    input?: { t?: number }
    is_error?: boolean
    bench_answers?: { requestId: string, readAt: number, behavior?: string }[]
  }
}

function onFrame (p: Phone, raw: Buffer): void {
  const now = wallMs()
  const frame = JSON.parse(raw.toString('utf8')) as Frame
  const { r } = p
  switch (frame.type) {
    case 'permission_request': {
      const requestId = frame.data?.requestId
      const t = frame.data?.input?.t
      if (typeof requestId !== 'string') return
      r.asked++
      if (typeof t === 'number') r.toFrame.push(now - t)
      p.sentAt.set(requestId, wallMs())
      p.ws.send(JSON.stringify({ type: 'permission', requestId, decision: 'allow' }))
      return
    }
    case 'permission': {
      const sent = frame.requestId === undefined ? undefined : p.sentAt.get(frame.requestId)
      if (sent !== undefined) r.toReply.push(now - sent)
      return
    }
    case 'error':
      r.errors.push(frame.message ?? JSON.stringify(frame))
      return
    case 'agent': {
      if (frame.data?.type !== 'result') return
      r.resultOk = frame.data.is_error === false
      for (const a of frame.data.bench_answers ?? []) {
        r.answered++
        if (a.behavior === 'allow') r.allowed++
        const sent = p.sentAt.get(a.requestId)
        if (sent !== undefined) r.toAgent.push(a.readAt - sent)
      }
      p.done?.()
    }
  }
}

async function open (handle: number, url: string, headers: Record<string, string>): Promise<void> {
  const ws = new WebSocket(url, { perMessageDeflate: false, headers })
  const p: Phone = { ws, r: emptyResult(), sentAt: new Map(), done: null }
  phones.set(handle, p)
  ws.on('message', (data: Buffer) => onFrame(p, data))
  ws.on('close', () => {
    p.r.closedEarly = true
    p.done?.()
  })
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve())
    ws.once('error', reject)
  })
}

/** Optionally POSTs the message, then waits for the turn's result (or a close, or the time). */
async function run (p: Phone, post: { url: string, body: string, headers: Record<string, string> } | null, timeoutMs: number): Promise<AsksResult> {
  const ended = new Promise<void>((resolve) => {
    const timer = setTimeout(() => { p.r.timedOut = true; resolve() }, timeoutMs)
    p.done = () => { clearTimeout(timer); resolve() }
  })
  if (post) {
    const res = await fetch(post.url, { method: 'POST', headers: { ...post.headers, 'content-type': 'application/json' }, body: post.body })
    const text = await res.text()
    if (res.status !== 202) {
      p.done?.()
      throw new Error(`POST ${post.url}: ${res.status} ${text.slice(0, 300)}`)
    }
  }
  await ended
  p.done = null
  const r = p.r
  p.r = emptyResult()
  p.sentAt.clear()
  return r
}

async function close (p: Phone | undefined): Promise<void> {
  // a run still waiting ends on the close (closedEarly)
  if (!p || p.ws.readyState === WebSocket.CLOSED) return
  await new Promise<void>((resolve) => {
    p.ws.once('close', () => resolve())
    p.ws.close(1000)
    setTimeout(() => { p.ws.terminate(); resolve() }, 2000).unref()
  })
}

// the webhook receiver
let receiver: { server: Server, secret: string, records: PushRecord[], wake: Set<() => void> } | undefined

async function receiverStart (secret: string): Promise<{ url: string }> {
  if (receiver) throw new Error('the receiver runs already')
  const records: PushRecord[] = []
  const wake = new Set<() => void>()
  const server = createServer((req, res) => {
    const arrival = wallMs()
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8')
      res.writeHead(204).end()
      let parsed: { sessionId?: string, seq?: number, kind?: string } = {}
      try {
        parsed = JSON.parse(body) as typeof parsed
      } catch {}
      const expected = `sha256=${createHmac('sha256', secret).update(body, 'utf8').digest('hex')}`
      records.push({
        arrival,
        sessionId: parsed.sessionId ?? '',
        seq: parsed.seq ?? 0,
        kind: parsed.kind ?? '',
        signatureOk: req.headers['x-mobvibe-signature'] === expected
      })
      for (const w of wake) w()
    })
  })
  server.keepAliveTimeout = 60_000
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  receiver = { server, secret, records, wake }
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/push` }
}

/** The first push for the session past `afterSeq`, or null after `timeoutMs`. */
async function receiverWait (sessionId: string, afterSeq: number, timeoutMs: number): Promise<PushRecord | null> {
  const rec = receiver
  if (!rec) throw new Error('no receiver')
  const find = () => rec.records.find((r) => r.sessionId === sessionId && r.seq > afterSeq) ?? null
  const found = find()
  if (found) return found
  return new Promise((resolve) => {
    const check = () => {
      const hit = find()
      if (!hit) return
      done(hit)
    }
    const timer = setTimeout(() => done(null), timeoutMs)
    const done = (r: PushRecord | null) => {
      clearTimeout(timer)
      rec.wake.delete(check)
      resolve(r)
    }
    rec.wake.add(check)
  })
}

async function receiverStop (): Promise<void> {
  const rec = receiver
  receiver = undefined
  if (!rec) return
  rec.server.closeAllConnections()
  await new Promise<void>((resolve) => rec.server.close(() => resolve()))
}

async function handle (msg: PhoneCommand): Promise<unknown> {
  switch (msg.cmd) {
    case 'open':
      await open(msg.handle, msg.url, msg.headers)
      return {}
    case 'run': {
      const p = phones.get(msg.handle)
      if (!p) throw new Error('no phone')
      return run(p, msg.post, msg.timeoutMs)
    }
    case 'close':
      await close(phones.get(msg.handle))
      phones.delete(msg.handle)
      return {}
    case 'receiverStart':
      return receiverStart(msg.secret)
    case 'receiverWait':
      return receiverWait(msg.sessionId, msg.afterSeq, msg.timeoutMs)
    case 'receiverAll':
      return receiver?.records ?? []
    case 'receiverStop':
      await receiverStop()
      return {}
  }
}

parentPort?.on('message', (msg: PhoneCommand) => {
  handle(msg).then(
    (result) => parentPort?.postMessage({ id: msg.id, result }),
    (err: unknown) => parentPort?.postMessage({ id: msg.id, error: String((err as Error)?.stack ?? err) })
  )
})
