// The viewers of the multi-instance figures (instances.ts), in their own thread: WebSocket clients
// on session streams served by any of the instances. Each records, per frame, its seq (gaps and
// repeats), its arrival (wall-clock ms: the failover times), and for the benchmark's agent lines
// the latency from the write time the agent put in the line (process.hrtime: one monotonic clock
// for every process of the machine) to the arrival. Latencies are pooled by the viewer's role
// (`owner`: on the instance that runs the session's agent; `other`: on another one).
import { parentPort } from 'node:worker_threads'
import WebSocket from 'ws'
import { LINE_MARKER, TIME_MARKER } from './agent-lines.mjs'

export type ViewerCommand =
  | { id: number, cmd: 'open', viewer: number, url: string, role: string, headers: Record<string, string> }
  | { id: number, cmd: 'resetLatency' }
  | { id: number, cmd: 'awaitLines', viewers: number[], lines: number, timeoutMs: number }
  | { id: number, cmd: 'latency' }
  | { id: number, cmd: 'firstAfter', viewer: number, afterSeq: number, result: boolean, timeoutMs: number }
  | { id: number, cmd: 'frames', viewer: number }
  | { id: number, cmd: 'close' }

export interface LatencyStats { count: number, p50: number, p99: number, max: number }

/** What one viewer got (the `frames` command). */
export interface ViewerFrames {
  /** seqs in arrival order, repeats included */
  seqs: number[]
  types: string[]
  marked: number
  gaps: number
  duplicates: number
  closed: boolean
  closeCode: number
}

/** The first frame after a seq (the `firstAfter` command): when it arrived and, for a result, its data. */
export interface FirstFrame { seq: number, atMs: number, data?: Record<string, unknown> }

interface Viewer {
  ws: WebSocket
  role: string
  seqs: number[]
  types: string[]
  /** arrival, wall-clock ms, of each frame of `seqs` */
  at: number[]
  /** agent frames of the result kind, by seq */
  results: Map<number, Record<string, unknown>>
  marked: number
  lastSeq: number
  gaps: number
  duplicates: number
  latencies: number[]
  closed: boolean
  closeCode: number
}

const MARKER = Buffer.from(LINE_MARKER)
const TIME = Buffer.from(TIME_MARKER)
const RESULT = Buffer.from('"type":"result"')
const viewers = new Map<number, Viewer>()
/** woken on every frame and close: pending waits re-check */
const waiters = new Set<() => void>()
const wallMs = () => performance.timeOrigin + performance.now()

function digitsAt (data: Buffer, from: number): number {
  let n = 0
  for (let i = from; i < data.length; i++) {
    const c = data[i]!
    if (c < 48 || c > 57) break
    n = n * 10 + c - 48
  }
  return n
}

/** Event frames start with {"seq":<digits>,"type":"<type>" */
function head (data: Buffer): { seq: number, type: string } {
  if (data[1] !== 0x22 || data[2] !== 0x73) return { seq: 0, type: '' }
  const seq = digitsAt(data, 7)
  const at = data.indexOf('"type":"', 7)
  if (at === -1 || at > 40) return { seq, type: '' }
  const end = data.indexOf(0x22, at + 8)
  return { seq, type: data.toString('latin1', at + 8, end) }
}

function connect (url: string, role: string, headers: Record<string, string>): Promise<Viewer> {
  const ws = new WebSocket(url, { perMessageDeflate: false, headers })
  const v: Viewer = { ws, role, seqs: [], types: [], at: [], results: new Map(), marked: 0, lastSeq: 0, gaps: 0, duplicates: 0, latencies: [], closed: false, closeCode: 0 }
  ws.on('message', (data: Buffer) => {
    const now = process.hrtime.bigint()
    const { seq, type } = head(data)
    if (seq === 0) return // a reply, not an event
    if (seq <= v.lastSeq) v.duplicates++
    else if (seq !== v.lastSeq + 1) v.gaps++
    v.lastSeq = Math.max(v.lastSeq, seq)
    v.seqs.push(seq)
    v.types.push(type)
    v.at.push(wallMs())
    const m = data.indexOf(MARKER)
    if (m !== -1) {
      v.marked++
      const t = data.indexOf(TIME, m)
      if (t !== -1) v.latencies.push((Number(now) - digitsAt(data, t + TIME.length)) / 1e6)
    } else if (type === 'agent' && data.indexOf(RESULT) !== -1) {
      v.results.set(seq, (JSON.parse(data.toString('utf8')) as { data: Record<string, unknown> }).data)
    }
    for (const w of waiters) w()
  })
  ws.on('close', (code) => {
    v.closed = true
    v.closeCode = code
    for (const w of waiters) w()
  })
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve(v))
    ws.once('error', reject)
  })
}

