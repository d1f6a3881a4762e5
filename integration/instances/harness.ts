/**
 * The harness of the multi-instance tests (integration/instances/*.test.ts): several instances of
 * the real launcher (src/server.ts, through `launch()`) on ONE fresh PostgreSQL database, as an
 * operator deploys them behind a balancer. Not a test file: `npm run test:instances` runs the
 * test files of this folder, and `npm test` none of them (tap's `include` takes `test/**` only).
 *
 * - `startCluster(t)`: a database created from DATABASE_URL (which must be set: these tests are
 *   about PostgreSQL) and dropped in teardown; instances `A`, `B`, `C`… each with its own
 *   MOBVIBE_DATA_DIR, all with one MOBVIBE_WORKSPACE_ROOT and one CLAUDE_CONFIG_DIR, the fake CLI,
 *   AGENT_SANDBOX=none, INSTANCE_LEASE_SECONDS=4 and a short sweep. `cluster.sql` inspects the
 *   database; `restart(name)` starts an instance again on its own data directory; `add(name)` one
 *   more.
 * - `cluster.agentsOf(id)`: the live fake-CLI processes of a session (found by their
 *   MOBVIBE_AGENT_SESSION marker; wrappers and the agents' own children are not counted) and the
 *   instance whose process tree each one is in (null: an orphan). `DoubleOwnerSampler` looks every
 *   100 ms and keeps every moment where one session had two of them.
 * - `Viewer`: a WebSocket client on a session's stream that records every frame it gets, and
 *   optionally reconnects (`?after=<last seq>`) to the next instance when its connection closes.
 * - waits: polling with a deadline (`waitUntil`), never a bare sleep as synchronisation.
 *
 * Every instance is SIGKILLed in teardown if still running, then every agent process left in the
 * cluster's directories is killed, the database dropped and the directories removed.
 */
