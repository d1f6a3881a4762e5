/**
 * The event log's group commit, on either database: many sessions in one drain, each getting its
 * own gapless sequence in append order; payload text stored and replayed byte for byte (the batch
 * travels as delimited text, so separators inside payloads are the thing to get wrong); a session
 * that does not exist rejects only its own events. On PostgreSQL the append statement also tells
 * the other instances what it stored, small runs' frames included, byte for byte what GET /events
 * gives.
 */
import { randomUUID } from 'node:crypto'
import postgres from 'postgres'
import t, { type Test } from 'tap'
import { decodeEventNotice, EVENTS_CHANNEL, type StoredRun } from '../src/cluster/event-notice.js'
import { frameText } from '../src/events/event-log.js'
import { createSession } from './helpers/api.js'
import { build } from './helpers/build.js'
import { waitUntil } from './helpers/agents.js'

const { app, config } = await build(t, { startWorker: false })

t.test('one drain, many sessions: each gets 1..n in append order', async (t) => {
  const ids = await Promise.all(Array.from({ length: 12 }, async () => (await createSession(app)).id))
  const appended: Promise<number>[][] = ids.map(() => [])
  // interleaved in one tick, so they share drains; 1,500 in all crosses the per-statement chunking
  for (let i = 0; i < 125; i++) {
    ids.forEach((id, k) => appended[k]!.push(app.events.append(id, 'status', { i, k })))
  }
  const seqs = await Promise.all(appended.map((ps) => Promise.all(ps)))
  for (const [k, id] of ids.entries()) {
    t.same(seqs[k], Array.from({ length: 125 }, (_, i) => i + 1), `session ${k}: seqs 1..125 in append order`)
    const page = await app.events.page(id, 0, 1000)
    t.same(page.map((e) => JSON.parse(e.json).i), Array.from({ length: 125 }, (_, i) => i), `session ${k}: stored in order`)
    t.ok(page.every((e) => JSON.parse(e.json).k === k), `session ${k}: only its own events`)
  }
})

t.test('payload text is stored exactly, whatever characters it holds', async (t) => {
  const { id } = await createSession(app)
  const texts = [
    '{"type":"assistant","text":"a,b,c"}',
    '{ "spaced" :  [1 , 2] ,"order":"kept" }',
    '{"quote":"\\"","backslash":"\\\\","tab":"\\t","escaped newline":"\\n","cr":"\\r"}',
    '{"unicode":"héllo ✓ 🚀 \u2028 \u2029"}',
    '{"raw cr between tokens":1,\r"after":2}',
    '{"nul escape":"\\ufffd"}',
    '[]',
    '"just a string, with a comma"'
  ]
  const seqs = await Promise.all(texts.map((text) => app.events.appendJson(id, 'agent', text)))
  t.same(seqs, texts.map((_, i) => i + 1))
  const page = await app.events.page(id, 0, 100)
  t.same(page.map((e) => e.json), texts, 'replayed byte for byte')
})

t.test('JSON spread over lines is stored on one line, as one event, its values untouched', async (t) => {
  const { id } = await createSession(app)
  // numbers JSON.parse would round or rewrite, and a duplicate key it would drop
  const text = '{\n  "big": 12345678901234567890123,\n  "float": 1.0,\n  "n": [1,\n 2],\n  "k": 1, "k": 2\n}'
  const seq = await app.events.appendJson(id, 'agent', text)
  const next = await app.events.appendJson(id, 'agent', '{"after":true}')
  t.equal(next, seq + 1, 'took one sequence number')
  const page = await app.events.page(id, 0, 10)
  t.equal(page[0]!.json, text.replaceAll('\n', ' '), 'only the newlines changed')
  t.same(JSON.parse(page[1]!.json), { after: true })
})

