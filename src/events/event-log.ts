import { sql } from 'drizzle-orm'
import type { Database } from '../db/database.js'
import { prepareSql } from '../db/prepared-sql.js'
import { sessionEvents } from '../db/schema.js'
import type { EventType } from '../domain/event-types.js'
import { fenceKey, type Fence } from '../domain/lease.js'
import { FencedWrite } from '../errors.js'
import { EVENTS_CHANNEL, frameFromTail, planNotices, type StoredRun } from '../cluster/event-notice.js'
import type { Log } from '../logger.js'
import type { EventBus } from './event-bus.js'

export interface StoredEvent {
  seq: number
  type: EventType
  at: Date
  /** the payload's JSON text, exactly as stored */
  json: string
}

interface Pending {
  type: EventType
  at: Date
  /** the payload as JSON text: agent lines are kept exactly as the CLI printed them */
  json: string
  /** a user message's client id: stored once however often it is sent */
  clientMessageId?: string | undefined
  /** `fenceKey` of the agent that wrote it ('' for none): stored only while that agent owns the session */
  fence: string
  resolve: (r: { seq: number, duplicate: boolean }) => void
  reject: (err: Error) => void
}

export interface UserMessage {
  text: string
  clientMessageId?: string | undefined
}

/** A user message waiting in the queue: stored, not yet taken up by the agent. */
export interface QueuedMessage {
  seq: number
  text: string
}

/** Keeps statements (and the row locks they hold) short however much is waiting */
const MAX_EVENTS_PER_STATEMENT = 1000
const WRITE_ATTEMPTS = 4
/**
 * What `pg_notify` raises when the server's notice queue is full (a listener somewhere stopped
 * reading) or a payload is refused: the statement aborted, and is run again without its notices
 */
const NOTICE_REFUSED = new Set(['54000', '22023'])

function databaseErrorCode (err: unknown): string | undefined {
  const e = err as { code?: unknown, cause?: { code?: unknown } }
  const code = e.cause?.code ?? e.code
  return typeof code === 'string' ? code : undefined
}

/** A frame without its seq (what an event notice carries): `"type":…}`. */
function frameTail (e: { type: string, at: Date, json: string }): string {
  return `"type":"${e.type}","at":"${e.at.toISOString()}","data":${e.json}}`
}

/** The frame of the stream and of GET /events, built as text so agent lines are not re-encoded. */
export function frameText (e: { seq: number, type: string, at: Date, json: string }): string {
  return frameFromTail(e.seq, frameTail(e))
}

/**
 * The session event log, and the message queue it holds. Appends are group-committed: while one
 * write is in flight, new events gather and go in the next, one statement per session that also
 * hands out the sequence numbers. Subscribers see an event only after it is stored, in sequence
 * order, so a client that replays from the log and then follows the live feed misses nothing and
 * sees nothing twice. User events past the delivered position are the queue of messages the
 * agent has not taken up yet.
 */
export class EventLog {
  readonly #db: Database
  readonly #bus: EventBus
  readonly #log: Log
  readonly #clock: () => Date
  #pending = new Map<string, Pending[]>()
  #flushing: Promise<void> | undefined
  readonly #appendStmt
  readonly #userStmt
  readonly #pageStmt
  readonly #nextQueuedStmt
  readonly #deliveredStmt

  readonly #lastSeqsStmt
  readonly #responseStmt
  readonly #pagesStmt
  /** what the current drain stored and no statement announced, by session; `bytes`: of the frames kept */
  #stored = new Map<string, StoredRun & { bytes: number }>()
  readonly #onStored: ((runs: StoredRun[]) => void) | undefined
  readonly #framesMaxBytes: number
  readonly #noticeFrom: () => string | null
  #noticeRefusedWarnedAt = -Infinity

