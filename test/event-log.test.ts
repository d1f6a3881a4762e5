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
import t from 'tap'
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

t.test('the append statement tells the other instances what it stored (PostgreSQL)', async (t) => {
  if (!config.databaseUrl) {
    t.equal(app.doorbell.noticeFrom(), null, 'PGlite: nobody to tell')
    return
  }
  const from = app.doorbell.noticeFrom()
  t.ok(from, 'notices are signed with the instance id')
  const heard: StoredRun[] = []
  const listener = postgres(config.databaseUrl, { max: 1, onnotice: () => {} })
  t.teardown(() => listener.end({ timeout: 1 }))
  await listener.listen(EVENTS_CHANNEL, (payload) => {
    const notice = decodeEventNotice(payload)
    if (notice.from === from) heard.push(...notice.runs)
  })
  // what goes through the doorbell's ring after the drain (not the statement itself)
  const rung: StoredRun[] = []
  const ringEvents = app.doorbell.ringEvents.bind(app.doorbell)
  app.doorbell.ringEvents = (runs) => { rung.push(...runs); ringEvents(runs) }
  t.teardown(() => { app.doorbell.ringEvents = ringEvents })
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
  await waitUntil('the notices of both sessions', () => heard.some((r) => r.sessionId === big.id) && heard.some((r) => r.sessionId === small.id && r.last >= last),
    { timeoutMs: 5000, describe: () => JSON.stringify(heard.map((r) => [r.sessionId, r.first, r.last])) })
  const smallRuns = heard.filter((r) => r.sessionId === small.id && r.last >= first)
  t.same(smallRuns.map((r) => [r.first, r.last]), [[first, last]], 'the range it stored, in one notice')
  const page = await app.events.page(small.id, first - 1, 10)
  t.same(smallRuns[0]!.frames, page.map(frameText), 'its frames, byte for byte what is stored')
  const bigRuns = heard.filter((r) => r.sessionId === big.id && r.last >= bigSeq)
  t.same(bigRuns, [{ sessionId: big.id, first: bigSeq, last: bigSeq }], 'a run too big for a notice: its range only')
  t.same(rung.filter((r) => r.sessionId === small.id || r.sessionId === big.id), [], 'sent by the statement that stored them: no ring after it')
})
