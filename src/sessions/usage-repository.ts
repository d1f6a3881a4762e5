import { sql, type SQL } from 'drizzle-orm'
import type { Database } from '../db/database.js'
import { prepareSql } from '../db/prepared-sql.js'

const p = sql.placeholder
const ts = (name: string) => sql`${p(name)}::timestamptz`
const utcDay = (name: string) => sql`(${ts(name)} at time zone 'UTC')::date`

/** What was spent: the same figures as a session's `usage`. */
export interface UsageTotals {
  inputTokens: number
  outputTokens: number
  cacheReadTokens: number
  cacheCreationTokens: number
  costUsd: number
  turns: number
  activeMs: number
}

export interface UsageQuery {
  owner: string
  /** inclusive; a UTC day boundary */
  from: Date
  /** exclusive; a UTC day boundary */
  to: Date
  /** the end of a stretch in `active` that is still running */
  now: Date
}

export interface DayUsage extends UsageTotals { day: string }
export interface SessionUsage extends UsageTotals { sessionId: string, title: string | null, deleted: boolean }

/**
 * One user's usage, as rows to sum: the token, cost and turn figures of their sessions' days in the
 * range (session_usage_daily, kept by the turn-usage statement), and their time in `active` cut at
 * the range's ends and at each UTC midnight, from the transition log: a stretch in `active` runs
 * from a transition into it to the next transition (or `now`), exactly what sessions.active_ms adds.
 *
 * The sessions whose stretches are read: the user's sessions that are not deleted and are active or
 * changed state after `from` (any stretch ends at the last transition, or runs still), found through
 * sessions_owner_list_idx; and the deleted ones with a turn in the range or on the day before (an
 * archived session has no owner index). A legacy session (owner null when its usage was written, given
 * to a user since) is matched through its session row.
 */
const FACTS = sql`
  my_days as (
    select d.session_id, d.day, d.input_tokens, d.output_tokens, d.cache_read_tokens, d.cache_creation_tokens,
      d.cost_usd, d.turns
    from session_usage_daily d
    join sessions s on s.id = d.session_id
    where (d.owner = ${p('owner')}::text or d.owner is null) and s.owner = ${p('owner')}::text
      and d.day >= ${utcDay('from')} and d.day < ${utcDay('to')}
  ), candidates as (
    select id from sessions
    where owner = ${p('owner')}::text and deleted_at is null and created_at < ${ts('to')}
      and (state = 'active' or state_changed_at >= ${ts('from')})
    union
    select d.session_id from session_usage_daily d
    join sessions s on s.id = d.session_id
    where (d.owner = ${p('owner')}::text or d.owner is null) and s.owner = ${p('owner')}::text
      and d.day >= ${utcDay('from')} - 1 and d.day < ${utcDay('to')}
  ), stretches as (
    select t.session_id, t.to_state, t.at as started,
      coalesce(lead(t.at) over (partition by t.session_id order by t.version), ${ts('now')}) as ended
    from session_transitions t
    where t.session_id in (select id from candidates)
  ), clipped as (
    select session_id,
      greatest(started, ${ts('from')}) at time zone 'UTC' as s,
      least(ended, ${ts('to')}) at time zone 'UTC' as e
    from stretches
    where to_state = 'active' and started < ${ts('to')} and ended > ${ts('from')}
  ), active_days as (
    select c.session_id, g.day::date as day,
      extract(epoch from (least(c.e, g.day + interval '1 day') - greatest(c.s, g.day))) * 1000 as ms
    from clipped c
    cross join lateral generate_series(date_trunc('day', c.s), c.e, interval '1 day') as g(day)
    where c.e > c.s
  ), facts as (
    select session_id, day, input_tokens, output_tokens, cache_read_tokens, cache_creation_tokens,
      cost_usd, turns, 0::numeric as active_ms
    from my_days
    union all
    select session_id, day, 0, 0, 0, 0, 0, 0, ms from active_days where ms > 0
  )`

const SUMS = sql`
  coalesce(sum(f.input_tokens), 0)::bigint as input_tokens,
  coalesce(sum(f.output_tokens), 0)::bigint as output_tokens,
  coalesce(sum(f.cache_read_tokens), 0)::bigint as cache_read_tokens,
  coalesce(sum(f.cache_creation_tokens), 0)::bigint as cache_creation_tokens,
  coalesce(sum(f.cost_usd), 0)::float8 as cost_usd,
  coalesce(sum(f.turns), 0)::bigint as turns,
  floor(coalesce(sum(f.active_ms), 0))::bigint as active_ms`

const totalsOf = (row: Record<string, unknown>): UsageTotals => ({
  inputTokens: Number(row.input_tokens),
  outputTokens: Number(row.output_tokens),
  cacheReadTokens: Number(row.cache_read_tokens),
  cacheCreationTokens: Number(row.cache_creation_tokens),
  costUsd: Number(row.cost_usd),
  turns: Number(row.turns),
  activeMs: Number(row.active_ms)
})

/** The grand total is the row of the empty grouping set (there is one even when nothing matched). */
function split<T> (rows: Record<string, unknown>[], item: (row: Record<string, unknown>) => T): { totals: UsageTotals, items: T[] } {
  const total = rows.find((r) => Number(r.total) === 1)
  if (!total) throw new Error('usage query returned no totals row')
  return { totals: totalsOf(total), items: rows.filter((r) => r !== total).map(item) }
}

export function createUsageRepository (db: Database) {
  const query = (name: string, body: SQL) => prepareSql(db, name, sql`with ${FACTS} ${body}`)

  // the items and their totals summed by one statement: GROUPING SETS adds the grand total row
  const byDayStmt = query('usage_by_day', sql`
    select f.day::text as day, ${SUMS}, grouping(f.day) as total
    from facts f
    group by grouping sets ((f.day), ())
    order by total, f.day`)

  const bySessionStmt = query('usage_by_session', sql`
    select f.session_id::text as session_id, s.title, s.deleted_at is not null as deleted, ${SUMS},
      grouping(f.session_id) as total
    from facts f
    join sessions s on s.id = f.session_id
    group by grouping sets ((f.session_id, s.title, s.deleted_at), ())
    order by total, max(f.day) desc, f.session_id`)

  const values = (q: UsageQuery) => ({ owner: q.owner, from: q.from.toISOString(), to: q.to.toISOString(), now: q.now.toISOString() })

  return {
    /** One item per UTC day with usage, oldest first, and the totals. */
    async byDay (q: UsageQuery): Promise<{ totals: UsageTotals, items: DayUsage[] }> {
      return split(await byDayStmt.execute(values(q)), (row) => ({ day: String(row.day), ...totalsOf(row) }))
    },

    /** One item per session with usage, the most recently used first, and the totals. */
    async bySession (q: UsageQuery): Promise<{ totals: UsageTotals, items: SessionUsage[] }> {
      return split(await bySessionStmt.execute(values(q)), (row) => ({
        sessionId: String(row.session_id),
        title: row.title === null || row.title === undefined ? null : String(row.title),
        deleted: row.deleted === true,
        ...totalsOf(row)
      }))
    }
  }
}
