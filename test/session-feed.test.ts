// Database-independent: opens no database, so CI runs it once, in the PGlite pass (.ci/run).
/**
 * The session feed on its own (src/events/session-feed.ts), over an in-memory table whose reads the
 * test releases one at a time: every subscriber gets every seq once and in order, whichever
 * instance stored it; a gap is read before what follows it; the sessions that fall behind while a
 * read is on its way are read together in the next statement, one read at a time; a failed read is
 * tried again with the next notice; frames that come with a notice go out without a read when they
 * follow the cursor.
 */
import { Writable } from 'node:stream'
import pino from 'pino'
import t from 'tap'
import type { StoredRun } from '../src/cluster/event-notice.js'
import type { PublishedFrame } from '../src/events/event-bus.js'
import { frameText, type StoredEvent } from '../src/events/event-log.js'
import { SessionFeed } from '../src/events/session-feed.js'

interface Read { sessions: { sessionId: string, after: number }[], release: () => void, fail: (err: Error) => void }

/** The events table, and the reads made on it, each held until the test releases it. */
class Table {
  readonly rows = new Map<string, StoredEvent[]>()
  readonly reads: Read[] = []
  /** the feed's log lines */
  readonly logged: { msg: string }[] = []
  #waiters: (() => void)[] = []

  /** Stores `count` events of `sessionId` (as another instance would); their last seq. */
  store (sessionId: string, count = 1): number {
    const rows = this.rows.get(sessionId) ?? []
    this.rows.set(sessionId, rows)
    for (let i = 0; i < count; i++) {
      const seq = rows.length + 1
      rows.push({ seq, type: 'agent', at: new Date(0), json: JSON.stringify({ n: seq }) })
    }
    return rows.length
  }

  frame (sessionId: string, seq: number): PublishedFrame {
    const e = this.rows.get(sessionId)![seq - 1]!
    return { seq, bytes: Buffer.from(frameText(e)) }
  }