import { mkdir, mkdtemp, readFile, readdir, readlink, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import postgres from 'postgres'
import type { Test } from 'tap'
import WebSocket from 'ws'
import type { SessionView } from '../../src/schemas/session.js'
import { kinds, procStat, waitUntil, type Frame } from '../../test/helpers/agents.js'
import { freshDatabaseUrl } from '../../test/helpers/build.js'
import { launch, type LogLine, type Service } from '../../test/helpers/service-process.js'

export { kinds, waitUntil, type Frame }

const FAKE_CLAUDE = fileURLToPath(new URL('../../test/fixtures/fake-claude.mjs', import.meta.url))

/** The numbers of the harness, named once. */
export const HARNESS = {
  leaseSeconds: 4,
  sweepIntervalMs: 100,
  killGraceMs: 500,
  /** how often the DoubleOwnerSampler looks */
  sampleEveryMs: 100,
  /** the default bound of a wait */
  waitMs: 15_000
} as const
export const LEASE_MS = HARNESS.leaseSeconds * 1000

// ---------------------------------------------------------------------------------------------
// The database

/**
 * A fresh database on the server of DATABASE_URL (created here, dropped in teardown, connections
 * and all). Fails loudly when DATABASE_URL is not set: these tests are about PostgreSQL.
 */
async function freshDatabase (t: Test): Promise<string> {
  const base = process.env.DATABASE_URL
  const url = base && /^postgres(ql)?:\/\//.test(base) ? await freshDatabaseUrl(t, 'mobvibe_instances') : undefined
  if (!url) {
    throw new Error('integration/instances needs DATABASE_URL=postgres://… (a role with CREATEDB): ' +
      'several instances share one PostgreSQL database, which the harness creates on that server and drops. ' +
      'Example: DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run test:instances')
  }
  return url
}

// ---------------------------------------------------------------------------------------------
// Instances

export interface ApiResult<T = any> { status: number, body: T, headers: Headers }

/** One instance of the service: a name and a data directory, and the processes that ran on it. */
export class Instance {
  /** every process started on this data directory, oldest first; the last is the current one */
  readonly incarnations: Service[] = []

  constructor (readonly name: string, readonly dataDir: string, readonly env: Record<string, string>) {}

  get service (): Service {
    const s = this.incarnations.at(-1)
    if (!s) throw new Error(`${this.name} was never started`)
    return s
  }

  /** `A#1`, `A#2`…: the name and the incarnation of the current process */
  get tag (): string {
    return `${this.name}#${this.incarnations.length}`
  }

  get pid (): number {
    return this.service.proc.pid!
  }

  get url (): string {
    return this.service.url
  }

  /** the current process has not exited */
  get running (): boolean {
    return this.incarnations.length > 0 && this.service.exit === undefined
  }

  /** A request as `user` (default the test user), JSON in and out; never throws on a status. */
  async api<T = any> (method: 'GET' | 'POST' | 'PATCH' | 'DELETE', path: string, body?: unknown, user?: string): Promise<ApiResult<T>> {
    const res = await this.service.fetch(path, {
      method,
      ...(user === undefined ? {} : { user }),
      ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
    })
    const text = await res.text()
    let parsed: unknown
    try {
      parsed = text === '' ? undefined : JSON.parse(text)
    } catch {
      parsed = text
    }
    return { status: res.status, body: parsed as T, headers: res.headers }
  }

  signal (sig: NodeJS.Signals): void {
    this.service.proc.kill(sig)
  }

  /** The log lines of every incarnation that match. */
  logLines (match: (l: LogLine) => boolean): LogLine[] {
    return this.incarnations.flatMap((s) => s.lines.filter(match))
  }
}

export interface ClusterOptions {
  /** the instances started at once, in order (default A, B, C); the first one alone (it migrates) */
  names?: string[]
  /** more environment for every instance (undefined removes a default) */
  env?: Record<string, string | undefined>
}

/** A row of `sessions`, as the database has it (snake_case). */
export type SessionRow = Record<string, any> & { id: string, state: string, version: number, worker_id?: string | null, worker_epoch?: string | number }

export class Cluster {
  readonly instances = new Map<string, Instance>()
  readonly workspaceRoot: string
  readonly configDir: string

  private constructor (
    readonly t: Test,
    readonly dir: string,
    readonly databaseUrl: string,
    readonly sql: postgres.Sql,
    readonly baseEnv: Record<string, string>
  ) {
    this.workspaceRoot = join(dir, 'workspaces')
    this.configDir = join(dir, 'claude')
  }

  /**
   * A database of its own, the shared directories, and the instances `names` (default A, B, C)
   * running and listening. Everything is undone in `t`'s teardown.
   */
  static async start (t: Test, opts: ClusterOptions = {}): Promise<Cluster> {
    const dir = await mkdtemp(join(tmpdir(), 'mobvibe-instances-'))
    // registered first, so it runs last (tap runs teardowns last in, first out): after every
    // instance's own teardown (launch's SIGKILL) and the inspection client's end
    t.teardown(async () => {
      await killProcessesUnder([join(dir, 'workspaces'), join(dir, 'claude')])
      await rm(dir, { recursive: true, force: true })
    })
    const databaseUrl = await freshDatabase(t)
    const sql = postgres(databaseUrl, { max: 4, onnotice: () => {} })
    t.teardown(() => sql.end({ timeout: 5 }))
    const baseEnv: Record<string, string | undefined> = {
      HOST: '127.0.0.1',
      PORT: '0',
      DATABASE_URL: databaseUrl,
      MOBVIBE_WORKSPACE_ROOT: join(dir, 'workspaces'),
      CLAUDE_CONFIG_DIR: join(dir, 'claude'),
      CLAUDE_BIN: FAKE_CLAUDE,
      AGENT_SANDBOX: 'none',
      INSTANCE_LEASE_SECONDS: String(HARNESS.leaseSeconds),
      SWEEP_INTERVAL_MS: String(HARNESS.sweepIntervalMs),
      KILL_GRACE_MS: String(HARNESS.killGraceMs),
      IDLE_TIMEOUT_MIN_SECONDS: '1',
      LOG_LEVEL: 'info',
      // one test user drives every session: the per-user limits are not what these tests are about
      RATE_LIMIT_PER_MINUTE: '0',
      HEARTBEAT_RATE_LIMIT_PER_MINUTE: '0',
      MAX_STREAMS_PER_USER: '1000',
      MAX_LIVE_AGENTS_PER_USER: '200',
      MAX_LIVE_AGENTS: '200',
      ...opts.env
    }
    const env = Object.fromEntries(Object.entries(baseEnv).filter((e): e is [string, string] => e[1] !== undefined))
    await mkdir(join(dir, 'workspaces'), { recursive: true })
    const cluster = new Cluster(t, dir, databaseUrl, sql, env)
    const names = opts.names ?? ['A', 'B', 'C']
    if (names.length > 0) {
      // the first alone: it applies the migrations to the empty database
      await cluster.add(names[0]!)
      await Promise.all(names.slice(1).map((n) => cluster.add(n)))
    }
    return cluster
  }

  instance (name: string): Instance {
    const i = this.instances.get(name)
    if (!i) throw new Error(`no instance ${name}`)
    return i
  }

  /** The instances whose current process runs. */
  running (): Instance[] {
    return [...this.instances.values()].filter((i) => i.running)
  }

  /** Starts one more instance on a data directory of its own and waits until it listens. */
  async add (name: string, env: Record<string, string> = {}): Promise<Instance> {
    if (this.instances.has(name)) throw new Error(`instance ${name} exists: restart() it`)
    const instance = new Instance(name, join(this.dir, `data-${name}`), { ...this.baseEnv, MOBVIBE_DATA_DIR: join(this.dir, `data-${name}`), ...env })
    this.instances.set(name, instance)
    await this.#launch(instance)
    return instance
  }

  /**
   * Starts `name` again on its own data directory, once its current process has exited (after
   * `signal` when given and it still runs: SIGTERM waits for a graceful exit, SIGKILL does not).
   */
  async restart (name: string, signal?: NodeJS.Signals): Promise<Instance> {
    const instance = this.instance(name)
    if (instance.running) {
      if (!signal) throw new Error(`${name} still runs: give restart() a signal`)
      await instance.service.stop(signal)
    }
    await this.#launch(instance)
    return instance
  }

  async #launch (instance: Instance): Promise<void> {
    const n = instance.incarnations.length
    const service = launch(this.t, n === 0 ? instance.name : `${instance.name}#${n + 1}`, instance.env)
    instance.incarnations.push(service)
    await service.ready()
  }

  /**
   * A process on `name`'s data directory that is not one of the cluster's instances (to see it
   * refused); killed in teardown if it runs.
   */
  intruder (name: string): Service {
    const instance = this.instance(name)
    return launch(this.t, `${name} (intruder)`, instance.env)
  }

  // -------------------------------------------------------------------------------------------
  // What the database says

  /** The id of the instance row of `instance`'s current process (the newest one with its pid and data directory). */
  async instanceId (instance: Instance, opts: { live?: boolean } = {}): Promise<string | undefined> {
    const rows = await this.sql`
      select id, stopped_at from service_instances
      where pid = ${instance.pid} and data_dir = ${instance.dataDir}
      order by started_at desc limit 1`.catch(noInstanceTable)
    const row = rows[0]
    if (!row || (opts.live && row.stopped_at !== null)) return undefined
    return String(row.id)
  }

  /** Every instance row, oldest first ([] while the table does not exist). */
  async instanceRows (): Promise<Array<{ id: string, pid: number, data_dir: string, started_at: Date, heartbeat_at: Date, stopped_at: Date | null, live: boolean }>> {
    return await this.sql`
      select id, pid, data_dir, started_at, heartbeat_at, stopped_at,
        (stopped_at is null and heartbeat_at > now() - make_interval(secs => ${HARNESS.leaseSeconds})) as live
      from service_instances order by started_at`.catch(noInstanceTable) as any
  }

  /** The instance name whose row has this id (any incarnation), or undefined. */
  async nameOfInstanceId (id: string | null | undefined): Promise<string | undefined> {
    if (!id) return undefined
    const [row] = await this.sql`select pid, data_dir from service_instances where id = ${id}`.catch(noInstanceTable)
    if (!row) return undefined
    for (const i of this.instances.values()) if (i.dataDir === row.data_dir) return i.name
    return undefined
  }

  /**
   * The instance (its name) that owns the session by its `worker_id`, and which incarnation of it
   * ('A#2': the second process on A's data directory); undefined when nobody owns it. Only an
   * active session is owned: `worker_id` of any other names the last claim, kept to fence it.
   */
  async workerOf (id: string): Promise<string | undefined> {
    const row = await this.session(id)
    if (row.state !== 'active' || !row.worker_id) return undefined
    const [inst] = await this.sql`select pid, data_dir from service_instances where id = ${row.worker_id}`.catch(noInstanceTable)
    if (!inst) return `unknown instance ${row.worker_id}`
    for (const i of this.instances.values()) {
      const n = i.incarnations.findIndex((s) => s.proc.pid === inst.pid)
      if (i.dataDir === inst.data_dir && n >= 0) return `${i.name}#${n + 1}`
    }
    return `unknown instance ${row.worker_id} (pid ${inst.pid})`
  }

  async session (id: string): Promise<SessionRow> {
    const [row] = await this.sql`select * from sessions where id = ${id}`
    if (!row) throw new Error(`no session ${id} in the database`)
    return row as SessionRow
  }

  /** The session's stored events, oldest first, as the stream would carry them. */
  async events (id: string, after = 0): Promise<Frame[]> {
    const rows = await this.sql`
      select seq, type, payload, at, client_message_id from session_events
      where session_id = ${id} and seq > ${after} order by seq`
    return rows.map((r) => ({ seq: Number(r.seq), type: r.type, at: (r.at as Date).toISOString(), data: r.payload, clientMessageId: r.client_message_id }) as Frame)
  }

  /** The session's transition history, oldest first. */
  async transitions (id: string): Promise<Array<{ from_state: string | null, to_state: string, reason: string | null, actor: string, version: number, at: Date }>> {
    return await this.sql`
      select from_state, to_state, reason, actor, version, at from session_transitions
      where session_id = ${id} order by version` as any
  }

  /** Waits until the session's row satisfies `ready`; returns it. */
  async waitSession (id: string, what: string, ready: (s: SessionRow) => boolean, timeoutMs: number = HARNESS.waitMs): Promise<SessionRow> {
    let last: SessionRow | undefined
    return waitUntil(`${id.slice(0, 8)}: ${what}`, async () => {
      last = await this.session(id)
      return ready(last) ? last : undefined
    }, { timeoutMs, intervalMs: 50, describe: async () => `session row: ${JSON.stringify(brief(last))}\nevents: ${JSON.stringify(kinds(await this.events(id)).slice(-20))}` })
  }

  waitState (id: string, state: string, timeoutMs?: number): Promise<SessionRow> {
    return this.waitSession(id, `state ${state}`, (s) => s.state === state, timeoutMs)
  }

  /** Waits until the session's stored events (after `afterSeq`) satisfy `ready`; returns them. */
  async waitEvents (id: string, what: string, ready: (frames: Frame[]) => boolean, opts: { afterSeq?: number, timeoutMs?: number } = {}): Promise<Frame[]> {
    let last: Frame[] = []
    return waitUntil(`${id.slice(0, 8)}: ${what}`, async () => {
      last = await this.events(id, opts.afterSeq ?? 0)
      return ready(last) ? last : undefined
    }, {
      timeoutMs: opts.timeoutMs ?? HARNESS.waitMs,
      intervalMs: 50,
      describe: async () => `events: ${JSON.stringify(kinds(last).slice(-25))}\nsession row: ${JSON.stringify(brief(await this.session(id).catch(() => undefined)))}`
    })
  }

  /** Waits for the result of the turn whose reply starts with `echo: <prompt>` (directives stripped). */
  /** A session whose agent runs on `on`: created there, its first message sent there and answered. */
  async sessionOn (on: Instance, prompt: string): Promise<{ id: string, agent: AgentProcess }> {
    const { id } = await createSession(on, { title: prompt })
    await send(on, id, prompt)
    await this.waitReply(id, prompt)
    const [agent] = await this.waitAgents(id, `one agent, on ${on.name}`, (a) => a.length === 1 && a[0]!.instance === on.name)
    return { id, agent: agent! }
  }

  async waitReply (id: string, prompt: string, opts: { afterSeq?: number, timeoutMs?: number } = {}): Promise<Frame> {
    const frames = await this.waitEvents(id, `the reply to "${prompt}"`, (f) => f.some(isReplyTo(prompt)), opts)
    return frames.find(isReplyTo(prompt))!
  }

  /**
   * Every instance's log lines about the session (its `sessionId`, or the `pid` or `pids` of one
   * of its agents), in time order, one short line each (`12:01:02.345 A#2 warn agent crashed {…}`): what
   * to read when a check about it failed.
   */
  logsAbout (sessionId: string, max = 40): string {
    const levels: Record<number, string> = { 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' }
    const all = [...this.instances.values()].flatMap((i) => i.incarnations.flatMap((s) => s.lines))
    const agentPids = new Set(all.filter((l) => l.sessionId === sessionId && l.msg === 'agent started').map((l) => l.pid))
    const lines: Array<{ time: string, text: string }> = []
    for (const i of this.instances.values()) {
      i.incarnations.forEach((s, n) => {
        for (const l of s.lines) {
          const pids = [l.pid, ...(Array.isArray(l.pids) ? l.pids : [])]
          if (l.sessionId !== sessionId && !pids.some((p) => p !== undefined && agentPids.has(p))) continue
          const { level, time, msg, service, sessionId: _id, ...rest } = l
          const extra = JSON.stringify(rest)
          lines.push({ time: String(time), text: `${String(time).slice(11, 23)} ${i.name}#${n + 1} ${levels[level ?? 30] ?? level} ${msg}${extra === '{}' ? '' : ` ${extra.slice(0, 300)}`}` })
        }
      })
    }
    return lines.sort((a, b) => a.time.localeCompare(b.time)).slice(-max).map((l) => l.text).join('\n')
  }

  // -------------------------------------------------------------------------------------------
  // Processes

  /** pid → the instance (and incarnation) it was; every process the cluster ever started. */
  #pids (): Map<number, { instance: string, incarnation: number }> {
    const map = new Map<number, { instance: string, incarnation: number }>()
    for (const i of this.instances.values()) {
      i.incarnations.forEach((s, n) => { if (s.proc.pid !== undefined) map.set(s.proc.pid, { instance: i.name, incarnation: n }) })
    }
    return map
  }

  /** The instance whose process tree `pid` is in (its current or an earlier incarnation); null for an orphan. */
  async ownerOf (pid: number): Promise<{ instance: string, incarnation: number } | null> {
    const pids = this.#pids()
    let p: number | undefined = pid
    for (let depth = 0; p !== undefined && p > 1 && depth < 64; depth++) {
      const owner = pids.get(p)
      if (owner) return owner
      p = (await procStat(p))?.ppid
    }
    return null
  }

  /** The live fake-CLI processes of the session, with the instance whose tree each is in. */
  async agentsOf (sessionId: string): Promise<AgentProcess[]> {
    return (await this.scanAgents()).get(sessionId) ?? []
  }

  /** Every live fake-CLI process that carries a session marker, by session. */
  async scanAgents (): Promise<Map<string, AgentProcess[]>> {
    const bySession = new Map<string, AgentProcess[]>()
    for (const a of await scanMarkedAgents()) {
      const owner = await this.ownerOf(a.pid)
      const agent: AgentProcess = { ...a, instance: owner?.instance ?? null, incarnation: owner?.incarnation ?? null }
      const list = bySession.get(a.sessionId) ?? []
      list.push(agent)
      bySession.set(a.sessionId, list)
    }
    return bySession
  }

  /** Waits until the session's agents satisfy `ready`; returns them. */
  async waitAgents (sessionId: string, what: string, ready: (agents: AgentProcess[]) => boolean, timeoutMs: number = HARNESS.waitMs): Promise<AgentProcess[]> {
    let last: AgentProcess[] = []
    return waitUntil(`${sessionId.slice(0, 8)}: ${what}`, async () => {
      last = await this.agentsOf(sessionId)
      return ready(last) ? last : undefined
    }, { timeoutMs, intervalMs: 50, describe: () => `agents: ${describeAgents(last)}` })
  }
}

