// `npm run bench`: the service on PGlite and on Postgres, next to its anchors, with the targets of
// the issues: the lifecycle section (autocannon; bare Fastify, raw postgres.js, pgbench) and the
// agents section (fake agents and WebSocket clients; raw `ws` servers, a raw spawn).
// Knobs: BENCH_SECTIONS=lifecycle,agents, BENCH_DURATION_S, BENCH_WARMUP_S, BENCH_CONNECTIONS,
// BENCH_ONLY=postgres|pglite, BENCH_DATABASE_URL, BENCH_SESSIONS, BENCH_SWEEP_SESSIONS,
// DATABASE_POOL_SIZE, BENCH_LOG_LEVEL, and the agents section's (see README.md); on Postgres the
// agents section also runs three instances on one database (BENCH_AGENT_FIGURES=instances).
import { mkdtemp, rm } from 'node:fs/promises'
import { cpus, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { AGENT_FIGURES, AgentsSection, type AgentFigure } from './agents.js'
import { bareServer, listen, pgbenchHeartbeat, rawPostgresServer } from './anchors.js'
import { Closers } from './closers.js'
import { INSTANCES_FIGURE, instancesFigures, type InstancesSettings } from './instances.js'
import { LoadDriver, combine, type LoadRequest, type LoadSummary } from './load.js'
import { Report, fmt, type Db } from './report.js'
import { BENCH_AUTH, ID_PREFIX, createDatabase, expirySweep, requests, seedSessions, startService } from './scenarios.js'
import { StreamClients } from './stream-clients.js'

type Service = Awaited<ReturnType<typeof startService>>

const env = process.env
const num = (name: string, def: number, zero = false) => {
  const v = env[name]
  if (v === undefined || v === '') return def
  const n = Number(v)
  if (!Number.isFinite(n) || n < 0 || (n === 0 && !zero)) throw new Error(`${name} must be a positive number, got ${JSON.stringify(v)}`)
  return n
}
const SECTIONS = ['lifecycle', 'agents'] as const
const sections = (env.BENCH_SECTIONS ?? SECTIONS.join(',')).split(',').map((x) => x.trim()).filter(Boolean)
for (const name of sections) {
  if (!(SECTIONS as readonly string[]).includes(name)) throw new Error(`BENCH_SECTIONS: unknown section ${JSON.stringify(name)} (known: ${SECTIONS.join(', ')})`)
}

const settings = {
  durationS: num('BENCH_DURATION_S', 5),
  warmupS: num('BENCH_WARMUP_S', 1),
  connections: Math.round(num('BENCH_CONNECTIONS', 50)),
  poolSize: Math.round(num('DATABASE_POOL_SIZE', 10)),
  sessions: Math.round(num('BENCH_SESSIONS', 10_000)),
  sweepSessions: Math.round(num('BENCH_SWEEP_SESSIONS', 100_000)),
  pgbenchClients: 10,
  coalescedSessions: 5,
  logLevel: env.BENCH_LOG_LEVEL ?? 'warn',
  pgBase: env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test',
  only: env.BENCH_ONLY,
  sections
}
const durationS = settings.durationS
const KNOWN_FIGURES: readonly string[] = [...AGENT_FIGURES, INSTANCES_FIGURE]
const figures = (env.BENCH_AGENT_FIGURES ?? KNOWN_FIGURES.join(',')).split(',').map((x) => x.trim()).filter(Boolean)
for (const name of figures) {
  if (!KNOWN_FIGURES.includes(name)) throw new Error(`BENCH_AGENT_FIGURES: unknown figure ${JSON.stringify(name)} (known: ${KNOWN_FIGURES.join(', ')})`)
}
/** The agents section's knobs (README.md) */
const agentSettings = {
  figures: figures.filter((f): f is AgentFigure => (AGENT_FIGURES as readonly string[]).includes(f)),
  durationS,
  warmupS: settings.warmupS,
  poolSize: settings.poolSize,
  logLevel: settings.logLevel,
  streamRate: num('BENCH_STREAM_RATE', 1000),
  lineBytes: Math.round(num('BENCH_LINE_BYTES', 1024)),
  floodLines: Math.round(num('BENCH_FLOOD_LINES', 20_000 * durationS)),
  fanoutLines: Math.round(num('BENCH_FANOUT_LINES', 1_000 * durationS)),
  subscribers: Math.round(num('BENCH_SUBSCRIBERS', 100)),
  liveAgents: Math.round(num('BENCH_LIVE_AGENTS', 32)),
  agentRate: num('BENCH_AGENT_RATE', 100, true),
  heartbeatRate: num('BENCH_HEARTBEAT_RATE', 200),
  resumes: Math.round(num('BENCH_RESUMES', 50)),
  suspended: Math.round(num('BENCH_SUSPENDED', 10_000)),
  phoneAsks: Math.round(num('BENCH_PHONE_ASKS', 200)),
  pushTurns: Math.round(num('BENCH_PUSH_TURNS', 20))
}
/** Three instances on one Postgres database (instances.ts): the agents section's last figure there */
const instancesSettings: InstancesSettings | undefined = figures.includes(INSTANCES_FIGURE)
  ? {
      pgBase: settings.pgBase,
      sessions: Math.round(num('BENCH_INSTANCE_SESSIONS', 10)),
      streamRate: agentSettings.streamRate,
      lineBytes: agentSettings.lineBytes,
      durationS,
      warmupS: settings.warmupS,
      messages: Math.round(num('BENCH_INSTANCE_MESSAGES', 100)),
      poolSize: settings.poolSize,
      logLevel: settings.logLevel
    }
  : undefined
if (settings.only !== undefined && settings.only !== 'postgres' && settings.only !== 'pglite') {
  throw new Error(`BENCH_ONLY must be postgres or pglite, got ${JSON.stringify(settings.only)}`)
}

/** autocannon drops its sockets at the end of a run; let the requests still in the server finish */
const settle = () => sleep(500)

const report = new Report()
// every request and stream carries the bench user's one token (the anchors get it too, and ignore it)
const driver = new LoadDriver(BENCH_AUTH)

async function load (url: string, reqs: LoadRequest[][]): Promise<LoadSummary> {
  return driver.run({ url, requests: reqs, connections: settings.connections, durationS: settings.durationS, warmupS: settings.warmupS })
}

/**
 * A figure and its anchor measured A B B A, each side combined: drift on a shared machine then
 * weighs on both sides alike.
 */
async function abba (what: string, anchor: [string, LoadRequest[][]], service: [string, LoadRequest[][]]): Promise<[LoadSummary, LoadSummary]> {
  const a1 = await load(...anchor)
  const b1 = await load(...service)
  const b2 = await load(...service)
  const a2 = await load(...anchor)
  console.log(`  (${what}, req/s in run order: ${fmt.int(a1.rps)}, service ${fmt.int(b1.rps)}, service ${fmt.int(b2.rps)}, ${fmt.int(a2.rps)})`)
  return [combine(a1, a2), combine(b1, b2)]
}

const check = (ratio: number, min: number, anchor: string) => ({
  target: `${fmt.ratio(ratio)} ${anchor} (≥ ${min}×)`,
  pass: ratio >= min
})

const BARE: LoadRequest[][] = [[{ method: 'GET', path: '/' }]]

/** The bare Fastify anchor: measured once at the start of a section, kept up for A B B A runs. */
async function startBare (db: Db, closers: Closers): Promise<{ url: string, rps: number }> {
  const bare = await bareServer()
  closers.push(() => bare.close())
  const url = await listen(bare)
  const s = await load(url, BARE)
  report.load('bare Fastify GET (anchor)', db, s, s.rps)
  return { url, rps: s.rps }
}

/** A figure whose target is a share of bare Fastify, measured A B B A against it. */
async function versusBare (what: string, db: Db, bareUrl: string, url: string, reqs: LoadRequest[][], min: number) {
  const [bare, s] = await abba(`${what} vs bare Fastify`, [bareUrl, BARE], [url, reqs])
  report.load(what, db, s, bare.rps, check(s.rps / bare.rps, min, 'bare Fastify'))
}

/**
 * Postgres: GET session and the heartbeat that writes, each measured A B B A against the same SQL
 * through raw postgres.js, with pgbench in between. Returns pgbench's tps (NaN if it failed).
 */
async function versusAnchors (databaseUrl: string, writes: Service, bareRps: number, closers: Closers): Promise<number> {
  const db: Db = 'postgres'
  const C = settings.connections
  const N = settings.sessions
  let pgbenchTps = NaN
  const raw = await rawPostgresServer(databaseUrl, writes.config)
  const closeRaw = closers.push(() => raw.close())
  const rawUrl = await listen(raw)

  const [rawGet, get] = await abba('GET session vs raw postgres.js', [rawUrl, requests.get(C, N, '/raw')], [writes.url, requests.get(C, N)])
  report.load('raw postgres.js GET session route (anchor)', db, rawGet, bareRps)
  report.load('GET session', db, get, bareRps, check(get.rps / rawGet.rps, 0.9, 'raw postgres.js'))

  try {
    const pg = await pgbenchHeartbeat({
      url: databaseUrl, clients: settings.pgbenchClients, durationS: settings.durationS, ids: N, idPrefix: ID_PREFIX, log: (l) => console.log(`  ${l}`)
    })
    pgbenchTps = pg.tps
    report.add({
      figure: `pgbench heartbeat UPDATE, ${settings.pgbenchClients} clients, -M prepared (anchor)`,
      db,
      value: `${fmt.int(pg.tps)} tps`,
      xBare: pg.tps / bareRps,
      target: `avg latency ${fmt.ms(pg.latencyMs)}`
    })
  } catch (err) {
    // the figures compared with pgbench then fail; the others still mean something
    console.error('  pgbench failed:', err)
    report.add({ figure: 'pgbench heartbeat UPDATE (anchor)', db, value: 'failed', pass: false })
  }

  const [rawBeat, beat] = await abba(
    'heartbeat that writes vs raw postgres.js',
    [rawUrl, requests.heartbeat(C, N, '/raw/sessions/{id}/heartbeat')],
    [writes.url, requests.heartbeat(C, N)]
  )
  report.load('raw postgres.js heartbeat route, read + UPDATE as the service (anchor)', db, rawBeat, bareRps)
  const vsPgbench = beat.rps / pgbenchTps
  report.load('heartbeat that writes (HEARTBEAT_COALESCE_FRACTION=0)', db, beat, bareRps, {
    target: `${fmt.ratio(vsPgbench)} pgbench (≥ 0.5×); p99 ≤ 15 ms`,
    pass: vsPgbench >= 0.5 && beat.p99 <= 15
  })
  const rawUpdate = await load(rawUrl, requests.heartbeat(C, N, '/raw/sessions/{id}/heartbeat-update'))
  report.load('raw postgres.js heartbeat UPDATE alone, one statement (info)', db, rawUpdate, bareRps)
  await settle()
  await closeRaw()

  for (const [path, service, anchor] of [['GET session', get, rawGet], ['heartbeat that writes', beat, rawBeat]] as const) {
    const r = service.rps / anchor.rps
    report.add({ figure: `hot path through drizzle vs raw postgres.js, same SQL: ${path}`, db, value: fmt.ratio(r), ...check(r, 0.9, 'raw postgres.js') })
  }
  return pgbenchTps
}

/** PGlite: GET session and the heartbeat that writes (no anchors but bare Fastify). */
async function pgliteWrites (url: string, bare: { url: string, rps: number }): Promise<number> {
  const db: Db = 'pglite'
  const C = settings.connections
  const N = settings.sessions
  const get = await load(url, requests.get(C, N))
  report.load('GET session', db, get, bare.rps)
  await versusBare('heartbeat that writes (HEARTBEAT_COALESCE_FRACTION=0)', db, bare.url, url, requests.heartbeat(C, N), 0.02)
  return NaN
}

/** A section's own data directory and, on Postgres, its own fresh database; both gone at its end. */
async function sectionStorage (db: Db, name: string, closers: Closers): Promise<{ dir: string, databaseUrl: string | undefined }> {
  const dir = await mkdtemp(join(tmpdir(), `mobvibe-bench-${name}-`))
  closers.push(() => rm(dir, { recursive: true, force: true }))
  if (db !== 'postgres') return { dir, databaseUrl: undefined }
  const created = await createDatabase(settings.pgBase)
  closers.push(created.drop)
  console.log(`  (fresh database ${new URL(created.url).pathname.slice(1)}, dropped at the end)`)
  return { dir, databaseUrl: created.url }
}

async function section (db: Db): Promise<void> {
  console.log(`\n## ${db}: lifecycle`)
  const closers = new Closers()
  try {
    const { dir, databaseUrl } = await sectionStorage(db, db, closers)
    const bare = await startBare(db, closers)
    const bareRps = bare.rps
    const C = settings.connections
    const N = settings.sessions

    // Heartbeats that write, GET, list, transitions: HEARTBEAT_COALESCE_FRACTION=0
    const writes = await startService({ dir, databaseUrl, poolSize: settings.poolSize, logLevel: settings.logLevel, coalesceFraction: 0 })
    const closeWrites = closers.push(() => writes.app.close())
    await seedSessions(writes.app, N)

    const pgbenchTps = db === 'postgres'
      ? await versusAnchors(databaseUrl!, writes, bareRps, closers)
      : await pgliteWrites(writes.url, bare)

    const list = await load(writes.url, requests.list())
    report.load('list, GET /v1/sessions?limit=50', db, list, bareRps)

    const pair = await load(writes.url, requests.pair(C, N))
    const pairCheck = db === 'postgres' ? check(pair.rps / pgbenchTps, 0.2, 'pgbench') : undefined
    report.load('transition pair: pause + resume, 2xx transitions/s', db, pair, bareRps, pairCheck)

    await settle()
    await closeWrites()

    // Coalesced heartbeats and the sweep: default configuration
    const coalescing = await startService({ dir, databaseUrl, poolSize: settings.poolSize, logLevel: settings.logLevel })
    closers.push(() => coalescing.app.close())
    await versusBare(`heartbeat coalesced (default fraction, ${settings.coalescedSessions} sessions)`, db, bare.url,
      coalescing.url, requests.coalesced(settings.coalescedSessions), 0.3)

    await settle()
    const sweep = await expirySweep(coalescing.app, settings.sweepSessions)
    const limitMs = db === 'postgres' ? 1000 : 2500
    const complete = sweep.returned === settings.sweepSessions && sweep.distinct === settings.sweepSessions
    report.add({
      figure: `expiry sweep, ${fmt.int(settings.sweepSessions)} due, one checkExpiration()`,
      db,
      value: `${fmt.int(sweep.sweepMs)} ms, ${fmt.int(sweep.returned)} ids`,
      target: `≤ ${limitMs / 1000} s, all ${fmt.int(settings.sweepSessions)} returned${complete ? '' : ` (got ${sweep.returned}, ${sweep.distinct} distinct)`}`,
      pass: sweep.sweepMs <= limitMs && complete
    })
    console.log(`  (bulk insert of the due sessions + analyze: ${fmt.int(sweep.insertMs)} ms)`)
  } finally {
    await closers.closeAll()
  }
}

/** The agents section (agents.ts) on its own data directory and, on Postgres, its own database. */
async function agentsSection (db: Db, clients: StreamClients): Promise<void> {
  console.log(`\n## ${db}: agents and streams`)
  const closers = new Closers()
  try {
    const { dir, databaseUrl } = await sectionStorage(db, `agents-${db}`, closers)
    await new AgentsSection({ db, dir, databaseUrl, settings: agentSettings, report, driver, clients, closers }).run()
  } finally {
    await closers.closeAll()
  }
}

/** Three instances on a database of their own (Postgres only). */
async function instancesSection (s: InstancesSettings): Promise<void> {
  console.log('\n## postgres: three instances on one database')
  const closers = new Closers()
  try {
    await instancesFigures({ settings: s, report, closers })
  } finally {
    await closers.closeAll()
  }
}

const loadAverage = () => loadavg().map((n) => n.toFixed(2)).join(' ')

async function main (): Promise<number> {
  const { durationS, warmupS, connections, poolSize } = settings
  console.log('# MobVibe session service benchmark')
  console.log(`${cpus().length} cores, Node ${process.version}; autocannon ${connections} connections, ${durationS} s per figure ` +
    `(+${warmupS} s warm-up), DATABASE_POOL_SIZE=${poolSize}, ${fmt.int(settings.sessions)} seeded sessions`)
  if (settings.sections.includes('agents') && agentSettings.figures.length > 0) {
    const a = agentSettings
    console.log(`agents: ${fmt.int(a.lineBytes)} B lines; latency at ${fmt.int(a.streamRate)} lines/s; floods of ${fmt.int(a.floodLines)} lines (1 subscriber) ` +
      `and ${fmt.int(a.fanoutLines)} lines (${a.subscribers} subscribers); ${a.liveAgents} live agents at ${a.agentRate ? `${a.agentRate} lines/s each (then flooding, info)` : 'full speed'}, ` +
      `heartbeats at ${a.heartbeatRate}/s; ${a.resumes} resumes; ${fmt.int(a.suspended)} suspended sessions; ` +
      `${fmt.int(a.phoneAsks)} permission asks; ${fmt.int(a.pushTurns)} pushed turns per push figure`)
  }
  if (settings.sections.includes('agents') && instancesSettings) {
    const i = instancesSettings
    console.log(`instances (Postgres): A, B, C on one database; ${i.sessions} sessions streaming ${fmt.int(i.streamRate)} lines/s in all; ` +
      `${i.messages} messages through a non-owner; a kill -9 failover`)
  }
  console.log(`load average at start: ${loadAverage()} (other work on the machine skews every figure)`)
  let crashed = false
  let clients: StreamClients | undefined
  try {
    for (const db of ['pglite', 'postgres'] as const) {
      if (settings.only !== undefined && settings.only !== db) continue
      for (const name of settings.sections) {
        try {
          if (name === 'lifecycle') await section(db)
          else if (agentSettings.figures.length > 0) await agentsSection(db, clients ??= new StreamClients(BENCH_AUTH))
        } catch (err) {
          crashed = true
          console.error(`\n${db} ${name} section failed:`, err)
        }
        if (name !== 'agents' || !instancesSettings) continue
        if (db !== 'postgres') {
          console.log('\n(instances: PostgreSQL only, not on pglite)')
          continue
        }
        try {
          await instancesSection(instancesSettings)
        } catch (err) {
          crashed = true
          console.error('\npostgres instances figures failed:', err)
        }
      }
    }
  } finally {
    await driver.close()
    await clients?.close()
  }
  console.log(`\nload average at the end: ${loadAverage()}`)
  console.log('\n## Results\n')
  console.log(report.markdown())
  const failed = report.failed
  console.log(crashed
    ? '\nA section crashed (above): its figures are missing.'
    : failed.length === 0
      ? '\nAll targets met.'
      : `\nFAIL: ${failed.length} target(s) missed: ${failed.map((r) => `${r.figure} [${r.db}]`).join('; ')}`)
  // a missed target is a finding, not an error; a crashed section is
  return crashed ? 1 : 0
}

main().then((code) => {
  process.exitCode = code
  // everything is closed by now; should a handle linger anyway, do not hang
  setTimeout(() => {
    console.error('bench: handles still open after the run; exiting')
    process.exit(code)
  }, 5000).unref()
}, (err: unknown) => {
  console.error(err)
  process.exit(1)
})