  /** The next read not yet released (waits for it to be made). */
  async nextRead (): Promise<Read> {
    for (;;) {
      const pending = this.reads.find((r) => !('done' in r))
      if (pending) return pending
      await new Promise<void>((resolve) => this.#waiters.push(resolve))
    }
  }

  /** Releases reads until none is pending and none is made on the next turn of the event loop. */
  async settle (): Promise<void> {
    for (;;) {
      await new Promise((resolve) => setImmediate(resolve))
      const pending = this.reads.find((r) => !('done' in r))
      if (!pending) return
      pending.release()
    }
  }

  readonly feed = new SessionFeed({
    read: async (sessionId, after, limit) => (await this.#read([{ sessionId, after }], limit)).get(sessionId) ?? [],
    readMany: (from, limit) => this.#read(from, limit),
    lastSeqs: async (ids) => new Map(ids.flatMap((id) => {
      const n = this.rows.get(id)?.length ?? 0
      return n > 0 ? [[id, n] as [string, number]] : []
    })),
    logger: pino({ level: 'warn' }, new Writable({
      write: (chunk: Buffer, _enc, done) => {
        this.logged.push(JSON.parse(chunk.toString()))
        done()
      }
    }))
  })

  #read (sessions: { sessionId: string, after: number }[], limit: number): Promise<Map<string, StoredEvent[]>> {
    // the table as it is when the statement starts (its snapshot), handed over when released
    const snapshot = new Map(sessions.map(({ sessionId, after }) =>
      [sessionId, (this.rows.get(sessionId) ?? []).filter((e) => e.seq > after).slice(0, limit)]))
    return new Promise((resolve, reject) => {
      const read: Read = {
        sessions,
        release: () => {
          Object.assign(read, { done: true })
          resolve(snapshot)
        },
        fail: (err) => {
          Object.assign(read, { done: true })
          reject(err)
        }
      }
      this.reads.push(read)
      for (const wake of this.#waiters.splice(0)) wake()
    })
  }
}

/** A subscriber that keeps the seqs it got, after waiting for the feed to be ready. */
async function watch (table: Table, sessionId: string): Promise<number[]> {
  const got: number[] = []
  table.feed.subscribe(sessionId, (f) => {
    const parsed = JSON.parse(f.bytes.toString()) as { seq: number, data: { n: number } }
    if (parsed.seq !== f.seq || parsed.data.n !== f.seq) throw new Error(`frame ${f.seq} carries ${f.bytes.toString()}`)
    got.push(f.seq)
  })
  const ready = table.feed.ready(sessionId)
  await table.settle()
  await ready
  return got
}

/** A notice that names what another instance stored up to `last`, without its frames. */
const range = (sessionId: string, last: number): StoredRun => ({ sessionId, first: last, last })

const upTo = (n: number, from = 1) => Array.from({ length: n - from + 1 }, (_, i) => from + i)

t.test('this instance\'s own events go out at once, in order, with no read', async (t) => {
  const table = new Table()
  const got = await watch(table, 's')
  const readsBefore = table.reads.length
  for (let i = 0; i < 5; i++) table.feed.publish('s', table.frame('s', table.store('s')))
  t.same(got, upTo(5))
  t.equal(table.reads.length, readsBefore, 'nothing read')
  table.feed.publish('s', table.frame('s', 3))
  t.same(got, upTo(5), 'a frame already passed on is not passed on again')
})

t.test('another instance\'s events are read when it rings, every seq once and in order', async (t) => {
  const table = new Table()
  const got = await watch(table, 's')
  const last = table.store('s', 3)
  table.feed.storedMany([range('s', last)])
  await table.settle()
  t.same(got, upTo(3))
  table.feed.storedMany([range('s', last)])
  await table.settle()
  t.same(got, upTo(3), 'a notice for what was already read reads nothing more')
  t.same(table.feed.watchedIds(), ['s'])
})

t.test('a frame of this instance that would skip a seq waits for the gap to be read', async (t) => {
  const table = new Table()
  const got = await watch(table, 's')
  table.store('s') // 1, stored elsewhere, its notice not here yet
  const mine = table.store('s') // 2, stored here
  table.feed.publish('s', table.frame('s', mine))
  t.same(got, [], 'not passed on ahead of seq 1')
  await table.settle()
  t.same(got, [1, 2], 'the gap is read first, then seq 2 once')
})

t.test('the sessions that fall behind while a read is on its way are read together in the next statement', async (t) => {
  const table = new Table()
  const a = await watch(table, 'a')
  const b = await watch(table, 'b')
  const c = await watch(table, 'c')
  const first = table.reads.length

  table.feed.storedMany([range('a', table.store('a'))])
  const inFlight = await table.nextRead()
  t.same(inFlight.sessions, [{ sessionId: 'a', after: 0 }], 'a read of a alone')
  // three notices while it is on its way: nothing more is read yet
  table.feed.storedMany([range('a', table.store('a')), range('b', table.store('b'))])
  table.feed.storedMany([range('c', table.store('c'))])
  table.feed.storedMany([range('b', table.store('b'))])
  t.equal(table.reads.length, first + 1, 'one read on its way at a time')

  inFlight.release()
  const next = await table.nextRead()
  t.same(next.sessions.map((s) => s.sessionId).sort(), ['a', 'b', 'c'], 'then one read for all three')
  t.same(next.sessions.find((s) => s.sessionId === 'a'), { sessionId: 'a', after: 1 }, 'from each one\'s cursor')
  next.release()
  await table.settle()
  t.same([a, b, c], [[1, 2], [1, 2], [1]], 'each got all of its events once, in order')
  t.equal(table.reads.length, first + 2, 'two reads for four notices')
})

t.test('this instance\'s own frames go out while a read of the same session is on its way', async (t) => {
  const table = new Table()
  const got = await watch(table, 's')
  table.feed.storedMany([range('s', table.store('s'))]) // 1, elsewhere
  const inFlight = await table.nextRead()
  inFlight.release()
  await new Promise((resolve) => setImmediate(resolve))
  t.same(got, [1])
  table.feed.storedMany([range('s', table.store('s'))]) // 2, elsewhere: a read on its way
  const second = await table.nextRead()
  const mine = table.store('s') // 3, stored here while it is on its way
  table.feed.publish('s', table.frame('s', mine))
  t.same(got, [1], 'seq 3 waits for seq 2')
  second.release() // its snapshot has seq 2 only: seq 3 is read next
  await table.settle()
  t.same(got, [1, 2, 3], 'each once, in order')
  const four = table.store('s')
  table.feed.storedMany([range('s', four)])
  const third = await table.nextRead()
  table.feed.publish('s', table.frame('s', table.store('s'))) // 5, here, while 4 is being read
  t.same(got, [1, 2, 3], 'seq 5 waits for seq 4')
  third.release()
  await table.settle()
  t.same(got, [1, 2, 3, 4, 5])
  table.feed.publish('s', table.frame('s', table.store('s'))) // 6, here, nothing being read
  t.same(got, upTo(6), 'straight out again')
})

t.test('a session far behind is read page after page', async (t) => {
  const table = new Table()
  const got = await watch(table, 's')
  const last = table.store('s', 1234)
  const before = table.reads.length
  table.feed.storedMany([range('s', last)])
  await table.settle()
  t.same(got, upTo(1234))
  t.equal(table.reads.length - before, 3, 'three pages of at most 500')
})

t.test('a failed read is not retried in a loop; the next notice or poll reads what is due', async (t) => {
  const table = new Table()
  const got = await watch(table, 's')
  table.feed.storedMany([range('s', table.store('s', 2))])
  const failing = await table.nextRead()
  failing.fail(new Error('connection lost'))
  await table.settle()
  t.same(got, [], 'nothing passed on')
  t.match(table.logged, [{ msg: /failed: the next notice or poll tries again/ }], 'the failure is logged')
  const after = table.reads.length
  await table.settle()
  t.equal(table.reads.length, after, 'no read without a reason')
  await table.feed.checkAll()
  await table.settle()
  t.same(got, [1, 2], 'the poll finds the table ahead and reads it')
})

t.test('a subscriber that comes while events are stored gets each once: the replay up to the cursor, the feed after it', async (t) => {
  const table = new Table()
  table.store('s', 3)
  const got: number[] = []
  table.feed.subscribe('s', (f) => got.push(f.seq))
  table.feed.publish('s', table.frame('s', table.store('s'))) // 4, here, before the cursor is known
  await table.feed.ready('s')
  await table.settle()
  t.same(got, [4], 'the feed starts after the replay (1–3, which the stream reads itself)')
  table.feed.storedMany([range('s', table.store('s'))])
  await table.settle()
  t.same(got, [4, 5])
})

t.test('a session nobody watches any more is not read', async (t) => {
  const table = new Table()
  const unsubscribe = table.feed.subscribe('s', () => {})
  await table.feed.ready('s')
  await table.settle()
  unsubscribe()
  t.same(table.feed.watchedIds(), [])
  const before = table.reads.length
  table.feed.storedMany([range('s', table.store('s'))])
  table.feed.catchUp('s')
  await table.settle()
  t.equal(table.reads.length, before, 'no read')
})

t.test('a session that falls behind just as a read ends is read all the same, whatever the moment', async (t) => {
  // the moment between the read's last look at what is due and the end of the read: a few
  // microtask turns after the table answers; each offset is tried on a feed of its own
  for (let turns = 0; turns <= 6; turns++) {
    const table = new Table()
    const a = await watch(table, 'a')
    const b = await watch(table, 'b')
    table.feed.storedMany([range('a', table.store('a'))])
    const read = await table.nextRead()
    read.release()
    for (let i = 0; i < turns; i++) await Promise.resolve()
    table.feed.storedMany([range('b', table.store('b'))])
    await table.settle()
    t.same([a, b], [[1], [1]], `${turns} turns after the answer: both read`)
  }
})

/** The notice of what another instance stored from `first` to `last`, its frames along. */
function withFrames (table: Table, sessionId: string, first: number, last: number): StoredRun {
  return { sessionId, first, last, frames: upTo(last, first).map((seq) => table.frame(sessionId, seq).bytes.toString()) }
}

t.test('frames that come with a notice and follow the cursor go out without a read', async (t) => {
  const table = new Table()
  const got = await watch(table, 's')
  const before = table.reads.length
  const last = table.store('s', 3)
  table.feed.storedMany([withFrames(table, 's', 1, last)])
  t.same(got, [1, 2, 3], 'at once, in order')
  // what the next notice repeats (a merged run) is not passed on twice
  const next = table.store('s', 2)
  table.feed.storedMany([withFrames(table, 's', 2, next)])
  await table.settle()
  t.same(got, upTo(5), 'only what follows the cursor, once')
  t.equal(table.reads.length, before, 'nothing read')
})

t.test('frames that would skip a seq are not passed on: the gap and the frames are read', async (t) => {
  const table = new Table()
  const got = await watch(table, 's')
  table.store('s') // 1, by an instance whose notice is lost
  const last = table.store('s', 2)
  table.feed.storedMany([withFrames(table, 's', 2, last)])
  t.same(got, [], 'seq 2 does not go out ahead of seq 1')
  const read = await table.nextRead()
  t.same(read.sessions, [{ sessionId: 's', after: 0 }], 'read from the cursor')
  await table.settle()
  t.same(got, [1, 2, 3], 'each once, in order')
})

t.test('frames that come while a read of the same session is on its way: each seq once, in order', async (t) => {
  const table = new Table()
  const got = await watch(table, 's')
  table.feed.storedMany([range('s', table.store('s', 2))]) // 1–2 named, to be read
  const inFlight = await table.nextRead()
  const last = table.store('s', 2) // 3–4, with their frames, while 1–2 are being read
  table.feed.storedMany([withFrames(table, 's', 3, last)])
  t.same(got, [], 'seqs 3–4 wait for 1–2')
  inFlight.release() // its snapshot holds 1–4
  await table.settle()
  t.same(got, upTo(4), 'each once, in order')
})
