import { randomUUID } from 'node:crypto'
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../config.js'
import type { SessionRow } from '../db/schema.js'
import { isTerminal } from '../domain/state-machine.js'
import { MessageNotAccepted, invalidTransition } from '../errors.js'
import type { EventLog } from '../events/event-log.js'
import { STOP_REASON, type SessionLifecycleManager, type TransitionEvent } from '../sessions/lifecycle-manager.js'
import type { SessionRepository } from '../sessions/session-repository.js'
import { AgentProcess, type AgentExit, type StopReason } from './agent-process.js'
import { AgentSlots } from './agent-slots.js'
import { claudeCommand } from './claude-command.js'
import type { ProcessRegistry } from './process-registry.js'
import { parseAgentLine, turnUsage, withoutNul } from './stream-json.js'

/** Numbers that shape supervision; named once. */
export const SUPERVISION = {
  /** crashes in a row (no turn completed in between) before the session is failed */
  maxConsecutiveCrashes: 3,
  /** unstored agent lines per session before its stdout is paused */
  outputHighWater: 2000,
  outputLowWater: 500,
  /** agent output refreshes lastActivityAt at most this often */
  activityWriteEveryMs: 5000,
  /** a pause waits this long for an interrupted turn's result before stopping anyway */
  interruptWaitMs: 2000
} as const

interface LiveAgent {
  proc: AgentProcess
  agentSessionId: string
  /** the message whose turn runs now; confirmed once its system/init arrives */
  inflight: { seq: number, confirmed: boolean } | null
  /** the session had never run a conversation before this process */
  firstStart: boolean
  lastActiveAt: number
  /** chosen to make room for another session's start */
  evicting?: boolean
  /** a stop was asked for (a pause may first spend a while interrupting the turn) */
  leaving?: boolean
  lastActivityWrite: number
  unstored: number
  /** settles line handling in order */
  chain: Promise<void>
  /** the registry record of the process, written while it starts */
  recorded?: Promise<void>
  turnEnded?: () => void
}

export interface AgentSupervisorOptions {
  config: Config
  manager: SessionLifecycleManager
  repo: SessionRepository
  events: EventLog
  registry: ProcessRegistry
  logger: FastifyBaseLogger
  parentEnv?: NodeJS.ProcessEnv
  clock?: () => Date
}

/**
 * Runs one Claude Code process per live session and moves messages through it: a message is
 * stored first (the log is the queue), then delivered when the agent is free; a suspended session
 * is resumed on the way; crashes and failed resumes leave the session resumable with the message
 * kept. The lifecycle manager stays the only writer of state: this class asks it for transitions.
 */
export class AgentSupervisor {
  readonly #o: AgentSupervisorOptions
  readonly #log: FastifyBaseLogger
  readonly #clock: () => Date
  readonly #live = new Map<string, LiveAgent>()
  readonly #locks = new Map<string, Promise<void>>()
  readonly #crashes = new Map<string, number>()
  /**
   * Paused sessions that may hold messages the pause kept (it interrupted a turn or a start), so
   * that their resume delivers them. In memory: after a restart of the service such messages go
   * out with the session's next message instead. Every other resume costs no query.
   */
  readonly #keptByPause = new Set<string>()
  /** big batches of state events waiting for the next tick */
  readonly #deferred = new Set<Promise<void>>()
  /** sessions with an agent temp directory (created since start-up) */
  readonly #tmpDirs = new Set<string>()
  readonly #slots: AgentSlots
  #closing = false