t.test('a session that does not exist rejects its own events only', async (t) => {
  const { id } = await createSession(app)
  const ghost = randomUUID()
  const results = await Promise.allSettled([
    app.events.append(id, 'status', { n: 1 }),
    app.events.append(ghost, 'status', { n: 1 }),
    app.events.append(id, 'status', { n: 2 }),
    app.events.append(ghost, 'status', { n: 2 })
  ])
  t.same(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled', 'rejected'])
  t.match((results[1] as PromiseRejectedResult).reason, { message: /does not exist/ })
  const page = await app.events.page(id, 0, 10)
  t.same(page.map((e) => [e.seq, JSON.parse(e.json).n]), [[1, 1], [2, 2]])
  t.same(await app.events.page(ghost, 0, 10), [], 'nothing stored for it')
})

/**
 * What this app's event log announces (PostgreSQL): each notice signed by it, as a whole, and
 * the runs rung after the drain through the doorbell rather than by the statement.
 */
async function announcements (t: Test) {
  const from = app.doorbell.noticeFrom()!
  const notices: StoredRun[][] = []
  const listener = postgres(config.databaseUrl!, { max: 1, onnotice: () => {} })
  t.teardown(() => listener.end({ timeout: 1 }))
  await listener.listen(EVENTS_CHANNEL, (payload) => {
    const notice = decodeEventNotice(payload)
    if (notice.from === from) notices.push(notice.runs)
  })
  const rung: StoredRun[] = []
  const ringEvents = app.doorbell.ringEvents.bind(app.doorbell)
  app.doorbell.ringEvents = (runs) => { rung.push(...runs); ringEvents(runs) }
  t.teardown(() => { app.doorbell.ringEvents = ringEvents })
  const runsOf = (id: string) => notices.flat().filter((r) => r.sessionId === id)
  return { from, notices, rung, runsOf }
}

t.test('the append statement tells the other instances what it stored (PostgreSQL)', async (t) => {
  if (!config.databaseUrl) {
    t.equal(app.doorbell.noticeFrom(), null, 'PGlite: nobody to tell')
    return
  }
  const heard = await announcements(t)
  t.ok(heard.from, 'notices are signed with the instance id')
  const small = await createSession(app)
  const big = await createSession(app)
  const texts = ['{"a":"x,y\\n"}', '{"raw cr":1,\r"u":"é ✓ \u2028"}', '"a string"']
  const bigText = JSON.stringify({ text: 'z'.repeat(9000) })
  // one drain: both sessions in one statement
  const seqs = await Promise.all([
    ...texts.map((text) => app.events.appendJson(small.id, 'agent', text)),
    app.events.appendJson(big.id, 'agent', bigText)
  ])
  const first = seqs[0]!
  const last = seqs.at(-2)!
  const bigSeq = seqs.at(-1)!
  await waitUntil('the notices of both sessions', () => heard.runsOf(big.id).length > 0 && heard.runsOf(small.id).some((r) => r.last >= last),
    { timeoutMs: 5000, describe: () => JSON.stringify(heard.notices) })
  const smallRuns = heard.runsOf(small.id).filter((r) => r.last >= first)
  t.same(smallRuns.map((r) => [r.first, r.last]), [[first, last]], 'the range it stored, in one notice')
  const page = await app.events.page(small.id, first - 1, 10)
  t.same(smallRuns[0]!.frames, page.map(frameText), 'its frames, byte for byte what is stored')
  t.same(heard.runsOf(big.id).filter((r) => r.last >= bigSeq), [{ sessionId: big.id, first: bigSeq, last: bigSeq }], 'a run too big for a notice: its range only')
  t.same(heard.rung.filter((r) => r.sessionId === small.id || r.sessionId === big.id), [], 'sent by the statement that stored them: no ring after it')
})

t.test('a statement whose runs need several notices sends them all; a fenced run is in none (PostgreSQL)', async (t) => {
  if (!config.databaseUrl) {
    t.equal(app.doorbell.noticeFrom(), null, 'PGlite: nobody to tell')
    return
  }
  const heard = await announcements(t)
  const ids = await Promise.all(Array.from({ length: 12 }, async () => (await createSession(app)).id))
  const fenced = (await createSession(app)).id
  const line = (i: number) => JSON.stringify({ text: `${i} ${'w'.repeat(1000)}` })
  const before = heard.notices.length
  // one drain: 12 sessions × 2 lines of 1 KB (over 24 KB of frames), and an agent's line that
  // does not own its session
  const results = await Promise.allSettled([
    ...ids.flatMap((id) => [app.events.appendJson(id, 'agent', line(1)), app.events.appendJson(id, 'agent', line(2))]),
    app.events.appendJson(fenced, 'agent', line(0), { worker: randomUUID(), epoch: 1 })
  ])
  t.same(results.map((r) => r.status), [...ids.flatMap(() => ['fulfilled', 'fulfilled']), 'rejected'], 'the fenced line alone is refused')
  await waitUntil('a notice for every session', () => ids.every((id) => heard.runsOf(id).length > 0),
    { timeoutMs: 5000, describe: () => `${heard.notices.length - before} notices` })
  t.ok(heard.notices.length - before >= 4, `the runs came in ${heard.notices.length - before} notices (each under 8,000 bytes)`)
  for (const id of ids) {
    const stored = await app.events.page(id, 0, 10)
    t.same(heard.runsOf(id), [{ sessionId: id, first: stored[0]!.seq, last: stored.at(-1)!.seq, frames: stored.map(frameText) }], 'each session once, with its frames')
  }
  t.same(heard.runsOf(fenced), [], 'nothing of the fenced run')
  t.same(heard.rung.filter((r) => ids.includes(r.sessionId)), [], 'no ring after the statement')
})

t.test('without a notice from the statement, the events are rung after it (PostgreSQL)', async (t) => {
  if (!config.databaseUrl) {
    t.equal(app.doorbell.noticeFrom(), null, 'PGlite: nobody to tell')
    return
  }
  const heard = await announcements(t)
  const noticeFrom = app.doorbell.noticeFrom.bind(app.doorbell)
  t.teardown(() => { app.doorbell.noticeFrom = noticeFrom })
  for (const [why, signature] of [
    ['the lease lost (no id to sign with)', null],
    // a signature far over the limit makes pg_notify refuse the payload, as a full queue would
    ['the notice refused by the database', 'x'.repeat(8000)]
  ] as const) {
    app.doorbell.noticeFrom = () => signature
    const { id } = await createSession(app)
    const seqs = await Promise.all([app.events.appendJson(id, 'agent', '{"n":1}'), app.events.appendJson(id, 'agent', '{"n":2}')])
    const stored = await app.events.page(id, 0, 10)
    t.same(stored.map((e) => e.seq), seqs, `${why}: stored all the same`)
    t.same(heard.rung.filter((r) => r.sessionId === id), [{ sessionId: id, first: seqs[0]!, last: seqs[1]!, frames: stored.map(frameText) }],
      `${why}: rung after the drain, frames included`)
  }
})
