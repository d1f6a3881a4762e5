// The agent and stream figures (issue 4, point 16): stdout → WebSocket latency, persisted
// throughput with 1 and with many subscribers, resume overhead, suspended sessions, many live
// agents, each next to its anchor measured in the same run (stream-anchor.ts); and the phone in
// the loop (issue 10, phone.ts): permission asks to a phone, push when nobody watches.
import { randomUUID } from 'node:crypto'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import v8 from 'node:v8'
import vm from 'node:vm'
import { sql } from 'drizzle-orm'
import { claudeCommand } from '../src/agents/claude-command.js'
import type { App } from '../src/app.js'
import type { Config } from '../src/config.js'
import { findByEnvMarker, signal } from '../src/system/proc.js'
import { LINE_MARKER } from './agent-lines.mjs'
import type { Closers } from './closers.js'
import type { LoadDriver, LoadRequest } from './load.js'
import { phoneFigures } from './phone.js'
import { failuresOf, fmt, type Db, type Report } from './report.js'
import { BENCH_AUTH, startService } from './scenarios.js'
import { rawFanout, rawRelay, rawSpawn, type AgentCommand } from './stream-anchor.js'
import type { StreamClients } from './stream-clients.js'
import type { CollectResult } from './stream-worker.js'

export const AGENT_FIGURES = ['suspended', 'resume', 'latency', 'throughput', 'fanout', 'live', 'phone'] as const
export type AgentFigure = typeof AGENT_FIGURES[number]

export interface AgentSettings {
  /** which figures of the section run (BENCH_AGENT_FIGURES) */
  figures: readonly AgentFigure[]
  durationS: number
  warmupS: number
  poolSize: number
  logLevel: string
  /** lines/s of the latency figure */
  streamRate: number
  /** bytes of every benchmark agent line */
  lineBytes: number
  /** lines of one measured flood with 1 subscriber, and with `subscribers` */
  floodLines: number
  fanoutLines: number
  subscribers: number
  liveAgents: number
  /** lines/s of each live agent in the many-agents figure; 0: as fast as the service takes them */
  agentRate: number
  /** paced POST /heartbeat rate during the many-agents figure */
  heartbeatRate: number
  resumes: number
  suspended: number
  /** permission asks of the phone figure, one at a time */
  phoneAsks: number
  /** measured turns of each push figure */
  pushTurns: number
}

export interface AgentsContext {
  db: Db
  dir: string
  databaseUrl: string | undefined
  settings: AgentSettings
  report: Report
  driver: LoadDriver
  clients: StreamClients
  closers: Closers
}

type Service = Awaited<ReturnType<typeof startService>>

const PACED_AGENT = fileURLToPath(new URL('./paced-agent.mjs', import.meta.url))
const FAKE_CLAUDE = fileURLToPath(new URL('../test/fixtures/fake-claude.mjs', import.meta.url))

const MB = 1024 * 1024
const signedMb = (bytes: number) => `${bytes < 0 ? '−' : '+'}${(Math.abs(bytes) / MB).toFixed(1)} MB`
const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!
}
const linesPerS = (r: { lines: number, windowMs: number }) => r.lines / (r.windowMs / 1000)

/** The public API, over HTTP, as the bench's user, for the set-up steps (never timed). */
class Api {
  constructor (readonly base: string) {}