  constructor (opts: {
    db: Database
    bus: EventBus
    logger: Log
    clock?: () => Date
    /** after each group commit: the sessions it stored events of (other instances are told) */
    onStored?: (runs: StoredRun[]) => void
    /** a session's frames are handed to `onStored` while they add up to at most this (default none) */
    onStoredFramesMaxBytes?: number
    /**
     * The instance id that signs the event notices (src/cluster/event-notice.ts) which the
     * append statement sends itself, at its commit; null: none (no other instance can exist, or
     * this one has no lease), and what is stored goes to `onStored` instead. Default: null.
     */
    noticeFrom?: () => string | null
  }) {
    this.#db = opts.db
    this.#bus = opts.bus
    this.#onStored = opts.onStored
    this.#framesMaxBytes = opts.onStoredFramesMaxBytes ?? 0
    this.#noticeFrom = opts.noticeFrom ?? (() => null)
    this.#log = opts.logger
    this.#clock = opts.clock ?? (() => new Date())
    const p = sql.placeholder
    // One statement for a whole drain, every session in it: sequence numbers are handed out per
    // session, in the same transaction as the rows. The batch travels as a few delimited texts
    // (payloads by newline, which JSON text never holds raw) rather than one JSON document: that
    // spares the database a JSON parse per field of every event, which was most of its work.
    // When `from` is set, the statement also tells the other instances what it stored (and the
    // small runs' frames, without their seqs, which it hands out): `pg_notify` in the same
    // transaction, delivered at its commit, with no round trip of its own.
    this.#appendStmt = prepareSql(this.#db, 'events_append', sql`
      with runs as (
        select r.sid::uuid as sid, r.n::int as n, r.ord::int as run, r.fence, r.notice, r.block
        from rows from (string_to_table(${p('sessions')}::text, ','), string_to_table(${p('counts')}::text, ','),
          string_to_table(${p('fences')}::text, ','), unnest(${p('notices')}::int[]), unnest(${p('blocks')}::text[]))
          with ordinality as r(sid, n, fence, notice, block, ord)
      ), alloc as (
        insert into session_event_seqs as q (session_id, last_seq)
        -- an agent's lines only while it owns the session (its instance's id and the claim's epoch)
        select r.sid, r.n from runs r where exists (select 1 from sessions s where s.id = r.sid
          and (r.fence = '-' or s.worker_id::text || ':' || s.worker_epoch = r.fence))
        on conflict (session_id) do update set last_seq = q.last_seq + excluded.last_seq
        returning q.session_id, q.last_seq
      ), bases as (
        select array_agg(a.last_seq - r.n order by r.run) as base, array_agg(r.sid order by r.run) as sid
        from runs r left join alloc a on a.session_id = r.sid
      ), ins as (
        insert into session_events (session_id, seq, type, payload, at)
        select b.sid[e.run::int], b.base[e.run::int] + e.i::int, e.type, e.payload::json, e.at::timestamptz
        from bases b, rows from (
          string_to_table(${p('runs')}::text, ','), string_to_table(${p('indexes')}::text, ','),
          string_to_table(${p('types')}::text, ','), string_to_table(${p('ats')}::text, ','),
          string_to_table(${p('payloads')}::text, E'\n')
        ) as e(run, i, type, at, payload)
        where b.base[e.run::int] is not null
      ), rung as (
        select count(pg_notify('${sql.raw(EVENTS_CHANNEL)}', x.text)) as notices from (
          select ${p('from')}::text || string_agg(E'\n' || r.sid::text || ':' || (a.last_seq - r.n + 1)::text || '-' || a.last_seq::text || r.block, '' order by r.run) as text
          from runs r join alloc a on a.session_id = r.sid
          where ${p('from')}::text is not null
          group by r.notice
        ) x
      )
      select a.session_id as id, a.last_seq - r.n as base from alloc a join runs r on r.sid = a.session_id cross join rung`)
    // A user message with a client id is stored once: a retried POST gets the first one's seq
    this.#userStmt = prepareSql(this.#db, 'events_append_user', sql`
      with existing as (
        select seq from session_events
        where session_id = ${p('id')}::uuid and client_message_id = ${p('cmid')}::text
      ), alloc as (
        insert into session_event_seqs as q (session_id, last_seq)
        select ${p('id')}::uuid, 1
        where not exists (select 1 from existing) and exists (select 1 from sessions where id = ${p('id')}::uuid)
        on conflict (session_id) do update set last_seq = q.last_seq + 1
        returning q.last_seq as seq
      ), ins as (
        insert into session_events (session_id, seq, type, payload, at, client_message_id)
        select ${p('id')}::uuid, alloc.seq, 'user', ${p('payload')}::json, ${p('at')}::timestamptz, ${p('cmid')}::text from alloc
        returning seq
      )
      select seq, false as duplicate from ins
      union all select seq, true as duplicate from existing`)
    // the payload comes back as the text that was stored, so a replayed frame is byte for byte
    // the frame that was published live
    this.#pageStmt = prepareSql(this.#db, 'events_page', sql`
      select seq, type, at, payload::text as json from session_events
      where session_id = ${p('id')}::uuid and seq > ${p('after')}::bigint
      order by seq limit ${p('limit')}::int`)
    this.#nextQueuedStmt = prepareSql(this.#db, 'events_next_queued', sql`
      select e.seq, e.payload::text as json from session_events e
      where e.session_id = ${p('id')}::uuid and e.type = 'user'
        and e.seq > coalesce((select delivered_seq from session_event_seqs where session_id = ${p('id')}::uuid), 0)
      order by e.seq limit 1`)
    // The message leaves the queue and the conversation that took it up becomes the one to
    // resume, in one statement: apart, a failure between the two would send the message twice
    // (queue not advanced) or resume a conversation that does not hold it (id not recorded)
    // Only by the session's owner: an agent that lost the session must not move its queue
    this.#deliveredStmt = prepareSql(this.#db, 'events_mark_delivered', sql`
      with owned as (
        select id from sessions
        where id = ${p('id')}::uuid and worker_id::text || ':' || worker_epoch = ${p('fence')}::text
      ), queue as (
        update session_event_seqs set delivered_seq = greatest(delivered_seq, ${p('seq')}::bigint)
        where session_id in (select id from owned)
      ), moved as (
        update sessions set agent_session_id = ${p('agent')}::uuid, last_error = null
        where id in (select id from owned) and (agent_session_id is distinct from ${p('agent')}::uuid or last_error is not null)
      )
      select id from owned`)
    this.#pagesStmt = prepareSql(this.#db, 'events_pages', sql`
      select c.id as session_id, e.seq, e.type, e.at, e.json
      from unnest(${p('ids')}::uuid[], ${p('afters')}::bigint[]) as c(id, after)
      cross join lateral (
        select seq, type, at, payload::text as json from session_events
        where session_id = c.id and seq > c.after order by seq limit ${p('limit')}::int
      ) e
      order by c.id, e.seq`)
    this.#responseStmt = prepareSql(this.#db, 'events_permission_response', sql`
      select seq, at, payload::text as json from session_events
      where session_id = ${p('id')}::uuid and type = 'permission_response' and payload->>'requestId' = ${p('rid')}::text
      order by seq desc limit 1`)
    this.#lastSeqsStmt = prepareSql(this.#db, 'events_last_seqs', sql`
      select session_id, last_seq from session_event_seqs where session_id = any(${p('ids')}::uuid[])`)
  }

  /** The oldest user message the agent has not taken up yet, or null when the queue is empty. */
  async nextQueued (sessionId: string): Promise<QueuedMessage | null> {
    const [row] = await this.#nextQueuedStmt.execute({ id: sessionId })
    if (!row) return null
    return { seq: Number(row.seq), text: (JSON.parse(String(row.json)) as { text: string }).text }
  }

  /**
   * The agent took up message `seq` (its turn started) in conversation `agentSessionId`: the
   * message leaves the queue for good, and that conversation is the session's to resume (its
   * last error cleared: it runs).
   */
  async markDelivered (sessionId: string, seq: number, agentSessionId: string, fence: Fence): Promise<void> {
    const owned = await this.#deliveredStmt.execute({ id: sessionId, seq, agent: agentSessionId, fence: fenceKey(fence) })
    if (owned.length === 0) throw new FencedWrite(sessionId)
  }

  /** Events after each session's `after`, at most `limit` of each, oldest first: one statement for them all. */
  async pages (from: { sessionId: string, after: number }[], limit: number): Promise<Map<string, StoredEvent[]>> {
    const rows = await this.#pagesStmt.execute({ ids: from.map((f) => f.sessionId), afters: from.map((f) => f.after), limit })
    const pages = new Map<string, StoredEvent[]>()
    for (const r of rows) {
      const id = String(r.session_id)
      let page = pages.get(id)
      if (!page) {
        page = []
        pages.set(id, page)
      }
      page.push({ seq: Number(r.seq), type: r.type as EventType, at: sessionEvents.at.mapFromDriverValue(r.at as string) as Date, json: String(r.json) })
    }
    return pages
  }

  /** The stored answer to a permission request (`permission_response`), or null. */
  async permissionResponse (sessionId: string, requestId: string): Promise<StoredEvent | null> {
    const [row] = await this.#responseStmt.execute({ id: sessionId, rid: requestId })
    return row ? { seq: Number(row.seq), type: 'permission_response', at: new Date(String(row.at)), json: String(row.json) } : null
  }

  /** The last seq stored of each of these sessions (none stored yet: absent). */
  async lastSeqs (sessionIds: string[]): Promise<Map<string, number>> {
    if (sessionIds.length === 0) return new Map()
    const rows = await this.#lastSeqsStmt.execute({ ids: sessionIds })
    return new Map(rows.map((r) => [String(r.session_id), Number(r.last_seq)]))
  }

  /** Appends an event; resolves with its sequence number once it is stored (and published). */
  append (sessionId: string, type: EventType, data: unknown, fence?: Fence): Promise<number> {
    return this.appendJson(sessionId, type, JSON.stringify(data), fence)
  }

  /**
   * As append, with the payload already JSON text (an agent's stdout line, unchanged). With a
   * fence, it is stored only while that agent's claim on the session holds (else FencedWrite).
   */
  async appendJson (sessionId: string, type: EventType, json: string, fence?: Fence): Promise<number> {
    // a batch separates payloads by newline. In JSON text a raw newline can only be whitespace
    // between tokens (never a stdout line), so a space in its place changes nothing else
    const oneLine = json.includes('\n') ? json.replaceAll('\n', ' ') : json
    return (await this.#enqueue(sessionId, { type, at: this.#clock(), json: oneLine, fence: fence ? fenceKey(fence) : '' })).seq
  }

  /**
   * Stores a user message, idempotent by clientMessageId: a retry gets the first one's seq and
   * `duplicate: true`. It goes through the same ordered pipeline as every other event.
   */
  appendUser (sessionId: string, message: UserMessage): Promise<{ seq: number, duplicate: boolean }> {
    const json = JSON.stringify({ text: message.text, ...(message.clientMessageId ? { clientMessageId: message.clientMessageId } : {}) })
    return this.#enqueue(sessionId, { type: 'user', at: this.#clock(), json, clientMessageId: message.clientMessageId, fence: '' })
  }

  #enqueue (sessionId: string, e: Pick<Pending, 'type' | 'at' | 'json' | 'clientMessageId' | 'fence'>): Promise<{ seq: number, duplicate: boolean }> {
    return new Promise((resolve, reject) => {
      let queue = this.#pending.get(sessionId)
      if (!queue) {
        queue = []
        this.#pending.set(sessionId, queue)
      }
      queue.push({ ...e, resolve, reject })
      this.#scheduleFlush()
    })
  }

  async #runUser (id: string, cmid: string, payload: string, at: Date) {
    try {
      return await this.#userStmt.execute({ id, cmid, payload, at: at.toISOString() })
    } catch (err) {
      // Two identical retries raced past the existence check: the index kept one; read it back
      if ((err as { code?: string }).code !== '23505') throw err
      return this.#userStmt.execute({ id, cmid, payload, at: at.toISOString() })
    }
  }

  /** Events after `after`, oldest first, with their payload as stored (JSON text). */
  async page (sessionId: string, after: number, limit: number): Promise<StoredEvent[]> {
    const rows = await this.#pageStmt.execute({ id: sessionId, after, limit })
    return rows.map((r) => ({
      seq: Number(r.seq),
      type: r.type as EventType,
      at: sessionEvents.at.mapFromDriverValue(r.at as string) as Date,
      json: String(r.json)
    }))
  }

  /** Resolves when everything appended so far is stored and published. */
  async flush (): Promise<void> {
    while (this.#flushing || this.#pending.size > 0) {
      if (!this.#flushing) this.#scheduleFlush()
      await this.#flushing
    }
  }

  #scheduleFlush (): void {
    if (this.#flushing) return
    this.#flushing = this.#drain().finally(() => {
      this.#flushing = undefined
      if (this.#pending.size > 0) this.#scheduleFlush()
    })
  }

  /** Appends many events without waiting for them (a sweep's state changes). */
  appendMany (events: { sessionId: string, type: EventType, data: unknown }[]): void {
    const at = this.#clock()
    const ignore = () => {}
    for (const e of events) {
      let queue = this.#pending.get(e.sessionId)
      if (!queue) {
        queue = []
        this.#pending.set(e.sessionId, queue)
      }
      queue.push({ type: e.type, at, json: JSON.stringify(e.data), fence: '', resolve: ignore, reject: ignore })
    }
    this.#scheduleFlush()
  }

  async #drain (): Promise<void> {
    // Let the events of the current tick gather into one batch
    await new Promise<void>((resolve) => setImmediate(resolve))
    const batch = this.#pending
    this.#pending = new Map()
    const plain: [string, Pending[]][] = []
    const inSteps: [string, Pending[]][] = []
    // one run per session and statement: a session whose events need more (an idempotent message,
    // lines of an agent next to events of nobody's fence) has its runs written one after another
    for (const entry of batch) (entry[1].some((e) => e.clientMessageId !== undefined || e.fence !== entry[1][0]!.fence) ? inSteps : plain).push(entry)
    await Promise.all([
      this.#settle(plain.flatMap(([, events]) => events), () => this.#writeRuns(plain)),
      ...inSteps.map(([sessionId, events]) => this.#write(sessionId, events))
    ])
    const stored = this.#stored
    this.#stored = new Map()
    if (stored.size > 0 && this.#onStored) {
      try {
        this.#onStored([...stored.values()].map(({ bytes: _, ...run }) => run))
      } catch (err) {
        this.#log.error({ err }, 'an onStored listener failed')
      }
    }
  }

  /**
   * A session whose batch holds idempotent user messages or events of different fences: in
   * order, each message on its own and runs of one fence between them.
   */
  async #write (sessionId: string, events: Pending[]): Promise<void> {
    let run: Pending[] = []
    const flush = async () => {
      const before = run
      run = []
      await this.#settle(before, () => this.#writeRuns([[sessionId, before]]))
    }
    for (const e of events) {
      if (e.clientMessageId === undefined) {
        if (run.length > 0 && run[0]!.fence !== e.fence) await flush()
        run.push(e)
        continue
      }
      await flush()
      await this.#settle([e], () => this.#writeUser(sessionId, e))
    }
    await flush()
  }

  async #settle (events: Pending[], write: () => Promise<void>): Promise<void> {
    if (events.length === 0) return
    try {
      await write()
    } catch (err) {
      // drizzle's error message carries every parameter (the whole batch): log the cause only
      this.#log.error({ err: (err as { cause?: unknown }).cause ?? err, code: databaseErrorCode(err), count: events.length }, 'storing session events failed')
      // rejecting an event that was already stored (an earlier statement of the run) is a no-op
      for (const e of events) e.reject(err as Error)
    }
  }

  /**
   * One statement, again if Postgres aborted it for a deadlock: a batch touches many session rows
   * and can cross a concurrent sweep or transition. An aborted statement wrote nothing.
   */
  async #once<T> (statement: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await statement()
      } catch (err) {
        const code = databaseErrorCode(err)
        if ((code !== '40P01' && code !== '40001') || attempt >= WRITE_ATTEMPTS) throw err
      }
    }
  }

  /** Writes runs of plain events, at most MAX_EVENTS_PER_STATEMENT per statement, in order. */
  async #writeRuns (runs: [string, Pending[]][]): Promise<void> {
    let chunk: [string, Pending[]][] = []
    let size = 0
    for (const [sessionId, events] of runs) {
      for (let i = 0; i < events.length; i += MAX_EVENTS_PER_STATEMENT) {
        const part = events.slice(i, i + MAX_EVENTS_PER_STATEMENT)
        if (size + part.length > MAX_EVENTS_PER_STATEMENT) {
          await this.#writeChunk(chunk)
          chunk = []
          size = 0
        }
        chunk.push([sessionId, part])
        size += part.length
      }
    }
    await this.#writeChunk(chunk)
  }

  async #writeChunk (runs: [string, Pending[]][]): Promise<void> {
    if (runs.length === 0) return
    const indexes: number[] = []
    const runOf: number[] = []
    const types: string[] = []
    const ats: string[] = []
    const payloads: string[] = []
    // the frames without their seqs: the notice's (when there is one), and the published ones'
    const tails = runs.map(([, events]) => events.map(frameTail))
    const from = this.#noticeFrom()
    const plan = from === null
      ? { notice: runs.map(() => 0), block: runs.map(() => '') }
      : planNotices(tails.map((t) => ({ tails: t })))
    runs.forEach(([, events], r) => {
      events.forEach((e, i) => {
        runOf.push(r + 1)
        indexes.push(i + 1)
        types.push(e.type)
        ats.push(e.at.toISOString())
        payloads.push(e.json)
      })
    })
    const batch = {
      sessions: runs.map(([sessionId]) => sessionId).join(','),
      counts: runs.map(([, events]) => events.length).join(','),
      // '-' for none: string_to_table reads '' as no element at all
      fences: runs.map(([, events]) => events[0]!.fence || '-').join(','),
      runs: runOf.join(','),
      indexes: indexes.join(','),
      types: types.join(','),
      ats: ats.join(','),
      payloads: payloads.join('\n'),
      from,
      notices: plan.notice,
      blocks: plan.block
    }
    let announced = from !== null
    const rows = await this.#once(() => this.#appendStmt.execute(batch)).catch(async (err: unknown) => {
      const code = databaseErrorCode(err)
      if (!announced || code === undefined || !NOTICE_REFUSED.has(code)) throw err
      // a notice is a hint: the events are stored without it, and rung after the drain. One
      // warning a minute: a full queue refuses every append's
      const now = Date.now()
      if (now - this.#noticeRefusedWarnedAt >= 60_000) {
        this.#noticeRefusedWarnedAt = now
        this.#log.warn({ err: (err as { cause?: unknown }).cause ?? err, code }, 'event notice refused by the database: the events are stored without it')
      }
      announced = false
      return await this.#once(() => this.#appendStmt.execute({ ...batch, from: null }))
    })
    const bases = new Map(rows.map((r) => [String(r.id), Number(r.base)]))
    runs.forEach(([sessionId, events], r) => {
      const base = bases.get(sessionId)
      if (base === undefined) {
        const err = events[0]!.fence !== '' ? new FencedWrite(sessionId) : new Error(`session ${sessionId} does not exist`)
        for (const e of events) e.reject(err)
        return
      }
      events.forEach((e, i) => this.#published(sessionId, e, base + i + 1, false, tails[r]![i]!, announced))
    })
  }

  async #writeUser (sessionId: string, e: Pending): Promise<void> {
    const [row] = await this.#once(() => this.#runUser(sessionId, e.clientMessageId!, e.json, e.at))
    if (!row) throw new Error(`session ${sessionId} does not exist`)
    this.#published(sessionId, e, Number(row.seq), Boolean(row.duplicate))
  }

  /** `announced`: the statement that stored it told the other instances already */
  #published (sessionId: string, e: Pending, seq: number, duplicate: boolean, tail = frameTail(e), announced = false): void {
    if (!duplicate) {
      const text = frameFromTail(seq, tail)
      const bytes = Buffer.from(text)
      this.#bus.publish(sessionId, { seq, bytes })
      if (!announced) this.#unannounced(sessionId, seq, text, bytes.length)
    }
    e.resolve({ seq, duplicate })
  }

  /** Kept for `onStored`, after the drain: the frames too, while they are small. */
  #unannounced (sessionId: string, seq: number, text: string, bytes: number): void {
    const run = this.#stored.get(sessionId)
    if (!run) {
      const keep = bytes + 1 <= this.#framesMaxBytes
      this.#stored.set(sessionId, { sessionId, first: seq, last: seq, frames: keep ? [text] : undefined, bytes: keep ? bytes + 1 : 0 })
      return
    }
    // the frames go along only while they are every seq of the run (another instance may have
    // stored one between two of this drain's statements) and stay small
    if (run.frames && seq === run.last + 1 && run.bytes + bytes + 1 <= this.#framesMaxBytes) {
      run.frames.push(text)
      run.bytes += bytes + 1
    } else {
      run.frames = undefined
    }
    run.last = Math.max(run.last, seq)
  }
}
