// The service under bench: building it on either database, seeding, the request mixes, the sweep.
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { sql } from 'drizzle-orm'
import { SignJWT } from 'jose'
import postgres from 'postgres'
import { buildApp, type App } from '../src/app.js'
import { loadConfig, type Config } from '../src/config.js'
import { createLogger } from '../src/logger.js'
import { listen } from './anchors.js'
import type { LoadRequest } from './load.js'

/** The user every request of the bench is from, and the sessions' owner. */
const BENCH_USER = 'bench-user'
/** The services' HS256 key (JWT_SECRET) */
const BENCH_SECRET = 'mobvibe-bench-hs256-key-of-at-least-32-characters'
/**
 * The Authorization header of every request and stream of the bench: one token, minted once and
 * reused by every client, as a phone reuses its token (the service caches a verified token, so a
 * token per request would measure signature checks instead). Valid for a day: longer than a run.
 */
export const BENCH_AUTH = {
  authorization: `Bearer ${await new SignJWT({}).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setSubject(BENCH_USER)
    .setIssuedAt().setExpirationTime('1d').sign(new TextEncoder().encode(BENCH_SECRET))}`
}

/** Seeded session n has id `${ID_PREFIX}${n as 12 hex digits}`, so pgbench can compute it. */
export const ID_PREFIX = 'b0000000-0000-4000-8000-'
const seededId = (n: number) => `${ID_PREFIX}${n.toString(16).padStart(12, '0')}`

export interface ServiceOptions {
  dir: string
  databaseUrl: string | undefined
  poolSize: number
  logLevel: string
  /** HEARTBEAT_COALESCE_FRACTION; undefined keeps the default */
  coalesceFraction?: number
  /** more of the service's environment (CLAUDE_BIN, MAX_LIVE_AGENTS…) */
  env?: Record<string, string>
}

/**
 * The whole service, as an operator would configure it, listening on a random port: bearer tokens
 * checked with BENCH_SECRET (BENCH_AUTH passes), and per-user rate limits at their maximum, so
 * that the limiter runs on every request, as in production, but never refuses the bench's one user.
 * Its one user may open as many streams as the fan-out scenarios need, and load shedding is off:
 * the bench drives the service to saturation on purpose, to measure the work, not 503s.
 */
export async function startService (opts: ServiceOptions): Promise<{ app: App, config: Config, url: string }> {
  const config = loadConfig({
    JWT_SECRET: BENCH_SECRET,
    RATE_LIMIT_PER_MINUTE: '1000000',
    HEARTBEAT_RATE_LIMIT_PER_MINUTE: '1000000',
    MAX_STREAMS_PER_USER: '100000',
    MAX_EVENT_LOOP_DELAY_MS: '0',
    MOBVIBE_DATA_DIR: join(opts.dir, 'data'),
    MOBVIBE_WORKSPACE_ROOT: join(opts.dir, 'workspaces'),
    LOG_LEVEL: opts.logLevel,
    DATABASE_POOL_SIZE: String(opts.poolSize),
    ...(opts.databaseUrl ? { DATABASE_URL: opts.databaseUrl } : {}),
    ...(opts.coalesceFraction === undefined ? {} : { HEARTBEAT_COALESCE_FRACTION: String(opts.coalesceFraction) }),
    ...opts.env
  })
  // the worker would sweep on its own; the bench times one sweep by hand
  const app = await buildApp({ config, logger: createLogger(config), startWorker: false })
  try {
    return { app, config, url: await listen(app) }
  } catch (err) {
    await app.close()
    throw err
  }
}

/** `count` active sessions of BENCH_USER with computable ids, newest first by n, far from any deadline. */
export async function seedSessions (app: App, count: number): Promise<void> {
  await app.database.db.execute(sql.raw(`
    insert into sessions (id, owner, state, version, title, workdir, idle_timeout_seconds, ttl_seconds, expires_at,
      active_since, started_at, idle_deadline_at, transition_count, state_changed_at, created_at, updated_at)
    select ('${ID_PREFIX}' || lpad(to_hex(n), 12, '0'))::uuid, '${BENCH_USER}', 'active', 2, 'bench ' || n, '/tmp/mobvibe-bench/' || n,
      86400, 86400, now() + interval '1 day', now(), now(), now() + interval '1 day', 1,
      now(), now() - n * interval '1 millisecond', now()
    from generate_series(1, ${count}) n`))
  await app.database.db.execute(sql`analyze sessions`)
}

