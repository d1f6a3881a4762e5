// Database-independent: opens no database, so CI runs it once, in the PGlite pass (.ci/run).
/**
 * PGlite on its worker thread (src/db/pglite-thread.ts): what drizzle relies on (results, errors
 * with their SQLSTATE, transactions that commit or roll back), the statement cache (past its size
 * too), and the reason it exists: the event loop keeps running while a statement does.
 */
import t from 'tap'
import { PGliteThread } from '../src/db/pglite-thread.js'

const db = await PGliteThread.open('memory://')
t.teardown(() => db.close())

t.test('results: rows, fields, affected rows, parameters by type, array mode', async (t) => {
  const r = await db.query('select $1::int + 1 as n, $2::json as j, $3::boolean as b, $4::text as s, null::text as z', [41, { a: [1] }, true, 'x,y'])
  t.same(r.rows, [{ n: 42, j: { a: [1] }, b: true, s: 'x,y', z: null }])
  t.same(r.fields.map((f) => f.name), ['n', 'j', 'b', 's', 'z'])
  const arrays = await db.query('select 1 as a, 2 as b', [], { rowMode: 'array' })
  t.same(arrays.rows, [[1, 2]])
  await db.query('create table affected (n int)')
  t.equal((await db.query('insert into affected select generate_series(1, 3)')).affectedRows, 3)
})

t.test('types drizzle reads as text stay text', async (t) => {
  const at = '2026-01-02 03:04:05.678+00'
  const parsed = await db.query('select $1::timestamptz as t', [at])
  t.type(parsed.rows[0]!.t, Date, 'parsed by default')
  const raw = await db.query('select $1::timestamptz as t', [at], { parsers: { 1184: (v) => v } })
  t.equal(raw.rows[0]!.t, at, 'kept as text when asked')
})

t.test('errors keep their SQLSTATE and the connection stays usable', async (t) => {
  await t.rejects(db.query('select nope'), { code: '42703', message: /nope/ })
  await t.rejects(db.query('select $1::uuid', ['not-a-uuid']), { code: '22P02' })
  await t.rejects(db.query('select $1::uuid', ['not-a-uuid']), { code: '22P02' }, 'the same prepared statement fails the same way')
  t.same((await db.query('select $1::uuid as u', ['6f1c3a52-0000-4000-8000-000000000001'])).rows, [{ u: '6f1c3a52-0000-4000-8000-000000000001' }])
})

t.test('transactions commit, roll back on a throw, and roll back on a failed statement', async (t) => {
  await db.query('create table tx (n int primary key)')
  t.equal(await db.transaction(async (tx) => {
    await tx.query('insert into tx values ($1)', [1])
    await tx.query('insert into tx values ($1)', [2])
    return 'done'
  }), 'done')
  await t.rejects(db.transaction(async (tx) => {
    await tx.query('insert into tx values ($1)', [3])
    throw new Error('changed my mind')
  }), { message: 'changed my mind' })
  await t.rejects(db.transaction(async (tx) => {
    await tx.query('insert into tx values ($1)', [4])
    await tx.query('insert into tx values ($1)', [1])
  }), { code: '23505' })
  t.same((await db.query('select n from tx order by n')).rows, [{ n: 1 }, { n: 2 }])
})

t.test('a statement outside a transaction waits for it to end', async (t) => {
  await db.query('create table waits (n int)')
  let release!: () => void
  const held = new Promise<void>((resolve) => { release = resolve })
  const tx = db.transaction(async (tx) => {
    await tx.query('insert into waits values (1)')
    await held
    await tx.query('insert into waits values (2)')
  })
  // queued behind the open transaction: it must see both rows or neither, never one
  const count = db.query('select count(*)::int as n from waits')
  release()
  await tx
  t.same((await count).rows, [{ n: 2 }])
})

t.test('more distinct statements than the cache holds', async (t) => {
  for (let i = 0; i < 300; i++) {
    const r = await db.query(`select ${i} + $1::int as n`, [1])
    if (r.rows[0]!.n !== i + 1) t.fail(`statement ${i}`)
  }
  t.same((await db.query('select 0 + $1::int as n', [1])).rows, [{ n: 1 }], 'an evicted statement is prepared again')
})

t.test('the event loop runs while a statement does', async (t) => {
  let ticks = 0
  const timer = setInterval(() => { ticks++ }, 10)
  try {
    await db.query('select pg_sleep(0.6)')
  } finally {
    clearInterval(timer)
  }
  // on the main thread, PGlite would have held the loop for the whole statement: no tick during
  // it, and at most one (the missed ones coalesced) once it is over. A free loop gets ~60; a
  // machine loaded by other work delays timers, hence a bound far from both
  t.ok(ticks >= 3, `timers fired during the statement (${ticks})`)
})

t.test('a cached statement survives a schema change and a DEALLOCATE', async (t) => {
  await db.query('create table evolving (a int)')
  await db.query('insert into evolving values (1)')
  t.same((await db.query('select * from evolving')).rows, [{ a: 1 }])
  await db.query('alter table evolving add column b text default $$x$$')
  t.same((await db.query('select * from evolving')).rows, [{ a: 1, b: 'x' }], 'prepared again for the new result type')
  await db.query('deallocate all')
  t.same((await db.query('select * from evolving')).rows, [{ a: 1, b: 'x' }], 'prepared again after DEALLOCATE')
})

t.test('a parameter that cannot cross threads is refused, and nothing is left waiting', async (t) => {
  await t.rejects(db.query('select $1::text', [() => 1]))
  t.same((await db.query('select 1 as ok')).rows, [{ ok: 1 }])
})

t.test('close: what was asked before finishes, what comes after is refused as unavailable', async (t) => {
  const other = await PGliteThread.open('memory://')
  await other.query('create table t (n int)')
  let release!: () => void
  const held = new Promise<void>((resolve) => { release = resolve })
  const tx = other.transaction(async (tx) => {
    await tx.query('insert into t values (1)')
    await held
    await tx.query('insert into t values (2)')
    return (await tx.query('select count(*)::int as n from t')).rows
  })
  const before = other.query('select pg_sleep(0.05), 1 as n')
  const closing = other.close()
  await t.rejects(other.query('select 1'), { code: 'DATABASE_UNAVAILABLE' }, 'new work is refused at once')
  release()
  t.same(await tx, [{ n: 2 }], 'the open transaction finished')
  t.same((await before).rows.map((r) => r.n), [1], 'the statement asked before close ran')
  await closing
  t.ok(other.closed)
  await t.rejects(other.query('select 1'), { code: 'DATABASE_UNAVAILABLE', message: /closed/ })
  await other.close()
})

t.test('a data directory that cannot be opened fails open()', async (t) => {
  await t.rejects(PGliteThread.open('/proc/version/not-a-directory'))
})
