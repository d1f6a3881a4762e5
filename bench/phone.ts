// The phone in the loop (issue 10): an agent's tool permission ask → the frame on a connected phone
// (and the answer back to the agent), next to a raw `ws` relay of the same agent; and a turn's end
// → the push request at a webhook receiver when nobody watches the session, with the service's
// grouping window and without it. The phone and the receiver live in a worker thread
// (phone-worker.ts); the agent is bench/paced-agent.mjs (`/asks`, and the `t` of every result).
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import { WebSocketServer } from 'ws'
import type { Config } from '../src/config.js'
import { frameText } from '../src/events/event-log.js'
import type { AgentSettings } from './agents.js'
import type { Closers } from './closers.js'
import type { AsksResult, PhoneCommand, PushRecord } from './phone-worker.js'
import { fmt, type Db, type Report } from './report.js'
import { BENCH_AUTH, type startService } from './scenarios.js'
import type { AgentCommand } from './stream-anchor.js'
import { WorkerRpc } from './worker-rpc.js'

type Service = Awaited<ReturnType<typeof startService>>
type Without<T> = T extends unknown ? Omit<T, 'id'> : never

/** The public API as the bench's user (agents.ts' Api). */
interface PhoneApi {
  call<T = unknown> (method: string, path: string, body?: unknown): Promise<T>
  createSession (body?: Record<string, unknown>): Promise<string>
  message (id: string, text: string): Promise<{ seq: number }>
  suspend (id: string): Promise<unknown>
  streamUrl (id: string, after?: number): string
  messagesUrl (id: string): string
  waitTurns (id: string, turns: number, timeoutMs: number): Promise<void>
  events (id: string): Promise<{ seq: number, type: string, data: unknown }[]>
}

export interface PhoneContext {
  db: Db
  settings: AgentSettings
  report: Report
  closers: Closers
  /** a service with the paced agent and these variables more, registered for the no-agent-left check */
  start (name: string, env: Record<string, string>): Promise<Service>
  /** VACUUM ANALYZE and CHECKPOINT, as before every figure of the paced agent */
  settle (svc: Service): Promise<void>
  api (base: string): PhoneApi
  /** the agent's command line and environment as the service would run it, in a directory of its own */
  agentCommand (config: Config, cwdName: string): Promise<AgentCommand>
}

/** After each answer the agent waits this long before its next ask (a real one runs the tool, then thinks). */
const ASK_PAUSE_MS = 10
/**
 * Push with a grouping window: sessions ("lanes") started this far apart, each running its turns one
 * after the other (its push awaited before its next turn), so that a window of 1.5 s does not make
 * the figure last turns × 1.5 s.
 */
const LANE_SPACING_MS = 150
/** the webhook's HMAC key (the receiver checks every signature) */
const WEBHOOK_SECRET = 'mobvibe-bench-webhook-secret'

const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!
}
const p50 = (xs: number[]) => percentile(xs, 0.5)
/** wall-clock ms, the clock of the agent's times (paced-agent.mjs) */
const wallMs = () => performance.timeOrigin + performance.now()
const p99 = (xs: number[]) => percentile(xs, 0.99)

/** The phone figures (BENCH_AGENT_FIGURES=phone): two services of the paced agent, one after the other. */
export async function phoneFigures (ctx: PhoneContext): Promise<void> {
  const worker = new WorkerRpc(new URL('./phone-worker.ts', import.meta.url))
  const closeWorker = ctx.closers.push(() => worker.close())
  const call = <T>(msg: Without<PhoneCommand>) => worker.call<T>(msg)
  let receiving = false
  try {
    const loopback = { PUSH_ALLOW_LOOPBACK: 'true' }
    const svc = await ctx.start('phone', loopback)
    const closeSvc = ctx.closers.push(() => svc.app.close())
    await ctx.settle(svc)
    await permissionLatency(ctx, svc, call)

    const { url } = await call<{ url: string }>({ cmd: 'receiverStart', secret: WEBHOOK_SECRET })
    receiving = true
    // the notices of the sessions above (nobody watches them any more) are decided before the
    // webhook exists: none of them may reach the receiver
    await svc.app.push.notifier.idle()
    await ctx.settle(svc)
    await pushLatency(ctx, svc, url, call)
    await closeSvc()

    const nowindow = await ctx.start('phone-nowindow', { ...loopback, PUSH_GROUP_WINDOW_MS: '0' })
    const closeNowindow = ctx.closers.push(() => nowindow.app.close())
    await ctx.settle(nowindow)
    await pushLatency(ctx, nowindow, url, call)
    await closeNowindow()
  } finally {
    // the receiver lives in the worker: stopped before it goes
    if (receiving) await call({ cmd: 'receiverStop' }).catch((err: unknown) => console.error('  (stopping the receiver failed)', err))
    await closeWorker()
  }
}

