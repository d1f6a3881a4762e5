/**
 * 10,000 sessions expiring at once under three instances that all sweep: each one is expired
 * exactly once (one transition to `expired`, one `state` event, counted once in the instances'
 * sweep logs), and every instance stays healthy throughout and serves afterwards.
 *
 * The sessions are inserted with SQL (the columns of src/db/schema.ts, the history rows the API
 * would have written), half `pending`, half `suspended`, all the test user's, expiring a second
 * after the insert.
 */
import t from 'tap'
import { TEST_USER } from '../../test/helpers/build.js'
import { Cluster, createSession, send, waitUntil, type Instance } from './harness.js'

const COUNT = 10_000
const TITLE = 'bulk expiry'

const cluster = await Cluster.start(t)
const instances = ['A', 'B', 'C'].map((n) => cluster.instance(n))

/** Polls /readyz on every instance until stopped: each answer's status and the slowest answer. */
function watchHealth (on: Instance[]): { stop: () => Promise<Record<string, { answers: number, bad: string[], slowestMs: number }>> } {
  const seen = Object.fromEntries(on.map((i) => [i.name, { answers: 0, bad: [] as string[], slowestMs: 0 }]))
  const probing = { on: true }
  const loops = on.map(async (i) => {
    while (probing.on) {
      const started = Date.now()
      const res = await i.api('GET', '/readyz').catch((err: Error) => ({ status: 0, body: err.message }))
      const s = seen[i.name]!
      s.answers++
      s.slowestMs = Math.max(s.slowestMs, Date.now() - started)
      if (res.status !== 200) s.bad.push(`${res.status} ${JSON.stringify(res.body)}`)
      await new Promise((resolve) => setTimeout(resolve, 100)) // the probe's pace, not a synchronisation
    }
  })
  return {
    stop: async () => {
      probing.on = false
      await Promise.all(loops)
      return seen
    }
  }
}

t.test(`${COUNT} sessions expiring at once under three sweeping instances: each expired exactly once`, async (t) => {
  const workdir = `${cluster.workspaceRoot}/bulk`
  const health = watchHealth(instances)
  const insertedAt = Date.now()
  await cluster.sql.begin(async (sql) => {
    await sql`
      create temporary table bulk on commit drop as
      select gen_random_uuid() as id, g, case when g % 2 = 0 then 'pending' else 'suspended' end as state
      from generate_series(1, ${COUNT}) g`
    await sql`
      insert into sessions (id, owner, state, previous_state, version, title, workdir, idle_timeout_seconds, ttl_seconds,
        expires_at, state_changed_at, created_at, updated_at, transition_count, agent_session_id)
      select id, ${TEST_USER}, state, case when state = 'suspended' then 'active' end, case when state = 'suspended' then 3 else 1 end,
        ${TITLE}, ${workdir}, 600, 60, now() + interval '1 second', now(), now(), now(),
        case when state = 'suspended' then 2 else 0 end, case when state = 'suspended' then gen_random_uuid() end
      from bulk`
    await sql`
      insert into session_transitions (session_id, from_state, to_state, reason, actor, version, at)
      select id, null, 'pending', 'created', 'user', 1, now() from bulk
      union all select id, 'pending', 'active', 'first message', 'system', 2, now() from bulk where state = 'suspended'
      union all select id, 'active', 'suspended', 'idle', 'system', 3, now() from bulk where state = 'suspended'`
  })
  t.comment(`inserted in ${Date.now() - insertedAt} ms`)

  let left = COUNT
  await waitUntil(`all ${COUNT} sessions expired`, async () => {
    const [row] = await cluster.sql`select count(*)::int as n from sessions where title = ${TITLE} and state <> 'expired'`
    left = row!.n
    return left === 0
  }, { timeoutMs: 90_000, intervalMs: 200, describe: () => `${left} not expired yet` })
  const sweptIn = Date.now() - insertedAt
  t.pass(`all expired ${sweptIn} ms after the insert (they were due after 1000 ms)`)

  const [transitions] = await cluster.sql`
    select count(*)::int as sessions, coalesce(sum(n), 0)::int as transitions, coalesce(max(n), 0)::int as most from (
      select s.id, count(tr.session_id) as n from sessions s
      left join session_transitions tr on tr.session_id = s.id and tr.to_state = 'expired'
      where s.title = ${TITLE} group by s.id) x`
  t.same(transitions, { sessions: COUNT, transitions: COUNT, most: 1 }, 'every session has exactly one transition to expired')
  const [reasons] = await cluster.sql`
    select count(*)::int as n from session_transitions tr join sessions s on s.id = tr.session_id
    where s.title = ${TITLE} and tr.to_state = 'expired' and (tr.reason <> 'ttl' or tr.actor <> 'system'
      or tr.from_state <> case when tr.version = 2 then 'pending' else 'suspended' end)`
  t.equal(reasons!.n, 0, 'each from where it was (pending or suspended), by the system, reason ttl')
  const [versions] = await cluster.sql`
    select count(*)::int as n from sessions where title = ${TITLE}
      and version <> case when previous_state = 'pending' then 2 else 4 end`
  t.equal(versions!.n, 0, 'each session\'s version moved by one')

  // the state events are written after the sweep's statement: wait for them, bounded
  let events = { rows: 0, sessions: 0 }
  await waitUntil('a state event for each expiry', async () => {
    const [row] = await cluster.sql`
      select count(*)::int as rows, count(distinct e.session_id)::int as sessions from session_events e
      join sessions s on s.id = e.session_id
      where s.title = ${TITLE} and e.type = 'state' and e.payload->>'to' = 'expired'`
    events = row as unknown as typeof events
    return events.rows >= COUNT
  }, { timeoutMs: 30_000, intervalMs: 200, describe: () => JSON.stringify(events) })
  t.same(events, { rows: COUNT, sessions: COUNT }, 'one state event to expired for each session')

  const swept = Object.fromEntries(instances.map((i) => [i.name,
    i.logLines((l) => l.msg === 'sessions swept' && l.to === 'expired').reduce((n, l) => n + Number(l.count), 0)]))
  t.comment(`expiries by instance: ${JSON.stringify(swept)}`)
  t.equal(Object.values(swept).reduce((a, b) => a + b, 0), COUNT, 'the instances\' sweeps counted each expiry once between them')

  const seen = await health.stop()
  for (const i of instances) {
    const slow = i.logLines((l) => l.msg === 'instance lease renewal slow').map((l) => Number(l.tookMs))
    if (slow.length > 0) t.comment(`${i.name}: ${slow.length} slow lease renewals, the slowest ${Math.max(...slow)} ms`)
  }
  for (const i of instances) {
    const h = seen[i.name]!
    t.ok(i.running, `${i.name} runs`)
    t.same(h.bad.slice(0, 3), [], `${i.name}: /readyz answered 200 throughout (${h.answers} probes, slowest ${h.slowestMs} ms)`)
    t.ok(h.slowestMs < 5000, `${i.name}: no probe waited 5 s or more`)
    // the lines themselves, so that a failure says what went wrong
    t.same(i.logLines((l) => (l.level ?? 0) >= 50).slice(0, 3), [], `${i.name}: no error logged`)
  }
  // and each serves a session after it
  await Promise.all(instances.map(async (i) => {
    const { id } = await createSession(i, { title: `after the sweep on ${i.name}` })
    await send(i, id, `served by ${i.name}`)
    await cluster.waitReply(id, `served by ${i.name}`)
  }))
  t.pass('each instance runs a new session\'s turn afterwards')
})
