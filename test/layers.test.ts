import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { sql } from 'drizzle-orm'
import Fastify from 'fastify'
import t from 'tap'
import { loadConfig } from '../src/config.js'
import { MIGRATIONS_FOLDER } from '../src/db/database.js'
import { createLogger } from '../src/logger.js'
import cluster from '../src/plugins/cluster.js'
import database from '../src/plugins/database.js'
import events from '../src/plugins/events.js'
import sessions from '../src/plugins/sessions.js'
import { migrationDatabase } from './helpers/migrations.js'
import { build, freshDatabaseUrl } from './helpers/build.js'

t.test('state events are recorded by the events layer, with no agent side at all', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-layers-'))
  const databaseUrl = await freshDatabaseUrl(t)
  const config = loadConfig({
    MOBVIBE_DATA_DIR: join(dir, 'data'),
    MOBVIBE_WORKSPACE_ROOT: join(dir, 'workspaces'),
    LOG_LEVEL: 'silent',
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {})
  })
  // as src/app.ts: PGlite's first start on a busy machine takes longer than Fastify's default 10 s
  const app = Fastify({ loggerInstance: createLogger(config), pluginTimeout: 120_000 })
  await app.register(database, { config })
  await app.register(cluster, { config })
  await app.register(sessions, { config })
  await app.register(events, {})
  await app.ready()
  t.teardown(async () => {
    await app.close()
    await rm(dir, { recursive: true, force: true })
  })
  t.notOk(app.hasDecorator('agents'), 'no supervisor in this app')
  const created = await app.sessions.create({}, 'layers-user')
  await app.sessions.transitionState(created.id, 'active', { reason: 'by hand' })
  await app.sessions.pauseSession(created.id)
  await app.events.flush()
  const page = await app.events.page(created.id, 0, 10)
  t.same(page.map((e) => [e.type, JSON.parse(e.json)]), [
    ['state', { from: 'pending', to: 'active', reason: 'by hand', actor: 'user', version: 2 }],
    ['state', { from: 'active', to: 'paused', reason: 'paused by user', actor: 'user', version: 3 }]
  ])
})

t.test('the supervisor\'s turn store writes turn facts only: no state, no settings', async (t) => {
  const { app } = await build(t)
  t.same(Object.keys(app.turns).sort(), [
    'addTurnUsage', 'agentGone', 'agentStart', 'agentsGoneExcept', 'claimBusy', 'recordActivity', 'releaseBusy', 'startNewConversation'
  ])
  // @ts-expect-error the type has no way to change a session's state
  t.equal(app.turns.transition, undefined)
  // @ts-expect-error nor its settings
  t.equal(app.turns.updateSettings, undefined)
  const created = await app.sessions.create({}, 'layers-user')
  t.notOk(await app.turns.claimBusy(created.id, new Date(), { worker: app.instanceLease.id!, epoch: 0 }), 'a pending session cannot be claimed: claims never move state')
  t.equal((await app.sessions.get(created.id)).state, 'pending')
})

t.test('the queue position survives the migration that moves it to the event log\'s table', async (t) => {
  // The database as the previous release left it: migration 0000 only, a session whose agent took
  // up its first message (delivered_seq 1) while a second one waits (seq 2)
  const { earlier, execute, rows, migrateTo } = await migrationDatabase(t, '0001_event_queue_position')
  await migrateTo(earlier)
  const id = '00000000-0000-4000-8000-000000000001'
  const idle = '00000000-0000-4000-8000-000000000002'
  await execute(sql`insert into sessions (id, state, workdir, idle_timeout_seconds, ttl_seconds, expires_at, state_changed_at, created_at, updated_at, delivered_seq)
    values (${id}, 'suspended', '/w', 600, 86400, now(), now(), now(), now(), 1),
           (${idle}, 'pending', '/w', 600, 86400, now(), now(), now(), now(), 0)`)
  await execute(sql`insert into session_event_seqs (session_id, last_seq) values (${id}, 2)`)
  await execute(sql`insert into session_events (session_id, seq, type, payload, at) values
    (${id}, 1, 'user', '{"text":"taken up"}', now()), (${id}, 2, 'user', '{"text":"waiting"}', now())`)

  await migrateTo(MIGRATIONS_FOLDER)
  const seqs = await rows(sql`select session_id::text as id, last_seq::int as last, delivered_seq::int as delivered from session_event_seqs order by session_id`)
  t.same(seqs, [{ id, last: 2, delivered: 1 }], 'the delivered position moved with the session; nothing else changed')
  const columns = await rows(sql`select column_name from information_schema.columns where table_name = 'sessions' and column_name = 'delivered_seq'`)
  t.equal(columns.length, 0, 'the sessions row no longer carries it')
})
