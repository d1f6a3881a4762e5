// WebSocket clients of the stream figures, in their own thread (not on the servers' event loop).
// Every client does the same work per frame whoever serves it (the service or a raw `ws` anchor):
// read the seq (gap and duplicate check), look for the benchmark marker, and for latency runs the
// write time the agent put in the line (process.hrtime: one monotonic clock for the machine).
import { parentPort } from 'node:worker_threads'
import WebSocket from 'ws'
import { LINE_MARKER, TIME_MARKER } from './agent-lines.mjs'

export type StreamCommand =
  | { id: number, cmd: 'open', handle: number, url: string, clients: number, latency: boolean, headers: Record<string, string> }
  | { id: number, cmd: 'collect', handle: number, expected: number, timeoutMs: number }
  | { id: number, cmd: 'close', handle: number }
  | { id: number, cmd: 'resetLatency', handle: number }
  | { id: number, cmd: 'resume', handle: number, url: string, body: string, timeoutMs: number }

export interface CollectResult {
  clients: number
  /** clients that received every expected line */
  complete: number
  /** clients closed before the end, with the close codes seen */
  dropped: number
  closeCodes: number[]
  /** marked frames received, all clients */
  marked: number
  /** payload bytes of the marked frames, all clients */
  markedBytes: number
  /** first marked frame at any client → last one at any client (ms) */
  windowMs: number
  gaps: number
  duplicates: number
  timedOut: boolean
  /** stdout → client latencies (ms), latency runs only */
  latency?: { count: number, p50: number, p99: number, max: number, mean: number } | undefined
}

export interface ResumeResult {
  /** POST sent → first agent frame on the stream (ms) */
  firstByteMs: number
  /** POST sent → the turn's result on the stream (ms) */
  resultMs: number
  status: number
  resultOk: boolean
}

interface Client {
  ws: WebSocket
  marked: number
  markedBytes: number
  firstAt: number
  lastAt: number
  lastSeq: number
  gaps: number
  duplicates: number
  closed: boolean
  closeCode: number
  latencies: number[] | null
  onFrame: ((data: Buffer, seq: number) => void) | null
  onProgress: (() => void) | null
}

const MARKER = Buffer.from(LINE_MARKER)
const TIME = Buffer.from(TIME_MARKER)
const AGENT_TYPE = Buffer.from('"type":"agent"')
const RESULT_TYPE = Buffer.from('"type":"result"')
const handles = new Map<number, Client[]>()
/** the headers a group opened with (the bearer token), for its POSTs too */
const groupHeaders = new Map<number, Record<string, string>>()
const nowMs = () => Number(process.hrtime.bigint()) / 1e6

function readSeq (data: Buffer): number {
  // frames with a seq start with {"seq":<digits>
  if (data[1] !== 0x22 || data[2] !== 0x73) return 0
  let seq = 0
  for (let i = 7; i < data.length; i++) {
    const c = data[i]!
    if (c < 48 || c > 57) break
    seq = seq * 10 + c - 48
  }
  return seq
}

function readTimeNs (data: Buffer, from: number): number {
  const at = data.indexOf(TIME, from)
  if (at === -1) return NaN
  let t = 0
  for (let i = at + TIME.length; i < data.length; i++) {
    const c = data[i]!
    if (c < 48 || c > 57) break
    t = t * 10 + c - 48
  }
  return t
}

function connect (url: string, latency: boolean, headers: Record<string, string>): Promise<Client> {
  const ws = new WebSocket(url, { perMessageDeflate: false, headers })
  const c: Client = { ws, marked: 0, markedBytes: 0, firstAt: 0, lastAt: 0, lastSeq: 0, gaps: 0, duplicates: 0, closed: false, closeCode: 0, latencies: latency ? [] : null, onFrame: null, onProgress: null }
  ws.on('message', (data: Buffer) => {
    const now = process.hrtime.bigint()
    const seq = readSeq(data)
    if (seq > 0) {
      if (seq <= c.lastSeq) c.duplicates++
      else if (seq !== c.lastSeq + 1 && c.lastSeq !== 0) c.gaps++
      if (seq > c.lastSeq) c.lastSeq = seq
    }
    const m = data.indexOf(MARKER)
    if (m !== -1) {
      const t = Number(now) / 1e6
      if (c.marked === 0) c.firstAt = t
      c.lastAt = t
      c.marked++
      c.markedBytes += data.length
      if (c.latencies) {
        const sent = readTimeNs(data, m)
        if (Number.isFinite(sent)) c.latencies.push((Number(now) - sent) / 1e6)
      }
      c.onProgress?.()
    }
    c.onFrame?.(data, seq)
  })
  ws.on('close', (code) => {
    c.closed = true
    c.closeCode = code
    c.onProgress?.()
  })
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(c))
    ws.once('error', reject)
  })
}

const percentile = (sorted: number[], p: number) => sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!

