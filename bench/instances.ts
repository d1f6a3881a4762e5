// Several instances on one PostgreSQL (BENCH_AGENT_FIGURES=instances; PostgreSQL only): three real
// launchers A, B, C on a fresh database, each with its own data directory, sharing the workspaces
// and the agents' state, the paced agent as CLAUDE_BIN, a 4 s lease. The figures of the issue:
// line → WebSocket on the owner and on the other instances at 1,000 lines/s in all, the doorbell's
// notices, a message posted on a non-owner → the agent's stdin, and the failover after kill -9 of
// an owner (lease, `worker lost`, the first line of the resumed session; nothing lost, nothing
// twice, never two agents). docs/SCALING.md, "How instances coordinate", says how it works.
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import { SignJWT } from 'jose'
import postgres from 'postgres'
import type { Closers } from './closers.js'
import { BenchInstance, descendants, environValue, kill, processTable, processesUnder } from './instance-cluster.js'
import { INSTANCES, percentile, wallMs, type Cluster, type InstancesSettings, type Without } from './instance-context.js'
import { failover } from './instance-failover.js'
import { AgentSampler, CpuMeter, NotifyMeter, type CpuUse } from './instance-probes.js'
import type { FirstFrame, LatencyStats, ViewerCommand, ViewerFrames } from './instances-worker.js'
import { fmt, type Report } from './report.js'
import { createDatabase } from './scenarios.js'
import { WorkerRpc } from './worker-rpc.js'

export const INSTANCES_FIGURE = 'instances'
export type { InstancesSettings }

export interface InstancesContext { settings: InstancesSettings, report: Report, closers: Closers }

const PACED_AGENT = fileURLToPath(new URL('./paced-agent.mjs', import.meta.url))
/** the instances' HS256 key (JWT_SECRET) and the user of every request */
const SECRET = 'mobvibe-bench-instances-hs256-key-of-at-least-32-chars'
const USER = 'bench-user'

/** The scenario: start-up, the three figures, the checks over all of it, shutdown. */
export async function instancesFigures (ctx: InstancesContext): Promise<void> {
  const { settings: s, report, closers } = ctx
  const deadline = Date.now() + INSTANCES.budgetMs
  const within = (ms: number) => Math.max(1000, Math.min(ms, deadline - Date.now()))
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-bench-instances-'))
  closers.push(() => rm(dir, { recursive: true, force: true }))
  await mkdir(join(dir, 'workspaces'), { recursive: true })
  const database = await createDatabase(s.pgBase)
  closers.push(database.drop)
  console.log(`  (fresh database ${new URL(database.url).pathname.slice(1)}, dropped at the end)`)
  const sql = postgres(database.url, { max: 2, onnotice: () => {} })
  closers.push(() => sql.end({ timeout: 5 }))

  const token = await new SignJWT({}).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setSubject(USER)
    .setIssuedAt().setExpirationTime('1d').sign(new TextEncoder().encode(SECRET))
  const auth = { authorization: `Bearer ${token}` }
  const env = instanceEnv(s, dir, database.url)
  const instances = INSTANCES.names.map((name) => new BenchInstance(name, join(dir, `data-${name}`), { ...env, MOBVIBE_DATA_DIR: join(dir, `data-${name}`) }, auth))
  const shutdown = closers.push(() => stopAll(instances, dir, report))
  const t0 = performance.now()
  // the first alone: it applies the migrations to the empty database
  await instances[0]!.start(within(60_000))
  await Promise.all(instances.slice(1).map((i) => i.start(within(60_000))))
  console.log(`  (instances ${instances.map((i) => `${i.name} pid ${i.pid}`).join(', ')} ready in ${fmt.int(performance.now() - t0)} ms; lease ${INSTANCES.leaseSeconds} s)`)

  const rpc = new WorkerRpc(new URL('./instances-worker.ts', import.meta.url))
  closers.push(async () => {
    await rpc.call({ cmd: 'close' }).catch(() => {})
    await rpc.close()
  })
  const viewers = (msg: Without<ViewerCommand>) => rpc.call(msg)
  const watched = new Set<string>()
  const sampler = new AgentSampler(PACED_AGENT, () => watched, INSTANCES.sampleEveryMs).start()
  closers.push(() => sampler.stop())
  const notify = new NotifyMeter(database.url, INSTANCES.queueEveryMs)
  closers.push(() => notify.stop())
  await notify.start()
  const cpu = new CpuMeter(async (pid, comm) => {
    const instance = instances.find((i) => i.running && i.pid === pid)
    if (instance) return instance.name
    if (pid === process.pid) return 'bench'
    if (comm === 'postgres') return 'Postgres'
    if (comm.startsWith('node') && (await environValue(pid, 'MOBVIBE_AGENT_HOME')).startsWith(dir)) return 'agents'
    return undefined
  })
  let nextViewer = 0
  const cluster: Cluster = {
    instances,
    sql,
    report,
    settings: s,
    sampler,
    cpu,
    watched,
    viewers,
    async openViewer (on, sessionId, role) {
      const viewer = nextViewer++
      await viewers({ cmd: 'open', viewer, url: on.streamUrl(sessionId), role, headers: auth })
      return viewer
    },
    async firstAfter (viewer, afterSeq, result, timeoutMs) {
      const f = await viewers({ cmd: 'firstAfter', viewer, afterSeq, result, timeoutMs: within(timeoutMs) }) as FirstFrame | undefined
      if (!f) throw new Error(`viewer ${viewer}: no agent ${result ? 'result' : 'frame'} after seq ${afterSeq} within ${timeoutMs} ms`)
      return f
    },
    frames: (viewer) => viewers({ cmd: 'frames', viewer }) as Promise<ViewerFrames>,
    async ownerOf (id) {
      const [row] = await sql<{ state: string, data_dir: string | null }[]>`
        select s.state, i.data_dir from sessions s left join service_instances i on i.id = s.worker_id where s.id = ${id}`
      return row?.state === 'active' ? instances.find((i) => i.dataDir === row.data_dir) : undefined
    },
    within,
    cpuRow: (what, use) => report.add({ figure: `CPU during ${what}`, db: 'postgres', value: describeCpu(use) })
  }

  await streamFigure(cluster, notify)
  await messageFigure(cluster)
  await failover(cluster)

  await sampler.stop()
  report.add({
    figure: `double owners: agent processes per session by MOBVIBE_AGENT_SESSION, sampled every ${INSTANCES.sampleEveryMs} ms over the scenario`,
    db: 'postgres',
    value: `${sampler.violations.length} moments with two (${fmt.int(sampler.samples)} samples, ${watched.size} sessions, ${sampler.seen.size} agent processes seen)`,
    target: '0',
    pass: sampler.violations.length === 0 && sampler.samples > 0
  })
  for (const v of sampler.violations.slice(0, 5)) console.log(`  double owner: session ${v.sessionId} had pids ${v.pids.join(', ')}`)
  report.add({
    figure: `pg_notification_queue_usage(), max over the scenario (sampled every ${INSTANCES.queueEveryMs} ms)`,
    db: 'postgres',
    value: `${notify.maxQueueUsage === 0 ? '0' : (notify.maxQueueUsage * 100).toPrecision(2)} % of the queue (${notify.queueSamples} samples)`
  })
  await shutdown()
}