/**
 * No rows while `service_instances` does not exist (a build without instance registration): the
 * assertions that compare ids then fail on their own, and the rest of a test still runs.
 */
function noInstanceTable (err: Error & { code?: string }): any[] {
  if (err.code === '42P01') return []
  throw err
}

/** A few columns of a session row, for failure messages. */
function brief (s: SessionRow | undefined): Record<string, unknown> | undefined {
  if (!s) return undefined
  return { state: s.state, version: s.version, busy: s.busy, worker_id: s.worker_id, worker_epoch: s.worker_epoch, last_error: s.last_error }
}

// ---------------------------------------------------------------------------------------------
// Agent processes (/proc)

export interface AgentProcess {
  pid: number
  ppid: number
  sessionId: string
  argv: string[]
  /** the instance whose process tree it is in; null: an orphan (its instance died) */
  instance: string | null
  incarnation: number | null
}

export function describeAgents (agents: AgentProcess[]): string {
  if (agents.length === 0) return 'none'
  return agents.map((a) => `pid ${a.pid} on ${a.instance === null ? 'no instance (orphan)' : `${a.instance}#${(a.incarnation ?? 0) + 1}`}${a.argv.includes('--resume') ? ' --resume' : ''}`).join(', ')
}

/**
 * Every live process running the fake CLI under node (not a zombie, not a wrapper, not one of its
 * own children) whose environment holds MOBVIBE_AGENT_SESSION=<id>.
 */
async function scanMarkedAgents (): Promise<Array<Omit<AgentProcess, 'instance' | 'incarnation'>>> {
  const found: Array<Omit<AgentProcess, 'instance' | 'incarnation'>> = []
  const marker = 'MOBVIBE_AGENT_SESSION='
  const names = (await readdir('/proc')).filter((d) => /^\d+$/.test(d))
  await Promise.all(names.map(async (name) => {
    const pid = Number(name)
    let environ: string
    try {
      environ = await readFile(`/proc/${pid}/environ`, 'latin1')
    } catch {
      return // gone, or not ours to read
    }
    const entry = environ.split('\0').find((e) => e.startsWith(marker))
    if (!entry) return
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0').filter((a) => a !== '')
    // the CLI itself: node running fake-claude.mjs (a bwrap wrapper names the script too, but is not node)
    if (!/^node/.test(basename(argv[0] ?? '')) || !argv.some((a) => a.endsWith('fake-claude.mjs'))) return
    const stat = await procStat(pid)
    if (!stat || stat.state === 'Z' || stat.state === 'X') return
    found.push({ pid, ppid: stat.ppid, sessionId: entry.slice(marker.length), argv })
  }))
  return found
}

/** Kills every process whose working directory or agent state (CLAUDE_CONFIG_DIR) lies under one of `roots`. */
async function killProcessesUnder (roots: string[]): Promise<void> {
  for (const name of (await readdir('/proc')).filter((d) => /^\d+$/.test(d))) {
    const pid = Number(name)
    if (pid === process.pid) continue
    const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => '')
    const environ = await readFile(`/proc/${pid}/environ`, 'latin1').catch(() => '')
    const configDir = environ.split('\0').find((e) => e.startsWith('CLAUDE_CONFIG_DIR='))?.slice('CLAUDE_CONFIG_DIR='.length) ?? ''
    if (roots.some((r) => cwd.startsWith(r) || configDir.startsWith(r))) {
      try { process.kill(pid, 'SIGKILL') } catch {}
    }
  }
}

