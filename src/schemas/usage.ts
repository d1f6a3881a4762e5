import { Type } from 'typebox'
import { DateTime, Nullable, Uuid } from './common.js'

/** The longest range one request may cover, in days (after widening to whole UTC days). */
export const USAGE_MAX_RANGE_DAYS = 366
/** The range when the request names none: this many UTC days, today included. */
export const USAGE_DEFAULT_RANGE_DAYS = 30

const Instant = (what: string) => Type.Union([
  Type.String({ format: 'date' }),
  Type.String({ format: 'date-time' })
], { description: `${what}. An ISO 8601 date (\`2030-01-31\`, a UTC day) or date-time with its offset (\`2030-01-31T08:00:00Z\`). Widened to a whole UTC day` })

export const UsageQuery = Type.Object({
  from: Type.Optional(Instant(`Start of the range, inclusive; default: ${USAGE_DEFAULT_RANGE_DAYS} days before \`to\``)),
  to: Type.Optional(Instant('End of the range, exclusive; default: the end of today (UTC)')),
  groupBy: Type.Optional(Type.Enum(['day', 'session'], { default: 'day', description: 'One item per UTC day, or per session' }))
}, { additionalProperties: false })

const FIGURES = {
  inputTokens: Type.Integer({ minimum: 0 }),
  outputTokens: Type.Integer({ minimum: 0 }),
  cacheReadTokens: Type.Integer({ minimum: 0 }),
  cacheCreationTokens: Type.Integer({ minimum: 0 }),
  costUsd: Type.Number({ minimum: 0, description: 'The CLI\'s reported cost (`total_cost_usd`), counted once per conversation' }),
  turns: Type.Integer({ minimum: 0, description: 'Turns that ended with a result' }),
  activeMs: Type.Integer({ minimum: 0, description: 'Wall time the sessions spent in `active` within the range (and the item\'s day), the running stretch up to now included' })
}

const DayUsage = Type.Object({
  day: Type.String({ format: 'date', description: 'A UTC day' }),
  ...FIGURES
})

const SessionUsage = Type.Object({
  sessionId: Uuid,
  title: Nullable(Type.String()),
  deleted: Type.Boolean({ description: 'The session was deleted: its usage still counts' }),
  ...FIGURES
})

export const UsageReport = Type.Object({
  from: DateTime,
  to: DateTime,
  groupBy: Type.Enum(['day', 'session']),
  totals: Type.Object(FIGURES, { description: 'The sums over the whole range' }),
  items: Type.Union([Type.Array(DayUsage), Type.Array(SessionUsage)], {
    description: '`groupBy=day`: one item per UTC day with usage, oldest first. `groupBy=session`: one item per ' +
      'session with usage in the range, the most recently used first. Days and sessions without usage are left out'
  })
})
