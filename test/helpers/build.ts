import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import postgres from 'postgres'
import type { Test } from 'tap'
import { buildApp, type App } from '../../src/app.js'
import { loadConfig, type Config } from '../../src/config.js'
import { createLogger } from '../../src/logger.js'
import { registerDefaultToken } from './api.js'
import { seedPglite } from './pglite-template.js'
import { mintToken } from './tokens.js'

export interface BuildOptions {
  /** environment variables, as an operator would set them */
  env?: Record<string, string>
  clock?: () => Date
  /** false: the timeout worker does not sweep on its own */
  startWorker?: boolean
  /** listen on 127.0.0.1 (random port) for tests about the real network */
  listen?: boolean
}

export interface Built {
  app: App
  config: Config
  dir: string
  /** http://127.0.0.1:<port> when listening */
  baseUrl: string
  /** the default user's token (`call` sends it unless told otherwise) */
  token: string
  /** a token of another user, signed with this app's key */
  tokenFor: (user: string, opts?: { ttlSeconds?: number }) => Promise<string>
}

/** The user every test acts as unless it says otherwise. */
export const TEST_USER = 'test-user'

/**
 * A fresh Postgres database for one test app when DATABASE_URL is set (dropped in teardown), so
 * every test file runs on its own data. Undefined means PGlite.
 */
export async function freshDatabaseUrl (t: Test, prefix = 'mobvibe_test'): Promise<string | undefined> {
  const base = process.env.DATABASE_URL
  if (!base) return undefined
  const name = `${prefix}_${randomBytes(6).toString('hex')}`
  const admin = postgres(base, { max: 1, onnotice: () => {} })
  await admin.unsafe(`create database ${name}`)
  await admin.end()
  t.teardown(async () => {
    const drop = postgres(base, { max: 1, onnotice: () => {} })
    await drop.unsafe(`drop database if exists ${name} with (force)`)
    await drop.end()
  })
  const url = new URL(base)
  url.pathname = `/${name}`
  return url.toString()
}

/** Builds the whole service on its own data directory and database; closed in teardown. */
export async function build (t: Test, opts: BuildOptions = {}): Promise<Built> {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-test-'))
  const databaseUrl = await freshDatabaseUrl(t)
  // a key of its own per app, unless the test configures authentication itself
  const configuresAuth = opts.env?.JWT_JWKS_URL !== undefined || opts.env?.JWT_SECRET !== undefined
  const secret = opts.env?.JWT_SECRET ?? randomBytes(32).toString('base64url')
  const config = loadConfig({
    MOBVIBE_DATA_DIR: join(dir, 'data'),
    ...(configuresAuth ? {} : { JWT_SECRET: secret }),
    // Load shedding answers 503 whenever this process's event loop lags by a second on average,
    // which a CI box running test files side by side on two cores can do for reasons of its own:
    // the tests of everything else are about correctness; test/load-shedding.test.ts turns it on
    MAX_EVENT_LOOP_DELAY_MS: '0',
    // A test file sends thousands of requests a minute as one user, which no phone does: the
    // limits are the subject of test/rate-limits.test.ts and test/stream-quota.test.ts only
    RATE_LIMIT_PER_MINUTE: '0',
    HEARTBEAT_RATE_LIMIT_PER_MINUTE: '0',
    MOBVIBE_WORKSPACE_ROOT: join(dir, 'workspaces'),
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
    ...opts.env
  })
  // a copy of a migrated database: about 3 s less per app than creating and migrating one
  if (config.databaseUrl === undefined) await seedPglite(config.dataDir)
  const app = await buildApp({
    config,
    logger: createLogger(config),
    ...(opts.clock ? { clock: opts.clock } : {}),
    ...(opts.startWorker === undefined ? {} : { startWorker: opts.startWorker })
  })
  t.teardown(async () => {
    await app.close()
    await rm(dir, { recursive: true, force: true })
  })
  let baseUrl = ''
  if (opts.listen) {
    await app.listen({ host: '127.0.0.1', port: 0 })
    const address = app.server.address()
    if (address && typeof address === 'object') baseUrl = `http://127.0.0.1:${address.port}`
  } else {
    await app.ready()
  }
  const tokenFor = async (user: string, o: { ttlSeconds?: number } = {}) =>
    mintToken({ secret, sub: user, ...o, issuer: config.auth.issuer, audience: config.auth.audience })
  const token = configuresAuth && opts.env?.JWT_SECRET === undefined ? '' : await tokenFor(TEST_USER)
  registerDefaultToken(app, token)
  return { app, config, dir, baseUrl, token, tokenFor }
}

/** A clock the test moves by hand. */
export function manualClock (start = new Date('2030-01-01T00:00:00.000Z')) {
  let now = start.getTime()
  return {
    now: () => new Date(now),
    advance (ms: number) { now += ms },
    set (at: Date) { now = at.getTime() }
  }
}