/**
 * Samples every agent process every 100 ms and keeps every moment where one session was served by
 * more than one (the proof that a session never has two owners at once).
 */
export class DoubleOwnerSampler {
  readonly violations: Array<{ at: number, sessionId: string, agents: string }> = []
  samples = 0
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> | undefined
  #stopped = false

  constructor (readonly cluster: Cluster, readonly sessions?: () => string[]) {}

  start (): this {
    const loop = () => {
      if (this.#stopped) return
      this.#running = this.#sample().finally(() => {
        if (!this.#stopped) this.#timer = setTimeout(loop, HARNESS.sampleEveryMs)
      })
    }
    loop()
    return this
  }

  async #sample (): Promise<void> {
    const watched = this.sessions?.()
    const all = await this.cluster.scanAgents()
    this.samples++
    for (const [sessionId, agents] of all) {
      if (watched && !watched.includes(sessionId)) continue
      if (agents.length > 1) this.violations.push({ at: Date.now(), sessionId, agents: describeAgents(agents) })
    }
  }

  async stop (): Promise<void> {
    this.#stopped = true
    clearTimeout(this.#timer)
    await this.#running
  }
}

/**
 * A bounded wait as an assertion: its timeout is a failure of `t` (with the wait's own message),
 * and the test goes on to its next checks. Undefined when it failed.
 */