  async call<T = unknown> (method: string, path: string, body?: unknown): Promise<T> {
    const res = await fetch(this.base + path, {
      method,
      headers: body === undefined ? BENCH_AUTH : { ...BENCH_AUTH, 'content-type': 'application/json' },
      ...(body === undefined ? {} : { body: JSON.stringify(body) })
    })
    const text = await res.text()
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text.slice(0, 500)}`)
    return (text ? JSON.parse(text) : undefined) as T
  }

  async createSession (body: Record<string, unknown> = {}): Promise<string> {
    return (await this.call<{ id: string }>('POST', '/v1/sessions', { title: 'bench', ...body })).id
  }

  message (id: string, text: string) {
    return this.call<{ seq: number }>('POST', `/v1/sessions/${id}/messages`, { text })
  }

  suspend (id: string) {
    return this.call('POST', `/v1/sessions/${id}/transitions`, { to: 'suspended' })
  }

  streamUrl (id: string, after = 0): string {
    return `${this.base.replace(/^http/, 'ws')}/v1/sessions/${id}/stream?after=${after}`
  }

  messagesUrl (id: string): string {
    return `${this.base}/v1/sessions/${id}/messages`
  }

  /** Waits until `turns` turns of the session have ended and none runs. */
  async waitTurns (id: string, turns: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const s = await this.call<{ busy: boolean, state: string, usage: { turns: number } }>('GET', `/v1/sessions/${id}`)
      if (!s.busy && s.usage.turns >= turns) return
      if (Date.now() > deadline) throw new Error(`session ${id}: ${s.usage.turns}/${turns} turns after ${timeoutMs} ms (state ${s.state}, busy ${s.busy})`)
      await sleep(20)
    }
  }

  /** Every event of the session, through GET /events. */
  async events (id: string): Promise<{ seq: number, type: string, data: unknown }[]> {
    const all: { seq: number, type: string, data: unknown }[] = []
    let after = 0
    for (;;) {
      const page = await this.call<{ items: { seq: number, type: string, data: unknown }[], nextAfter: number | null }>(
        'GET', `/v1/sessions/${id}/events?after=${after}&limit=1000`)
      all.push(...page.items)
      if (page.nextAfter === null) return all
      after = page.nextAfter
    }
  }
}

async function rows<T> (app: App, query: ReturnType<typeof sql>): Promise<T[]> {
  const res = await app.database.db.execute(query) as unknown
  return (Array.isArray(res) ? res : (res as { rows: T[] }).rows) as T[]
}

/** Agent events stored for the session (the turn's system/init and result included). */
async function storedAgentEvents (app: App, sessionId: string): Promise<number> {
  const [r] = await rows<{ n: number }>(app, sql`select count(*)::int as n from session_events where session_id = ${sessionId} and type = 'agent'`)
  return Number(r?.n ?? 0)
}

/** The agent's command line, environment and a working directory, as the service would run it. */
async function agentCommand (config: Config, mode: 'new' | 'resume', agentSessionId: string, cwdName: string): Promise<AgentCommand> {
  const cwd = join(config.workspaceRoot, cwdName)
  const tmpDir = join(config.dataDir, 'tmp', cwdName)
  await mkdir(cwd, { recursive: true })
  await mkdir(tmpDir, { recursive: true })
  await mkdir(config.agent.configDir, { recursive: true })
  const cmd = claudeCommand({ agent: config.agent, sessionId: randomUUID(), model: null, permissionMode: null, conversation: { mode, agentSessionId }, parentEnv: process.env, tmpDir })
  return { ...cmd, cwd }
}

const linesDirective = (count: number, bytes: number, rate: number, seconds: number) => `/lines ${count} ${bytes} ${rate} ${seconds}`

function gcNow (): () => void {
  v8.setFlagsFromString('--expose-gc')
  return vm.runInNewContext('gc') as () => void
}

async function settledRss (): Promise<{ rss: number, heap: number }> {
  const gc = gcNow()
  for (let i = 0; i < 3; i++) {
    gc()
    await sleep(100)
  }
  const m = process.memoryUsage()
  return { rss: m.rss, heap: m.heapUsed }
}

/** Our fake agents still running (their environment names this run's CLAUDE_CONFIG_DIR). */
const agentProcesses = (config: Config) => findByEnvMarker('CLAUDE_CONFIG_DIR', config.agent.configDir)

export class AgentsSection {
  readonly #c: AgentsContext
  readonly #s: AgentSettings
  readonly #configs: Config[] = []

  constructor (ctx: AgentsContext) {
    this.#c = ctx
    this.#s = ctx.settings
  }

  async run (): Promise<void> {
    const { closers } = this.#c
    const services: (() => Promise<void>)[] = []
    try {
      // The test fixture (the issue's fake agent, with transcripts and --resume): suspended sessions, resume
      const on = (figure: AgentFigure) => this.#s.figures.includes(figure)
      if (on('suspended') || on('resume')) {
        const fake = await this.#start('fake-claude', FAKE_CLAUDE)
        services.push(closers.push(() => fake.app.close()))
        if (on('suspended')) await this.#suspendedSessions(fake)
        if (on('resume')) await this.#resumeOverhead(fake)
        await services[0]!()
      }

      // The paced agent: latency, throughput, many live agents
      if (on('latency') || on('throughput') || on('fanout') || on('live')) {
        const paced = await this.#start('paced', PACED_AGENT)
        services.push(closers.push(() => paced.app.close()))
        if (on('latency')) await this.#settled(paced).then(() => this.#latency(paced))
        if (on('throughput')) await this.#settled(paced).then(() => this.#throughput(paced, 1, this.#s.floodLines, 0.15))
        if (on('fanout')) await this.#settled(paced).then(() => this.#throughput(paced, this.#s.subscribers, this.#s.fanoutLines, 0.3))
        if (on('live')) await this.#settled(paced).then(() => this.#liveAgents(paced))
      }

      // The paced agent again, on services of their own (push settings): the phone in the loop
      if (on('phone')) {
        await phoneFigures({
          db: this.#db,
          settings: this.#s,
          report: this.#c.report,
          closers,
          start: (name, env) => this.#start(name, PACED_AGENT, env),
          settle: (svc) => this.#settled(svc),
          api: (base) => new Api(base),
          agentCommand: (config, cwdName) => agentCommand(config, 'new', randomUUID(), cwdName)
        })
      }
    } finally {
      // the services stop their agents when they close; whatever is left after that is a finding
      for (const close of services) await close().catch((err: unknown) => console.error('  (closing the service failed)', err))
      await this.#noAgentLeft()
    }
  }

  async #start (name: string, bin: string, env: Record<string, string> = {}): Promise<Service> {
    const s = this.#s
    const svc = await startService({
      dir: join(this.#c.dir, name),
      databaseUrl: this.#c.databaseUrl,
      poolSize: s.poolSize,
      logLevel: s.logLevel,
      env: {
        CLAUDE_BIN: bin,
        MAX_LIVE_AGENTS: String(Math.max(32, s.liveAgents)),
        // every session of the bench is the one test user's: the per-user cap (default 8) must not
        // throttle a scenario the global one admits
        MAX_LIVE_AGENTS_PER_USER: String(Math.max(32, s.liveAgents)),
        IDLE_TIMEOUT_MIN_SECONDS: '1',
        KILL_GRACE_MS: '2000',
        ...env
      }
    })
    this.#configs.push(svc.config)
    return svc
  }

  get #db (): Db { return this.#c.db }

  /**
   * What the figures before left to do (dirty pages, dead rows of 10,000 swept sessions) is done
   * before the next one starts, as pgbench vacuums before it measures: a checkpoint or an
   * autovacuum in the middle of a latency figure would be billed to the service.
   */
  async #settled (svc: Service): Promise<void> {
    await svc.app.database.db.execute(sql`vacuum analyze`)
    await svc.app.database.db.execute(sql`checkpoint`)
  }

  /**
   * stdout line → WebSocket client at a paced rate, 1 subscriber; then GET /events must hold every
   * line. Anchor: the same agent relayed by a plain `ws` server (no database).
   */
  async #latency (svc: Service): Promise<void> {
    const { clients, report, closers } = this.#c
    const s = this.#s
    const api = new Api(svc.url)
    const lines = Math.round(s.streamRate * s.durationS)
    const timeoutMs = 60_000 + lines
    const directive = (n: number) => linesDirective(n, s.lineBytes, s.streamRate, n / s.streamRate + 30)
    const what = `agent stdout line → WebSocket client, 1 subscriber, ${fmt.int(s.streamRate)} lines/s of ${fmt.int(s.lineBytes)} B`

    // anchor
    const relay = await rawRelay()
    const closeRelay = closers.push(() => relay.close())
    const cmd = await agentCommand(svc.config, 'new', randomUUID(), 'raw-relay')
    const ga = await clients.open(relay.url, 1, { latency: true })
    const relayed = relay.run(cmd, directive(lines), timeoutMs)
    const ra = await ga.collect(lines, timeoutMs)
    await relayed
    await ga.close()
    await closeRelay()
    report.add({
      figure: `${what}: raw \`ws\` relay of the same agent, no database (anchor)`,
      db: this.#db,
      value: `p50 ${fmt.ms(ra.latency?.p50)}`,
      p99Ms: ra.latency?.p99,
      failures: streamFailures(ra, lines)
    })

    // warm-up (discarded), then the measured turn on a session of its own
    const warm = Math.round(s.streamRate * s.warmupS)
    if (warm > 0) await this.#serviceRun(api, 1, warm, directive(warm), { latency: true })
    const r = await this.#serviceRun(api, 1, lines, directive(lines), { latency: true })
    const check = await persistedLines(api, r.sessionId, lines)
    const l = r.result.latency
    report.add({
      figure: what,
      db: this.#db,
      value: `p50 ${fmt.ms(l?.p50)} (max ${fmt.ms(l?.max)}; anchor p50 ${fmt.ms(ra.latency?.p50)} p99 ${fmt.ms(ra.latency?.p99)})`,
      p99Ms: l?.p99,
      failures: streamFailures(r.result, lines),
      target: `p99 ≤ 10 ms; every line in GET /events: ${check.detail}`,
      pass: (l?.p99 ?? Infinity) <= 10 && check.ok && cleanStream(r.result, lines)
    })
  }

  /** One benchmark turn on a fresh session, with `subscribers` clients on its stream. */
  async #serviceRun (api: Api, subscribers: number, lines: number, text: string, opts: { latency?: boolean } = {}) {
    const id = await api.createSession()
    const group = await this.#c.clients.open(api.streamUrl(id), subscribers, opts)
    try {
      const t0 = performance.now()
      await api.message(id, text)
      const result = await group.collect(lines, collectTimeout(lines, subscribers))
      await api.waitTurns(id, 1, 60_000)
      const turnMs = performance.now() - t0
      // its agent stops: the next figure starts with no process running
      await api.suspend(id)
      return { sessionId: id, result, turnMs }
    } finally {
      await group.close()
    }
  }

  /**
   * A flood of `lines` lines (as fast as the service takes them) to `subscribers` clients, against
   * a plain `ws` server fanning out the same frames to as many clients, A B B A.
   */
  async #throughput (svc: Service, subscribers: number, lines: number, min: number): Promise<void> {
    const { clients, report, closers, app } = { ...this.#c, app: svc.app }
    const s = this.#s
    const api = new Api(svc.url)
    const fan = await rawFanout()
    const closeFan = closers.push(() => fan.close())
    const anchorRun = async (n: number): Promise<CollectResult> => {
      const group = await clients.open(fan.url, subscribers)
      try {
        const sending = fan.send(n, s.lineBytes, randomUUID())
        const r = await group.collect(n, collectTimeout(n, subscribers))
        await sending
        return r
      } finally {
        await group.close()
      }
    }
    const serviceRun = async (n: number) => {
      const r = await this.#serviceRun(api, subscribers, n, linesDirective(n, s.lineBytes, 0, 3600))
      // the turn's system/init and result are agent events too
      const stored = (await storedAgentEvents(app, r.sessionId)) - 2
      return { ...r.result, stored }
    }
    const who = subscribers === 1 ? '1 subscriber' : `${fmt.int(subscribers)} subscribers on one session`
    const warm = Math.max(1000, Math.round(lines * s.warmupS / s.durationS))
    await anchorRun(warm)
    await serviceRun(warm)
    const a1 = await anchorRun(lines)
    const b1 = await serviceRun(lines)
    const b2 = await serviceRun(lines)
    const a2 = await anchorRun(lines)
    await closeFan()
    const anchor = combine([a1, a2], lines)
    const service = combine([b1, b2], lines)
    console.log(`  (${who}, lines/s in run order: raw ws ${fmt.int(lines / (a1.windowMs / 1000))}, service ${fmt.int(lines / (b1.windowMs / 1000))}, ` +
      `service ${fmt.int(lines / (b2.windowMs / 1000))}, raw ws ${fmt.int(lines / (a2.windowMs / 1000))})`)
    const mbps = (r: typeof anchor) => r.bytesPerClient / MB / (r.windowMs / 1000)
    report.add({
      figure: `throughput, ${fmt.int(s.lineBytes)} B lines, ${who}: raw \`ws\` fan-out of the same frames (anchor)`,
      db: this.#db,
      value: `${fmt.int(linesPerS(anchor))} lines/s, ${mbps(anchor).toFixed(1)} MB/s per client`,
      failures: anchor.failures
    })
    const ratio = linesPerS(service) / linesPerS(anchor)
    const stored = b1.stored === lines && b2.stored === lines
    const complete = [b1, b2].every((r) => cleanStream(r, lines))
    const floor = subscribers === 1 ? 20_000 : 0
    report.add({
      figure: `persisted throughput, ${fmt.int(s.lineBytes)} B lines, ${who}`,
      db: this.#db,
      value: `${fmt.int(linesPerS(service))} lines/s, ${mbps(service).toFixed(1)} MB/s per client`,
      failures: service.failures,
      target: [
        floor ? `≥ ${fmt.int(floor)} lines/s` : '',
        `${fmt.ratio(ratio)} raw ws (≥ ${min}×)`,
        subscribers > 1 ? `${service.dropped} dropped` : '',
        `stored ${fmt.int(b1.stored)} + ${fmt.int(b2.stored)} of ${fmt.int(lines)} + ${fmt.int(lines)}`
      ].filter(Boolean).join('; '),
      pass: linesPerS(service) >= floor && ratio >= min && stored && complete
    })
  }

  /**
   * Many live agents streaming at once, one subscriber each, while a paced client sends heartbeats
   * (POST /heartbeat on those sessions): the service must stay responsive. The same heartbeats
   * without agents come first, for reference; then the same with every agent flooding (info).
   */
  async #liveAgents (svc: Service): Promise<void> {
    const { report, driver } = this.#c
    const s = this.#s
    const n = s.liveAgents
    const api = new Api(svc.url)
    const ids = await Promise.all(Array.from({ length: n }, () => api.createSession()))
    const idle = await driver.run(this.#heartbeats(svc, ids))
    report.add({
      figure: `POST /heartbeat at ${fmt.int(s.heartbeatRate)}/s, no agent running (reference)`,
      db: this.#db,
      value: `${fmt.int(idle.rps)} req/s, p50 ${fmt.ms(idle.p50)}`,
      p99Ms: idle.p99,
      failures: failuresOf(idle)
    })
    const rates = s.agentRate > 0 ? [s.agentRate, 0] : [0]
    for (const rate of rates) {
      const r = await this.#streamingAgents(svc, rate)
      const pace = rate > 0 ? `${fmt.int(rate)} lines/s each` : 'each as fast as the service takes its output'
      const expected = s.heartbeatRate * s.durationS
      const answered = r.beat.ok >= 0.9 * expected
      const isTarget = rate === rates[0]
      report.add({
        figure: `${n} live fake agents streaming at once (${fmt.int(s.lineBytes)} B lines, ${pace}, 1 subscriber each): POST /heartbeat at ${fmt.int(s.heartbeatRate)}/s meanwhile${isTarget ? '' : ' (stress, info)'}`,
        db: this.#db,
        value: `${fmt.int(r.beat.rps)} req/s, p50 ${fmt.ms(r.beat.p50)} (in the service: p50 ${fmt.ms(r.inService.p50)}, p99 ${fmt.ms(r.inService.p99)}; ` +
          `event loop delay p99 ${fmt.ms(r.loop.p99)}, max ${fmt.ms(r.loop.max)}); agents ${fmt.int(r.linesPerS)} lines/s in all, ` +
          `line → client p99 ${fmt.ms(r.lineP99)} (worst subscriber)`,
        p99Ms: r.beat.p99,
        failures: [failuresOf(r.beat), answered ? '' : `${fmt.int(r.beat.ok)} of ${fmt.int(expected)} heartbeats answered`].filter(Boolean).join(', ') || undefined,
        target: `p99 ≤ 50 ms; ${r.live}/${n} live at the start; ${n - r.incomplete}/${n} subscribers got every stored line`,
        ...(isTarget ? { pass: r.beat.p99 <= 50 && answered && r.beat.non2xx === 0 && r.beat.errors === 0 && r.live === n && r.incomplete === 0 } : {})
      })
    }
  }

  #heartbeats (svc: Service, ids: string[]) {
    const s = this.#s
    const requests: LoadRequest[][] = ids.map((id) => [{ method: 'POST', path: `/v1/sessions/${id}/heartbeat` }])
    return { url: svc.url, requests, connections: Math.min(ids.length, s.heartbeatRate), durationS: s.durationS, warmupS: s.warmupS, rate: s.heartbeatRate }
  }

  /** `liveAgents` fresh sessions streaming at `rate` lines/s each (0: flood) under paced heartbeats. */
  async #streamingAgents (svc: Service, rate: number) {
    const { clients, driver } = this.#c
    const s = this.#s
    const n = s.liveAgents
    const api = new Api(svc.url)
    const ids = await Promise.all(Array.from({ length: n }, () => api.createSession()))
    const groups = []
    try {
      for (const id of ids) groups.push(await clients.open(api.streamUrl(id), 1, { latency: true }))
      // long enough for the start-up, the settling below and the heartbeats' warm-up and run
      const seconds = 2 * s.warmupS + s.durationS + 5
      const t0 = performance.now()
      await Promise.all(ids.map((id) => api.message(id, linesDirective(1e9, s.lineBytes, rate, seconds))))
      const deadline = Date.now() + 30_000
      while (svc.app.agents.liveCount < n && Date.now() < deadline) await sleep(20)
      const live = svc.app.agents.liveCount
      // line latencies count once every agent streams and the start-up of n processes on the
      // machine's cores has settled: lines queued behind that start-up are not the service's doing
      await Promise.all(groups.map((g) => g.collect(1, 30_000)))
      await sleep(s.warmupS * 1000)
      // from here on: line latencies, the service's own handling time of each heartbeat, its event loop
      await Promise.all(groups.map((g) => g.resetLatency()))
      const inService: number[] = []
      const onRequest = (req: IncomingMessage, res: ServerResponse) => {
        if (!req.url?.endsWith('/heartbeat')) return
        const t = performance.now()
        res.once('finish', () => inService.push(performance.now() - t))
      }
      const loop = monitorEventLoopDelay({ resolution: 1 })
      svc.app.server.on('request', onRequest)
      loop.enable()
      const beat = await driver.run(this.#heartbeats(svc, ids)).finally(() => {
        loop.disable()
        svc.app.server.off('request', onRequest)
      })
      await Promise.all(ids.map((id) => api.waitTurns(id, 1, (seconds + 60) * 1000)))
      const elapsedS = (performance.now() - t0) / 1000
      const stored = await Promise.all(ids.map(async (id) => (await storedAgentEvents(svc.app, id)) - 2))
      const delivered = await Promise.all(groups.map((g, i) => g.collect(stored[i]!, 30_000)))
      for (const id of ids) await api.suspend(id)
      return {
        beat,
        live,
        inService: { p50: percentile(inService, 0.5), p99: percentile(inService, 0.99) },
        loop: { p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 },
        linesPerS: stored.reduce((a, b) => a + b, 0) / elapsedS,
        lineP99: Math.max(...delivered.map((r) => r.latency?.p99 ?? NaN)),
        incomplete: delivered.filter((r, i) => !cleanStream(r, stored[i]!)).length
      }
    } finally {
      for (const g of groups) await g.close()
    }
  }

  /**
   * Sessions whose agents really ran (the fake agent), plus many more that were active, all
   * suspended by the service's idle sweep: no process may remain, and the service's memory may
   * grow only a little.
   */
  async #suspendedSessions (svc: Service): Promise<void> {
    const s = this.#s
    const api = new Api(svc.url)
    const app = svc.app
    const withAgents = Math.min(s.liveAgents, s.suspended)
    const ids = await Promise.all(Array.from({ length: withAgents }, () => api.createSession({ idleTimeoutSeconds: 1 })))
    await Promise.all(ids.map((id) => api.message(id, 'hello')))
    await Promise.all(ids.map((id) => api.waitTurns(id, 1, 60_000)))
    const liveBefore = app.agents.liveCount
    const before = await settledRss()
    const seeded = s.suspended - withAgents
    // the others, active and idle past their deadline, as if their agents had run and gone quiet
    await app.database.db.execute(sql.raw(`
      insert into sessions (id, state, version, title, workdir, agent_session_id, idle_timeout_seconds, ttl_seconds, expires_at,
        active_since, started_at, idle_deadline_at, last_activity_at, turns, transition_count, state_changed_at, created_at, updated_at)
      select gen_random_uuid(), 'active', 2, 'bench suspended ' || n, '/tmp/mobvibe-bench/suspended/' || n, gen_random_uuid(), 60, 86400,
        now() + interval '1 day', now() - interval '2 minutes', now() - interval '2 minutes', now() - interval '1 minute',
        now() - interval '2 minutes', 1, 1, now() - interval '2 minutes', now() - interval '2 minutes', now()
      from generate_series(1, ${seeded}) n`))
    await sleep(1100) // the agents' idle timeout (1 s) passes
    const t0 = performance.now()
    let swept = 0
    for (let hits = -1; hits !== 0;) {
      hits = (await app.sessions.suspendIdle()).length
      swept += hits
    }
    await app.events.flush()
    const sweepMs = performance.now() - t0
    const after = await settledRss()
    const [count] = await rows<{ n: number }>(app, sql`select count(*)::int as n from sessions where state = 'suspended'`)
    const suspended = Number(count?.n ?? 0)
    await sleep(200)
    const processes = (await agentProcesses(svc.config)).length
    const live = app.agents.liveCount
    const addedMb = (after.rss - before.rss) / MB
    console.log(`  (${liveBefore} live agents before the sweep; ${fmt.int(swept)} sessions suspended by the idle sweep in ${fmt.int(sweepMs)} ms)`)
    this.#c.report.add({
      figure: `${fmt.int(s.suspended)} suspended sessions (${withAgents} had a live fake agent; idle sweep)`,
      db: this.#db,
      value: `${processes} processes, ${live} live agents, ${signedMb(after.rss - before.rss)} RSS (heap ${signedMb(after.heap - before.heap)})`,
      target: `0 processes; ≤ 20 MB added to RSS; ${fmt.int(suspended)} sessions suspended`,
      pass: processes === 0 && live === 0 && addedMb <= 20 && suspended >= s.suspended && liveBefore === withAgents
    })
  }

  /**
   * A message on a suspended session → first agent frame on the stream, against a raw spawn of the
   * same fake agent (same command, environment, --resume of a conversation of its own) → first
   * stdout byte. Interleaved, one of each per round.
   */
  async #resumeOverhead (svc: Service): Promise<void> {
    const { clients, report } = this.#c
    const s = this.#s
    const api = new Api(svc.url)
    const id = await api.createSession()
    const group = await clients.open(api.streamUrl(id), 1)
    const rawConversation = randomUUID()
    const rawNew = await agentCommand(svc.config, 'new', rawConversation, 'raw-resume')
    const rawResume = await agentCommand(svc.config, 'resume', rawConversation, 'raw-resume')
    const serviceSamples: number[] = []
    const rawSamples: number[] = []
    const warm = 3
    try {
      // a first turn on each side: a conversation that can be resumed
      const first = await group.resume(api.messagesUrl(id), JSON.stringify({ text: 'hello' }), 30_000)
      if (!first.resultOk) throw new Error(`first turn failed (HTTP ${first.status})`)
      await api.waitTurns(id, 1, 30_000)
      await api.suspend(id)
      await rawSpawn(rawNew, 'hello')
      for (let i = 0; i < warm + s.resumes; i++) {
        const raw = await rawSpawn(rawResume, `again ${i}`)
        const r = await group.resume(api.messagesUrl(id), JSON.stringify({ text: `again ${i}` }), 30_000)
        if (!r.resultOk) throw new Error(`resume ${i} failed (HTTP ${r.status})`)
        await api.waitTurns(id, i + 2, 30_000)
        await api.suspend(id)
        if (i >= warm) {
          rawSamples.push(raw)
          serviceSamples.push(r.firstByteMs)
        }
      }
    } finally {
      await group.close()
    }
    const p = (xs: number[], q: number) => percentile(xs, q)
    const over50 = p(serviceSamples, 0.5) - p(rawSamples, 0.5)
    const over99 = p(serviceSamples, 0.99) - p(rawSamples, 0.99)
    report.add({
      figure: `raw spawn of the fake agent (--resume) → first stdout byte, ${s.resumes} runs (anchor)`,
      db: this.#db,
      value: `p50 ${fmt.ms(p(rawSamples, 0.5))}`,
      p99Ms: p(rawSamples, 0.99)
    })
    report.add({
      figure: `resume overhead: message on a suspended session → first agent frame on the stream, minus the raw spawn, ${s.resumes} runs`,
      db: this.#db,
      value: `p50 ${fmt.ms(over50)} (service p50 ${fmt.ms(p(serviceSamples, 0.5))} p99 ${fmt.ms(p(serviceSamples, 0.99))})`,
      p99Ms: over99,
      target: 'p50 ≤ 30 ms, p99 ≤ 60 ms',
      pass: over50 <= 30 && over99 <= 60
    })
  }

  /** After the section: no fake agent of this run may still be running (any left is ended). */
  async #noAgentLeft (): Promise<void> {
    const left: number[] = []
    for (const config of this.#configs) left.push(...await agentProcesses(config))
    for (const pid of left) signal(pid, 'SIGKILL')
    this.#c.report.add({
      figure: 'fake agent processes left after the section',
      db: this.#db,
      value: `${left.length}${left.length ? ` (pids ${left.join(', ')}, now killed)` : ''}`,
      target: '0',
      pass: left.length === 0
    })
  }
}