/** Resolves with `found()` once it is defined, or with undefined after `timeoutMs`. */
function until<T> (found: () => T | undefined, timeoutMs: number): Promise<T | undefined> {
  return new Promise((resolve) => {
    const check = () => {
      const r = found()
      if (r === undefined) return
      done(r)
    }
    const timer = setTimeout(() => done(undefined), timeoutMs)
    const done = (r: T | undefined) => {
      clearTimeout(timer)
      waiters.delete(check)
      resolve(r)
    }
    waiters.add(check)
    check()
  })
}

const percentile = (sorted: number[], p: number) => sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!

function stats (values: number[]): LatencyStats {
  const sorted = [...values].sort((a, b) => a - b)
  return { count: sorted.length, p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), max: sorted.at(-1) ?? NaN }
}

function viewer (n: number): Viewer {
  const v = viewers.get(n)
  if (!v) throw new Error(`no viewer ${n}`)
  return v
}

async function handle (msg: ViewerCommand): Promise<unknown> {
  switch (msg.cmd) {
    case 'open':
      viewers.set(msg.viewer, await connect(msg.url, msg.role, msg.headers))
      return {}
    case 'resetLatency':
      for (const v of viewers.values()) v.latencies = []
      return {}
    case 'awaitLines': {
      const vs = msg.viewers.map(viewer)
      const all = await until(() => vs.every((v) => v.marked >= msg.lines || v.closed) ? true : undefined, msg.timeoutMs)
      return { complete: vs.filter((v) => v.marked >= msg.lines).length, timedOut: all === undefined }
    }
    case 'latency': {
      const byRole = new Map<string, number[]>()
      for (const v of viewers.values()) {
        const list = byRole.get(v.role) ?? []
        for (const l of v.latencies) list.push(l)
        byRole.set(v.role, list)
      }
      return Object.fromEntries([...byRole].map(([role, values]) => [role, stats(values)]))
    }
    case 'firstAfter': {
      const v = viewer(msg.viewer)
      return until<FirstFrame>(() => {
        // seqs ascend: step back to the first frame after afterSeq, then forward to the first match
        let i = v.seqs.length
        while (i > 0 && v.seqs[i - 1]! > msg.afterSeq) i--
        for (let j = i; j < v.seqs.length; j++) {
          if (v.types[j] !== 'agent') continue
          const data = v.results.get(v.seqs[j]!)
          if (msg.result && !data) continue
          return { seq: v.seqs[j]!, atMs: v.at[j]!, ...(data ? { data } : {}) }
        }
        return undefined
      }, msg.timeoutMs)
    }
    case 'frames': {
      const v = viewer(msg.viewer)
      return { seqs: v.seqs, types: v.types, marked: v.marked, gaps: v.gaps, duplicates: v.duplicates, closed: v.closed, closeCode: v.closeCode } satisfies ViewerFrames
    }
    case 'close':
      await Promise.all([...viewers.values()].map((v) => v.closed
        ? undefined
        : new Promise<void>((resolve) => {
          v.ws.once('close', () => resolve())
          v.ws.close(1000)
          setTimeout(() => { v.ws.terminate(); resolve() }, 2000).unref()
        })))
      viewers.clear()
      return {}
  }
}

parentPort?.on('message', (msg: ViewerCommand) => {
  handle(msg).then(
    (result) => parentPort?.postMessage({ id: msg.id, result }),
    (err: unknown) => parentPort?.postMessage({ id: msg.id, error: String((err as Error)?.stack ?? err) })
  )
})
