import type { FastifyBaseLogger } from 'fastify'
import { and, asc, eq, gt, sql } from 'drizzle-orm'
import type { Database } from '../db/database.js'
import { prepareSql } from '../db/prepared-sql.js'
import { sessionEvents } from '../db/schema.js'
import type { EventHub } from './event-hub.js'

export const EVENT_TYPES = ['user', 'agent', 'status', 'state', 'error'] as const
export type EventType = typeof EVENT_TYPES[number]

export interface StoredEvent {
  seq: number
  type: EventType
  at: Date
  data: unknown
}

interface Pending {
  type: EventType
  at: Date
  /** the payload as JSON text: agent lines are kept exactly as the CLI printed them */
  json: string
  /** a user message's client id: stored once however often it is sent */
  clientMessageId?: string | undefined
  resolve: (r: { seq: number, duplicate: boolean }) => void
  reject: (err: Error) => void
}

export interface UserMessage {
  text: string
  clientMessageId?: string | undefined
}

/** The frame of the stream and of GET /events, built as text so agent lines are not re-encoded. */
export function frameText (e: { seq: number, type: string, at: Date, json: string }): string {
  return `{"seq":${e.seq},"type":"${e.type}","at":"${e.at.toISOString()}","data":${e.json}}`
}

/**
 * The session event log. Appends are group-committed: while one write is in flight, new events
 * gather and go in the next, one statement per session that also hands out the sequence numbers.
 * Subscribers see an event only after it is stored, in sequence order, so a client that replays
 * from the log and then follows the live feed misses nothing and sees nothing twice.
 */
export class EventLog {
  readonly #db: Database
  readonly #hub: EventHub
  readonly #log: FastifyBaseLogger
  readonly #clock: () => Date
  #pending = new Map<string, Pending[]>()
  #flushing: Promise<void> | undefined
  readonly #appendStmt
  readonly #userStmt
  readonly #pageStmt

