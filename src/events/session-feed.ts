import type { StoredRun } from '../cluster/event-notice.js'
import type { Log } from '../logger.js'
import { InProcessEventBus, type EventBus, type PublishedFrame, type Subscriber } from './event-bus.js'
import { frameText, type StoredEvent } from './event-log.js'

/** The numbers of the feed, named once. */
const FEED = {
  /** events read from the table per statement while catching up */
  page: 500
} as const

interface Watched {
  /** the last seq given to this instance's subscribers; undefined until `ready` */
  cursor: number | undefined
  ready: Promise<void>
  /** frames stored here before the cursor was known */
  early: PublishedFrame[]
}

export interface SessionFeedOptions {
  /** events after `after`, oldest first (the event log's page) */
  read: (sessionId: string, after: number, limit: number) => Promise<StoredEvent[]>
  /** the same for several sessions in one statement: at most `limit` of each */
  readMany: (from: { sessionId: string, after: number }[], limit: number) => Promise<Map<string, StoredEvent[]>>
  /** the last seq stored of each of these sessions (absent: none yet) */
  lastSeqs: (sessionIds: string[]) => Promise<Map<string, number>>
  logger: Log
}

/**
 * The live events of the sessions watched on this instance, in seq order with no gap and no
 * duplicate, whoever stored them: this instance's own commits arrive at once (publish), and
 * another instance's come with its notice when they are small and follow the cursor, or are read
 * from the table (a big run, a gap, a lost notice that a poll or a reconnection finds). Each
 * watched session has one cursor here, whatever the number of its subscribers. A frame that would
 * skip a seq is not passed on; the gap is read from the table first. A subscriber waits for `ready` before reading its replay, so the replay covers everything
 * up to the cursor and the feed everything after it.
 *
 * One read at a time per instance: the sessions that fell behind while a read was on its way are
 * read together in the next statement. A busy cluster's notices then cost this instance about one
 * statement per read's round trip instead of one per notice, and the load it puts on the database
 * falls as the database slows down instead of growing.
 */
export class SessionFeed implements EventBus {
  readonly #bus = new InProcessEventBus()
  readonly #watched = new Map<string, Watched>()
  readonly #o: SessionFeedOptions
  /** watched sessions the table may be ahead of, for the next read */
  readonly #due = new Set<string>()
  /** the read on its way, if any */
  #reading = false

  constructor (opts: SessionFeedOptions) {
    this.#o = opts
  }

  subscribe (sessionId: string, subscriber: Subscriber): () => void {
    const unsubscribe = this.#bus.subscribe(sessionId, subscriber)
    if (!this.#watched.has(sessionId)) this.#watch(sessionId)
    return () => {
      unsubscribe()
      if (this.#bus.subscriberCount(sessionId) === 0) this.#watched.delete(sessionId)
    }
  }

  /** Resolves once the session's cursor is known (subscribe first). */
  async ready (sessionId: string): Promise<void> {
    await this.#watched.get(sessionId)?.ready
  }

  subscriberCount (sessionId: string): number {
    return this.#bus.subscriberCount(sessionId)
  }

  /** The sessions watched here: a poll checks whether the table is ahead of their cursors. */
  watchedIds (): string[] {
    return [...this.#watched.keys()]
  }

  #watch (sessionId: string): void {
    const w: Watched = { cursor: undefined, ready: Promise.resolve(), early: [] }
    this.#watched.set(sessionId, w)
    w.ready = this.#o.lastSeqs([sessionId]).then((seqs) => {
      w.cursor = seqs.get(sessionId) ?? 0
      const early = w.early
      w.early = []
      for (const frame of early) this.#offer(sessionId, w, frame)
      // a notice that came before the cursor was known was not acted on
      this.catchUp(sessionId)
    }, (err: Error) => {
      // the subscriber's replay fails the same way and closes it
      if (this.#watched.get(sessionId) === w) this.#watched.delete(sessionId)
      throw err
    })
    w.ready.catch(() => {})
  }

  /** This instance stored an event: in order it goes straight out. */
  publish (sessionId: string, frame: PublishedFrame): void {
    const w = this.#watched.get(sessionId)
    if (!w) return
    if (w.cursor === undefined) {
      w.early.push(frame)
      return
    }
    this.#offer(sessionId, w, frame)
  }

  #offer (sessionId: string, w: Watched, frame: PublishedFrame): void {
    const cursor = w.cursor!
    if (frame.seq <= cursor) return
    // even while a read of this session is on its way: it passes on only what follows the cursor
    if (frame.seq === cursor + 1) {
      w.cursor = frame.seq
      this.#bus.publish(sessionId, frame)
      return
    }
    // something stored elsewhere comes before it: read the gap (this frame included) in order
    this.catchUp(sessionId)
  }