export async function soft<T> (t: Test, wait: Promise<T>): Promise<T | undefined> {
  try {
    return await wait
  } catch (err) {
    t.fail((err as Error).message)
    return undefined
  }
}

// ---------------------------------------------------------------------------------------------
// Sessions through the API

export async function createSession (instance: Instance, body: Record<string, unknown> = {}): Promise<SessionView> {
  const res = await instance.api<SessionView>('POST', '/v1/sessions', body)
  if (res.status !== 201) throw new Error(`${instance.name}: POST /v1/sessions: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body
}

export interface Accepted { seq: number, duplicate: boolean }

/** POST /messages on `instance`: the answer whatever its status. */
export function postMessage (instance: Instance, id: string, text: string, clientMessageId?: string): Promise<ApiResult<Accepted>> {
  return instance.api<Accepted>('POST', `/v1/sessions/${id}/messages`, { text, ...(clientMessageId ? { clientMessageId } : {}) })
}

/** POST /messages on `instance`, expecting 202. */
export async function send (instance: Instance, id: string, text: string, clientMessageId?: string): Promise<Accepted> {
  const res = await postMessage(instance, id, text, clientMessageId)
  if (res.status !== 202) throw new Error(`${instance.name}: POST /messages "${text}": ${res.status} ${JSON.stringify(res.body)}`)
  return res.body
}

/** Every stored event of the session through `instance`'s GET /events, paged. */
export async function apiEvents (instance: Instance, id: string, after = 0): Promise<Frame[]> {
  const frames: Frame[] = []
  for (;;) {
    const res = await instance.api<{ items: Frame[], nextAfter: number | null }>('GET', `/v1/sessions/${id}/events?after=${after}&limit=1000`)
    if (res.status !== 200) throw new Error(`${instance.name}: GET /events: ${res.status} ${JSON.stringify(res.body)}`)
    frames.push(...res.body.items)
    if (res.body.nextAfter === null) return frames
    after = res.body.nextAfter
  }
}

export const isResult = (f: Frame) => f.type === 'agent' && f.data.type === 'result'
export const isInit = (f: Frame) => f.type === 'agent' && f.data.type === 'system' && f.data.subtype === 'init'
/** The successful result of the turn of `prompt` (the fake replies `echo: <prompt>[ | remembered: …]`). */
export const isReplyTo = (prompt: string) => (f: Frame) =>
  isResult(f) && !f.data.is_error && typeof f.data.result === 'string' &&
  (f.data.result === `echo: ${prompt}` || f.data.result.startsWith(`echo: ${prompt} | `))

/** What differs between two lists of frames (seq, type and data), at most `max` of it. */
export function framesDiffer (got: Frame[], want: Frame[], max = 3): string[] {
  const out: string[] = []
  if (got.length !== want.length) out.push(`${got.length} frames, expected ${want.length}`)
  for (let i = 0; i < Math.max(got.length, want.length) && out.length < max; i++) {
    const g = got[i]
    const w = want[i]
    if (!g || !w || g.seq !== w.seq || g.type !== w.type || JSON.stringify(g.data) !== JSON.stringify(w.data)) {
      out.push(`#${i}: got ${g ? `${g.seq} ${g.type}` : 'nothing'}, expected ${w ? `${w.seq} ${w.type}` : 'nothing'}`)
    }
  }
  return out
}

