/**
 * The doorbell between instances (src/cluster/doorbell.ts) on PostgreSQL's LISTEN/NOTIFY: what one
 * instance rings another hears, every run in order with its frames, also when a commit's runs take
 * several notices (sent in one statement); an instance does not hear itself; what is rung while
 * the most rings are on their way goes in the next one, merged; a control message reaches only the instance it
 * is addressed to; a listener that stopped reading is cut off once the notice queue fills, and
 * no other. On PGlite (one instance by construction) it rings nobody.
 */
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import postgres from 'postgres'
import t, { type Test } from 'tap'
import { Doorbell, RINGS_IN_FLIGHT, type ControlMessage } from '../src/cluster/doorbell.js'
import type { StoredRun } from '../src/cluster/event-notice.js'
import { createInstanceRepository } from '../src/cluster/instance-repository.js'
import { openDatabase } from '../src/db/database.js'
import { waitUntil } from './helpers/agents.js'
import { build, freshDatabaseUrl } from './helpers/build.js'
import { seedPglite } from './helpers/pglite-template.js'

const silent = pino({ level: 'silent' })
const frame = (seq: number, text: string) => JSON.stringify({ seq, type: 'agent', at: new Date(0).toISOString(), data: { text } })
const run = (first: number, last: number, text = 'x'): StoredRun => ({
  sessionId: randomUUID(),
  first,
  last,
  frames: Array.from({ length: last - first + 1 }, (_, i) => frame(first + i, text))
})

/** One instance's doorbell on its own database handle, and what it heard. */
async function instance (t: Test, url: string | undefined) {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-doorbell-'))
  if (!url) await seedPglite(dir)
  const handle = await openDatabase({ url, pgliteDir: dir })
  const id = randomUUID()
  const doorbell = new Doorbell({ pubsub: handle.pubsub, logger: silent, self: () => id })
  doorbell.addOwnId(id)
  const heard: StoredRun[] = []
  const controls: ControlMessage[] = []
  doorbell.on('events', (runs) => heard.push(...runs))
  doorbell.on('control', (m) => controls.push(m))
  await doorbell.start()
  t.teardown(async () => {
    await handle.close()
    await rm(dir, { recursive: true, force: true })
  })
  return { id, doorbell, heard, controls, handle }
}

t.test('what one instance rings, another hears: every run once, in order, frames included', async (t) => {
  const url = await freshDatabaseUrl(t, 'mobvibe_doorbell')
  const x = await instance(t, url)
  if (!url) {
    t.notOk(x.doorbell.shared, 'PGlite: no other instance can exist')
    x.doorbell.ringEvents([run(1, 2)])
    await x.doorbell.control(randomUUID(), { op: 'sync', sid: randomUUID() })
    t.same([x.heard, x.controls], [[], []], 'nothing is rung')
    return
  }
  const y = await instance(t, url)
  t.ok(x.doorbell.shared)

  // one commit whose runs need several notices (each under 8,000 bytes, in one statement), then
  // more commits until RINGS_IN_FLIGHT rings are on their way; then two commits of one session
  // (merged into one run, frames kept) and one of another session, rung together next
  const big = Array.from({ length: 40 }, () => run(1, 3, 'é'.repeat(300)))
  x.doorbell.ringEvents(big)
  const single = Array.from({ length: RINGS_IN_FLIGHT - 1 }, () => run(1, 1))
  for (const r of single) x.doorbell.ringEvents([r])
  const later = run(4, 5)
  const latest = { ...run(6, 7), sessionId: later.sessionId }
  const alone = run(1, 1)
  x.doorbell.ringEvents([later])
  x.doorbell.ringEvents([latest, alone])
  const merged = { sessionId: later.sessionId, first: 4, last: 7, frames: [...later.frames!, ...latest.frames!] }
  const expected = [...big, ...single, merged, alone]
  await waitUntil('every run heard', () => y.heard.length >= expected.length, { timeoutMs: 5000, describe: () => `${y.heard.length} runs heard` })
  t.same(y.heard, expected, 'every run once, in order, with its frames')
  t.same(x.heard, [], 'an instance does not hear its own notices')
  const watcher = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(() => watcher.end({ timeout: 1 }))
  const [conns] = await watcher`select count(*)::int as n from pg_stat_activity
    where application_name = 'mobvibe-notify' and datname = current_database()`
  t.equal(conns!.n, 1, 'the instance that rang sent its notices on a connection of its own (mobvibe-notify)')

  const sid = randomUUID()
  await x.doorbell.control(randomUUID(), { op: 'sync', sid })
  await x.doorbell.control(y.id, { op: 'interrupt', sid, deliverQueued: true })
  await waitUntil('the control message', () => y.controls.length > 0, { timeoutMs: 5000 })
  t.same(y.controls, [{ to: y.id, op: 'interrupt', sid, deliverQueued: true }], 'only what is addressed to it')
})

/**
 * A listener that stops reading: psql LISTENs on `url`'s database under the service's listener
 * name, is frozen, and is sent notices until its backend is blocked writing to it. Its backend pid.
 */
