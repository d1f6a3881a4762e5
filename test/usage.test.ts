/**
 * GET /v1/usage: a user's own tokens, cost, turns and active time, by UTC day and by session, with
 * the fake CLI as the agent and the app's clock moved by hand so that turns and active stretches
 * land on different days. Expected figures are the per-turn deltas of each session's own `usage`
 * (GET /v1/sessions/{id}), which the fake reports deterministically. Also: the range rules, the
 * 400s and the 401, and the backfill of migration 0003 on a database that already holds usage.
 */
import { sql } from 'drizzle-orm'
import t from 'tap'
import type { App } from '../src/app.js'
import { MIGRATIONS_FOLDER } from '../src/db/database.js'
import type { SessionView } from '../src/schemas/session.js'
import { createUsageRepository } from '../src/sessions/usage-repository.js'
import { call, createSession, getSession } from './helpers/api.js'
import { agentEnv, markedPids } from './helpers/agents.js'
import { migrationDatabase } from './helpers/migrations.js'
import { build, manualClock } from './helpers/build.js'

const HOUR = 3_600_000
type Usage = SessionView['usage']
const FIGURES = ['inputTokens', 'outputTokens', 'cacheReadTokens', 'cacheCreationTokens', 'costUsd', 'turns'] as const
const ZERO: Usage = { inputTokens: 0, outputTokens: 0, cacheReadTokens: 0, cacheCreationTokens: 0, costUsd: 0, turns: 0, activeMs: 0 }

const minus = (a: Usage, b: Usage): Usage => ({ ...a, ...Object.fromEntries(FIGURES.map((k) => [k, a[k] - b[k]])), activeMs: 0 })
const plus = (...us: Usage[]): Usage => us.reduce((acc, u) => ({
  ...acc, ...Object.fromEntries(FIGURES.map((k) => [k, acc[k] + u[k]])), activeMs: acc.activeMs + u.activeMs
}), ZERO)
/** The figures of a usage item, cost rounded (sums of float8) */
const figures = (u: Partial<Usage>) => ({
  inputTokens: u.inputTokens,
  outputTokens: u.outputTokens,
  cacheReadTokens: u.cacheReadTokens,
  cacheCreationTokens: u.cacheCreationTokens,
  costUsd: Math.round((u.costUsd ?? 0) * 1e9) / 1e9,
  turns: u.turns,
  activeMs: u.activeMs
})

// not a test of load shedding: the first requests after start-up must not be refused for a slow
// start (the loop stalls while modules load)
const env = agentEnv({ MAX_EVENT_LOOP_DELAY_MS: '0' })

const sessionIds: string[] = []
t.teardown(async () => {
  for (const id of sessionIds) for (const pid of await markedPids(id)) try { process.kill(pid, 'SIGKILL') } catch {}
})

