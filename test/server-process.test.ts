/**
 * The real launcher (src/server.ts) as a child process, as an operator runs it: configuration from
 * the environment, pino JSON lines on stdout, graceful shutdown on SIGTERM/SIGINT, state kept
 * across restarts, the data directory lock, and start-up refused on a bad configuration.
 *
 * Readiness and exit are events (the "Server listening" log line, the child's exit), never sleeps;
 * every wait is bounded. Every child is killed in teardown.
 */
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import type { SessionView } from '../src/schemas/session.js'
import { freshDatabaseUrl } from './helpers/build.js'
import { START_TIMEOUT_MS, launch, type LogLine, type Service } from './helpers/service-process.js'

/** A port nobody listens on right now. */
async function freePort (): Promise<number> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve))
  const address = server.address()
  await new Promise<void>((resolve) => server.close(() => resolve()))
  if (!address || typeof address !== 'object') throw new Error('no port')
  return address.port
}

async function json<T> (res: Response): Promise<T> {
  return await res.json() as T
}

function shutdownLine (service: Service, signal: string): LogLine | undefined {
  return service.lines.find((l) => l.msg === 'shutting down' && l.signal === signal)
}

t.test('the launcher, on one data directory across restarts', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-proc-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const dataDir = join(dir, 'data')
  const lockFile = join(dataDir, 'service.lock')
  // on Postgres every instance shares one database, as on PGlite they share the data directory
  const databaseUrl = await freshDatabaseUrl(t)
  const env = {
    HOST: '127.0.0.1',
    MOBVIBE_DATA_DIR: dataDir,
    MOBVIBE_WORKSPACE_ROOT: join(dir, 'workspaces'),
    LOG_LEVEL: 'info',
    DATABASE_URL: databaseUrl
  }
  let session: SessionView | undefined
  let running: Service | undefined
  const parent = t

  await t.test('starts on the configured port and exits 0 on SIGTERM, logging the shutdown', async (t) => {
    const port = await freePort()
    const first = launch(t, 'first', { ...env, PORT: String(port) })
    const baseUrl = await first.ready()
    t.equal(baseUrl, `http://127.0.0.1:${port}`, 'listens where PORT says')
    t.ok(first.lines.some((l) => l.msg === 'database ready' && l.driver === (databaseUrl ? 'postgres' : 'pglite')), 'logged the database driver')
    t.match(await json(await fetch(`${baseUrl}/readyz`)), { status: 'ready' })
    const lock = JSON.parse(await readFile(lockFile, 'utf8')) as { pid: number }
    t.equal(lock.pid, first.proc.pid, 'the running service holds the data directory lock')

    const anonymous = await fetch(`${baseUrl}/v1/sessions`)
    t.equal(anonymous.status, 401, 'the API needs a bearer token (JWT_SECRET from the environment)')
    const created = await first.fetch('/v1/sessions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ title: 'survives restarts' })
    })
    t.equal(created.status, 201)
    const id = (await json<SessionView>(created)).id
    const active = await first.fetch(`/v1/sessions/${id}/transitions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'if-match': '"1"' },
      body: JSON.stringify({ to: 'active' })
    })
    t.equal(active.status, 200)
    // paused: a state that a restart leaves alone (a restart suspends what was active)
    const paused = await first.fetch(`/v1/sessions/${id}/pause`, { method: 'POST' })
    t.equal(paused.status, 200)
    const got = await first.fetch(`/v1/sessions/${id}`)
    session = await json<SessionView>(got)
    t.match(session, { id, state: 'paused', version: 3 })

    const exit = await first.stop('SIGTERM')
    t.same(exit, { code: 0, signal: null }, 'exit code 0 after SIGTERM')
    t.ok(shutdownLine(first, 'SIGTERM'), 'logged "shutting down" with the signal')
    t.notOk(existsSync(lockFile), 'the lock is released on a clean shutdown')
  })

  await t.test('state survives a restart on the same data directory', async (t) => {
    if (!session) return t.fail('no session from the first run')
    // lives on into the next two tests: killed in the teardown of the enclosing test if need be
    const second = launch(parent, 'second', { ...env, PORT: '0' })
    running = second
    await second.ready()
    const res = await second.fetch(`/v1/sessions/${session.id}`)
    t.equal(res.status, 200)
    t.equal(res.headers.get('etag'), `"${session.version}"`)
    const again = await json<SessionView>(res)
    t.match(again, { id: session.id, state: 'paused', version: session.version, title: 'survives restarts' }, 'same state and version')
    t.equal(again.createdAt, session.createdAt)
    const snapshots = await json<{ items: unknown[] }>(await second.fetch(`/v1/sessions/${session.id}/snapshots`))
    t.equal((await second.fetch(`/v1/sessions/${session.id}`, { user: 'someone-else' })).status, 404, 'another user does not see it')
    t.equal(snapshots.items.length, 1, 'the snapshot taken at the pause is still there')
  })

  await t.test('a second service on the same data directory refuses to start', async (t) => {
    if (!running) return t.fail('no running service')
    const intruder = launch(t, 'intruder', { ...env, PORT: '0' })
    const exit = await intruder.waitExit(START_TIMEOUT_MS)
    t.not(exit.code, 0, `exits non-zero (${JSON.stringify(exit)})`)
    t.notOk(intruder.lines.some((l) => String(l.msg).startsWith('Server listening')), 'never listened')
    t.match(intruder.output, `data directory ${dataDir} is in use`, 'names the data directory in use')
    t.match(intruder.output, `pid ${running.proc.pid}`, 'and the holder')
    const lock = JSON.parse(await readFile(lockFile, 'utf8')) as { pid: number }
    t.equal(lock.pid, running.proc.pid, 'the lock still belongs to the running service')
    t.notOk(running.exit, 'the running service is unaffected')
  })

  await t.test('a lock left by a killed service is stale and taken over', async (t) => {
    if (!running || !session) return t.fail('no running service')
    const killed = await running.stop('SIGKILL')
    t.same(killed, { code: null, signal: 'SIGKILL' })
    const stale = JSON.parse(await readFile(lockFile, 'utf8')) as { pid: number }
    t.equal(stale.pid, running.proc.pid, 'the dead holder left its lock behind')

    const third = launch(t, 'third', { ...env, PORT: '0' })
    await third.ready()
    const lock = JSON.parse(await readFile(lockFile, 'utf8')) as { pid: number }
    t.equal(lock.pid, third.proc.pid, 'the new service took the lock over')
    const again = await json<SessionView>(await third.fetch(`/v1/sessions/${session.id}`))
    t.match(again, { state: 'paused', version: session.version }, 'state survives the crash too')

    const exit = await third.stop('SIGINT')
    t.same(exit, { code: 0, signal: null }, 'exit code 0 after SIGINT')
    t.ok(shutdownLine(third, 'SIGINT'), 'logged "shutting down" with the signal')
    t.notOk(existsSync(lockFile), 'the lock is released')
  })
})

t.test('a bad configuration value stops start-up, naming the variable', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-proc-config-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const cases: { name: string, env: Record<string, string>, names: string }[] = [
    { name: 'PORT not a number', env: { PORT: 'abc' }, names: 'PORT' },
    { name: 'idle timeout default below its minimum', env: { IDLE_TIMEOUT_DEFAULT_SECONDS: '5' }, names: 'IDLE_TIMEOUT_DEFAULT_SECONDS' },
    { name: 'sweep interval of zero', env: { SWEEP_INTERVAL_MS: '0' }, names: 'SWEEP_INTERVAL_MS' },
    { name: 'unknown log level', env: { LOG_LEVEL: 'loud' }, names: 'LOG_LEVEL' },
    { name: 'a DATABASE_URL that is not postgres', env: { DATABASE_URL: 'mysql://app:s3cr3t-pw@db.example/app' }, names: 'DATABASE_URL' }
  ]
  // the children are cheap (no database is opened): run them side by side
  const results = await Promise.all(cases.map(async (c, i) => {
    const dataDir = join(dir, `data-${i}`)
    const service = launch(t, `config ${c.name}`, {
      HOST: '127.0.0.1',
      PORT: '0',
      MOBVIBE_DATA_DIR: dataDir,
      MOBVIBE_WORKSPACE_ROOT: join(dir, `ws-${i}`),
      LOG_LEVEL: 'info',
      ...c.env
    })
    return { c, service, dataDir, exit: await service.waitExit(START_TIMEOUT_MS) }
  }))
  for (const { c, service, dataDir, exit } of results) {
    t.test(c.name, async (t) => {
      t.not(exit.code, 0, `exits non-zero (${JSON.stringify(exit)})`)
      t.equal(exit.signal, null, 'on its own, not by a signal')
      const fatal = service.lines.find((l) => l.level === 60)
      t.ok(fatal, 'logs a fatal line')
      t.match(String(fatal?.msg), /^invalid configuration: /)
      t.match(String(fatal?.msg), c.names, `the message names ${c.names}`)
      t.notOk(service.lines.some((l) => String(l.msg).startsWith('Server listening')), 'never listened')
      t.notOk(existsSync(join(dataDir, 'service.lock')), 'took no lock')
      if (c.env.DATABASE_URL) {
        t.notMatch(service.output, 's3cr3t-pw', 'does not log the password of the rejected URL')
      }
    })
  }
})