async function stuckListener (t: Test, url: string, watcher: postgres.Sql, others: number[]): Promise<number> {
  const psql = spawn('psql', [url, '-X', '-q'], { env: { ...process.env, PGAPPNAME: 'mobvibe-listen' }, stdio: ['pipe', 'ignore', 'ignore'] })
  const spawnFailed = new Promise<Error>((resolve) => psql.once('error', resolve))
  t.teardown(() => { psql.kill('SIGCONT'); psql.kill('SIGKILL') })
  psql.stdin.write('LISTEN mv_events;\n')
  const stuckPid = await Promise.race([spawnFailed.then((err) => { throw new Error(`psql (PostgreSQL's client) did not start: ${err.message}`) }), waitUntil('psql listening', async () => {
    const [row] = await watcher`select pid from pg_stat_activity where datname = current_database()
      and application_name = 'mobvibe-listen' and query ilike 'listen%' and not (pid = any(${others}::int[]))`
    return row?.pid as number | undefined
  }, { timeoutMs: 10_000 })])
  psql.kill('SIGSTOP')
  let sent = 0
  let seen = ''
  await waitUntil('its backend blocked writing to it', async () => {
    // distinct payloads: a transaction's identical notices are sent once
    await watcher`select count(pg_notify('mv_events', g::text || repeat('x', 7000))) from generate_series(1, 200) g`
    sent += 200
    const [row] = await watcher`select state, wait_event from pg_stat_activity where pid = ${stuckPid}`
    seen = JSON.stringify(row)
    return row?.wait_event === 'ClientWrite'
  }, { timeoutMs: 20_000, intervalMs: 0, describe: () => `${sent} notices sent; its backend: ${seen}` })
  // and more than the connection's buffers can grow to (TCP autotuning would otherwise let the
  // backend finish and go idle): it stays blocked, as with a queue that keeps filling
  await watcher`select count(pg_notify('mv_events', g::text || repeat('x', 7000))) from generate_series(1, 5000) g`
  return stuckPid
}

t.test('a listener that stopped reading is cut off once the notice queue fills, at the second look; one that reads is not', async (t) => {
  const url = await freshDatabaseUrl(t, 'mobvibe_doorbell')
  if (!url) {
    const x = await instance(t, url)
    t.notOk(x.doorbell.shared, 'PGlite: nobody listens')
    return
  }
  const reader = await instance(t, url)
  const repo = createInstanceRepository(reader.handle.db)
  const watcher = postgres(url, { max: 1, onnotice: () => {} })
  t.teardown(() => watcher.end({ timeout: 1 }))
  const listenPids = async () => (await watcher`select pid from pg_stat_activity where datname = current_database()
    and application_name = 'mobvibe-listen'`).map((r) => r.pid as number)
  const readerPids = await listenPids()
  t.equal(readerPids.length, 1, 'the instance that reads listens')
  const stuckPid = await stuckListener(t, url, watcher, readerPids)
  const notFilling = await repo.cutStuckListeners(0.5, [stuckPid])
  t.same([notFilling.cut, notFilling.suspects], [0, []], `below the threshold (the queue ${(notFilling.usage * 100).toFixed(4)} % used): nothing cut, nobody suspected`)
  const first = await repo.cutStuckListeners(0, [])
  t.equal(first.cut, 0, 'at it, a first look: nothing cut yet')
  t.ok(first.suspects.includes(stuckPid), 'the listener that stopped reading is suspected')
  // (the reader may be caught writing once too, while it catches up; it is not passed on here)
  const second = await repo.cutStuckListeners(0, [stuckPid])
  t.equal(second.cut, 1, 'a second look: the suspect still blocked is cut')
  await waitUntil('its backend gone', async () => (await watcher`select 1 from pg_stat_activity where pid = ${stuckPid}`).length === 0, { timeoutMs: 5000 })
  t.same(await listenPids(), readerPids, 'the instance that reads still listens, on the same connection')
  const before = reader.heard.length
  const sender = await instance(t, url)
  sender.doorbell.ringEvents([run(1, 1)])
  await waitUntil('the next notice heard', () => reader.heard.length > before, { timeoutMs: 5000 })
  t.pass('and hears what comes next')
})

t.test('the service looks at the notice queue every ten sweeps and cuts its stuck listeners (NOTICE_QUEUE_CUT_AT)', async (t) => {
  // the test runs the sweeps itself: ten of them make one look
  const { app, config } = await build(t, { startWorker: false, env: { NOTICE_QUEUE_CUT_AT: '0' } })
  if (!config.databaseUrl) {
    t.equal(app.database.driver, 'pglite', 'PGlite: no listener, nothing to look at')
    return
  }
  const watcher = postgres(config.databaseUrl, { max: 1, onnotice: () => {} })
  t.teardown(() => watcher.end({ timeout: 1 }))
  const listening = async () => (await watcher`select pid, wait_event from pg_stat_activity where datname = current_database()
    and application_name = 'mobvibe-listen'`) as unknown as { pid: number, wait_event: string | null }[]
  const own = (await listening()).map((r) => r.pid)
  t.equal(own.length, 1, 'the service listens')
  const stuckPid = await stuckListener(t, config.databaseUrl, watcher, own)
  const sweeps = async (n: number) => { for (let i = 0; i < n; i++) await app.timeoutWorker.sweep() }
  await sweeps(10)
  t.ok((await listening()).some((r) => r.pid === stuckPid), `a first look: not cut yet (${JSON.stringify(await listening())})`)
  await sweeps(10)
  await waitUntil('its backend gone', async () => !(await listening()).some((r) => r.pid === stuckPid),
    { timeoutMs: 5000, describe: async () => JSON.stringify(await listening()) })
  t.pass('a second look, still blocked: cut')
  // (had its own listener been caught writing at two looks in a row, it would be listening again)
  await waitUntil('the service listening', async () => (await listening()).length === 1, { timeoutMs: 5000 })
  t.pass('and the service listens')
})