/** Each instance's environment (its MOBVIBE_DATA_DIR apart): one database, shared workspaces and agent state. */
function instanceEnv (s: InstancesSettings, dir: string, databaseUrl: string): Record<string, string> {
  const env: Record<string, string> = {}
  for (const key of ['PATH', 'HOME', 'LANG', 'TMPDIR']) {
    const value = process.env[key]
    if (value !== undefined) env[key] = value
  }
  return {
    ...env,
    HOST: '127.0.0.1',
    DATABASE_URL: databaseUrl,
    DATABASE_POOL_SIZE: String(s.poolSize),
    MOBVIBE_WORKSPACE_ROOT: join(dir, 'workspaces'),
    CLAUDE_CONFIG_DIR: join(dir, 'claude'),
    CLAUDE_BIN: PACED_AGENT,
    AGENT_SANDBOX: 'none',
    INSTANCE_LEASE_SECONDS: String(INSTANCES.leaseSeconds),
    KILL_GRACE_MS: String(INSTANCES.killGraceMs),
    LOG_LEVEL: s.logLevel,
    JWT_SECRET: SECRET,
    // one user drives every session: the per-user limits are not what this measures
    RATE_LIMIT_PER_MINUTE: '0',
    HEARTBEAT_RATE_LIMIT_PER_MINUTE: '0',
    MAX_STREAMS_PER_USER: '1000',
    MAX_LIVE_AGENTS: '200',
    MAX_LIVE_AGENTS_PER_USER: '200',
    // the bench drives the box to saturation on purpose: measure the work, not 503s
    MAX_EVENT_LOOP_DELAY_MS: '0'
  }
}

function describeCpu (use: CpuUse): string {
  const groups = Object.entries(use.groups).map(([g, c]) => `${g} ${c.toFixed(2)}`).join(', ')
  const saturated = use.busy >= 0.9 * use.cores
  return `${use.busy.toFixed(2)} of ${use.cores} cores busy (${groups})${saturated ? ' — saturated: the latencies measure the box' : ''}`
}

