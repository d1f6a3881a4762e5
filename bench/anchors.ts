// What the service's figures are compared with: a bare Fastify route, the same SQL through raw
// postgres.js behind routes of the same shape, and pgbench running the heartbeat UPDATE.
import { execFile, spawn } from 'node:child_process'
import type { Server } from 'node:http'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import websocket from '@fastify/websocket'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Fastify, { type FastifyInstance } from 'fastify'
import postgres from 'postgres'
import { Type } from 'typebox'
import type { Config } from '../src/config.js'
import { rowMapper } from '../src/db/prepared-sql.js'
import { sessions } from '../src/db/schema.js'
import { etagOf } from '../src/domain/if-match.js'
import { isTerminal } from '../src/domain/state-machine.js'
import { planHeartbeat } from '../src/domain/timers.js'
import { IfMatchHeaders, Problem, ref } from '../src/schemas/common.js'
import { HeartbeatSchema, SHARED_SCHEMAS, SessionParams, SessionRef } from '../src/schemas/session.js'
import { toSessionView } from '../src/sessions/session-view.js'

const run = promisify(execFile)

/** Listens on 127.0.0.1, random port; returns the base URL. */
export async function listen (app: { listen (o: { host: string, port: number }): Promise<string>, server: Server }): Promise<string> {
  await app.listen({ host: '127.0.0.1', port: 0 })
  const address = app.server.address()
  if (!address || typeof address !== 'object') throw new Error('no address')
  return `http://127.0.0.1:${address.port}`
}

/** A fresh Fastify with one GET returning a small JSON: the ceiling of any route. */
export async function bareServer (): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  app.get('/', async () => ({ hello: 'world' }))
  return app
}

/**
 * The GET session and heartbeat SQL through postgres.js directly, behind routes with the service's
 * request pipeline (Fastify options, body parser, preValidation hook, websocket plugin hooks,
 * schemas and serialization): what differs from the service is drizzle, nothing else.
 */
export async function rawPostgresServer (url: string, config: Config): Promise<FastifyInstance> {
  const sql = postgres(url, { max: config.databasePoolSize, onnotice: () => {}, idle_timeout: 60 })
  const app = Fastify({
    logger: false,
    bodyLimit: config.limits.bodyBytes,
    requestTimeout: 30_000,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', allErrors: true } },
    forceCloseConnections: 'idle'
  }).withTypeProvider<TypeBoxTypeProvider>()
  app.addHook('onClose', async () => { await sql.end({ timeout: 5 }) })
  const parseJson = app.getDefaultJsonParser('error', 'error')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (body === '' || (typeof body === 'string' && body.trim() === '')) return done(null, undefined)
    return parseJson(request, body as string, done)
  })
  app.addHook('preValidation', async (request) => {
    if (request.body === undefined || request.body === null) request.body = {}
  })
  for (const schema of [Problem, ...SHARED_SCHEMAS]) app.addSchema(schema)
  await app.register(websocket)

  const toSession = rowMapper(sessions)
  const byId = async (id: string) => {
    const [raw] = await sql`select * from sessions where id = ${id} and deleted_at is null`
    return raw ? toSession(raw) : null
  }
  const heartbeatUpdate = (id: string, now: Date, expiresAt: Date) => sql`
    update sessions set last_heartbeat_at = ${now.toISOString()}::timestamptz,
      expires_at = greatest(expires_at, ${expiresAt.toISOString()}::timestamptz)
    where id = ${id} and deleted_at is null and state in ('pending', 'active', 'suspended', 'paused')
    returning state, version, expires_at`
  const params = SessionParams
  const notFound = { type: 'about:blank', title: 'Not Found', status: 404, detail: 'no such session', code: 'SESSION_NOT_FOUND' }

  app.get('/raw/sessions/:id', {
    schema: {
      params,
      headers: Type.Object({ 'if-none-match': Type.Optional(Type.String()) }),
      response: { 200: SessionRef, 404: ref(Problem) }
    }
  }, async (request, reply) => {
    const row = await byId(request.params.id)
    if (!row) return reply.status(404).send(notFound)
    return reply.header('etag', etagOf(row.version)).send(toSessionView(row, new Date()))
  })

  // The service's heartbeat that writes: read the session, plan, then the UPDATE (two statements)
  app.post('/raw/sessions/:id/heartbeat', {
    schema: { params, headers: IfMatchHeaders, response: { 200: ref(HeartbeatSchema), 404: ref(Problem) } }
  }, async (request, reply) => {
    const now = new Date()
    const row = await byId(request.params.id)
    if (!row || isTerminal(row.state)) return reply.status(404).send(notFound)
    const plan = planHeartbeat({ now, expiresAt: row.expiresAt, ttlSeconds: row.ttlSeconds, coalesceFraction: 0 })
    let beat = { state: row.state, version: row.version, expiresAt: row.expiresAt }
    if (plan.write) {
      const [written] = await heartbeatUpdate(row.id, now, plan.expiresAt)
      if (!written) return reply.status(404).send(notFound)
      beat = { state: written.state, version: written.version, expiresAt: written.expires_at }
    }
    return reply.header('etag', etagOf(beat.version)).send({
      state: beat.state, version: beat.version, expiresAt: beat.expiresAt.toISOString(), serverTime: now.toISOString()
    })
  })

  // The UPDATE alone (one statement), for reference
  app.post('/raw/sessions/:id/heartbeat-update', {
    schema: { params, response: { 200: ref(HeartbeatSchema), 404: ref(Problem) } }
  }, async (request, reply) => {
    const now = new Date()
    const [written] = await heartbeatUpdate(request.params.id, now, new Date(now.getTime() + 86_400_000))
    if (!written) return reply.status(404).send(notFound)
    return reply.header('etag', etagOf(written.version)).send({
      state: written.state, version: written.version, expiresAt: written.expires_at.toISOString(), serverTime: now.toISOString()
    })
  })
  return app
}