type Call = <T>(msg: Without<PhoneCommand>) => Promise<T>

/**
 * can_use_tool on the agent's stdout → `permission_request` frame at a phone on the stream, which
 * answers at once; the agent asks again `ASK_PAUSE_MS` after reading each answer. Anchor: the same
 * agent and phone through a plain `ws` relay (no database).
 */
async function permissionLatency (ctx: PhoneContext, svc: Service, call: Call): Promise<void> {
  const { report, closers, db } = ctx
  const s = ctx.settings
  const api = ctx.api(svc.url)
  const asks = s.phoneAsks
  const text = (n: number) => `/asks ${n} ${ASK_PAUSE_MS}`
  const timeoutMs = 30_000 + asks * 100
  let nextHandle = 0

  /** one turn of asks, the phone on `url`; `post` starts it on the service, else `start` does */
  const turn = async (url: string, post: { url: string, body: string } | null, start?: () => Promise<void>) => {
    const handle = nextHandle++
    await call({ cmd: 'open', handle, url, headers: BENCH_AUTH })
    try {
      const running = call<AsksResult>({ cmd: 'run', handle, post: post && { ...post, headers: BENCH_AUTH }, timeoutMs })
      await start?.()
      return await running
    } finally {
      await call({ cmd: 'close', handle })
    }
  }

  // anchor
  const relay = await rawAskRelay()
  const closeRelay = closers.push(() => relay.close())
  const cmd = await ctx.agentCommand(svc.config, 'raw-asks')
  const ra = await turn(relay.url, null, () => relay.run(cmd, text(asks), timeoutMs))
  await closeRelay()
  report.add({
    figure: `can_use_tool on the agent's stdout → permission_request frame, ${fmt.int(asks)} asks one at a time: raw \`ws\` relay of the same agent, no database (anchor)`,
    db,
    value: `p50 ${fmt.ms(p50(ra.toFrame))}; answer frame → agent p50 ${fmt.ms(p50(ra.toAgent))} p99 ${fmt.ms(p99(ra.toAgent))}`,
    p99Ms: p99(ra.toFrame),
    failures: asksFailures(ra, asks)
  })

  // the service: a discarded warm-up turn, then the measured one, each on a fresh session
  const onService = async (n: number) => {
    const id = await api.createSession()
    const r = await turn(api.streamUrl(id), { url: api.messagesUrl(id), body: JSON.stringify({ text: text(n) }) })
    await api.waitTurns(id, 1, 30_000)
    const stored = await storedAsks(api, id)
    await api.suspend(id)
    return { r, stored }
  }
  if (s.warmupS > 0) await onService(Math.min(asks, 20))
  const { r, stored } = await onService(asks)
  const failures = [asksFailures(r, asks), stored.ok ? '' : `stored: ${stored.detail}`].filter(Boolean).join(', ') || undefined
  report.add({
    figure: `can_use_tool on the agent's stdout → permission_request frame on a WebSocket client, ${fmt.int(asks)} asks one at a time`,
    db,
    value: `p50 ${fmt.ms(p50(r.toFrame))}, ${r.toFrame.length} asks (max ${fmt.ms(Math.max(...r.toFrame))}; anchor p50 ${fmt.ms(p50(ra.toFrame))} p99 ${fmt.ms(p99(ra.toFrame))})`,
    p99Ms: p99(r.toFrame),
    failures,
    target: `p99 ≤ 10 ms; stored ${stored.detail}`,
    pass: p99(r.toFrame) <= 10 && failures === undefined
  })
  report.add({
    figure: 'the phone\'s `permission` frame → control_response read by the agent (info)',
    db,
    value: `p50 ${fmt.ms(p50(r.toAgent))}, ${r.toAgent.length} answers (the service's reply frame: p50 ${fmt.ms(p50(r.toReply))} p99 ${fmt.ms(p99(r.toReply))}; ` +
      `anchor p50 ${fmt.ms(p50(ra.toAgent))} p99 ${fmt.ms(p99(ra.toAgent))})`,
    p99Ms: p99(r.toAgent)
  })
}