  constructor (opts: { db: Database, hub: EventHub, logger: FastifyBaseLogger, clock?: () => Date }) {
    this.#db = opts.db
    this.#hub = opts.hub
    this.#log = opts.logger
    this.#clock = opts.clock ?? (() => new Date())
    const p = sql.placeholder
    this.#appendStmt = prepareSql(this.#db, 'events_append', sql`
      with alloc as (
        update sessions set last_event_seq = last_event_seq + ${p('n')}::int
        where id = ${p('id')}::uuid
        returning last_event_seq - ${p('n')}::int as base
      ), ins as (
        insert into session_events (session_id, seq, type, payload, at)
        select ${p('id')}::uuid, alloc.base + e.ord, e.value->>'t', e.value->'d', (e.value->>'a')::timestamptz
        from alloc, jsonb_array_elements(${p('batch')}::jsonb) with ordinality as e(value, ord)
      )
      select base from alloc`)
    // A user message with a client id is stored once: a retried POST gets the first one's seq
    this.#userStmt = prepareSql(this.#db, 'events_append_user', sql`
      with existing as (
        select seq from session_events
        where session_id = ${p('id')}::uuid and client_message_id = ${p('cmid')}::text
      ), alloc as (
        update sessions set last_event_seq = last_event_seq + 1
        where id = ${p('id')}::uuid and not exists (select 1 from existing)
        returning last_event_seq as seq
      ), ins as (
        insert into session_events (session_id, seq, type, payload, at, client_message_id)
        select ${p('id')}::uuid, alloc.seq, 'user', ${p('payload')}::jsonb, ${p('at')}::timestamptz, ${p('cmid')}::text from alloc
        returning seq
      )
      select seq, false as duplicate from ins
      union all select seq, true as duplicate from existing`)
    this.#pageStmt = this.#db.select().from(sessionEvents)
      .where(and(eq(sessionEvents.sessionId, p('id')), gt(sessionEvents.seq, p('after'))))
      .orderBy(asc(sessionEvents.seq))
      .limit(p('limit'))
      .prepare('events_page')
  }

  /** Appends an event; resolves with its sequence number once it is stored (and published). */
  append (sessionId: string, type: EventType, data: unknown): Promise<number> {
    return this.appendJson(sessionId, type, JSON.stringify(data))
  }

  /** As append, with the payload already JSON text (an agent's stdout line, unchanged). */
  async appendJson (sessionId: string, type: EventType, json: string, at: Date = this.#clock()): Promise<number> {
    return (await this.#enqueue(sessionId, { type, at, json })).seq
  }

  /**
   * Stores a user message, idempotent by clientMessageId: a retry gets the first one's seq and
   * `duplicate: true`. It goes through the same ordered pipeline as every other event.
   */
  appendUser (sessionId: string, message: UserMessage): Promise<{ seq: number, duplicate: boolean }> {
    const json = JSON.stringify({ text: message.text, ...(message.clientMessageId ? { clientMessageId: message.clientMessageId } : {}) })
    return this.#enqueue(sessionId, { type: 'user', at: this.#clock(), json, clientMessageId: message.clientMessageId })
  }

  #enqueue (sessionId: string, e: Pick<Pending, 'type' | 'at' | 'json' | 'clientMessageId'>): Promise<{ seq: number, duplicate: boolean }> {
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

  /** Events after `after`, oldest first. */
  async page (sessionId: string, after: number, limit: number): Promise<StoredEvent[]> {
    const rows = await this.#pageStmt.execute({ id: sessionId, after, limit })
    return rows.map((r) => ({ seq: r.seq, type: r.type as EventType, at: r.at, data: r.payload }))
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

  async #drain (): Promise<void> {
    // Let the events of the current tick gather into one batch
    await new Promise<void>((resolve) => setImmediate(resolve))
    const batch = this.#pending
    this.#pending = new Map()
    await Promise.all([...batch].map(([sessionId, events]) => this.#write(sessionId, events)))
  }

  /** One session's share of a drain, in order: runs of plain events in one statement each. */
  async #write (sessionId: string, events: Pending[]): Promise<void> {
    let run: Pending[] = []
    for (const e of events) {
      if (e.clientMessageId === undefined) {
        run.push(e)
        continue
      }
      await this.#settle(run, () => this.#writeRun(sessionId, run))
      run = []
      await this.#settle([e], () => this.#writeUser(sessionId, e))
    }
    await this.#settle(run, () => this.#writeRun(sessionId, run))
  }

  async #settle (events: Pending[], write: () => Promise<void>): Promise<void> {
    if (events.length === 0) return
    try {
      await write()
    } catch (err) {
      this.#log.error({ err, count: events.length }, 'storing session events failed')
      for (const e of events) e.reject(err as Error)
    }
  }

  async #writeRun (sessionId: string, events: Pending[]): Promise<void> {
    const payload = '[' + events.map((e) => `{"t":"${e.type}","a":"${e.at.toISOString()}","d":${e.json}}`).join(',') + ']'
    const [row] = await this.#appendStmt.execute({ id: sessionId, n: events.length, batch: payload })
    if (!row) throw new Error(`session ${sessionId} does not exist`)
    const base = Number(row.base)
    events.forEach((e, i) => this.#published(sessionId, e, base + i + 1, false))
  }

  async #writeUser (sessionId: string, e: Pending): Promise<void> {
    const [row] = await this.#runUser(sessionId, e.clientMessageId!, e.json, e.at)
    if (!row) throw new Error(`session ${sessionId} does not exist`)
    this.#published(sessionId, e, Number(row.seq), Boolean(row.duplicate))
  }

  #published (sessionId: string, e: Pending, seq: number, duplicate: boolean): void {
    if (!duplicate) this.#hub.publish(sessionId, { seq, bytes: Buffer.from(frameText({ seq, type: e.type, at: e.at, json: e.json })) })
    e.resolve({ seq, duplicate })
  }
}