const collectTimeout = (lines: number, subscribers: number) => 60_000 + lines * subscribers * 0.05

/** Several runs as one: the lines of all over their summed windows; failures of any. */
function combine (runs: (CollectResult & { stored?: number })[], lines: number) {
  const windowMs = runs.reduce((a, r) => a + r.windowMs, 0)
  const failures = runs.map((r) => streamFailures(r, lines)).filter(Boolean).join('; ') || undefined
  return {
    lines: lines * runs.length,
    windowMs,
    bytesPerClient: runs.reduce((a, r) => a + r.markedBytes / r.clients, 0),
    dropped: runs.reduce((a, r) => a + r.dropped, 0),
    failures
  }
}

/** Every client got every line, in order, none twice, none closed early. */
function cleanStream (r: CollectResult, lines: number): boolean {
  return r.complete === r.clients && r.dropped === 0 && r.gaps === 0 && r.duplicates === 0 && r.marked === lines * r.clients && !r.timedOut
}

function streamFailures (r: CollectResult, lines: number): string | undefined {
  const parts: string[] = []
  if (r.complete < r.clients) parts.push(`${r.clients - r.complete}/${r.clients} clients incomplete`)
  if (r.dropped > 0) parts.push(`${r.dropped} dropped (close ${r.closeCodes.join(', ')})`)
  if (r.gaps > 0) parts.push(`${r.gaps} gaps`)
  if (r.duplicates > 0) parts.push(`${r.duplicates} duplicates`)
  if (r.timedOut) parts.push('timed out')
  if (r.marked > lines * r.clients) parts.push(`${r.marked - lines * r.clients} extra lines`)
  return parts.length ? parts.join(', ') : undefined
}

/** GET /events holds each of the turn's `lines` benchmark lines exactly once. */
async function persistedLines (api: Api, sessionId: string, lines: number): Promise<{ ok: boolean, detail: string }> {
  const seen = new Uint8Array(lines)
  let extra = 0
  for (const e of await api.events(sessionId)) {
    if (e.type !== 'agent') continue
    const text = (e.data as { message?: { content?: { text?: string }[] } }).message?.content?.[0]?.text
    if (typeof text !== 'string' || !text.startsWith(LINE_MARKER)) continue
    const i = Number.parseInt(text.slice(LINE_MARKER.length), 10)
    if (i >= 0 && i < lines && seen[i] === 0) seen[i] = 1
    else extra++
  }
  const found = seen.reduce((a, b) => a + b, 0)
  return { ok: found === lines && extra === 0, detail: `${fmt.int(found)}/${fmt.int(lines)}${extra ? `, ${extra} unexpected` : ''}` }
}
