import { sql } from 'drizzle-orm'
import t from 'tap'
import { build } from './helpers/build.js'

// A sweep's state events are written after it returns (a big batch is deferred a tick). A shutdown
// right after must still store every one of them before the database closes.
t.test('the state events of a big sweep survive an immediate shutdown', async (t) => {
  const first = await build(t, { startWorker: false })
  const due = 1500
  await first.app.database.db.execute(sql.raw(`
    insert into sessions (id, state, version, workdir, idle_timeout_seconds, ttl_seconds, expires_at,
      state_changed_at, created_at, updated_at)
    select gen_random_uuid(), 'pending', 1, '/tmp/mobvibe-test/' || n, 600, 60,
      now() - interval '1 minute', now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour'
    from generate_series(1, ${due}) n`))
  const expired = await first.app.sessions.checkExpiration()
  t.equal(expired.length, due)
  await first.app.close()

  const second = await build(t, {
    startWorker: false,
    env: {
      MOBVIBE_DATA_DIR: first.config.dataDir,
      MOBVIBE_WORKSPACE_ROOT: first.config.workspaceRoot,
      ...(first.config.databaseUrl ? { DATABASE_URL: first.config.databaseUrl } : {})
    }
  })
  const rows = await second.app.database.db.execute(sql`
    select count(*)::int as n from session_events
    where type = 'state' and payload->>'to' = 'expired' and payload->>'reason' = 'ttl'`)
  const count = (Array.isArray(rows) ? rows : (rows as { rows: { n: number }[] }).rows)[0] as { n: number }
  t.equal(count.n, due, 'one stored state event per expired session')
})
