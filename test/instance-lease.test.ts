/**
 * The instance lease under a busy database pool. On PostgreSQL (where peers take a dead instance's
 * sessions over) the renewals go on a connection of their own (`mobvibe-lease`): a pool whose every
 * connection is busy for longer than the lease must not make the instance give its lease up (which
 * would kill its agents and hand its sessions to a peer). On PGlite (one instance by construction)
 * the lease is never given up, however long the database takes.
 */
import { sql } from 'drizzle-orm'
import postgres from 'postgres'
import t from 'tap'
import { build } from './helpers/build.js'
import { waitUntil } from './helpers/agents.js'

const LEASE_SECONDS = 4
const onPostgres = Boolean(process.env.DATABASE_URL)

t.test('a pool busy for longer than the lease does not cost the instance its lease', async (t) => {
  const { app, config } = await build(t, { env: { DATABASE_POOL_SIZE: '1', INSTANCE_LEASE_SECONDS: String(LEASE_SECONDS) } })
  const id = app.instanceLease.id
  t.ok(id, 'registered')
  const lost: string[] = []
  app.instanceLease.on('lost', (e) => lost.push(e.why))

  // the pool's only connection is busy for longer than the lease (and than its fence, 3/4 of it)
  const busyMs = LEASE_SECONDS * 1000 + 500
  // (drizzle's queries start when awaited: this one must start now)
  const busy = Promise.resolve(app.database.db.execute(sql`select pg_sleep(${busyMs / 1000})`))
  const busySince = Date.now()

  if (onPostgres) {
    // watched from a client of the test's own: the service's pool is busy
    const watcher = postgres(config.databaseUrl!, { max: 1, onnotice: () => {} })
    t.teardown(() => watcher.end({ timeout: 1 }))
    const heartbeat = async () => (await watcher`select heartbeat_at from service_instances where id = ${id!}`)[0]!.heartbeat_at as Date
    await waitUntil('the pool\'s connection to be busy', async () => {
      const [row] = await watcher`
        select count(*)::int as n from pg_stat_activity
        where application_name = 'mobvibe-session-service' and state = 'active' and query like '%pg_sleep%'`
      return row!.n === 1
    }, { timeoutMs: 2000, intervalMs: 50 })
    const first = await heartbeat()
    const renewals = new Set<number>([first.getTime()])
    await waitUntil('three renewals while the pool is busy', async () => {
      renewals.add((await heartbeat()).getTime())
      return renewals.size >= 4
    }, { timeoutMs: busyMs + 2000, intervalMs: 100 })
    t.ok(Date.now() - busySince < busyMs, 'renewed three times while the pool was still busy')
    const [lease] = await watcher`
      select count(*)::int as n from pg_stat_activity
      where application_name = 'mobvibe-lease' and datname = current_database()`
    t.equal(lease!.n, 1, 'the renewals have a connection of their own (mobvibe-lease)')
  }

  await busy
  t.ok(Date.now() - busySince >= busyMs - 100, `the pool was busy for ${Date.now() - busySince} ms`)
  t.same(lost, [], 'the lease was never lost')
  t.equal(app.instanceLease.id, id, 'the same id: the instance did not register again')
  t.ok(app.instanceLease.fresh(), 'the lease is fresh (the agents\' watchdog is fed)')
  if (!onPostgres) t.equal(app.database.leaseDb, app.database.db, 'PGlite: one connection for everything')
})
