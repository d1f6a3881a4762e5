import type { EventType } from '../domain/event-types.js'
import {
  answerProblem,
  cliResponse,
  rememberable,
  timeoutAnswer,
  type PermissionAnswer,
  type PermissionAsk
} from '../domain/permissions.js'
import { InvalidPermissionAnswer, PermissionRequestNotFound, permissionRequestClosed } from '../errors.js'
import type { EventLog } from '../events/event-log.js'
import type { Log } from '../logger.js'
import type { ClosedStatus, PermissionRepository, PermissionRow } from '../sessions/permission-repository.js'

/** What happened that a user away from the app may want to know. */
export type AttentionKind = 'turn_ended' | 'permission_request' | 'question' | 'error'

export interface PermissionBrokerOptions {
  repo: PermissionRepository
  events: EventLog
  logger: Log
  clock: () => Date
  /** writes one line to the session's live agent; false when it has none that takes input */
  send: (sessionId: string, message: Record<string, unknown>) => boolean
  /** an ask was stored and is open */
  onAsk: (sessionId: string, kind: 'permission_request' | 'question', seq: number) => void
}

export interface AnswerResult {
  requestId: string
  decision: 'allow' | 'deny'
  seq: number
  /** the agent that asked got it from here (false: it runs elsewhere, or is gone) */
  sent: boolean
}

/** One ask of this instance's agents, from its line to its close. */
interface Entry {
  /** set once its row exists: an answer is then checked and sent after one statement (the compare-and-set) */
  ask?: PermissionAsk
  /** until its row and event are stored: an answer or a view of this instance waits for it */
  opening?: Promise<void>
  timer?: NodeJS.Timeout
}

/**
 * The agents' permission asks, from the CLI's line to the user's answer: each is stored (a row,
 * the truth of whether it is open, and an event, what the phone sees), answered at most once (a
 * compare-and-set on the row), denied when nobody answers in time, and cancelled when the turn or
 * the agent it belongs to ends. Answers go to the agent as `control_response` lines.
 */
export class PermissionBroker {
  readonly #o: PermissionBrokerOptions
  /** by session, then request id; the rows stay the truth of whether an ask is still open */
  readonly #asks = new Map<string, Map<string, Entry>>()

  constructor (opts: PermissionBrokerOptions) {
    this.#o = opts
  }

  /**
   * A can_use_tool line of the agent. Called in the order of the agent's lines, so the event is
   * queued in the log right here, between the lines around it; the row and the timer follow.
   */
  open (sessionId: string, ask: PermissionAsk, timeoutSeconds: number): void {
    const createdAt = this.#o.clock()
    const expiresAt = new Date(createdAt.getTime() + timeoutSeconds * 1000)
    const type: EventType = ask.kind === 'question' ? 'question' : 'permission_request'
    const data = ask.kind === 'question'
      ? { requestId: ask.requestId, toolUseId: ask.toolUseId, questions: Array.isArray(ask.input.questions) ? ask.input.questions : [], expiresAt: expiresAt.toISOString() }
      : { requestId: ask.requestId, toolName: ask.toolName, input: ask.input, toolUseId: ask.toolUseId, suggestions: ask.suggestions, context: ask.context, expiresAt: expiresAt.toISOString() }
    const stored = this.#o.events.append(sessionId, type, data)
    // handled below; this keeps a failure of both writes from being an unhandled rejection
    stored.catch(() => {})
    const entry: Entry = {}
    this.#entries(sessionId).set(ask.requestId, entry)
    // The row and the event are written side by side; until both are (and the row knows its
    // event's seq), an answer or a session view of this instance waits for them
    entry.opening = (async () => {
      const opened = await this.#o.repo.open({
        sessionId, requestId: ask.requestId, kind: ask.kind, toolName: ask.toolName, request: { ...ask }, createdAt, expiresAt
      })
      if (!opened) throw new Error('the request id is already taken')
      entry.ask = ask
      entry.timer = setTimeout(() => { this.#expire(sessionId, ask.requestId, timeoutSeconds) }, timeoutSeconds * 1000)
      entry.timer.unref()
      const seq = await stored
      await this.#o.repo.setSeq(sessionId, ask.requestId, seq)
      this.#o.onAsk(sessionId, type, seq)
    })().catch((err: Error) => {
      this.#o.logger.error({ err, sessionId, requestId: ask.requestId }, 'storing a permission request failed: it is denied')
      // nobody could answer an ask that is not stored: the agent must not wait for it
      if (!entry.ask) {
        this.#forget(sessionId, ask.requestId)
        this.#o.send(sessionId, cliResponse(ask, { decision: 'deny', message: 'The service could not relay this permission request to the user; it was denied.' }))
      }
    }).finally(() => { entry.opening = undefined })
  }