/** Sends one message and waits until the turn is accounted; returns the session's usage after it. */
async function turn (app: App, id: string, text: string, auth: Record<string, string> = {}): Promise<Usage> {
  const before = (await call<SessionView>(app, 'GET', `/v1/sessions/${id}`, undefined, auth)).body.usage.turns
  const res = await call(app, 'POST', `/v1/sessions/${id}/messages`, { text }, auth)
  if (res.status !== 202) throw new Error(`POST /messages: ${res.status} ${JSON.stringify(res.body)}`)
  let last: SessionView | undefined
  const deadline = Date.now() + 15_000
  for (;;) {
    last = (await call<SessionView>(app, 'GET', `/v1/sessions/${id}`, undefined, auth)).body
    if (last.usage.turns === before + 1 && !last.busy) return last.usage
    if (Date.now() > deadline) throw new Error(`turn not accounted: ${JSON.stringify(last)}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

t.test('usage by day and by session: the sums of the turns, split at UTC midnight, only the user\'s own', async (t) => {
  const clock = manualClock(new Date('2030-01-01T22:00:00.000Z'))
  const { app, tokenFor } = await build(t, { clock: clock.now, startWorker: false, env })
  const bob = { authorization: `Bearer ${await tokenFor('bob')}` }

  // day 1, 22:00: the user's first session, and one of bob's
  const a1 = await createSession(app, { title: 'first' })
  sessionIds.push(a1.id)
  const a1Turn1 = await turn(app, a1.id, 'hello')
  const b1 = (await call<SessionView>(app, 'POST', '/v1/sessions', { title: 'bob\'s' }, bob)).body
  sessionIds.push(b1.id)
  const b1Turn1 = await turn(app, b1.id, 'bob was here, with a longer prompt', bob)

  // day 2, 02:00: a second turn on the first session, and a second session
  clock.advance(4 * HOUR)
  const a1Turn2 = await turn(app, a1.id, 'again')
  const a2 = await createSession(app, { title: 'second, deleted later' })
  sessionIds.push(a2.id)
  const a2Turn1 = await turn(app, a2.id, 'x')
  const a2Turn2 = await turn(app, a2.id, 'yz')

  // day 2, 03:00: the first session paused (5 h active), the second deleted (1 h active); bob's runs on
  clock.advance(HOUR)
  t.equal((await call(app, 'POST', `/v1/sessions/${a1.id}/pause`, {})).status, 200)
  const a1Final = await getSession(app, a1.id)
  t.equal(a1Final.usage.activeMs, 5 * HOUR, 'the session says 5 h in active')
  t.equal((await call(app, 'DELETE', `/v1/sessions/${a2.id}`)).status, 204)

  const day1 = { ...a1Turn1, activeMs: 2 * HOUR }
  const day2 = { ...plus(minus(a1Turn2, a1Turn1), a2Turn2), activeMs: 3 * HOUR + HOUR }
  t.ok(a1Turn2.cacheReadTokens > 0 && a1Turn2.costUsd > a1Turn1.costUsd && a2Turn2.turns === 2 && a2Turn1.turns === 1, 'the fake reports usage')

  const byDay = await call(app, 'GET', '/v1/usage?from=2030-01-01&to=2030-01-03&groupBy=day')
  t.equal(byDay.status, 200, JSON.stringify(byDay.body))
  t.equal(byDay.body.from, '2030-01-01T00:00:00.000Z')
  t.equal(byDay.body.to, '2030-01-03T00:00:00.000Z')
  t.equal(byDay.body.groupBy, 'day')
  t.same(byDay.body.items.map((i: Usage & { day: string }) => ({ day: i.day, ...figures(i) })), [
    { day: '2030-01-01', ...figures(day1) },
    { day: '2030-01-02', ...figures(day2) }
  ], 'one item per UTC day: the turns of that day, the active time cut at midnight')
  t.same(figures(byDay.body.totals), figures(plus(day1, day2)), 'the totals are the sums of the days')

  const bySession = await call(app, 'GET', '/v1/usage?from=2030-01-01&to=2030-01-03&groupBy=session')
  t.equal(bySession.status, 200, JSON.stringify(bySession.body))
  const items = bySession.body.items as (Usage & { sessionId: string, title: string | null, deleted: boolean })[]
  const byId = (a: { sessionId: string }, b: { sessionId: string }) => a.sessionId < b.sessionId ? -1 : 1
  t.same(items.map((i) => ({ sessionId: i.sessionId, title: i.title, deleted: i.deleted, ...figures(i) })), [
    { sessionId: a2.id, title: 'second, deleted later', deleted: true, ...figures({ ...a2Turn2, activeMs: HOUR }) },
    { sessionId: a1.id, title: 'first', deleted: false, ...figures(a1Final.usage) }
  ].sort(byId), 'one item per session (the deleted one kept, with its title); each equals the session\'s own usage')
  t.same(figures(bySession.body.totals), figures(plus(day1, day2)), 'the same totals either way')
  t.notOk(items.some((i) => i.sessionId === b1.id), 'bob\'s session is not in the user\'s usage')

  // from/to: whole UTC days, from inclusive, to exclusive
  const onlyDay2 = await call(app, 'GET', '/v1/usage?from=2030-01-02T05:00:00Z&groupBy=session')
  t.equal(onlyDay2.body.from, '2030-01-02T00:00:00.000Z', 'from widened to its UTC day')
  t.equal(onlyDay2.body.to, '2030-01-03T00:00:00.000Z', 'to: the end of today by default')
  t.same(figures(onlyDay2.body.totals), figures(day2))
  t.same(onlyDay2.body.items.map((i: { sessionId: string, activeMs: number, turns: number }) => [i.sessionId, i.turns, i.activeMs]),
    [[a2.id, 2, HOUR], [a1.id, 1, 3 * HOUR]].sort((a, b) => String(a[0]) < String(b[0]) ? -1 : 1), 'active time cut at the range\'s start')
  const onlyDay1 = await call(app, 'GET', '/v1/usage?from=2029-12-31T23:00:00%2B01:00&to=2030-01-02')
  t.same(onlyDay1.body.items.map((i: { day: string }) => i.day), ['2030-01-01'], 'to is exclusive; an offset is honoured')
  t.same(figures(onlyDay1.body.totals), figures(day1))
  const toInDay = await call(app, 'GET', '/v1/usage?from=2030-01-01&to=2030-01-01T10:00:00Z')
  t.equal(toInDay.body.to, '2030-01-02T00:00:00.000Z', 'to widened to the next midnight')
  const empty = await call(app, 'GET', '/v1/usage?from=2029-01-01&to=2029-02-01&groupBy=session')
  t.same(empty.body.items, [])
  t.same(figures(empty.body.totals), figures(ZERO), 'zeros when nothing was spent')

  const byDefault = await call(app, 'GET', '/v1/usage')
  t.equal(byDefault.body.to, '2030-01-03T00:00:00.000Z')
  t.equal(byDefault.body.from, '2029-12-04T00:00:00.000Z', 'the last 30 days, today included')
  t.same(figures(byDefault.body.totals), figures(plus(day1, day2)))

  // bob sees only his own, with his running stretch up to now
  const bobs = await call(app, 'GET', '/v1/usage?groupBy=day', undefined, bob)
  t.same(bobs.body.items.map((i: Usage & { day: string }) => ({ day: i.day, ...figures(i) })), [
    { day: '2030-01-01', ...figures({ ...b1Turn1, activeMs: 2 * HOUR }) },
    { day: '2030-01-02', ...figures({ ...ZERO, activeMs: 3 * HOUR }) }
  ], 'bob: his turn, and his session still active now')
  const bobSessions = await call(app, 'GET', '/v1/usage?groupBy=session', undefined, bob)
  t.same(bobSessions.body.items.map((i: { sessionId: string }) => i.sessionId), [b1.id])
  const b1Now = (await call<SessionView>(app, 'GET', `/v1/sessions/${b1.id}`, undefined, bob)).body
  t.equal(bobSessions.body.items[0].activeMs, b1Now.usage.activeMs, 'the running stretch as the session counts it')
})

t.test('a turn ended before midnight and one after land on their own days; a new conversation\'s cost counts anew', async (t) => {
  const clock = manualClock(new Date('2030-03-01T23:59:59.000Z'))
  const { app } = await build(t, { clock: clock.now, startWorker: false, env })
  const s = await createSession(app)
  sessionIds.push(s.id)
  const first = await turn(app, s.id, 'one')
  clock.advance(2000)
  const second = await turn(app, s.id, 'two')
  // a fresh conversation: the CLI's cumulative cost starts again from 0.001
  t.equal((await call(app, 'POST', `/v1/sessions/${s.id}/restart`, {})).status, 200)
  const third = await turn(app, s.id, 'three')
  const res = await call(app, 'GET', '/v1/usage?from=2030-03-01&to=2030-03-03')
  t.same(res.body.items.map((i: Usage & { day: string }) => [i.day, i.turns, Math.round(i.costUsd * 1e9) / 1e9]), [
    ['2030-03-01', 1, first.costUsd],
    ['2030-03-02', 2, Math.round((third.costUsd - first.costUsd) * 1e9) / 1e9]
  ])
  t.ok(third.costUsd > second.costUsd, 'the restarted conversation added its cost')
  t.equal(Math.round(res.body.totals.costUsd * 1e9), Math.round(third.costUsd * 1e9), 'the days add up to the session\'s cost')
})

t.test('bad ranges and parameters are 400 problems naming the field; no token is 401', async (t) => {
  const clock = manualClock(new Date('2030-01-01T12:00:00.000Z'))
  const { app } = await build(t, { clock: clock.now, startWorker: false, env: { MAX_EVENT_LOOP_DELAY_MS: '0' } })
  const cases: [string, string][] = [
    ['/v1/usage?from=2030-01-02&to=2030-01-01', 'querystring.to'],
    ['/v1/usage?from=2030-01-02T10:00:00Z&to=2030-01-02T10:00:00Z', 'querystring.to'],
    ['/v1/usage?from=2031-01-01', 'querystring.from'],
    ['/v1/usage?from=2020-01-01&to=2021-06-01', 'querystring.from'],
    ['/v1/usage?from=2018-12-31T12:00:00Z&to=2020-01-01T00:00:01Z', 'querystring.from'],
    ['/v1/usage?from=yesterday', 'querystring.from'],
    ['/v1/usage?from=2030-01-01T10:00:00', 'querystring.from'],
    ['/v1/usage?to=2030-02-30', 'querystring.to'],
    ['/v1/usage?to=2030-06-30T23:59:60Z', 'querystring.to'],
    ['/v1/usage?to=9999-12-31T12:00:00Z', 'querystring.to'],
    ['/v1/usage?groupBy=week', 'querystring.groupBy'],
    ['/v1/usage?limit=5', 'querystring.limit']
  ]
  for (const [url, field] of cases) {
    const res = await call(app, 'GET', url)
    t.equal(res.status, 400, url)
    t.equal(res.contentType, 'application/problem+json', url)
    t.equal(res.body.code, 'VALIDATION_FAILED', url)
    t.equal(res.body.errors?.[0]?.field, field, `${url}: ${JSON.stringify(res.body.errors)}`)
  }
  t.equal((await call(app, 'GET', '/v1/usage?from=2029-01-01&to=2030-01-01')).status, 200, '365 days are fine')
  t.equal((await call(app, 'GET', '/v1/usage?from=0001-01-01&to=0001-12-31')).status, 200, 'the first year')
  const anonymous = await call(app, 'GET', '/v1/usage', undefined, { authorization: '' })
  t.equal(anonymous.status, 401)
  t.equal(anonymous.body.code, 'UNAUTHORIZED')
})

t.test('migration 0003 backfills the daily usage from the sessions\' totals', async (t) => {
  // The database as the previous release left it: migrations up to 0002, sessions with usage
  const { earlier, db, execute, rows, migrateTo } = await migrationDatabase(t, '_usage_by_day')
  await migrateTo(earlier)
  const used = '00000000-0000-4000-8000-000000000001'
  const fresh = '00000000-0000-4000-8000-000000000002'
  const legacy = '00000000-0000-4000-8000-000000000003'
  const other = '00000000-0000-4000-8000-000000000004'
  await execute(sql`insert into sessions (id, owner, state, workdir, idle_timeout_seconds, ttl_seconds, expires_at, state_changed_at,
      created_at, updated_at, last_activity_at, deleted_at, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens, cost_usd, turns)
    values
      (${used}, 'alice', 'completed', '/w', 600, 86400, now(), now(), '2030-01-01T10:00:00Z', now(), '2030-01-05T23:30:00-02:00', now(), 100, 200, 30, 4, 0.25, 3),
      (${fresh}, 'alice', 'pending', '/w', 600, 86400, now(), now(), '2030-01-01T10:00:00Z', now(), null, null, 0, 0, 0, 0, 0, 0),
      (${legacy}, null, 'suspended', '/w', 600, 86400, now(), now(), '2030-01-03T10:00:00Z', now(), null, null, 7, 8, 0, 0, 0.01, 1),
      (${other}, 'bob', 'suspended', '/w', 600, 86400, now(), now(), '2030-01-03T10:00:00Z', now(), '2030-01-04T01:00:00Z', null, 1, 1, 1, 1, 1, 1)`)

  await migrateTo(MIGRATIONS_FOLDER)
  const daily = await rows(sql`select session_id::text as id, owner, day::text as day, input_tokens::int as input, output_tokens::int as output,
      cache_read_tokens::int as cache_read, cache_creation_tokens::int as cache_creation, cost_usd::float8 as cost, turns
    from session_usage_daily order by session_id`)
  t.same(daily, [
    { id: used, owner: 'alice', day: '2030-01-06', input: 100, output: 200, cache_read: 30, cache_creation: 4, cost: 0.25, turns: 3 },
    { id: legacy, owner: null, day: '2030-01-03', input: 7, output: 8, cache_read: 0, cache_creation: 0, cost: 0.01, turns: 1 },
    { id: other, owner: 'bob', day: '2030-01-04', input: 1, output: 1, cache_read: 1, cache_creation: 1, cost: 1, turns: 1 }
  ], 'each used session\'s totals on the UTC day of its last activity (else its creation); unused ones left out')

  // a legacy session given to alice later (UNOWNED_SESSIONS_OWNER) counts as hers
  await execute(sql`update sessions set owner = 'alice' where id = ${legacy}`)
  const usage = createUsageRepository(db as never)
  const report = await usage.bySession({ owner: 'alice', from: new Date('2030-01-01T00:00:00Z'), to: new Date('2030-02-01T00:00:00Z'), now: new Date('2030-01-10T00:00:00Z') })
  t.same(report.items.map((i) => [i.sessionId, i.deleted, i.turns]), [[used, true, 3], [legacy, false, 1]])
  t.same(report.totals, { inputTokens: 107, outputTokens: 208, cacheReadTokens: 30, cacheCreationTokens: 4, costUsd: 0.26, turns: 4, activeMs: 0 })
})
