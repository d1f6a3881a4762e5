import type { EventType } from '../domain/event-types.js'
import { withoutNul } from '../domain/text.js'
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
}

const key = (sessionId: string, requestId: string) => `${sessionId}\u0000${requestId}`

/** A JSON value with U+0000 replaced in every string (Postgres text and jsonb cannot hold it). */
function withoutNulDeep<T> (value: T): T {
  return JSON.parse(JSON.stringify(value, (_k, v: unknown) => (typeof v === 'string' ? withoutNul(v) : v))) as T
}

/**
 * The agents' permission asks, from the CLI's line to the user's answer: each is stored (a row,
 * the truth of whether it is open, and an event, what the phone sees), answered at most once (a
 * compare-and-set on the row), denied when nobody answers in time, and cancelled when the turn or
 * the agent it belongs to ends. Answers go to the agent as `control_response` lines.
 */
export class PermissionBroker {
  readonly #o: PermissionBrokerOptions
  /** asks being stored: an answer that overtakes its own request's row waits for it */
  readonly #opening = new Map<string, Promise<void>>()
  /**
   * The open asks of this instance's agents, so an answer is checked and sent after one statement
   * (the compare-and-set); the row stays the truth of whether it is still open
   */
  readonly #open = new Map<string, PermissionAsk>()
  readonly #timers = new Map<string, NodeJS.Timeout>()

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
    // Postgres cannot store U+0000 (the event log replaces it the same way)
    const storable = withoutNulDeep(data)
    const stored = this.#o.events.append(sessionId, type, storable)
    // handled below; this keeps a failure of both writes from being an unhandled rejection
    stored.catch(() => {})
    const k = key(sessionId, ask.requestId)
    // The row and the event are written side by side; until both are (and the row knows its
    // event's seq), an answer or a session view of this instance waits for them
    const opening = (async () => {
      const opened = await this.#o.repo.open({
        sessionId, requestId: ask.requestId, kind: ask.kind, toolName: ask.toolName, request: withoutNulDeep({ ...ask }), createdAt, expiresAt
      })
      if (!opened) throw new Error('the request id is already taken')
      this.#open.set(k, ask)
      const timer = setTimeout(() => { this.#expire(sessionId, ask.requestId, timeoutSeconds) }, timeoutSeconds * 1000)
      timer.unref()
      this.#timers.set(k, timer)
      const seq = await stored
      await this.#o.repo.setSeq(sessionId, ask.requestId, seq)
      this.#o.onAsk(sessionId, type, seq)
    })().catch((err: Error) => {
      this.#o.logger.error({ err, sessionId, requestId: ask.requestId }, 'storing a permission request failed: it is denied')
      // nobody could answer an ask that is not stored: the agent must not wait for it
      if (!this.#open.has(k)) this.#o.send(sessionId, cliResponse(ask, { decision: 'deny', message: 'The service could not relay this permission request to the user; it was denied.' }))
    }).finally(() => {
      if (this.#opening.get(k) === opening) this.#opening.delete(k)
    })
    this.#opening.set(k, opening)
  }

  /** The session has asks open (or being stored) on this instance. */
  hasOpen (sessionId: string): boolean {
    const prefix = `${sessionId}\u0000`
    for (const k of this.#open.keys()) if (k.startsWith(prefix)) return true
    return this.isOpening(sessionId)
  }

  /** An ask of the session is being stored on this instance: its view must wait for it. */
  isOpening (sessionId: string): boolean {
    const prefix = `${sessionId}\u0000`
    for (const k of this.#opening.keys()) if (k.startsWith(prefix)) return true
    return false
  }

  async #settledOpenings (sessionIds: string[]): Promise<void> {
    const prefixes = sessionIds.map((id) => `${id}\u0000`)
    await Promise.all([...this.#opening].filter(([k]) => prefixes.some((p) => k.startsWith(p))).map(([, p]) => p))
  }

  /**
   * The user's answer (or the timeout's): the first one closes the request and reaches the agent;
   * any later one is a 409, an unknown id a 404.
   */
  async answer (sessionId: string, requestId: string, answer: PermissionAnswer, by: 'user' | 'timeout' = 'user'): Promise<AnswerResult> {
    const k = key(sessionId, requestId)
    await this.#opening.get(k)
    // open on this instance: known without a read. Otherwise the row says why it cannot be answered
    const ask = this.#open.get(k) ?? await this.#closedReason(sessionId, requestId)
    const problem = answerProblem(ask, answer)
    if (problem !== null) throw new InvalidPermissionAnswer(problem)
    const status: ClosedStatus = by === 'timeout' ? 'timed_out' : answer.decision === 'allow' ? 'allowed' : 'denied'
    const closed = await this.#o.repo.close(sessionId, requestId, status, this.#o.clock())
    if (!closed) {
      // another answer, the timeout or a cancellation won the race
      this.#forget(sessionId, requestId)
      const now = await this.#o.repo.find(sessionId, requestId)
      throw permissionRequestClosed(requestId, now?.status ?? 'cancelled')
    }
    this.#forget(sessionId, requestId)
    if (!this.#o.send(sessionId, cliResponse(ask, answer))) {
      this.#o.logger.warn({ sessionId, requestId }, 'the agent that asked is gone: the answer reached nobody')
    }
    const seq = await this.#o.events.append(sessionId, 'permission_response', {
      requestId,
      decision: answer.decision,
      ...(answer.message !== undefined ? { message: answer.message } : {}),
      ...(answer.updatedInput !== undefined ? { updatedInput: answer.updatedInput } : {}),
      ...(answer.answers !== undefined ? { answers: answer.answers } : {}),
      remember: answer.remember === true && answer.decision === 'allow' && rememberable(ask),
      by
    })
    return { requestId, decision: answer.decision, seq }
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

  /** Start-up: no agent runs yet, so whatever was open when the service stopped is cancelled. */
  async cancelAllOpen (): Promise<number> {
    const bySession = await this.#o.repo.cancelAllOpen(this.#o.clock())
    for (const [sessionId, requestIds] of bySession) {
      await this.#o.events.append(sessionId, 'permission_cancelled', { requestIds, reason: 'restart' })
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
    this.#timers.delete(key(sessionId, requestId))
    this.answer(sessionId, requestId, timeoutAnswer(seconds), 'timeout').catch((err: Error & { statusCode?: number }) => {
      // answered or cancelled meanwhile: nothing to do
      if (err.statusCode !== 409 && err.statusCode !== 404) this.#o.logger.error({ err, sessionId, requestId }, 'denying an unanswered permission request failed')
    })
  }

  /** A closed ask: its timer and its record go. */
  #forget (sessionId: string, requestId: string): void {
    const k = key(sessionId, requestId)
    clearTimeout(this.#timers.get(k))
    this.#timers.delete(k)
    this.#open.delete(k)
  }

  /** The open asks of these sessions, for their views: with those being stored here, once they are. */
  async pendingOf (sessionIds: string[]): Promise<PermissionRow[]> {
    await this.#settledOpenings(sessionIds)
    return this.#o.repo.pendingOf(sessionIds)
  }

  /** Shutdown: no timer may fire into a closed database. */
  close (): void {
    for (const timer of this.#timers.values()) clearTimeout(timer)
    this.#timers.clear()
    this.#open.clear()
  }
}