  #entries (sessionId: string): Map<string, Entry> {
    let entries = this.#asks.get(sessionId)
    if (!entries) {
      entries = new Map()
      this.#asks.set(sessionId, entries)
    }
    return entries
  }

  /** The session has asks open (or being stored) on this instance. */
  hasOpen (sessionId: string): boolean {
    return (this.#asks.get(sessionId)?.size ?? 0) > 0
  }

  /** An ask of the session is being stored on this instance: its view must wait for it. */
  isOpening (sessionId: string): boolean {
    for (const entry of this.#asks.get(sessionId)?.values() ?? []) if (entry.opening) return true
    return false
  }

  async #settledOpenings (sessionIds: string[]): Promise<void> {
    await Promise.all(sessionIds.flatMap((id) => [...this.#asks.get(id)?.values() ?? []].map((e) => e.opening)))
  }

  /**
   * The user's answer (or the timeout's): the first one closes the request and reaches the agent;
   * any later one is a 409, an unknown id a 404.
   */
  async answer (sessionId: string, requestId: string, answer: PermissionAnswer, by: 'user' | 'timeout' = 'user'): Promise<AnswerResult> {
    await this.#asks.get(sessionId)?.get(requestId)?.opening
    // open on this instance: known without a read. Otherwise the row says why it cannot be answered
    const ask = this.#asks.get(sessionId)?.get(requestId)?.ask ?? await this.#closedReason(sessionId, requestId)
    const problem = answerProblem(ask, answer)
    if (problem !== null) throw new InvalidPermissionAnswer(problem)
    const status: ClosedStatus = by === 'timeout' ? 'timed_out' : answer.decision === 'allow' ? 'allowed' : 'denied'
    const closed = await this.#o.repo.close(sessionId, requestId, status, this.#o.clock())
    if (!closed) {
      // another answer, the timeout or a cancellation won the race: if that was on another
      // instance, this one's agent may not have heard of it (a lost notice)
      await this.#relayClosed(sessionId, requestId)
      const now = await this.#o.repo.find(sessionId, requestId)
      throw permissionRequestClosed(requestId, now?.status ?? 'cancelled')
    }
    this.#forget(sessionId, requestId)
    // an agent of another instance gets it from there (the caller tells it where to read it)
    const sent = this.#o.send(sessionId, cliResponse(ask, answer))
    const seq = await this.#o.events.append(sessionId, 'permission_response', {
      requestId,
      decision: answer.decision,
      ...(answer.message !== undefined ? { message: answer.message } : {}),
      ...(answer.updatedInput !== undefined ? { updatedInput: answer.updatedInput } : {}),
      ...(answer.answers !== undefined ? { answers: answer.answers } : {}),
      remember: answer.remember === true && answer.decision === 'allow' && rememberable(ask),
      by
    })
    return { requestId, decision: answer.decision, seq, sent }
  }

  /**
   * A request of this instance's agent was answered on another instance, which stored the answer
   * as the event at `seq`: the agent gets it from here.
   */
  async relay (sessionId: string, requestId: string, seq: number): Promise<void> {
    await this.#asks.get(sessionId)?.get(requestId)?.opening
    const ask = this.#asks.get(sessionId)?.get(requestId)?.ask
    if (!ask) return
    const [event] = await this.#o.events.page(sessionId, seq - 1, 1)
    if (event?.seq !== seq || event.type !== 'permission_response') return
    const data = JSON.parse(event.json) as PermissionAnswer & { requestId?: string }
    if (data.requestId !== requestId) return
    this.#deliver(sessionId, requestId, ask, data)
  }

  /**
   * Asks of this instance's agents that were closed elsewhere (answered or cancelled on another
   * instance, whose notice was lost): their agents get the answer now, or a denial.
   */
  async reconcile (sessionIds: string[]): Promise<void> {
    const held = sessionIds.filter((id) => this.#asks.has(id))
    if (held.length === 0) return
    const open = new Set((await this.#o.repo.pendingOf(held)).map((r) => `${r.sessionId}:${r.requestId}`))
    for (const sessionId of held) {
      for (const [requestId, entry] of this.#asks.get(sessionId) ?? []) {
        if (entry.ask && !entry.opening && !open.has(`${sessionId}:${requestId}`)) await this.#relayClosed(sessionId, requestId)
      }
    }
  }

  /** The ask is closed (its row says so): this instance's agent gets what closed it, and it is forgotten here. */
  async #relayClosed (sessionId: string, requestId: string): Promise<void> {
    const ask = this.#asks.get(sessionId)?.get(requestId)?.ask
    if (!ask) {
      this.#forget(sessionId, requestId)
      return
    }
    const response = await this.#o.events.permissionResponse(sessionId, requestId).catch(() => null)
    const answer: PermissionAnswer = response
      ? JSON.parse(response.json) as PermissionAnswer
      : { decision: 'deny', message: 'This permission request was cancelled.' }
    this.#deliver(sessionId, requestId, ask, answer)
  }

  #deliver (sessionId: string, requestId: string, ask: PermissionAsk, answer: PermissionAnswer): void {
    this.#forget(sessionId, requestId)
    if (!this.#o.send(sessionId, cliResponse(ask, answer))) {
      this.#o.logger.warn({ sessionId, requestId }, 'the agent that asked is gone: the answer reached nobody')
    }
  }

  /**
   * An ask this instance does not hold open: 404 when the row does not exist, 409 when it closed.
   * An open row without its agent here (its process ended meanwhile) is answered, to no effect.
   */
  async #closedReason (sessionId: string, requestId: string): Promise<PermissionAsk> {
    const found = await this.#o.repo.find(sessionId, requestId)
    if (!found) throw new PermissionRequestNotFound(sessionId, requestId)
    if (found.status !== 'pending') throw permissionRequestClosed(requestId, found.status)
    return found.request as unknown as PermissionAsk
  }

  /** The CLI withdrew one ask (`control_cancel_request`): it can no longer be answered. */
  cancelOne (sessionId: string, requestId: string): Promise<void> {
    return this.#cancel(sessionId, 'agent', async () => {
      const row = await this.#o.repo.close(sessionId, requestId, 'cancelled', this.#o.clock())
      return row ? [requestId] : []
    })
  }

  /** Every open ask of the session is cancelled (interrupt, pause, the agent's end), with an event. */
  cancelOpen (sessionId: string, reason: string): Promise<void> {
    return this.#cancel(sessionId, reason, () => this.#o.repo.cancelOpen(sessionId, this.#o.clock()))
  }

  /**
   * Sessions whose agents are gone without this instance knowing them (a previous run's, a dead
   * instance's): whatever they asked is cancelled. Returns how many sessions had open asks.
   */
  async cancelOpenOf (sessionIds: string[] | 'all', reason: string): Promise<number> {
    const ids = sessionIds === 'all' ? await this.#o.repo.pendingSessions() : sessionIds
    const bySession = await this.#o.repo.cancelOpenOf(ids, this.#o.clock())
    for (const [sessionId, requestIds] of bySession) {
      await this.#o.events.append(sessionId, 'permission_cancelled', { requestIds, reason })
    }
    return bySession.size
  }

  async #cancel (sessionId: string, reason: string, close: () => Promise<string[]>): Promise<void> {
    // an ask still being stored is cancelled with the rest, not left open behind
    await this.#settledOpenings([sessionId])
    const requestIds = await close()
    for (const requestId of requestIds) this.#forget(sessionId, requestId)
    if (requestIds.length > 0) await this.#o.events.append(sessionId, 'permission_cancelled', { requestIds, reason })
  }

  #expire (sessionId: string, requestId: string, seconds: number): void {
    this.answer(sessionId, requestId, timeoutAnswer(seconds), 'timeout').catch((err: Error & { statusCode?: number }) => {
      // answered or cancelled meanwhile: nothing to do
      if (err.statusCode !== 409 && err.statusCode !== 404) this.#o.logger.error({ err, sessionId, requestId }, 'denying an unanswered permission request failed')
    })
  }

  /** A closed ask: its timer and its record go. */
  #forget (sessionId: string, requestId: string): void {
    const entries = this.#asks.get(sessionId)
    clearTimeout(entries?.get(requestId)?.timer)
    entries?.delete(requestId)
    if (entries?.size === 0) this.#asks.delete(sessionId)
  }

  /** The open asks of these sessions, for their views: with those being stored here, once they are. */
  async pendingOf (sessionIds: string[]): Promise<PermissionRow[]> {
    await this.#settledOpenings(sessionIds)
    return this.#o.repo.pendingOf(sessionIds)
  }

  /** Shutdown: no timer may fire into a closed database. */
  close (): void {
    for (const entries of this.#asks.values()) for (const entry of entries.values()) clearTimeout(entry.timer)
    this.#asks.clear()
  }
}