/**
 * The seqs of `frames` are after+1, after+2, … without a gap or a repeat, up to `upTo` when given:
 * '' or what is wrong.
 */
export function contiguity (frames: Frame[], after = 0, upTo?: number): string {
  let expect = after + 1
  for (const [i, f] of frames.entries()) {
    if (f.seq !== expect) return `expected seq ${expect}, got ${f.seq} (at frame #${i})`
    expect++
  }
  if (upTo !== undefined && expect - 1 !== upTo) return `ends at seq ${expect - 1}, not ${upTo}`
  return ''
}

// ---------------------------------------------------------------------------------------------
// The stream

export interface ViewerOptions {
  /** replay from after this seq (default 0) */
  after?: number
  /** on a close not asked for, reconnect with ?after=<last seq> to the next running instance of `on` */
  reconnect?: boolean
  timeoutMs?: number
}

/**
 * A client on a session's WebSocket stream that records every frame, in arrival order, over all
 * its connections. With `reconnect`, a closed connection is followed by one to the next running
 * instance (in the order given), from the last seq received, until `close()`.
 */
export class Viewer {
  /** every event frame received (a repeat stays in the list: that is what `contiguity` judges) */
  readonly frames: Frame[] = []
  /** the frames without a seq (replies) */
  readonly others: any[] = []
  readonly connections: Array<{ instance: string, after: number, closed?: string }> = []
  #socket: WebSocket | undefined
  #next = 0
  #closing = false
  #waiters = new Set<() => void>()
  #closedWhy: string | undefined