function asksFailures (r: AsksResult, asks: number): string | undefined {
  const parts: string[] = []
  if (r.asked !== asks) parts.push(`${r.asked}/${asks} asks reached the phone`)
  if (r.toFrame.length !== r.asked) parts.push(`${r.asked - r.toFrame.length} asks without a time`)
  if (r.answered !== asks || r.allowed !== asks) parts.push(`the agent read ${r.answered}/${asks} answers (${r.allowed} allow)`)
  if (r.errors.length > 0) parts.push(`${r.errors.length} error frames (${r.errors[0]!.slice(0, 120)})`)
  if (r.timedOut) parts.push('timed out')
  if (r.closedEarly) parts.push('stream closed early')
  if (!r.resultOk && !r.timedOut) parts.push('no successful result')
  return parts.length ? parts.join(', ') : undefined
}

/** GET /events: one permission_request and one allowing permission_response by the user per ask, no raw control line. */
async function storedAsks (api: PhoneApi, id: string): Promise<{ ok: boolean, detail: string, asks: number }> {
  let asks = 0
  let answers = 0
  let raw = 0
  for (const e of await api.events(id)) {
    const data = e.data as { type?: string, decision?: string, by?: string }
    if (e.type === 'permission_request') asks++
    else if (e.type === 'permission_response' && data.decision === 'allow' && data.by === 'user') answers++
    else if (e.type === 'agent' && data.type === 'control_request') raw++
  }
  return { ok: asks === answers && raw === 0, asks, detail: `${fmt.int(asks)} requests, ${fmt.int(answers)} answers${raw ? `, ${raw} raw control lines` : ''}` }
}

interface PushSample { sessionId: string, seq: number, arrival: number, kind: string, signatureOk: boolean }

/**
 * A turn's end → the webhook request at the receiver, with no stream client on the session: the
 * agent's result carries its write time `t`; the receiver (worker thread) notes each request's
 * arrival. Each session's first turn (its agent's start) is discarded; then each of its turns waits
 * for the previous one's push. With a grouping window, several sessions run side by side, started
 * `LANE_SPACING_MS` apart.
 */