export interface PgbenchResult {
  tps: number
  latencyMs: number
}

async function ensurePgbench (log: (line: string) => void): Promise<void> {
  try {
    await run('pgbench', ['--version'])
  } catch {
    const install = () => run('apt-get', ['install', '-y', 'postgresql-client'], { maxBuffer: 64 * 1024 * 1024 })
    log('pgbench not found: running `apt-get install -y postgresql-client`')
    try {
      await install()
    } catch {
      log('that failed: running `apt-get update`, then the install again')
      await run('apt-get', ['update'], { maxBuffer: 64 * 1024 * 1024 })
      await install()
    }
  }
}

/**
 * pgbench, prepared statements, running the service's heartbeat UPDATE on random seeded sessions
 * (ids are computed from n, see seedSql in scenarios.ts).
 */
export async function pgbenchHeartbeat (opts: {
  url: string
  clients: number
  durationS: number
  ids: number
  idPrefix: string
  log: (line: string) => void
}): Promise<PgbenchResult> {
  await ensurePgbench(opts.log)
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-pgbench-'))
  try {
    const script = join(dir, 'heartbeat.sql')
    await writeFile(script, [
      '\\set n random(1, :nids)',
      'update sessions set last_heartbeat_at = now(), expires_at = greatest(expires_at, now() + interval \'86400 seconds\')',
      `  where id = ('${opts.idPrefix}' || lpad(to_hex(:n::int), 12, '0'))::uuid and deleted_at is null`,
      '  and state in (\'pending\', \'active\', \'suspended\', \'paused\') returning state, version, expires_at;',
      ''
    ].join('\n'))
    const u = new URL(opts.url)
    const args = [
      '-n', '-M', 'prepared', '-c', String(opts.clients), '-j', '2', '-T', String(Math.max(1, Math.round(opts.durationS))),
      '-D', `nids=${opts.ids}`, '-f', script,
      '-h', u.hostname, '-p', u.port || '5432', '-U', decodeURIComponent(u.username || 'postgres'), u.pathname.slice(1)
    ]
    const env = { ...process.env, ...(u.password ? { PGPASSWORD: decodeURIComponent(u.password) } : {}) }
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn('pgbench', args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
      let text = ''
      child.stdout.on('data', (d: Buffer) => { text += d.toString() })
      child.stderr.on('data', (d: Buffer) => { text += d.toString() })
      child.on('error', reject)
      child.on('close', (code) => { code === 0 ? resolve(text) : reject(new Error(`pgbench exited ${code}:\n${text.slice(-1500)}`)) })
    })
    const tps = /tps = ([\d.]+)/.exec(out)
    const latency = /latency average = ([\d.]+) ms/.exec(out)
    if (!tps) throw new Error(`no tps in pgbench output:\n${out}`)
    return { tps: Number(tps[1]), latencyMs: latency ? Number(latency[1]) : NaN }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}
