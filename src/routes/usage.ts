import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { problems } from '../schemas/common.js'
import { USAGE_DEFAULT_RANGE_DAYS, USAGE_MAX_RANGE_DAYS, UsageQuery, UsageReport } from '../schemas/usage.js'
import { createUsageRepository } from '../sessions/usage-repository.js'

const DAY_MS = 86_400_000
// the widened range must stay where a Postgres timestamptz and a plain ISO string both reach
const EARLIEST = Date.parse('0001-01-01T00:00:00Z')
const LATEST = Date.parse('9999-12-31T00:00:00Z')

/** A query parameter that passed its schema but not the rules between parameters: the same 400. */
function invalid (field: 'from' | 'to', message: string): Error {
  return Object.assign(new Error(`querystring.${field} ${message}`), {
    statusCode: 400,
    validationContext: 'querystring',
    validation: [{ instancePath: `/${field}`, message, params: {} }]
  })
}

const parse = (value: string) => new Date(/^\d{4}-\d{2}-\d{2}$/.test(value) ? `${value}T00:00:00Z` : value)
const floorDay = (ms: number) => Math.floor(ms / DAY_MS) * DAY_MS
const ceilDay = (ms: number) => Math.ceil(ms / DAY_MS) * DAY_MS

/**
 * [from, to) as whole UTC days: the token figures are kept per day, so `from` goes back to its
 * day's start and `to` on to the next midnight (unless it is one). Default: the last
 * USAGE_DEFAULT_RANGE_DAYS days, today included.
 */
function usageRange (q: { from?: string | undefined, to?: string | undefined }, now: Date): { from: Date, to: Date } {
  const rawTo = q.to === undefined ? undefined : parse(q.to)
  const rawFrom = q.from === undefined ? undefined : parse(q.from)
  // a leap second (23:59:60) passes the format but is no instant
  if (rawFrom !== undefined && Number.isNaN(rawFrom.getTime())) throw invalid('from', 'must be a valid instant')
  if (rawTo !== undefined && Number.isNaN(rawTo.getTime())) throw invalid('to', 'must be a valid instant')
  const to = rawTo === undefined ? ceilDay(now.getTime() + 1) : ceilDay(rawTo.getTime())
  const from = rawFrom === undefined ? to - USAGE_DEFAULT_RANGE_DAYS * DAY_MS : floorDay(rawFrom.getTime())
  if (from < EARLIEST) throw invalid('from', 'must not be before 0001-01-01')
  if (to > LATEST) throw invalid('to', 'must not be after 9999-12-31')
  if (rawFrom !== undefined && rawTo !== undefined && rawTo.getTime() <= rawFrom.getTime()) {
    throw invalid('to', 'must be later than from')
  }
  // only a `from` after the default `to` gets here: a given `to` is after `from`, or was refused above
  if (to <= from) throw invalid('from', 'must be earlier than to (by default the end of today, UTC)')
  if (to - from > USAGE_MAX_RANGE_DAYS * DAY_MS) {
    throw invalid(rawFrom === undefined ? 'to' : 'from', `must make a range of at most ${USAGE_MAX_RANGE_DAYS} days (whole UTC days)`)
  }
  return { from: new Date(from), to: new Date(to) }
}

/** The user's own usage: tokens, cost, turns and active time over a range, by day or by session. */
const usageRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const usage = createUsageRepository(app.database.db)

  app.get('/usage', {
    schema: {
      tags: ['sessions'],
      operationId: 'getUsage',
      summary: 'What the user\'s sessions spent: tokens, cost, turns and active time, by day or by session',
      description: 'Sums over the user\'s own sessions, deleted ones included, in `[from, to)`, widened to whole ' +
        'UTC days (the response says which range was used); at most ' + String(USAGE_MAX_RANGE_DAYS) + ' days, the ' +
        'last ' + String(USAGE_DEFAULT_RANGE_DAYS) + ' (today included) by default. Tokens, cost and turns count ' +
        'on the UTC day the turn ended; active time is split at UTC midnights and cut at the range\'s ends. ' +
        '`totals` sums the whole range. `to` not after `from`, or a longer range, is a 400 naming the parameter.',
      querystring: UsageQuery,
      response: { 200: UsageReport, ...problems(400) }
    }
  }, async (request) => {
    const { groupBy = 'day' } = request.query
    const now = app.sessions.now()
    const range = usageRange(request.query, now)
    const q = { owner: request.user.userId, ...range, now }
    const result = groupBy === 'session' ? await usage.bySession(q) : await usage.byDay(q)
    return { from: range.from.toISOString(), to: range.to.toISOString(), groupBy, ...result }
  })
}

export default usageRoutes