async function pushLatency (ctx: PhoneContext, svc: Service, receiverUrl: string, call: Call): Promise<void> {
  const { report, db } = ctx
  const api = ctx.api(svc.url)
  const turns = ctx.settings.pushTurns
  const windowMs = svc.config.push.groupWindowMs
  const lanes = windowMs === 0 ? 1 : Math.min(turns, Math.max(1, Math.ceil(windowMs / LANE_SPACING_MS)))
  const waitMs = windowMs + 10_000
  const device = await api.call<{ id: string }>('POST', '/v1/devices', { kind: 'webhook', url: receiverUrl, secret: WEBHOOK_SECRET, name: 'bench receiver' })
  const ids: string[] = []
  const samples: PushSample[] = []
  const missing: string[] = []
  // where the time goes, on the service's side: its attention notice (the result stored, the turn
  // recorded), and the notifier's decision (the window over, the session and devices read)
  const marks = new Map<string, { attention: number, notified?: number }>()
  const onAttention = (n: { sessionId: string, kind: string, seq: number }) => {
    if (n.kind === 'turn_ended' && ids.includes(n.sessionId)) marks.set(`${n.sessionId}/${n.seq}`, { attention: wallMs() })
  }
  const onNotified = (n: { sessionId: string, seq: number }) => {
    const m = marks.get(`${n.sessionId}/${n.seq}`)
    if (m) m.notified = wallMs()
  }
  svc.app.agents.on('attention', onAttention)
  svc.app.push.notifier.on('notified', onNotified)
  const t0 = performance.now()
  try {
    for (let i = 0; i < lanes; i++) ids.push(await api.createSession({ title: `bench push ${i}` }))
    await Promise.all(ids.map(async (id, lane) => {
      await sleep(lane * (windowMs / lanes))
      const measured = Math.floor(turns / lanes) + (lane < turns % lanes ? 1 : 0)
      for (let j = 0; j <= measured; j++) {
        const { seq } = await api.message(id, `push ${j}`)
        const push = await call<PushRecord | null>({ cmd: 'receiverWait', sessionId: id, afterSeq: seq, timeoutMs: waitMs })
        if (!push) {
          missing.push(`no push within ${fmt.int(waitMs)} ms for turn ${j} of session ${id}`)
          return
        }
        if (j > 0) samples.push({ sessionId: id, seq: push.seq, arrival: push.arrival, kind: push.kind, signatureOk: push.signatureOk })
      }
    }))
    const elapsedS = (performance.now() - t0) / 1000
    // no push left to come, then every request the receiver got for these sessions
    await svc.app.push.notifier.idle()
    const records = (await call<PushRecord[]>({ cmd: 'receiverAll' })).filter((r) => ids.includes(r.sessionId))
    // each result's write time, by its seq
    const resultT = new Map<string, number>()
    for (const id of ids) {
      for (const e of await api.events(id)) {
        const data = e.data as { type?: string, t?: number }
        if (e.type === 'agent' && data.type === 'result' && typeof data.t === 'number') resultT.set(`${id}/${e.seq}`, data.t)
      }
    }
    const latencies: number[] = []
    const toAttention: number[] = []
    const toDecided: number[] = []
    const toReceiver: number[] = []
    let notResult = 0
    for (const p of samples) {
      const key = `${p.sessionId}/${p.seq}`
      const t = resultT.get(key)
      if (t === undefined || p.kind !== 'turn_ended') {
        notResult++
        continue
      }
      latencies.push(p.arrival - t)
      const m = marks.get(key)
      if (m?.notified === undefined) continue
      toAttention.push(m.attention - t)
      toDecided.push(m.notified - m.attention - windowMs)
      toReceiver.push(p.arrival - m.notified)
    }
    const expected = turns + lanes
    const badSignatures = records.filter((r) => !r.signatureOk).length
    const failures = [
      ...missing.slice(0, 2),
      missing.length > 2 ? `${missing.length - 2} more missing` : '',
      notResult ? `${notResult} pushes not for a turn's result` : '',
      records.length !== expected ? `${records.length} requests for ${expected} turns` : '',
      badSignatures ? `${badSignatures} bad signatures` : ''
    ].filter(Boolean).join(', ') || undefined
    const windowNote = windowMs === 0
      ? 'PUSH_GROUP_WINDOW_MS=0 (no grouping: the service\'s own cost)'
      : `PUSH_GROUP_WINDOW_MS=${fmt.int(windowMs)} (the default; the grouping window is part of it by design)`
    const beyond = windowMs === 0 ? '' : ` (beyond the window: p50 ${fmt.ms(p50(latencies) - windowMs)}, p99 ${fmt.ms(p99(latencies) - windowMs)})`
    console.log(`  (${lanes} session${lanes > 1 ? 's' : ''} × turns one after the other, ${fmt.int(expected)} turns with the discarded first ones, ${elapsedS.toFixed(1)} s)`)
    report.add({
      figure: `a turn's end (result on the agent's stdout) → webhook request at a local receiver, nobody on the stream, ${windowNote}, ${fmt.int(turns)} turns`,
      db,
      value: `p50 ${fmt.ms(p50(latencies))}, ${latencies.length} pushes${beyond}; p50 (p99) of its parts: result line → attention notice ` +
        `${fmt.ms(p50(toAttention))} (${fmt.ms(p99(toAttention))}), ${windowMs ? 'window end' : 'notice'} → decided (session and devices read) ` +
        `${fmt.ms(p50(toDecided))} (${fmt.ms(p99(toDecided))}), → request at the receiver ${fmt.ms(p50(toReceiver))} (${fmt.ms(p99(toReceiver))})`,
      p99Ms: p99(latencies),
      failures,
      target: `one signed push per turn: ${fmt.int(records.length)} for ${fmt.int(expected)}`,
      pass: failures === undefined && latencies.length === turns
    })
  } finally {
    svc.app.agents.off('attention', onAttention)
    svc.app.push.notifier.off('notified', onNotified)
    for (const id of ids) await api.suspend(id).catch(() => {})
    await api.call('DELETE', `/v1/devices/${device.id}`)
  }
}