  /**
   * Another instance stored events of these sessions (one notice, or a poll's look at the table).
   * Frames that came along and follow the cursor go straight out; the rest is read.
   */
  storedMany (runs: StoredRun[]): void {
    for (const { sessionId, first, last, frames } of runs) {
      const w = this.#watched.get(sessionId)
      // a session whose cursor is not known yet reads the table once it is
      if (w?.cursor === undefined || last <= w.cursor) continue
      if (frames && first <= w.cursor + 1) {
        for (let seq = w.cursor + 1; seq <= last; seq++) {
          w.cursor = seq
          this.#bus.publish(sessionId, { seq, bytes: Buffer.from(frames[seq - first]!) })
        }
        continue
      }
      this.#due.add(sessionId)
    }
    this.#drain()
  }

  /** Passes on the events that follow the cursor, in order. */
  #pass (sessionId: string, w: Watched, page: StoredEvent[]): void {
    for (const e of page) {
      if (e.seq !== w.cursor! + 1) {
        if (e.seq <= w.cursor!) continue
        break
      }
      w.cursor = e.seq
      if (this.#watched.get(sessionId) === w) this.#bus.publish(sessionId, { seq: e.seq, bytes: Buffer.from(frameText(e)) })
    }
  }

  /** Looks whether the table is ahead of any watched session's cursor (a notice lost, a reconnection). */
  async checkAll (): Promise<void> {
    const ids = this.watchedIds()
    if (ids.length === 0) return
    const seqs = await this.#o.lastSeqs(ids)
    this.storedMany([...seqs].map(([sessionId, last]) => ({ sessionId, first: last, last })))
  }

  /** Reads what the table holds past the cursor and passes it on, in order. */
  catchUp (sessionId: string): void {
    if (this.#watched.get(sessionId)?.cursor === undefined) return
    this.#due.add(sessionId)
    this.#drain()
  }

  #drain (): void {
    if (this.#reading || this.#due.size === 0) return
    this.#reading = true
    this.#readDue().then(() => {
      this.#reading = false
      // what became due between the loop's last look and this callback
      this.#drain()
    }, (err: Error) => {
      this.#reading = false
      // what is still due is read with the next notice or poll, not in a loop against a failing database
      this.#o.logger.warn({ err, sessions: this.#due.size }, 'catching up with other instances\' events failed: the next notice or poll tries again')
    })
  }

  /** Reads every due session, all of them in one statement, until none is due. */
  async #readDue (): Promise<void> {
    while (this.#due.size > 0) {
      const batch: [string, Watched][] = []
      for (const sessionId of this.#due) {
        const w = this.#watched.get(sessionId)
        if (w?.cursor !== undefined) batch.push([sessionId, w])
      }
      this.#due.clear()
      if (batch.length === 0) return
      const pages = batch.length === 1
        ? new Map([[batch[0]![0], await this.#o.read(batch[0]![0], batch[0]![1].cursor!, FEED.page)]])
        : await this.#o.readMany(batch.map(([sessionId, w]) => ({ sessionId, after: w.cursor! })), FEED.page)
      for (const [sessionId, w] of batch) {
        const page = pages.get(sessionId) ?? []
        this.#pass(sessionId, w, page)
        // a full page: there is more
        if (page.length >= FEED.page) this.#due.add(sessionId)
      }
    }
  }
}