/** Connection i cycles over seeded sessions i+1, i+1+C, … (at most `perConnection` of them). */
function spread (connections: number, sessions: number, perConnection: number, make: (id: string) => LoadRequest[]): LoadRequest[][] {
  const out: LoadRequest[][] = []
  for (let i = 0; i < connections; i++) {
    const reqs: LoadRequest[] = []
    for (let n = i + 1; n <= sessions && reqs.length < perConnection; n += connections) reqs.push(...make(seededId(n)))
    out.push(reqs)
  }
  return out
}

export const requests = {
  get: (c: number, n: number, prefix = '/v1') => spread(c, n, 100, (id) => [{ method: 'GET', path: `${prefix}/sessions/${id}` }]),
  heartbeat: (c: number, n: number, path = '/v1/sessions/{id}/heartbeat') =>
    spread(c, n, 100, (id) => [{ method: 'POST', path: path.replace('{id}', id) }]),
  /** everyone pings the same `few` sessions: the coalesced case */
  coalesced: (few: number) => Array.from({ length: few }, (_, i) => [{ method: 'POST', path: `/v1/sessions/${seededId(i + 1)}/heartbeat` }] as LoadRequest[]),
  list: (): LoadRequest[][] => [[{ method: 'GET', path: '/v1/sessions?limit=50' }]],
  /** each connection alternates pause and resume on a session of its own (the last C seeded) */
  pair: (c: number, n: number): LoadRequest[][] => Array.from({ length: c }, (_, i) => {
    const id = seededId(n - i)
    return [{ method: 'POST', path: `/v1/sessions/${id}/pause` }, { method: 'POST', path: `/v1/sessions/${id}/resume` }]
  })
}

export interface SweepResult {
  insertMs: number
  sweepMs: number
  returned: number
  distinct: number
}

/**
 * `count` sessions already past their expiry (live states, mixed), inserted in one statement,
 * then one timed `checkExpiration()`: the sweep must move every one of them.
 */
export async function expirySweep (app: App, count: number): Promise<SweepResult> {
  const db = app.database.db
  const t0 = performance.now()
  await db.execute(sql.raw(`
    insert into sessions (id, owner, state, version, workdir, idle_timeout_seconds, ttl_seconds, expires_at,
      active_since, started_at, idle_deadline_at, state_changed_at, created_at, updated_at)
    select gen_random_uuid(), '${BENCH_USER}', (array['pending', 'active', 'suspended', 'paused'])[1 + n % 4], 1, '/tmp/mobvibe-bench/due/' || n,
      600, 3600, now() - interval '1 minute' - n * interval '1 millisecond',
      case when n % 4 = 1 then now() - interval '2 hours' end, case when n % 4 <> 0 then now() - interval '2 hours' end,
      case when n % 4 = 1 then now() + interval '1 day' end,
      now() - interval '2 hours', now() - interval '2 hours', now() - interval '2 hours'
    from generate_series(1, ${count}) n`))
  // what autovacuum would have done after that many new rows
  await db.execute(sql`analyze sessions`)
  const t1 = performance.now()
  const ids = await app.sessions.checkExpiration()
  const t2 = performance.now()
  return { insertMs: t1 - t0, sweepMs: t2 - t1, returned: ids.length, distinct: new Set(ids).size }
}

/** A fresh database on the server of `base`, for this run only. */
export async function createDatabase (base: string): Promise<{ url: string, drop: () => Promise<void> }> {
  const name = `mobvibe_bench_${process.pid}_${Date.now().toString(36)}`
  const admin = postgres(base, { max: 1, onnotice: () => {} })
  try {
    await admin.unsafe(`create database ${name}`)
  } finally {
    await admin.end()
  }
  const url = new URL(base)
  url.pathname = `/${name}`
  return {
    url: url.toString(),
    drop: async () => {
      const a = postgres(base, { max: 1, onnotice: () => {} })
      try {
        await a.unsafe(`drop database if exists ${name} with (force)`)
      } finally {
        await a.end()
      }
    }
  }
}