  private constructor (readonly cluster: Cluster, readonly sessionId: string, readonly on: Instance[], readonly options: ViewerOptions) {}

  /** Opens the stream on the first of `on` (resolved once it is open); closed in `t`'s teardown. */
  static async open (t: Test, cluster: Cluster, sessionId: string, on: Instance | Instance[], options: ViewerOptions = {}): Promise<Viewer> {
    const viewer = new Viewer(cluster, sessionId, Array.isArray(on) ? on : [on], options)
    t.teardown(() => viewer.close())
    await viewer.#connect(options.after ?? 0)
    return viewer
  }

  get lastSeq (): number {
    return this.frames.reduce((max, f) => Math.max(max, f.seq), this.options.after ?? 0)
  }

  #connect (after: number): Promise<void> {
    const instance = this.on[this.#next % this.on.length]!
    this.#next++
    const record: { instance: string, after: number, closed?: string } = { instance: instance.name, after }
    return new Promise<void>((resolve, reject) => {
      if (!instance.running || instance.url === '') {
        record.closed = 'not running'
        this.connections.push(record)
        return reject(new Error(`${instance.name} is not running`))
      }
      instance.service.authHeader().then((headers) => {
        const ws = new WebSocket(`${instance.url.replace(/^http/, 'ws')}/v1/sessions/${this.sessionId}/stream?after=${after}`, { headers, perMessageDeflate: false })
        this.#socket = ws
        this.connections.push(record)
        let opened = false
        ws.on('message', (data) => {
          const frame = JSON.parse(String(data))
          if (typeof frame.seq === 'number') this.frames.push(frame as Frame)
          else this.others.push(frame)
          this.#wake()
        })
        ws.on('error', () => {}) // 'close' follows
        ws.once('open', () => { opened = true; resolve() })
        ws.once('unexpected-response', (_req, res) => { record.closed = `refused: HTTP ${res.statusCode}` })
        ws.once('close', (code, reason) => {
          record.closed ??= `${code} ${String(reason)}`
          // one that never opened is the caller's to retry
          if (!opened) return reject(new Error(`stream on ${instance.name} did not open: ${record.closed}`))
          if (this.#closing || !this.options.reconnect) {
            this.#closedWhy ??= `closed on ${instance.name}: ${record.closed}`
            this.#wake()
            return
          }
          this.#reconnect()
        })
      }, reject)
    })
  }

