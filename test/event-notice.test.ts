// Database-independent: opens no database, so CI runs it once, in the PGlite pass (.ci/run).
/**
 * The text of an event notice (src/cluster/event-notice.ts): what goes in comes out, frames
 * included; no notice reaches PostgreSQL's 8000-byte limit; a run whose frames do not fit, or do
 * not cover every seq, travels as its range alone; merging keeps frames only while runs follow
 * each other and still fit.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { decodeEventNotice, encodeEventNotices, mergeRuns, NOTICE_MAX_BYTES, RUN_FRAMES_MAX_BYTES, type StoredRun } from '../src/cluster/event-notice.js'

const from = randomUUID()
const frame = (seq: number, text = 'x') => JSON.stringify({ seq, type: 'agent', at: new Date(0).toISOString(), data: { text } })
const framesOf = (first: number, last: number, text = 'x') => Array.from({ length: last - first + 1 }, (_, i) => frame(first + i, text))

t.test('what goes in comes out: ranges, and frames where they fit', async (t) => {
  const runs: StoredRun[] = [
    { sessionId: randomUUID(), first: 1, last: 3, frames: framesOf(1, 3, 'naïve ☃ "quoted" \\ back;slash') },
    { sessionId: randomUUID(), first: 7, last: 7 },
    { sessionId: randomUUID(), first: 10, last: 11, frames: framesOf(10, 11) }
  ]
  const notices = encodeEventNotices(from, runs)
  t.equal(notices.length, 1, 'one notice')
  t.notMatch(notices[0]!, /\{"seq":/, 'frames travel without their seq (it follows from the range)')
  t.same(decodeEventNotice(notices[0]!), { from, runs })
})

t.test('a frame that does not start with its own seq does not travel', async (t) => {
  const sessionId = randomUUID()
  const [text] = encodeEventNotices(from, [{ sessionId, first: 5, last: 5, frames: [frame(6)] }])
  t.same(decodeEventNotice(text!).runs, [{ sessionId, first: 5, last: 5 }])
})

t.test('many runs are spread over notices, none of them at the limit', async (t) => {
  const runs: StoredRun[] = Array.from({ length: 300 }, (_, i) => ({ sessionId: randomUUID(), first: i + 1, last: i + 2, frames: framesOf(i + 1, i + 2, 'é'.repeat(200)) }))
  const notices = encodeEventNotices(from, runs)
  t.ok(notices.length > 1, `${notices.length} notices`)
  for (const n of notices) t.ok(Buffer.byteLength(n) <= NOTICE_MAX_BYTES, `${Buffer.byteLength(n)} bytes`)
  const decoded = notices.map(decodeEventNotice)
  t.ok(decoded.every((d) => d.from === from), 'each names the sender')
  t.same(decoded.flatMap((d) => d.runs), runs, 'every run, in order, frames included')
})

t.test('a run whose frames are too big, or do not cover every seq, travels as its range', async (t) => {
  const big: StoredRun = { sessionId: randomUUID(), first: 1, last: 2, frames: framesOf(1, 2, 'y'.repeat(RUN_FRAMES_MAX_BYTES)) }
  const holed: StoredRun = { sessionId: randomUUID(), first: 1, last: 3, frames: framesOf(1, 2) }
  const notices = encodeEventNotices(from, [big, holed])
  t.equal(notices.length, 1)
  t.ok(Buffer.byteLength(notices[0]!) < 200, 'no frame in it')
  t.same(decodeEventNotice(notices[0]!).runs, [
    { sessionId: big.sessionId, first: 1, last: 2 },
    { sessionId: holed.sessionId, first: 1, last: 3 }
  ])
})

t.test('a notice cut short or damaged: a run whose frames did not all arrive is read', async (t) => {
  const sid = randomUUID()
  const [text] = encodeEventNotices(from, [{ sessionId: sid, first: 4, last: 6, frames: framesOf(4, 6) }])
  const lines = text!.split('\n')
  t.same(decodeEventNotice(lines.slice(0, -1).join('\n')).runs, [{ sessionId: sid, first: 4, last: 6 }], 'a frame missing')
  t.same(decodeEventNotice(`${from}\nnot a range\n${frame(1)}`).runs, [], 'a frame under no range is dropped')
  t.same(decodeEventNotice(''), { from: '', runs: [] })
})

t.test('merging: frames stay while the runs follow each other and fit', async (t) => {
  const sessionId = randomUUID()
  const a: StoredRun = { sessionId, first: 1, last: 2, frames: framesOf(1, 2) }
  t.same(mergeRuns(a, { sessionId, first: 3, last: 4, frames: framesOf(3, 4) }), { sessionId, first: 1, last: 4, frames: framesOf(1, 4) })
  t.same(mergeRuns(a, { sessionId, first: 4, last: 4, frames: framesOf(4, 4) }), { sessionId, first: 1, last: 4 }, 'a seq between them stored elsewhere')
  t.same(mergeRuns(a, { sessionId, first: 3, last: 3 }), { sessionId, first: 1, last: 3 }, 'the later run without frames')
  const large = framesOf(3, 3, 'z'.repeat(RUN_FRAMES_MAX_BYTES - 200))
  t.same(mergeRuns(a, { sessionId, first: 3, last: 3, frames: large }), { sessionId, first: 1, last: 3 }, 'together too big')
})

t.test('the previous release\'s notices (ranges after semicolons) are read too, during a rolling upgrade', async (t) => {
  const [a, b] = [randomUUID(), randomUUID()]
  t.same(decodeEventNotice(`${from};${a}:3-5;${b}:1-1`), { from, runs: [{ sessionId: a, first: 3, last: 5 }, { sessionId: b, first: 1, last: 1 }] })
  const frameWithSemicolon = { sessionId: a, first: 1, last: 1, frames: [frame(1, 'x;y')] }
  t.same(decodeEventNotice(encodeEventNotices(from, [frameWithSemicolon])[0]!).runs, [frameWithSemicolon], 'a frame holding a semicolon is not taken for one')
})