/**
 * The anchor of the permission figure: the agent's stdout relayed line by line by a plain `ws`
 * server, a can_use_tool line as a `permission_request` frame; the phone's `permission` frame goes
 * back to the agent as its control_response line and is acknowledged. No database, no checks.
 */
async function rawAskRelay () {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false })
  await once(wss, 'listening')
  const { port } = wss.address() as AddressInfo
  let writeAnswer: ((requestId: string, decision: string) => boolean) | null = null
  wss.on('connection', (ws) => {
    ws.on('message', (data: Buffer) => {
      const frame = JSON.parse(data.toString('utf8')) as { type?: string, requestId?: string, decision?: string }
      if (frame.type !== 'permission' || typeof frame.requestId !== 'string') return
      const decision = frame.decision ?? 'deny'
      if (writeAnswer?.(frame.requestId, decision)) ws.send(JSON.stringify({ type: 'permission', requestId: frame.requestId, decision }))
      else ws.send(JSON.stringify({ type: 'error', requestId: frame.requestId, message: 'no such ask' }))
    })
  })
  return {
    url: `ws://127.0.0.1:${port}/`,
    close: async () => {
      for (const ws of wss.clients) ws.terminate()
      await new Promise<void>((resolve) => wss.close(() => resolve()))
    },
    /** one turn of the agent, relayed; resolves when the process is gone */
    async run (cmd: AgentCommand, message: string, timeoutMs: number): Promise<void> {
      const child = spawn(cmd.bin, cmd.args, { cwd: cmd.cwd, env: cmd.env, stdio: ['pipe', 'pipe', 'pipe'], detached: true })
      child.stdin.on('error', () => {})
      const inputs = new Map<string, unknown>()
      writeAnswer = (requestId, decision) => {
        const input = inputs.get(requestId)
        if (input === undefined) return false
        inputs.delete(requestId)
        const response = decision === 'allow' ? { behavior: 'allow', updatedInput: input } : { behavior: 'deny', message: 'denied' }
        child.stdin.write(JSON.stringify({ type: 'control_response', response: { subtype: 'success', request_id: requestId, response } }) + '\n')
        return true
      }
      child.stdin.write(JSON.stringify({ type: 'user', message: { role: 'user', content: message }, parent_tool_use_id: null, session_id: '' }) + '\n')
      let seq = 0
      let rest = ''
      let stderr = ''
      const send = (frame: string) => { for (const ws of wss.clients) ws.send(frame) }
      child.stderr.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-2000) })
      child.stdout.on('data', (chunk: Buffer) => {
        const parts = (rest + chunk.toString('utf8')).split('\n')
        rest = parts.pop()!
        for (const line of parts) {
          if (line === '') continue
          const m = JSON.parse(line) as { type?: string, request_id?: string, request?: { subtype?: string, tool_name?: string, input?: unknown, tool_use_id?: string } }
          if (m.type === 'control_request' && m.request?.subtype === 'can_use_tool' && typeof m.request_id === 'string') {
            inputs.set(m.request_id, m.request.input ?? {})
            const data = { requestId: m.request_id, toolName: m.request.tool_name, input: m.request.input, toolUseId: m.request.tool_use_id ?? null }
            send(frameText({ seq: ++seq, type: 'permission_request', at: new Date(), json: JSON.stringify(data) }))
            continue
          }
          send(frameText({ seq: ++seq, type: 'agent', at: new Date(), json: line }))
          if (m.type === 'result') child.stdin.end()
        }
      })
      const timer = setTimeout(() => { try { process.kill(-child.pid!, 'SIGKILL') } catch {} }, timeoutMs)
      try {
        const [code] = await once(child, 'close') as [number | null]
        if (code !== 0) throw new Error(`relayed agent exited ${code}: ${stderr}`)
      } finally {
        clearTimeout(timer)
        writeAnswer = null
      }
    }
  }
}