  /** Tries the next instances in turn (a short pause between rounds) until one takes the stream. */
  #reconnect (): void {
    const deadline = Date.now() + 120_000
    const attempt = () => {
      if (this.#closing) return
      this.#connect(this.lastSeq).catch(() => {
        if (Date.now() > deadline) {
          this.#closedWhy = 'no instance took the stream for 120 s'
          this.#wake()
          return
        }
        setTimeout(attempt, this.#next % this.on.length === 0 ? 200 : 0)
      })
    }
    attempt()
  }

  #wake (): void {
    for (const w of this.#waiters) w()
  }

  /** Resolves with the first frame (after `afterSeq`) that matches; rejects on timeout or a final close. */
  waitFor (match: (f: Frame) => boolean, what: string, opts: { afterSeq?: number, timeoutMs?: number } = {}): Promise<Frame> {
    const timeoutMs = opts.timeoutMs ?? this.options.timeoutMs ?? HARNESS.waitMs
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.frames.find((f) => f.seq > (opts.afterSeq ?? 0) && match(f))
        if (found) return done(() => resolve(found))
        if (this.#closedWhy !== undefined) done(() => reject(new Error(`viewer of ${this.sessionId.slice(0, 8)}: ${this.#closedWhy} before ${what}\n${this.summary()}`)))
      }
      const timer = setTimeout(() => done(() => reject(new Error(`viewer of ${this.sessionId.slice(0, 8)}: no ${what} within ${timeoutMs} ms\n${this.summary()}`))), timeoutMs)
      const done = (settle: () => void) => {
        clearTimeout(timer)
        this.#waiters.delete(check)
        settle()
      }
      this.#waiters.add(check)
      check()
    })
  }

  /** Waits until the viewer has received every seq up to `seq`. */
  async waitSeq (seq: number, timeoutMs?: number): Promise<void> {
    await this.waitFor((f) => f.seq >= seq, `seq ${seq}`, { ...(timeoutMs === undefined ? {} : { timeoutMs }) })
  }

  send (frame: unknown): void {
    this.#socket?.send(JSON.stringify(frame))
  }

  /** The last frames and the connections, for failure messages. */
  summary (): string {
    return `connections: ${JSON.stringify(this.connections)}\nlast frames: ${JSON.stringify(kinds(this.frames.slice(-15)))} (seqs ${this.frames.slice(-15).map((f) => f.seq).join(',')})`
  }

  /** Stops reconnecting and closes the current connection (resolves once it is closed). */
  async close (): Promise<void> {
    this.#closing = true
    const ws = this.#socket
    if (!ws || ws.readyState === WebSocket.CLOSED) return
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => { ws.terminate(); resolve() }, 2000)
      ws.once('close', () => { clearTimeout(timer); resolve() })
      ws.close()
    })
  }
}