  constructor (opts: AgentSupervisorOptions) {
    this.#o = opts
    this.#log = opts.logger
    this.#clock = opts.clock ?? (() => new Date())
    this.#slots = new AgentSlots(opts.config.agent.maxLive)
    opts.manager.setHooks({
      stopProcess: (id, reason) => this.stopAgent(id, reason),
      // the agent's temp directory goes; the working directory (the user's code) never does.
      // Only sessions that ran an agent since start-up have one: a sweep of 100k costs nothing.
      releaseResources: async (id) => {
        if (!this.#tmpDirs.delete(id)) return
        await rm(this.#tmpDir(id), { recursive: true, force: true })
      }
    })
    // Every state change is part of the session's story on the stream
    const stateEvent = (e: TransitionEvent) => ({
      sessionId: e.sessionId, type: 'state' as const, data: { from: e.from, to: e.to, reason: e.reason, actor: e.actor, version: e.version }
    })
    opts.manager.on('transition', (e) => {
      opts.events.appendMany([stateEvent(e)])
      // messages a pause kept are delivered after the resume, in order; without, nothing starts
      if (e.from === 'paused' && this.#keptByPause.delete(e.sessionId) && e.to === 'active') this.#kick(e.sessionId)
    })
    // a big sweep's changes are recorded after it returns, off the sweep's critical path
    opts.manager.on('transitions', (list) => {
      if (list.length <= 1000) {
        opts.events.appendMany(list.map(stateEvent))
        return
      }
      // shutdown waits for it (close()), so these events are flushed before the database closes
      const deferred = new Promise<void>((resolve) => setImmediate(() => {
        opts.events.appendMany(list.map(stateEvent))
        resolve()
      }))
      this.#deferred.add(deferred)
      deferred.then(() => this.#deferred.delete(deferred))
    })
  }

  get liveCount (): number { return this.#live.size }

  isLive (sessionId: string): boolean { return this.#live.has(sessionId) }

  /** Start-up: end what a previous run left, then mark every active session suspended. */
  async start (): Promise<void> {
    await mkdir(this.#o.config.agent.configDir, { recursive: true })
    const reaped = await this.#o.registry.reapOrphans()
    // no agent runs yet: whatever temp files earlier runs left are nobody's
    await rm(join(this.#o.config.dataDir, 'tmp'), { recursive: true, force: true })
    if (reaped.length > 0) this.#log.warn({ pids: reaped }, 'ended agent processes left by a previous run')
    const suspended = await this.#o.manager.suspendAllActive()
    if (suspended.length > 0) this.#log.info({ count: suspended.length }, 'sessions active at the last stop are now suspended')
  }

  /**
   * Stores a user message and sets its delivery going. 409 for a paused or terminal session;
   * a retry with the same clientMessageId returns the first seq without sending twice.
   */
  async sendMessage (sessionId: string, message: { text: string, clientMessageId?: string | undefined }): Promise<{ seq: number, duplicate: boolean }> {
    const session = await this.#o.manager.get(sessionId)
    if (this.#closing) throw new MessageNotAccepted(sessionId, 'the service is shutting down')
    if (session.state === 'paused' || isTerminal(session.state)) {
      throw new MessageNotAccepted(sessionId, session.state === 'paused' ? 'it is paused: resume it first' : `it is ${session.state}`)
    }
    const stored = await this.#o.events.appendUser(sessionId, message)
    if (!stored.duplicate) this.#kick(sessionId)
    return stored
  }

  /**
   * A fresh conversation (a new agent session id) for a suspended or active session, delivering the
   * messages still queued. The user's way out of a resume that keeps failing.
   */
  async restart (sessionId: string, reason?: string): Promise<SessionRow> {
    const session = await this.#o.manager.get(sessionId)
    if (session.state !== 'suspended' && session.state !== 'active') {
      throw invalidTransition(session.state, 'active', [], session.version, 'only a suspended or active session can be restarted')
    }
    await this.#exclusive(sessionId, async () => {
      await this.stopAgent(sessionId, 'restart')
      await this.#o.repo.startNewConversation(sessionId)
      this.#crashes.delete(sessionId)
    })
    let row = await this.#o.manager.get(sessionId)
    if (row.state === 'suspended') {
      row = await this.#o.manager.transitionState(sessionId, 'active', { actor: 'user', reason: reason ?? 'restart: fresh conversation' })
    }
    await this.#o.events.append(sessionId, 'status', { message: 'Starting a fresh conversation…' })
    this.#kick(sessionId)
    return row
  }

  /** The manager's hook: the session left `active` (or was deleted); its process must go. */
  async stopAgent (sessionId: string, reason: StopReason): Promise<void> {
    const live = this.#live.get(sessionId)
    if (!live) return
    live.leaving = true
    if (reason === 'pause' && live.inflight) {
      // only a busy session can have messages waiting: the resume must deliver them
      this.#keptByPause.add(sessionId)
      // interrupt the turn so the transcript ends cleanly, then stop
      const ended = new Promise<void>((resolve) => { live.turnEnded = resolve })
      live.proc.interrupt()
      await Promise.race([ended, new Promise((resolve) => setTimeout(resolve, SUPERVISION.interruptWaitMs))])
    }
    await live.proc.stop(reason)
    await live.chain
  }

  /** Shutdown: no new work, every agent stopped, their sessions suspended, events flushed. */
  async close (): Promise<void> {
    this.#closing = true
    const ids = [...this.#live.keys()]
    await Promise.all(ids.map((id) => this.stopAgent(id, 'shutdown')))
    for (const id of ids) {
      await this.#o.manager.transitionState(id, 'suspended', { actor: 'system', reason: 'shutdown' })
        .catch((err: Error) => this.#log.warn({ err, sessionId: id }, 'could not mark the session suspended at shutdown'))
    }
    await Promise.all(this.#deferred)
    await this.#o.events.flush()
  }

  /** Delivers queued messages, one turn at a time. Serialised per session. */
  #kick (sessionId: string): void {
    this.#exclusive(sessionId, () => this.#deliverNext(sessionId))
      .catch((err: Error) => this.#log.error({ err, sessionId }, 'message delivery failed'))
  }

  async #deliverNext (sessionId: string): Promise<void> {
    for (let step = 0; step < 8; step++) {
      if (this.#closing) return
      let live = this.#live.get(sessionId)
      if (live && (live.proc.stopping || live.leaving)) {
        // never hand a message to a process on its way out (an idle suspension, an eviction):
        // let it finish, then start from the state it leaves behind
        await live.proc.exited
        await live.chain
        live = this.#live.get(sessionId)
        if (live && (live.proc.stopping || live.leaving)) return
      }
      if (live?.inflight) return // the turn's result kicks the next message
      const next = await this.#o.repo.nextQueuedMessage(sessionId)
      if (!next) return
      let session = await this.#o.repo.findById(sessionId)
      if (!session || session.state === 'paused' || isTerminal(session.state)) return
      if (session.state === 'pending') {
        session = await this.#o.manager.transitionState(sessionId, 'active', { actor: 'system', reason: 'first message' })
      } else if (session.state === 'suspended') {
        if (this.#tooManyCrashes(session)) return
        // not awaited: the log keeps it ahead of everything this resume produces, and the
        // respawn need not wait for its commit
        this.#o.events.append(sessionId, 'status', { message: 'Resuming session…' })
          .catch((err: Error) => this.#log.warn({ err, sessionId }, 'status event not stored'))
        session = await this.#o.manager.transitionState(sessionId, 'active', { actor: 'system', reason: 'message' })
      }
      if (session.state !== 'active') continue
      // active: claim the turn first, so neither the idle sweep nor an eviction takes it away
      if (!await this.#o.repo.claimBusy(sessionId, this.#clock())) continue
      const agent = live ?? await this.#spawn(session)
      if (!agent) return
      if (!live && !await this.#stillActive(sessionId, agent)) return
      agent.inflight = { seq: next.seq, confirmed: false }
      agent.lastActiveAt = Date.now()
      const sent = agent.proc.send({
        type: 'user',
        message: { role: 'user', content: next.text },
        parent_tool_use_id: null,
        session_id: '',
        uuid: randomUUID()
      })
      if (!sent) {
        // the process is going away; its exit handler releases the turn and the message stays queued
        this.#log.warn({ sessionId }, 'agent stdin closed before delivery')
      }
      return
    }
  }

  /**
   * A pause, suspend or end that came while the agent was starting found no process to stop: the
   * new one is stopped here instead, before it is given the message (which stays queued).
   */
  async #stillActive (sessionId: string, agent: LiveAgent): Promise<boolean> {
    const now = await this.#o.repo.findById(sessionId)
    if (now?.state === 'active') return true
    if (now?.state === 'paused') this.#keptByPause.add(sessionId)
    this.#log.info({ sessionId, state: now?.state ?? 'deleted' }, 'the session left active while its agent started: stopped')
    await this.stopAgent(sessionId, now ? STOP_REASON[now.state] ?? 'user' : 'deleted')
    await agent.proc.exited
    await this.#o.repo.releaseBusy(sessionId, this.#clock())
    return false
  }

  #tooManyCrashes (session: SessionRow): boolean {
    return (this.#crashes.get(session.id) ?? 0) >= SUPERVISION.maxConsecutiveCrashes
  }

  async #spawn (session: SessionRow): Promise<LiveAgent | null> {
    const sessionId = session.id
    await this.#takeSlot(sessionId)
    if (this.#closing) {
      this.#slots.release()
      await this.#o.repo.releaseBusy(sessionId, this.#clock())
      return null
    }
    const firstStart = session.agentSessionId === null
    const agentSessionId = session.agentSessionId ?? randomUUID()
    const tmpDir = this.#tmpDir(sessionId)
    await mkdir(tmpDir, { recursive: true })
    this.#tmpDirs.add(sessionId)
    const proc = new AgentProcess({
      sessionId,
      command: claudeCommand({
        agent: this.#o.config.agent,
        sessionId,
        model: session.model,
        conversation: { mode: firstStart ? 'new' : 'resume', agentSessionId },
        parentEnv: this.#o.parentEnv ?? process.env,
        tmpDir
      }),
      cwd: session.workdir,
      killGraceMs: this.#o.config.agent.killGraceMs,
      logger: this.#log.child({ sessionId })
    })
    const live: LiveAgent = {
      proc, agentSessionId, inflight: null, firstStart, lastActiveAt: Date.now(), lastActivityWrite: 0, unstored: 0, chain: Promise.resolve()
    }
    // listening before anything can be emitted: no line and no exit may slip past
    proc.on('line', (line) => this.#onLine(sessionId, live, line))
    proc.once('exit', (exit) => {
      live.chain = live.chain.then(() => this.#onExit(sessionId, live, exit))
        .catch((err: Error) => this.#log.error({ err, sessionId }, 'handling the agent exit failed'))
    })
    try {
      await proc.start()
    } catch (err) {
      this.#slots.release()
      await this.#startFailed(session, live, `the agent could not be started: ${(err as Error).message}`)
      return null
    }
    this.#live.set(sessionId, live)
    this.#log.info({ sessionId, pid: proc.pid, mode: firstStart ? 'new' : 'resume' }, 'agent started')
    live.recorded = this.#o.registry.record(sessionId, proc.pid!)
      .catch((err: Error) => this.#log.warn({ err }, 'could not record the agent process'))
    return live
  }

  /** At the cap: suspend the least recently active idle agent, or wait for one to free up. */
  async #takeSlot (sessionId: string): Promise<void> {
    if (this.#slots.tryAcquire()) return
    const granted = this.#slots.acquire()
    if (!await this.#makeRoom(sessionId)) {
      await this.#o.events.append(sessionId, 'status', { message: 'Waiting for a free agent slot…' })
    }
    await granted
  }

  /** Suspends the least recently active idle agent, if there is one; its exit frees a slot. */
  async #makeRoom (except?: string): Promise<boolean> {
    const victim = [...this.#live.entries()]
      .filter(([id, a]) => id !== except && !a.inflight && !a.evicting)
      .sort(([, a], [, b]) => a.lastActiveAt - b.lastActiveAt)[0]
    if (!victim) return false
    victim[1].evicting = true
    await this.#o.manager.transitionState(victim[0], 'suspended', { actor: 'system', reason: 'eviction' })
      .catch((err: Error) => this.#log.warn({ err, sessionId: victim[0] }, 'eviction failed'))
    return true
  }

  #onLine (sessionId: string, live: LiveAgent, line: string): void {
    const parsed = parseAgentLine(line)
    live.unstored++
    if (live.unstored === SUPERVISION.outputHighWater) live.proc.pauseOutput()
    const stored = this.#o.events.appendJson(sessionId, 'agent', parsed.json).catch((err: Error) => {
      // the event log has logged it; an agent line that cannot be stored must not take the service down
      this.#log.error({ err: (err as { cause?: unknown }).cause ?? err, sessionId }, 'agent output not stored')
    }).finally(() => {
      live.unstored--
      if (live.unstored === SUPERVISION.outputLowWater) live.proc.resumeOutput()
    })
    live.chain = live.chain.then(async () => {
      live.lastActiveAt = Date.now()
      if (parsed.kind === 'init') await this.#onTurnStart(sessionId, live)
      else if (parsed.kind === 'result') await this.#onTurnEnd(sessionId, live, parsed.message, stored)
      else await this.#maybeRecordActivity(sessionId, live)
    }).catch((err: Error) => this.#log.error({ err, sessionId }, 'handling an agent line failed'))
  }

  async #onTurnStart (sessionId: string, live: LiveAgent): Promise<void> {
    if (!live.inflight || live.inflight.confirmed) return
    live.inflight.confirmed = true
    // from here on the message belongs to the transcript: a crash must not send it again
    await this.#o.repo.markDelivered(sessionId, live.inflight.seq, live.agentSessionId)
    live.firstStart = false
  }

  async #onTurnEnd (sessionId: string, live: LiveAgent, result: Record<string, unknown>, stored: Promise<unknown>): Promise<void> {
    await stored.catch(() => {})
    // a result before any turn started (a refused resume) is no turn: the exit handler takes over
    if (live.inflight && !live.inflight.confirmed) return
    const at = this.#clock()
    await this.#o.repo.addTurnUsage(sessionId, { ...turnUsage(result), at })
    live.inflight = null
    live.lastActivityWrite = at.getTime()
    if (result.is_error !== true) this.#crashes.delete(sessionId)
    live.turnEnded?.()
    live.turnEnded = undefined
    this.#kick(sessionId)
    // a start waiting for a slot can have this agent's now that its turn is over
    if (this.#slots.waiting > 0) setImmediate(() => { this.#makeRoom() })
  }

  async #maybeRecordActivity (sessionId: string, live: LiveAgent): Promise<void> {
    const now = this.#clock()
    if (now.getTime() - live.lastActivityWrite < SUPERVISION.activityWriteEveryMs) return
    live.lastActivityWrite = now.getTime()
    await this.#o.repo.recordActivity(sessionId, now)
  }

  async #onExit (sessionId: string, live: LiveAgent, exit: AgentExit): Promise<void> {
    if (this.#live.get(sessionId) === live) this.#live.delete(sessionId)
    this.#slots.release()
    await live.recorded
    await this.#o.registry.forget(sessionId).catch(() => {})
    this.#log.info({ sessionId, code: exit.code, signal: exit.signal, reason: exit.reason }, 'agent exited')
    live.turnEnded?.()
    const inflight = live.inflight
    live.inflight = null
    if (inflight) await this.#o.repo.releaseBusy(sessionId, this.#clock())
    if (exit.reason !== null) return // stopped by the service: whoever stopped it set the state
    if (inflight && !inflight.confirmed) {
      const session = await this.#o.repo.findById(sessionId)
      if (session) await this.#startFailed(session, live, describeExit(exit))
      return
    }
    await this.#crashed(sessionId, exit)
  }

  /** The process never took up the message: keep it, tell the user, start nothing on our own. */
  async #startFailed (session: SessionRow, live: LiveAgent, detail: string): Promise<void> {
    const sessionId = session.id
    await this.#o.repo.releaseBusy(sessionId, this.#clock())
    const resuming = !live.firstStart
    await this.#o.events.append(sessionId, 'error', {
      code: resuming ? 'AGENT_RESUME_FAILED' : 'AGENT_START_FAILED',
      message: resuming
        ? `The conversation could not be resumed: ${detail}. Your message is kept: send again to retry, or POST /restart for a fresh conversation.`
        : `The agent could not be started: ${detail}`
    })
    const neverRan = live.firstStart && session.turns === 0
    const to = neverRan ? 'failed' : 'suspended'
    await this.#o.manager.transitionState(sessionId, to, {
      actor: 'system', reason: resuming ? 'resume failed' : 'start failed', lastError: detail
    }).catch((err: Error) => this.#log.warn({ err, sessionId }, 'could not record the failed start'))
  }

  async #crashed (sessionId: string, exit: AgentExit): Promise<void> {
    const crashes = (this.#crashes.get(sessionId) ?? 0) + 1
    this.#crashes.set(sessionId, crashes)
    const detail = describeExit(exit)
    const failed = crashes >= SUPERVISION.maxConsecutiveCrashes
    await this.#o.events.append(sessionId, 'error', {
      code: 'AGENT_CRASHED',
      message: failed
        ? `The agent crashed ${crashes} times in a row (${detail}); the session has failed.`
        : `The agent stopped unexpectedly (${detail}). Send a message to resume the conversation.`
    })
    const session = await this.#o.repo.findById(sessionId)
    if (!session || session.state !== 'active') return
    await this.#o.manager.transitionState(sessionId, failed ? 'failed' : 'suspended', { actor: 'system', reason: 'crash', lastError: detail })
      .catch((err: Error) => this.#log.warn({ err, sessionId }, 'could not record the crash'))
  }

  #tmpDir (sessionId: string): string {
    return join(this.#o.config.dataDir, 'tmp', sessionId)
  }

  /** Runs `fn` after every earlier task of the same session: one writer per conversation. */
  /** Resolves once the session's pending work (a delivery, a start waiting for a slot) is done. */
  async settled (sessionId: string): Promise<void> {
    await this.#locks.get(sessionId)
  }

  #exclusive<T> (sessionId: string, fn: () => Promise<T>): Promise<T> {
    const previous = this.#locks.get(sessionId) ?? Promise.resolve()
    const run = previous.then(fn, fn)
    const settled = run.then(() => {}, () => {})
    this.#locks.set(sessionId, settled)
    settled.then(() => { if (this.#locks.get(sessionId) === settled) this.#locks.delete(sessionId) })
    return run
  }
}

function describeExit (exit: AgentExit): string {
  const how = exit.signal ? `killed by ${exit.signal}` : `exit code ${exit.code}`
  const stderr = withoutNul(exit.stderrTail).trim().split('\n').slice(-3).join(' ').slice(0, 500)
  return stderr ? `${how}: ${stderr}` : how
}