/**
 * 1. and 2.: `sessions` sessions whose agents run on A, B, C in turn print `streamRate` lines/s
 * in all; each is watched by a viewer on its owner and one on each other instance. Line →
 * viewer latency by role (after a warm-up), and the bench's own LISTEN on mv_events meanwhile.
 */
async function streamFigure (c: Cluster, notify: NotifyMeter): Promise<void> {
  const s = c.settings
  const perRate = s.streamRate / s.sessions
  const sessions: { id: string, owner: BenchInstance }[] = []
  for (let i = 0; i < s.sessions; i++) {
    const on = c.instances[i % c.instances.length]!
    const id = await on.createSession()
    c.watched.add(id)
    sessions.push({ id, owner: on })
  }
  // the agents start on the instances that take the first message (not timed: a process start)
  await Promise.all(sessions.map(({ id, owner }) => owner.message(id, 'hello')))
  await Promise.all(sessions.map(({ id, owner }) => owner.waitTurns(id, 1, c.within(30_000))))
  for (const session of sessions) {
    const owner = await c.ownerOf(session.id)
    if (owner !== session.owner) throw new Error(`session ${session.id}: started on ${session.owner.name}, owned by ${owner?.name ?? 'nobody'}`)
  }
  const open: { viewer: number, role: string }[] = []
  for (const { id, owner } of sessions) {
    for (const on of c.instances) {
      const role = on === owner ? 'owner' : 'other'
      open.push({ viewer: await c.openViewer(on, id, role), role })
    }
  }
  const lines = Math.round(perRate * (s.warmupS + s.durationS))
  const directive = `/lines ${lines} ${s.lineBytes} ${perRate} ${s.warmupS + s.durationS + 30}`
  await Promise.all(sessions.map(({ id, owner }) => owner.message(id, directive)))
  await sleep(s.warmupS * 1000)
  await c.viewers({ cmd: 'resetLatency' })
  const from = wallMs()
  const cpu0 = await c.cpu.snapshot()
  const done = await c.viewers({ cmd: 'awaitLines', viewers: open.map((v) => v.viewer), lines, timeoutMs: c.within((s.durationS + 30) * 1000) }) as { complete: number, timedOut: boolean }
  const cpu1 = await c.cpu.snapshot()
  const to = wallMs()
  const latency = await c.viewers({ cmd: 'latency' }) as Record<string, LatencyStats>
  const frames = await Promise.all(open.map((v) => c.frames(v.viewer)))
  const clean = frames.filter((f) => f.marked === lines && f.gaps === 0 && f.duplicates === 0).length
  const dups = frames.reduce((a, f) => a + f.duplicates, 0)
  const gaps = frames.reduce((a, f) => a + f.gaps, 0)

  const what = `${c.instances.length} instances, ${s.sessions} sessions × ${fmt.int(perRate)} lines/s (${fmt.int(s.streamRate)} lines/s in all, ${fmt.int(s.lineBytes)} B lines): line → WebSocket`
  const own = latency.owner
  const other = latency.other
  c.report.add({
    figure: `${what}, viewer on the owner instance (1 per session)`,
    db: 'postgres',
    value: `p50 ${fmt.ms(own?.p50)} (max ${fmt.ms(own?.max)}; ${fmt.int(own?.count ?? 0)} lines)`,
    p99Ms: own?.p99
  })
  const limit = (own?.p99 ?? NaN) + INSTANCES.crossMarginMs
  c.report.add({
    figure: `${what}, viewers on the other instances (2 per session)`,
    db: 'postgres',
    value: `p50 ${fmt.ms(other?.p50)} (max ${fmt.ms(other?.max)}; ${fmt.int(other?.count ?? 0)} lines)`,
    p99Ms: other?.p99,
    failures: [done.timedOut ? 'timed out' : '', gaps ? `${gaps} gaps` : '', dups ? `${dups} duplicates` : ''].filter(Boolean).join(', ') || undefined,
    target: `p99 ≤ owner's p99 + ${INSTANCES.crossMarginMs} ms (${fmt.ms(limit)}); ${clean}/${frames.length} viewers got every line once`,
    pass: (other?.p99 ?? Infinity) <= limit && clean === frames.length
  })
  const n = notify.window(from, to)
  const rows = await c.sql<{ id: string, data_dir: string }[]>`select id, data_dir from service_instances`
  const nameOf = (id: string) => c.instances.find((i) => i.dataDir === rows.find((r) => r.id === id)?.data_dir)?.name ?? id.slice(0, 8)
  const byInstance = [...n.byInstance].map(([id, x]) => `${nameOf(id)} ${fmt.int(x / n.seconds)}`).sort().join(', ')
  c.report.add({
    figure: 'mv_events notices meanwhile (LISTEN by the bench)',
    db: 'postgres',
    value: `${fmt.int(n.notices / n.seconds)} notices/s (${byInstance}), ${(n.events / Math.max(1, n.notices)).toFixed(1)} events/notice ` +
      `(${fmt.int(n.events / n.seconds)} events/s named, ${Math.round(100 * n.carried / Math.max(1, n.events))} % of them carried in the notice, over ${n.seconds.toFixed(1)} s)`
  })
  c.cpuRow('the stream figure', c.cpu.between(cpu0, cpu1))

  // their agents stop: the next figures run with none of these
  await Promise.all(sessions.map(({ id, owner }) => owner.waitTurns(id, 2, c.within(30_000))))
  await c.viewers({ cmd: 'close' })
  for (const { id, owner } of sessions) {
    const other = c.instances.find((i) => i !== owner)!
    await other.api('POST', `/v1/sessions/${id}/transitions`, { to: 'suspended' })
  }
}