async function collect (clients: Client[], expected: number, timeoutMs: number): Promise<CollectResult> {
  const finished = () => clients.every((c) => c.closed || c.marked >= expected)
  let timedOut = false
  if (!finished()) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => { timedOut = true; resolve() }, timeoutMs)
      const check = () => {
        if (!finished()) return
        clearTimeout(timer)
        resolve()
      }
      for (const c of clients) c.onProgress = check
    })
  }
  for (const c of clients) c.onProgress = null
  const withLines = clients.filter((c) => c.marked > 0)
  const first = Math.min(...withLines.map((c) => c.firstAt))
  const last = Math.max(...withLines.map((c) => c.lastAt))
  const all = clients.flatMap((c) => c.latencies ?? []).sort((a, b) => a - b)
  return {
    clients: clients.length,
    complete: clients.filter((c) => c.marked >= expected).length,
    dropped: clients.filter((c) => c.closed && c.marked < expected).length,
    closeCodes: [...new Set(clients.filter((c) => c.closed).map((c) => c.closeCode))],
    marked: clients.reduce((n, c) => n + c.marked, 0),
    markedBytes: clients.reduce((n, c) => n + c.markedBytes, 0),
    windowMs: withLines.length > 0 ? last - first : NaN,
    gaps: clients.reduce((n, c) => n + c.gaps, 0),
    duplicates: clients.reduce((n, c) => n + c.duplicates, 0),
    timedOut,
    latency: clients.some((c) => c.latencies)
      ? { count: all.length, p50: percentile(all, 0.5), p99: percentile(all, 0.99), max: all[all.length - 1] ?? NaN, mean: all.reduce((a, b) => a + b, 0) / Math.max(1, all.length) }
      : undefined
  }
}

async function close (clients: Client[]): Promise<void> {
  await Promise.all(clients.map((c) => c.closed
    ? undefined
    : new Promise<void>((resolve) => {
      c.ws.once('close', () => resolve())
      c.ws.close(1000)
      setTimeout(() => { c.ws.terminate(); resolve() }, 2000).unref()
    })))
}

/** POST a message; time the first agent frame and the turn's result on the stream. */
async function resume (c: Client, url: string, body: string, timeoutMs: number, headers: Record<string, string>): Promise<ResumeResult> {
  const after = c.lastSeq
  let firstByteMs = NaN
  const t0 = nowMs()
  const result = new Promise<{ resultMs: number, ok: boolean }>((resolve, reject) => {
    const timer = setTimeout(() => { c.onFrame = null; reject(new Error(`no result within ${timeoutMs} ms`)) }, timeoutMs)
    c.onFrame = (data, seq) => {
      if (seq <= after) return
      const agent = data.indexOf(AGENT_TYPE)
      if (agent === -1 || agent > 40) return
      if (Number.isNaN(firstByteMs)) firstByteMs = nowMs() - t0
      if (data.indexOf(RESULT_TYPE) !== -1) {
        clearTimeout(timer)
        c.onFrame = null
        resolve({ resultMs: nowMs() - t0, ok: data.indexOf('"is_error":false') !== -1 })
      }
    }
  })
  const res = await fetch(url, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body })
  await res.arrayBuffer()
  if (res.status !== 202) {
    c.onFrame = null
    return { firstByteMs: NaN, resultMs: NaN, status: res.status, resultOk: false }
  }
  const r = await result
  return { firstByteMs, resultMs: r.resultMs, status: res.status, resultOk: r.ok }
}

async function handle (msg: StreamCommand): Promise<unknown> {
  switch (msg.cmd) {
    case 'open': {
      const clients: Client[] = []
      handles.set(msg.handle, clients)
      groupHeaders.set(msg.handle, msg.headers)
      // a few at a time: 100 upgrades at once would be a benchmark of the handshake
      for (let i = 0; i < msg.clients; i += 10) {
        clients.push(...await Promise.all(Array.from({ length: Math.min(10, msg.clients - i) }, () => connect(msg.url, msg.latency, msg.headers))))
      }
      return { clients: clients.length }
    }
    case 'collect':
      return collect(handles.get(msg.handle) ?? [], msg.expected, msg.timeoutMs)
    case 'close': {
      const clients = handles.get(msg.handle) ?? []
      handles.delete(msg.handle)
      groupHeaders.delete(msg.handle)
      await close(clients)
      return {}
    }
    case 'resetLatency':
      for (const c of handles.get(msg.handle) ?? []) if (c.latencies) c.latencies = []
      return {}
    case 'resume': {
      const c = handles.get(msg.handle)?.[0]
      if (!c) throw new Error('no client')
      return resume(c, msg.url, msg.body, msg.timeoutMs, groupHeaders.get(msg.handle) ?? {})
    }
  }
}

parentPort?.on('message', (msg: StreamCommand) => {
  handle(msg).then(
    (result) => parentPort?.postMessage({ id: msg.id, result }),
    (err: unknown) => parentPort?.postMessage({ id: msg.id, error: String((err as Error)?.stack ?? err) })
  )
})
