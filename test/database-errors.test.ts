// Database-independent: opens no database, so CI runs it once, in the PGlite pass (.ci/run).
import t from 'tap'
import { isDatabaseUnavailable } from '../src/db/database-errors.js'

t.test('errors that mean the database cannot be reached', async (t) => {
  const wrapped = (code: string) => Object.assign(new Error('Failed query: select 1'), { cause: Object.assign(new Error('x'), { code }) })
  for (const code of ['ECONNREFUSED', 'CONNECTION_ENDED', 'CONNECT_TIMEOUT', '57P01', '57P03', '08006', '08001', 'DATABASE_UNAVAILABLE']) {
    t.ok(isDatabaseUnavailable(wrapped(code)), `${code}, as drizzle wraps it`)
    t.ok(isDatabaseUnavailable(Object.assign(new Error('x'), { code })), `${code}, bare`)
  }
})

t.test('errors of a statement that ran', async (t) => {
  for (const code of ['23505', '40P01', '22P02', '42703', 'FST_ERR_VALIDATION', '0800', '080000']) {
    t.notOk(isDatabaseUnavailable(Object.assign(new Error('x'), { cause: { code } })), code)
  }
  t.notOk(isDatabaseUnavailable(new Error('no code')))
  t.notOk(isDatabaseUnavailable(null))
  t.notOk(isDatabaseUnavailable('a string'))
})