/**
 * 3.: a message POSTed on a non-owner instance → the agent (on the owner) reads it on stdin, next
 * to the same POSTed on the owner; one at a time, each after the previous turn's result.
 */
async function messageFigure (c: Cluster): Promise<void> {
  const s = c.settings
  const [owner, nonOwner, third] = c.instances as [BenchInstance, BenchInstance, BenchInstance]
  const id = await owner.createSession()
  c.watched.add(id)
  await owner.message(id, 'hello')
  await owner.waitTurns(id, 1, c.within(30_000))
  if (await c.ownerOf(id) !== owner) throw new Error(`session ${id} is not ${owner.name}'s`)
  const viewer = await c.openViewer(third, id, 'probe')
  const samples = { other: [] as number[], owner: [] as number[], post: [] as number[] }
  const cpu0 = await c.cpu.snapshot()
  for (let i = 0; i < INSTANCES.warmMessages + s.messages; i++) {
    for (const [where, on] of [['other', nonOwner], ['owner', owner]] as const) {
      const t0 = wallMs()
      const { seq } = await on.message(id, `ping ${i} on ${on.name}`)
      const posted = wallMs() - t0
      const result = await c.firstAfter(viewer, seq, true, 10_000)
      const read = result.data?.bench_read
      if (typeof read !== 'number') throw new Error(`the result after seq ${seq} has no bench_read`)
      if (i >= INSTANCES.warmMessages) {
        samples[where].push(read - t0)
        if (where === 'other') samples.post.push(posted)
      }
      await sleep(10)
    }
  }
  const cpu1 = await c.cpu.snapshot()
  const p = (xs: number[], q: number) => percentile(xs, q)
  c.report.add({
    figure: `message → agent stdin, POST /messages on ${nonOwner.name} for a session whose agent runs on ${owner.name} (${s.messages} messages, one at a time)`,
    db: 'postgres',
    value: `p50 ${fmt.ms(p(samples.other, 0.5))} (POSTed on the owner: p50 ${fmt.ms(p(samples.owner, 0.5))}, p99 ${fmt.ms(p(samples.owner, 0.99))}; ` +
      `202 from ${nonOwner.name} after p50 ${fmt.ms(p(samples.post, 0.5))})`,
    p99Ms: p(samples.other, 0.99)
  })
  c.cpuRow('the message figure', c.cpu.between(cpu0, cpu1))
  await c.viewers({ cmd: 'close' })
  await nonOwner.api('POST', `/v1/sessions/${id}/transitions`, { to: 'suspended' })
}

/**
 * Every instance stopped (SIGTERM, SIGKILL after a grace), then whatever they started that still
 * runs is a finding: reported, and killed.
 */
async function stopAll (instances: BenchInstance[], dir: string, report: Report): Promise<void> {
  const running = instances.filter((i) => i.running)
  const below = descendants(await processTable(), running.map((i) => i.pid))
  await Promise.all(running.map((i) => i.stop(INSTANCES.stopGraceMs)))
  await sleep(500)
  const table = await processTable()
  const alive = new Set(table.filter((p) => p.state !== 'Z' && p.state !== 'X').map((p) => p.pid))
  const left = [...new Set([...below.filter((pid) => alive.has(pid)), ...await processesUnder(dir)])]
  for (const pid of left) kill(pid, 'SIGKILL')
  report.add({
    figure: 'processes of the instances left after they stopped (agents, watchdogs)',
    db: 'postgres',
    value: `${left.length}${left.length ? ` (pids ${left.join(', ')}, now killed)` : ''}`,
    target: '0',
    pass: left.length === 0
  })
  for (const i of instances) {
    for (const [msg, n] of i.complaints) console.log(`  (${i.name} logged ${n}× ${msg})`)
  }
}
