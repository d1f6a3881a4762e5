import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { setTimeout as delay } from 'node:timers/promises'
import type { Config } from '../config.js'
import type { SessionRow } from '../db/schema.js'
import {
  classifyExit,
  crashOutcome,
  describeExit,
  startFailure,
  tooManyCrashes,
  type ExitOutcome,
  type InflightTurn
} from '../domain/exit-policy.js'
import type { ControlMessage, Doorbell } from '../cluster/doorbell.js'
import type { InstanceLease } from '../cluster/instance-lease.js'
import type { Fence } from '../domain/lease.js'
import { parseCanUseTool, type PermissionAnswer } from '../domain/permissions.js'
import { isTerminal } from '../domain/state-machine.js'
import { stopReasonFor, type StopReason } from '../domain/stop-reasons.js'
import { FencedWrite, MessageNotAccepted, invalidTransition, type ErrorCode } from '../errors.js'
import type { EventLog } from '../events/event-log.js'
import type { Log } from '../logger.js'
import { ORPHANED, type SessionLifecycleManager, type SettingsEvent } from '../sessions/lifecycle-manager.js'
import type { PermissionRepository } from '../sessions/permission-repository.js'
import type { TurnStore } from '../sessions/turn-store.js'
import { AgentPool, type AgentPhase, type PooledAgent } from './agent-pool.js'
import type { AgentExit, AgentProcess } from './agent-process.js'
import { KeyedMutex } from './keyed-mutex.js'
import type { ProcessRegistry } from './process-registry.js'
import { PermissionBroker, type AnswerResult, type AttentionKind } from './permission-broker.js'
import { parseAgentLine, turnUsage } from './stream-json.js'

/** Numbers that shape supervision; named once. */
const SUPERVISION = {
  /** unstored agent lines per session before its stdout is paused */
  outputHighWater: 2000,
  outputLowWater: 500,
  /** agent output refreshes lastActivityAt at most this often */
  activityWriteEveryMs: 5000,
  /** a pause waits this long for an interrupted turn's result before stopping anyway */
  interruptWaitMs: 2000,
  /**
   * rounds of one delivery before it gives up for now: each round follows a state that moved
   * under it (a resume, an agent on its way out); the next message or turn's end tries again
   */
  deliveryRounds: 8,
  /**
   * how often an instance checks the sessions it owns against the table: a nudge from another
   * instance may have been lost (nothing is kept for a listener that was reconnecting)
   */
  ownedPollMs: 2000,
  /** how often a start looks again whether another instance's agent of the session is gone */
  otherAgentPollMs: 100
} as const

interface LiveAgent extends PooledAgent {
  /** its claim on the session: every write of it carries this */
  fence: Fence
  agentSessionId: string
  /** how long its permission asks wait for an answer (the session's, or the default) */
  permissionTimeoutSeconds: number
  /** the service's control requests to this process still unanswered: request id → what it asked */
  controls: Map<string, string>
  /** the settings it was started with, to catch a PATCH that came while it started */
  launched: { permissionMode: string | null, model: string | null }
  /** the message whose turn runs now; confirmed once its system/init arrives */
  inflight: (InflightTurn & { seq: number }) | null
  /** the session had never run a conversation before this process */
  firstStart: boolean
  lastActivityWrite: number
  unstored: number
  /** settles line handling in order */
  chain: Promise<void>
  turnEnded?: (() => void) | undefined
}

export interface AgentSupervisorOptions {
  config: Pick<Config, 'agent' | 'dataDir' | 'workspaceRoot' | 'sandbox' | 'perUser' | 'instance'>
  /** the agents' permission asks */
  permissions: PermissionRepository
  /** the one writer of session state: every state change goes through it */
  manager: SessionLifecycleManager
  /** what the supervisor may write on a session: the facts of its turns */
  turns: TurnStore
  /** the event log, which is also the message queue */
  events: EventLog
  registry: ProcessRegistry
  /** this instance's lease, and how it reaches the others */
  cluster: {
    lease: Pick<InstanceLease, 'id' | 'on' | 'fresh'>
    doorbell: Pick<Doorbell, 'control' | 'on' | 'shared'>
    isLive: (instanceId: string) => Promise<boolean>
    /** another live instance, to hand sessions to at shutdown */
    livePeer: (me: string) => Promise<string | null>
  }
  logger: Log
  parentEnv?: NodeJS.ProcessEnv
  clock?: () => Date
}

/** Something a user away from the app may want to be told of (push notifications listen). */
export interface AttentionNotice {
  sessionId: string
  kind: AttentionKind
  /** the event to open the session at */
  seq: number
  at: Date
}

export interface SupervisorEvents {
  attention: [AttentionNotice]
}

/**
 * Moves messages through one Claude Code process per live session: a message is stored first (the
 * log is the queue), then delivered when the agent is free; a suspended session is resumed on the
 * way; an agent's end is judged by the exit policy. The processes themselves are the pool's; every
 * change of state is asked of the lifecycle manager.
 */
export class AgentSupervisor extends EventEmitter<SupervisorEvents> {
  readonly #o: AgentSupervisorOptions
  readonly #log: Log
  readonly #clock: () => Date
  readonly #pool: AgentPool<LiveAgent>
  readonly #mutex = new KeyedMutex()
  readonly #crashes = new Map<string, number>()
  /**
   * Paused sessions that may hold messages the pause kept (it interrupted a turn or a start), so
   * that their resume delivers them. In memory: after a restart of the service such messages go
   * out with the session's next message instead. Every other resume costs no query.
   */
  readonly #keptByPause = new Set<string>()
  /**
   * Sessions whose queued messages wait after an interrupt: the user stopped the agent, so it does
   * not go on with the next one until they send again (or ask for it). In memory, like a pause's.
   */
  readonly #held = new Set<string>()
  readonly #permissions: PermissionBroker
  #closing = false
  #ownedPoll: NodeJS.Timeout | undefined
  /** deliveries asked for while this instance had no lease: tried again once it has one */
  readonly #deferred = new Set<string>()
  /** sessions with a delivery queued on the mutex and not started yet: one is enough */
  readonly #kicks = new Set<string>()
  /** sessions whose delivery is tried again soon (their owner was nudged) */
  readonly #rechecks = new Set<string>()

  constructor (opts: AgentSupervisorOptions) {
    super()
    this.#o = opts
    this.#log = opts.logger
    this.#clock = opts.clock ?? (() => new Date())
    this.#pool = new AgentPool<LiveAgent>({
      config: opts.config,
      registry: opts.registry,
      watchdogMs: opts.config.instance.leaseSeconds * 500,
      watchdogWhile: () => opts.cluster.lease.fresh(),
      logger: opts.logger,
      evict: (id) => this.#evict(id),
      ...(opts.parentEnv ? { parentEnv: opts.parentEnv } : {})
    })
    opts.manager.setHooks({
      stopProcess: (id, reason, worker) => this.#stopAnywhere(id, reason, worker),
      releaseResources: (id) => this.#pool.releaseResources(id)
    })
    this.#permissions = new PermissionBroker({
      repo: opts.permissions,
      events: opts.events,
      logger: opts.logger.child({ component: 'permissions' }),
      clock: this.#clock,
      send: (sessionId, message) => this.#pool.get(sessionId)?.proc.send(message) ?? false,
      onAsk: (sessionId, kind, seq) => this.#attention(sessionId, kind, seq)
    })
    opts.manager.on('settings', (e) => {
      if (this.#pool.get(e.sessionId)) this.#applySettings(e)
      else this.#tellOwner(e.sessionId)
    })
    // a session that ends holds nothing any more
    opts.manager.on('transitions', (events) => {
      for (const e of events) if (isTerminal(e.to) || e.from === 'active') this.#held.delete(e.sessionId)
      // a dead instance's sessions: what its agents asked can no longer be answered, and what
      // waits in their queues (sent while the owner was dying) is delivered from here
      const orphans = events.filter((e) => e.reason === ORPHANED).map((e) => e.sessionId)
      if (orphans.length > 0) this.#adoptOrphans(orphans)
    })
    opts.manager.on('transition', (e) => {
      // what an interrupt held waits for the next message; a session that leaves active gets
      // everything queued with its next message anyway (or its resume, or restart)
      if (isTerminal(e.to) || e.from === 'active') this.#held.delete(e.sessionId)
      // messages a pause kept are delivered after the resume, in order (a resume is the user's
      // go-ahead, an interrupt's hold included). The pause may have been made on another instance:
      // any resume looks at the queue
      if (e.from === 'paused' && e.to === 'active') {
        this.#keptByPause.delete(e.sessionId)
        this.#held.delete(e.sessionId)
        this.#kick(e.sessionId)
      }
    })
    opts.cluster.doorbell.on('control', (m) => this.#onControlMessage(m))
    opts.cluster.lease.on('lost', () => this.#leaseLost())
    opts.cluster.lease.on('registered', () => {
      const deferred = [...this.#deferred]
      this.#deferred.clear()
      for (const id of deferred) this.#kick(id)
      this.#pollOwned()
    })
  }

  get #me (): string | null {
    return this.#o.cluster.lease.id
  }

  get liveCount (): number { return this.#pool.size }

  /** what confines the agents (`bwrap` or `none`), decided by start() */
  get sandbox (): 'bwrap' | 'none' { return this.#pool.sandbox.mode }

  isLive (sessionId: string): boolean { return this.#pool.get(sessionId) !== undefined }

  /**
   * Start-up: end what a previous run on this data directory left (its processes, and its active
   * sessions, suspended), never what other instances run.
   */
  async start (previous: string[]): Promise<void> {
    const reaped = await this.#pool.start()
    if (reaped.length > 0) this.#log.warn({ pids: reaped }, 'ended agent processes left by a previous run')
    const suspended = await this.#o.manager.takeOver(previous)
    if (suspended.length > 0) this.#log.info({ count: suspended.length }, 'sessions active at the last stop are now suspended')
    // alone on the database (PGlite), whatever is open was left by a previous run
    const cancelled = await this.#permissions.cancelOpenOf(this.#o.cluster.doorbell.shared ? suspended : 'all', 'restart')
    if (cancelled > 0) this.#log.info({ sessions: cancelled }, 'permission requests open at the last stop are now cancelled')
    this.#schedulePoll()
  }

  #schedulePoll (): void {
    if (this.#closing || !this.#o.cluster.doorbell.shared) return
    this.#ownedPoll = setTimeout(() => {
      this.#pollOwned()
      this.#schedulePoll()
    }, SUPERVISION.ownedPollMs)
    this.#ownedPoll.unref()
  }

  /**
   * The sessions this instance owns, as the table has them: an agent whose claim is gone is
   * stopped, and one whose queue holds messages gets them. What a lost nudge would have done.
   */
  #pollOwned (): void {
    const me = this.#me
    if (me === null || this.#closing) return
    const running = this.#pool.ids()
    Promise.all([
      this.#o.manager.ownedBy(me).then((owned) => {
        const claims = new Map(owned.map((o) => [o.id, o]))
        for (const id of running) {
          const live = this.#pool.get(id)
          const claim = claims.get(id)
          if (live && live.phase !== 'leaving' && claim?.epoch !== live.fence.epoch) this.#sync(id)
        }
        for (const o of owned) if (o.queued && !this.#pool.get(o.id)?.inflight) this.#kick(o.id)
      }),
      // an agent's end whose record was lost would keep other instances from starting one
      this.#o.turns.agentsGoneExcept(me, running),
      // an answer given elsewhere whose notice was lost
      this.#permissions.reconcile(running)
    ]).catch((err: Error) => this.#log.warn({ err }, 'checking the owned sessions failed'))
  }

  /** The lease is lost: every agent here is killed now, before another instance may resume its session. */
  #leaseLost (): void {
    for (const id of this.#pool.ids()) {
      const live = this.#pool.get(id)
      if (!live) continue
      live.phase = 'leaving'
      live.proc.kill('failover').catch(() => {})
    }
  }

  /**
   * Sessions whose instance died, suspended here: their asks are cancelled. Their queues are the
   * business of the instances that took the messages (they look again until the lease is over),
   * or go out with the next message.
   */
  #adoptOrphans (ids: string[]): void {
    if (this.#me === null) return
    this.#permissions.cancelOpenOf(ids, 'failover')
      .catch((err: Error) => this.#log.warn({ err }, 'cancelling the permission requests of a dead instance failed'))
  }

  /** A delivery tried again in a quarter of the lease (a message waits for an owner that may be dead). */
  #recheck (sessionId: string): void {
    if (this.#rechecks.has(sessionId) || this.#closing) return
    this.#rechecks.add(sessionId)
    setTimeout(() => {
      this.#rechecks.delete(sessionId)
      this.#kick(sessionId)
    }, this.#o.config.instance.leaseSeconds * 250).unref()
  }

  /** The manager's hook: the session left `active`; its agent must go, here or where it runs. */
  async #stopAnywhere (sessionId: string, reason: StopReason, worker: string | null): Promise<void> {
    if (this.#pool.get(sessionId) || worker === null || worker === this.#me) {
      await this.stopAgent(sessionId, reason)
      return
    }
    await this.#o.cluster.doorbell.control(worker, { op: 'sync', sid: sessionId })
  }

  /** The session changed here, and its agent may run on another instance: that one is nudged. */
  #tellOwner (sessionId: string): void {
    this.#o.manager.find(sessionId).then(async (row) => {
      if (row?.state === 'active' && row.workerId !== null && row.workerId !== this.#me) {
        await this.#o.cluster.doorbell.control(row.workerId, { op: 'sync', sid: sessionId })
      }
    }).catch((err: Error) => this.#log.warn({ err, sessionId }, 'telling the session\'s owner failed'))
  }

  #onControlMessage (m: ControlMessage): void {
    const failed = (err: Error) => this.#log.warn({ err, sessionId: m.sid, op: m.op }, 'a request of another instance failed')
    if (m.op === 'sync') {
      // a message came through another instance: what an interrupt held here goes on
      if (m.release === true) this.#held.delete(m.sid)
      this.#sync(m.sid)
    } else if (m.op === 'interrupt') this.interrupt(m.sid, { deliverQueued: m.deliverQueued }).catch(failed)
    else if (m.op === 'answered') this.#permissions.relay(m.sid, m.requestId, m.seq).catch(failed)
  }

  /**
   * Another instance changed the session (or a poll found it changed): an agent that lost it
   * stops, one that keeps it takes the settings of now, and what is queued is delivered.
   */
  #sync (sessionId: string): void {
    this.#mutex.run(sessionId, async () => {
      const live = this.#pool.get(sessionId)
      const now = await this.#o.manager.find(sessionId)
      const mine = now?.state === 'active' && now.workerId === this.#me
      if (live && live.phase !== 'leaving' && (!mine || now.workerEpoch !== live.fence.epoch)) {
        if (now?.state === 'paused') this.#keptByPause.add(sessionId)
        await this.stopAgent(sessionId, now ? stopReasonFor(now.state) : 'deleted')
        return
      }
      if (live && mine) this.#applyRow(live, now)
    }).then(() => this.#kick(sessionId), (err: Error) => this.#log.warn({ err, sessionId }, 'syncing the session failed'))
  }

  /** The open permission asks of these sessions, for their views. */
  pendingPermissions (sessionIds: string[]) {
    return this.#permissions.pendingOf(sessionIds)
  }

  /**
   * Whether an ask of the session is being stored here: its view then reads the open asks even
   * if the session's row, read a moment before, did not count it yet.
   */
  isAsking (sessionId: string): boolean {
    return this.#permissions.isOpening(sessionId)
  }

  /**
   * The user's answer to a permission request or question of the session: the first answer wins
   * (409 after it), an unknown id is a 404. The agent gets it at once.
   */
  async answerPermission (sessionId: string, requestId: string, answer: PermissionAnswer): Promise<AnswerResult> {
    const session = await this.#o.manager.get(sessionId)
    const answered = await this.#permissions.answer(sessionId, requestId, answer)
    // the agent that asked runs on another instance: it reads the answer from the stored event
    if (!answered.sent && session.workerId !== null && session.workerId !== this.#me) {
      // the answer is stored: a lost notice is made up for by the owner's poll
      await this.#o.cluster.doorbell.control(session.workerId, { op: 'answered', sid: sessionId, requestId, seq: answered.seq })
        .catch((err: Error) => this.#log.warn({ err, sessionId, requestId }, 'could not tell the owner of the answer: its poll relays it'))
    }
    return answered
  }

  /**
   * Stops the running turn (the CLI's interrupt): what it produced stays stored, the session stays
   * active and idle, its open permission asks are cancelled. Queued messages wait for the next
   * message, or go on at once with `deliverQueued`. Harmless when nothing runs.
   */
  async interrupt (sessionId: string, opts: { deliverQueued?: boolean | undefined } = {}): Promise<{ interrupted: boolean }> {
    const session = await this.#o.manager.get(sessionId)
    // an ended session runs nothing and delivers nothing: nothing to hold either
    if (isTerminal(session.state)) return { interrupted: false }
    if (session.state === 'active' && session.workerId !== null && session.workerId !== this.#me && !this.#pool.get(sessionId)) {
      // its agent and its queue's hold are the owner's: a turn runs while the session is busy
      await this.#o.cluster.doorbell.control(session.workerId, { op: 'interrupt', sid: sessionId, deliverQueued: opts.deliverQueued === true })
      return { interrupted: session.busy }
    }
    if (opts.deliverQueued === true) this.#held.delete(sessionId)
    else this.#held.add(sessionId)
    const live = this.#pool.get(sessionId)
    let interrupted = false
    if (live?.inflight && live.phase !== 'leaving') {
      await this.#permissions.cancelOpen(sessionId, 'interrupt')
      await this.#interruptTurn(live)
      interrupted = true
    }
    if (opts.deliverQueued === true) this.#kick(sessionId)
    return { interrupted }
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
    if (session.state === 'active' && session.workerId !== null && session.workerId !== this.#me && !this.#pool.get(sessionId)) {
      // its owner delivers it, and releases what an interrupt held there (a lost nudge: its poll)
      await this.#o.cluster.doorbell.control(session.workerId, { op: 'sync', sid: sessionId, release: true })
        .catch((err: Error) => this.#log.warn({ err, sessionId }, 'could not nudge the session\'s owner: its poll delivers the message'))
      // and if that owner is dead (its lease not yet over), this instance takes the session then
      this.#recheck(sessionId)
      return stored
    }
    // a new message (or a retry of a held one) lets the ones an interrupt held go on, first, in their order
    const released = this.#held.delete(sessionId)
    if (!stored.duplicate || released) this.#kick(sessionId)
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
    if (session.state === 'active' && session.workerId !== null && session.workerId !== this.#me && !this.#pool.get(sessionId)) {
      // its agent runs on another instance: that one stops it (the new one starts once it is gone)
      await this.#o.manager.transitionState(sessionId, 'suspended', { actor: 'system', reason: 'restart' })
    }
    const row = await this.#mutex.run(sessionId, async () => {
      await this.stopAgent(sessionId, 'restart')
      let now = await this.#o.manager.get(sessionId)
      // the claim before the conversation is forgotten: its new epoch fences whatever an agent of
      // the old one (on another instance, still stopping) would still write
      if (now.state === 'suspended') {
        now = await this.#o.manager.transitionState(sessionId, 'active', { actor: 'user', reason: reason ?? 'restart: fresh conversation' })
      }
      await this.#o.turns.startNewConversation(sessionId)
      this.#crashes.delete(sessionId)
      return await this.#o.manager.get(sessionId)
    })
    await this.#o.events.append(sessionId, 'status', { message: 'Starting a fresh conversation…' })
    // a restart is the user's go-ahead: what an interrupt held goes out
    this.#held.delete(sessionId)
    this.#kick(sessionId)
    return row
  }

  /** The manager's hook: the session left `active` (or was deleted); its process must go. */
  async stopAgent (sessionId: string, reason: StopReason): Promise<void> {
    const live = this.#pool.get(sessionId)
    if (!live) return
    live.phase = 'leaving'
    // what it asks can no longer be answered, for the reason of the stop (before its stdin closes:
    // the CLI then fails the waiting tool and ends the turn). Never in the way of the stop: the
    // agent's exit cancels whatever is still open
    await this.#permissions.cancelOpen(sessionId, reason)
      .catch((err: Error) => this.#log.warn({ err, sessionId }, 'cancelling the permission requests of a stopping agent failed'))
    if (reason === 'pause' && live.inflight) {
      // only a busy session can have messages waiting: the resume must deliver them
      this.#keptByPause.add(sessionId)
      await this.#interruptTurn(live)
    }
    await live.proc.stop(reason)
    await live.chain
  }

  /** Shutdown: no new work, every agent stopped, their sessions suspended. */
  async close (): Promise<void> {
    this.#closing = true
    clearTimeout(this.#ownedPoll)
    const ids = this.#pool.ids()
    await Promise.all(ids.map((id) => this.stopAgent(id, 'shutdown')))
    // every session of this instance, with or without an agent: another instance may resume them
    // at once, and one is told of those whose queue holds messages (sent while this one drained)
    await this.#handBack().catch((err: Error) => this.#log.warn({ err }, 'could not hand the sessions back at shutdown'))
    this.#permissions.close()
    await this.#pool.close()
  }

  async #handBack (): Promise<void> {
    const me = this.#me
    if (me === null) return
    const queued = (await this.#o.manager.ownedBy(me)).filter((o) => o.queued).map((o) => o.id)
    await this.#o.manager.handBack()
    const peer = queued.length > 0 && this.#o.cluster.doorbell.shared ? await this.#o.cluster.livePeer(me) : null
    if (peer === null) return
    await Promise.all(queued.map((sid) => this.#o.cluster.doorbell.control(peer, { op: 'sync', sid })))
  }

  /** Resolves once the session's pending work (a delivery, a start waiting for a slot) is done. */
  async settled (sessionId: string): Promise<void> {
    await this.#mutex.settled(sessionId)
  }

  /** Ends the running turn so the transcript ends cleanly; waits a bounded while for its result. */
  async #interruptTurn (live: LiveAgent): Promise<void> {
    const ac = new AbortController()
    const ended = new Promise<void>((resolve) => { live.turnEnded = resolve })
    live.proc.interrupt()
    await Promise.race([ended, delay(SUPERVISION.interruptWaitMs, undefined, { signal: ac.signal }).catch(() => {})])
    ac.abort()
  }

  /** Delivers queued messages, one turn at a time. Serialised per session. */
  #kick (sessionId: string): void {
    // a delivery queued and not started yet will see whatever this one would
    if (this.#kicks.has(sessionId)) return
    this.#kicks.add(sessionId)
    this.#mutex.run(sessionId, () => {
      this.#kicks.delete(sessionId)
      return this.#deliverNext(sessionId)
    }).catch((err: Error) => {
      // the message stays queued: a delivery that failed (the database away for a moment) is
      // tried again, or nothing would (a dead owner's session has no poll)
      this.#log.error({ err, sessionId }, 'message delivery failed: tried again shortly')
      this.#recheck(sessionId)
    })
  }

  async #deliverNext (sessionId: string): Promise<void> {
    for (let round = 0; round < SUPERVISION.deliveryRounds; round++) {
      if (this.#closing) return
      let live = this.#pool.get(sessionId)
      if (live?.phase === 'leaving') {
        // never hand a message to a process on its way out (an idle suspension, an eviction):
        // let it finish, then start from the state it leaves behind
        await live.proc.exited
        await live.chain
        live = this.#pool.get(sessionId)
        if (live?.phase === 'leaving') return
      }
      if (live?.inflight) return // the turn's result kicks the next message
      if (this.#held.has(sessionId)) return // an interrupt holds the queue
      const next = await this.#o.events.nextQueued(sessionId)
      if (!next) return
      let session = await this.#o.manager.find(sessionId)
      if (!session || session.state === 'paused' || isTerminal(session.state)) return
      const me = this.#me
      // without a lease this instance may own nothing: the message waits (it is stored) for its
      // owner, or for this instance's return
      if (me === null) {
        this.#deferred.add(sessionId)
        return
      }
      if (session.state === 'active' && session.workerId !== me) {
        // a dead owner's claim was ended: look again (and claim it); a live one was nudged
        if (await this.#reachOwner(session)) continue
        return
      }
      if (session.state === 'pending' || session.state === 'suspended') {
        if (session.state === 'suspended') {
          if (tooManyCrashes(this.#crashes.get(sessionId) ?? 0)) return
          // not awaited: the log keeps it ahead of everything this resume produces, and the
          // respawn need not wait for its commit
          this.#o.events.append(sessionId, 'status', { message: 'Resuming session…' })
            .catch((err: Error) => this.#log.warn({ err, sessionId }, 'status event not stored'))
        }
        // the claim: whichever instance moves it to active owns it; another that lost the race
        // finds it active and owned, and nudges the winner
        const claimed = await this.#o.manager.transitionState(sessionId, 'active', {
          actor: 'system', reason: session.state === 'pending' ? 'first message' : 'message'
        }).catch((err: Error & { statusCode?: number }) => {
          if (err.statusCode === 409) return null
          throw err
        })
        if (!claimed) continue
        session = claimed
      }
      if (session.state !== 'active') continue
      const fence: Fence = { worker: me, epoch: session.workerEpoch }
      if (live && live.fence.epoch !== fence.epoch) {
        // an agent of an earlier claim: it goes before this claim's starts
        await this.stopAgent(sessionId, 'restart')
        continue
      }
      // active: claim the turn first, so neither the idle sweep nor an eviction takes it away
      if (!await this.#o.turns.claimBusy(sessionId, this.#clock(), fence)) continue
      const agent = live ?? await this.#spawn(session, fence)
      if (!agent) return
      if (!live && !await this.#stillActive(sessionId, agent)) return
      if (this.#held.has(sessionId)) {
        // interrupted while its agent was starting: the message stays queued
        await this.#o.turns.releaseBusy(sessionId, this.#clock(), fence)
        return
      }
      agent.inflight = { seq: next.seq, confirmed: false }
      this.#pool.touch(agent)
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
   * The session is active and another instance owns it: a live owner is nudged (it delivers), a
   * dead one's claim is ended here (the session is suspended, its agent died with its instance).
   * True when the caller should look again (the claim was ended, or changed meanwhile).
   */
  async #reachOwner (session: SessionRow): Promise<boolean> {
    const owner = session.workerId
    if (owner !== null && await this.#o.cluster.isLive(owner)) {
      await this.#o.cluster.doorbell.control(owner, { op: 'sync', sid: session.id })
      // the owner may be dead without its lease having run out yet: this instance, which took
      // the message, looks again a little later (and claims the session once the lease is over)
      this.#recheck(session.id)
      return false
    }
    const fence = owner === null ? undefined : { worker: owner, epoch: session.workerEpoch }
    const ended = await this.#o.manager.transitionState(session.id, 'suspended', { actor: 'system', reason: ORPHANED, fence })
      .catch((err: Error & { statusCode?: number }) => {
        // someone else ended or replaced that claim first: look again
        if (!(err instanceof FencedWrite) && err.statusCode !== 409) throw err
        return null
      })
    // what the dead owner's agent asked can no longer be answered
    if (ended) await this.#permissions.cancelOpenOf([session.id], 'failover')
    return true
  }

  /**
   * A PATCH while it started (or made on another instance) found no agent to tell: it is told now
   * what differs from its launch.
   */
  #applyRow (agent: LiveAgent, now: SessionRow): void {
    const mode = this.#allowedMode(now.permissionMode)
    this.#applySettings({
      sessionId: agent.sessionId,
      ...(mode !== agent.launched.permissionMode ? { permissionMode: mode } : {}),
      ...(now.model !== agent.launched.model ? { model: now.model } : {}),
      permissionTimeoutSeconds: now.permissionTimeoutSeconds
    })
    agent.launched = { permissionMode: mode, model: now.model }
  }

  /**
   * A pause, suspend or end that came while the agent was starting found no process to stop: the
   * new one is stopped here instead, before it is given the message (which stays queued).
   */
  async #stillActive (sessionId: string, agent: LiveAgent): Promise<boolean> {
    const now = await this.#o.manager.find(sessionId)
    if (now?.state === 'active' && now.workerId === agent.fence.worker && now.workerEpoch === agent.fence.epoch) {
      this.#applyRow(agent, now)
      return true
    }
    if (now?.state === 'paused') this.#keptByPause.add(sessionId)
    this.#log.info({ sessionId, state: now?.state ?? 'deleted' }, 'the session left active while its agent started: stopped')
    await this.stopAgent(sessionId, now ? stopReasonFor(now.state) : 'deleted')
    await agent.proc.exited
    await this.#o.turns.releaseBusy(sessionId, this.#clock(), agent.fence)
    return false
  }

  /**
   * The session's mode if the operator (still) allows it; null (the default) for one stored when
   * ALLOWED_PERMISSION_MODES listed it and no longer does.
   */
  #allowedMode (mode: SessionRow['permissionMode']): SessionRow['permissionMode'] {
    return mode === null || this.#o.config.agent.allowedPermissionModes.includes(mode) ? mode : null
  }

  async #spawn (queued: SessionRow, fence: Fence): Promise<LiveAgent | null> {
    const sessionId = queued.id
    const slot = await this.#pool.acquireSlot(sessionId, queued.owner, async () => {
      await this.#o.events.append(sessionId, 'status', { message: 'Waiting for a free agent slot…' })
    })
    const giveUp = async () => {
      this.#pool.releaseSlot(slot)
      await this.#o.turns.releaseBusy(sessionId, this.#clock(), fence)
      return null
    }
    if (this.#closing) return giveUp()
    // never two agents of one session: one of an earlier claim on another instance may still be
    // stopping (it was told to); this one starts once it is gone or its instance is dead
    const mayStart = await this.#agentMayStart(sessionId, fence).catch((err: Error) => {
      this.#log.warn({ err, sessionId }, 'could not record the agent\'s start: the message stays queued')
      return false
    })
    if (!mayStart) return giveUp()
    // the wait for a slot can be long: start with the settings of now
    const session = await this.#o.manager.find(sessionId).catch(() => null) ?? queued
    const permissionMode = this.#allowedMode(session.permissionMode)
    if (permissionMode !== session.permissionMode) {
      await this.#o.events.append(sessionId, 'status', {
        message: `The permission mode ${String(session.permissionMode)} is no longer allowed here: the agent starts in the default mode.`
      })
    }
    const firstStart = session.agentSessionId === null
    const agentSessionId = session.agentSessionId ?? randomUUID()
    try {
      const live = await this.#pool.launch({
        sessionId,
        owner: session.owner,
        workdir: session.workdir,
        model: session.model,
        permissionMode,
        conversation: { mode: firstStart ? 'new' : 'resume', agentSessionId },
        slot
      }, (proc) => this.#wire(sessionId, proc, {
        fence,
        agentSessionId,
        firstStart,
        permissionTimeoutSeconds: session.permissionTimeoutSeconds ?? this.#o.config.agent.permissionTimeoutSeconds,
        launched: { permissionMode, model: session.model }
      }))
      this.#log.info({ sessionId, pid: live.proc.pid, mode: firstStart ? 'new' : 'resume' }, 'agent started')
      if (this.#me !== fence.worker) {
        // the lease was lost while it started: the agents were killed before it was among them
        live.phase = 'leaving'
        live.proc.kill('failover').catch(() => {})
        return null
      }
      return live
    } catch (err) {
      await this.#o.turns.agentGone(sessionId, fence.worker)
      await this.#o.turns.releaseBusy(sessionId, this.#clock(), fence)
      await this.#applyOutcome(sessionId, startFailure({
        firstStart, turns: session.turns, detail: `the agent could not be started: ${(err as Error).message}`
      }), { fence })
      return null
    }
  }

  /**
   * Records that this claim's agent runs here, once no other instance runs one of the session:
   * that one is told to stop and waited for (a bounded while). False when the claim is gone
   * meanwhile, or the other agent did not go.
   */
  async #agentMayStart (sessionId: string, fence: Fence): Promise<boolean> {
    const deadline = Date.now() + this.#o.config.agent.killGraceMs * 3 + this.#o.config.instance.leaseSeconds * 1000
    let told = false
    for (;;) {
      const { started, other } = await this.#o.turns.agentStart(sessionId, fence)
      if (started) return true
      if (other === null) return false // the claim itself is gone
      if (!told) {
        told = true
        await this.#o.cluster.doorbell.control(other, { op: 'sync', sid: sessionId }).catch(() => {})
      }
      if (Date.now() > deadline) {
        this.#log.error({ sessionId, other }, 'the agent of this session on another instance did not stop: not starting a second one')
        return false
      }
      await delay(SUPERVISION.otherAgentPollMs)
    }
  }

  /** The agent's record, listening to its process before anything can be emitted. */
  #wire (sessionId: string, proc: AgentProcess, conversation: Pick<LiveAgent, 'fence' | 'agentSessionId' | 'firstStart' | 'permissionTimeoutSeconds' | 'launched'>): LiveAgent {
    const live: LiveAgent = {
      sessionId,
      proc,
      ...conversation,
      controls: new Map(),
      phase: 'live' satisfies AgentPhase,
      inflight: null,
      lastActivityWrite: 0,
      unstored: 0,
      chain: Promise.resolve()
    }
    proc.on('line', (line) => this.#onLine(live, line))
    proc.once('exit', (exit) => {
      live.chain = live.chain.then(() => this.#onExit(live, exit))
        .catch((err: Error) => this.#log.error({ err, sessionId }, 'handling the agent exit failed'))
    })
    return live
  }

  /** The pool's eviction: the session is suspended through the manager, which stops its agent. */
  async #evict (sessionId: string): Promise<boolean> {
    try {
      await this.#o.manager.transitionState(sessionId, 'suspended', { actor: 'system', reason: 'eviction', fence: this.#pool.get(sessionId)?.fence })
      return true
    } catch (err) {
      this.#log.warn({ err, sessionId }, 'eviction failed')
      return false
    }
  }

  #onLine (live: LiveAgent, line: string): void {
    const { sessionId } = live
    const parsed = parseAgentLine(line)
    if (parsed.kind === 'control_request' || parsed.kind === 'control_cancel') {
      if (this.#onControl(live, parsed.kind, parsed.message)) return
    } else if (parsed.kind === 'control_response') {
      this.#onControlResponse(live, parsed.message)
    }
    live.unstored++
    if (live.unstored === SUPERVISION.outputHighWater) live.proc.pauseOutput()
    const stored = this.#o.events.appendJson(sessionId, 'agent', parsed.json, live.fence).catch((err: Error) => {
      if (err instanceof FencedWrite) {
        // the session was taken over (this instance lost its lease meanwhile): this agent is not
        // its agent any more, and goes at once
        if (live.phase !== 'leaving') {
          this.#log.warn({ sessionId }, 'the session belongs to another instance now: its agent here is killed')
          live.phase = 'leaving'
          live.proc.kill('failover').catch(() => {})
        }
        return undefined
      }
      // the event log has logged it; an agent line that cannot be stored must not take the service down
      this.#log.error({ err: (err as { cause?: unknown }).cause ?? err, sessionId }, 'agent output not stored')
      return undefined
    }).finally(() => {
      live.unstored--
      if (live.unstored === SUPERVISION.outputLowWater) live.proc.resumeOutput()
    })
    live.chain = live.chain.then(async () => {
      this.#pool.touch(live)
      if (parsed.kind === 'init') await this.#onTurnStart(live)
      else if (parsed.kind === 'result') await this.#onTurnEnd(live, parsed.message, stored)
      else await this.#maybeRecordActivity(live)
    }).catch((err: Error) => this.#log.error({ err, sessionId }, 'handling an agent line failed'))
  }

  /**
   * The CLI's control requests: a permission ask becomes the service's own events (the line itself
   * is not stored: the `permission_request` or `question` event carries all of it), a withdrawn
   * one is cancelled. A request the service does not serve is refused at once, so the CLI never
   * waits for an answer that cannot come; that line is stored as any other. True when handled.
   */
  #onControl (live: LiveAgent, kind: 'control_request' | 'control_cancel', message: Record<string, unknown>): boolean {
    const { sessionId } = live
    this.#pool.touch(live)
    if (kind === 'control_cancel') {
      if (typeof message.request_id !== 'string') return false
      this.#permissions.cancelOne(sessionId, message.request_id)
        .catch((err: Error) => this.#log.warn({ err, sessionId }, 'cancelling a withdrawn permission request failed'))
      return true
    }
    const ask = parseCanUseTool(message)
    if (ask) {
      this.#permissions.open(sessionId, ask, live.permissionTimeoutSeconds)
      return true
    }
    const request = message.request as { subtype?: unknown } | undefined
    live.proc.send({
      type: 'control_response',
      response: { subtype: 'error', request_id: message.request_id, error: `not supported by this service: ${String(request?.subtype)}` }
    })
    return false
  }

  /** A PATCH changed the session's settings: a live agent gets the mode and model at once. */
  #applySettings (e: SettingsEvent): void {
    const live = this.#pool.get(e.sessionId)
    if (!live || live.phase === 'leaving') return
    const { agent } = this.#o.config
    if (e.permissionTimeoutSeconds !== undefined) live.permissionTimeoutSeconds = e.permissionTimeoutSeconds ?? agent.permissionTimeoutSeconds
    const control = (what: string, request: Record<string, unknown>) => {
      const requestId = randomUUID()
      if (live.proc.send({ type: 'control_request', request_id: requestId, request })) live.controls.set(requestId, what)
    }
    if (e.permissionMode !== undefined) {
      const mode = e.permissionMode ?? agent.permissionMode ?? 'default'
      control(`switch to the permission mode ${mode}`, { subtype: 'set_permission_mode', mode })
    }
    if (e.model !== undefined) {
      const model = e.model ?? agent.model
      control(`switch to the model ${model ?? '(the default)'}`, { subtype: 'set_model', ...(model ? { model } : {}) })
    }
  }

  /**
   * The CLI's answer to a settings change: a refusal is told to the user (the session's setting
   * holds from the agent's next start), besides the stored line itself.
   */
  #onControlResponse (live: LiveAgent, message: Record<string, unknown>): void {
    const response = message.response as { subtype?: unknown, request_id?: unknown, error?: unknown } | undefined
    if (typeof response?.request_id !== 'string') return
    const what = live.controls.get(response.request_id)
    if (what === undefined) return
    live.controls.delete(response.request_id)
    if (response.subtype !== 'error') return
    const why = typeof response.error === 'string' ? response.error : 'refused'
    this.#o.events.append(live.sessionId, 'status', { message: `The running agent could not ${what} (${why}); it applies from the agent's next start.` })
      .catch((err: Error) => this.#log.warn({ err, sessionId: live.sessionId }, 'status event not stored'))
  }

  #attention (sessionId: string, kind: AttentionKind, seq: number): void {
    try {
      this.emit('attention', { sessionId, kind, seq, at: this.#clock() })
    } catch (err) {
      // a listener's failure must not leave the turn half-ended
      this.#log.error({ err, sessionId }, 'an attention listener failed')
    }
  }

  async #onTurnStart (live: LiveAgent): Promise<void> {
    if (!live.inflight || live.inflight.confirmed) return
    live.inflight.confirmed = true
    // from here on the message belongs to the transcript: a crash must not send it again
    await this.#o.events.markDelivered(live.sessionId, live.inflight.seq, live.agentSessionId, live.fence)
    live.firstStart = false
  }

  async #onTurnEnd (live: LiveAgent, result: Record<string, unknown>, stored: Promise<number | undefined>): Promise<void> {
    const { sessionId } = live
    const seq = await stored.catch(() => undefined)
    // a result before any turn started (a refused resume) is no turn: the exit handler takes over
    if (live.inflight && !live.inflight.confirmed) return
    // the result is stored: that is what the notice is about (the usage write need not delay it).
    // A turn the user stopped (an interrupt, a pause) is no news to them
    const stopped = live.turnEnded !== undefined || live.phase === 'leaving'
    if (seq !== undefined && !stopped) this.#attention(sessionId, 'turn_ended', seq)
    // the CLI waits for nothing once its turn is over: an ask still open here (stored while a
    // cancellation ran) can no longer be answered
    if (this.#permissions.hasOpen(sessionId)) {
      await this.#permissions.cancelOpen(sessionId, 'turn ended')
        .catch((err: Error) => this.#log.warn({ err, sessionId }, 'cancelling the permission requests of an ended turn failed'))
    }
    const at = this.#clock()
    await this.#o.turns.addTurnUsage(sessionId, { ...turnUsage(result), at }, live.fence)
    live.inflight = null
    live.lastActivityWrite = at.getTime()
    if (result.is_error !== true) this.#crashes.delete(sessionId)
    live.turnEnded?.()
    live.turnEnded = undefined
    this.#kick(sessionId)
    // a start waiting for a slot (everybody's, or this user's) can have this agent's now that its turn is over
    if (this.#pool.waiting > 0) setImmediate(() => { this.#pool.makeRoom() })
  }

  async #maybeRecordActivity (live: LiveAgent): Promise<void> {
    const now = this.#clock()
    if (now.getTime() - live.lastActivityWrite < SUPERVISION.activityWriteEveryMs) return
    live.lastActivityWrite = now.getTime()
    await this.#o.turns.recordActivity(live.sessionId, now)
  }

  async #onExit (live: LiveAgent, exit: AgentExit): Promise<void> {
    const { sessionId } = live
    // another instance's claim may start its agent now. Before it leaves the pool: until then a
    // start here waits for it, so no new agent of this instance is recorded and then erased
    await this.#o.turns.agentGone(sessionId, live.fence.worker)
      .catch((err: Error) => this.#log.warn({ err, sessionId }, 'could not record the agent\'s end: the owned-sessions poll does'))
    await this.#pool.retire(live)
    this.#log.info({ sessionId, code: exit.code, signal: exit.signal, reason: exit.reason }, 'agent exited')
    // nobody is left to take an answer
    await this.#permissions.cancelOpen(sessionId, exit.reason ?? 'crash')
      .catch((err: Error) => this.#log.warn({ err, sessionId }, 'cancelling the permission requests of an ended agent failed'))
    live.turnEnded?.()
    const inflight = live.inflight
    live.inflight = null
    if (inflight) await this.#o.turns.releaseBusy(sessionId, this.#clock(), live.fence)
    const kind = classifyExit(exit, inflight)
    if (kind === 'stopped') return
    if (kind === 'start-failed') {
      const session = await this.#o.manager.find(sessionId)
      if (session) await this.#applyOutcome(sessionId, startFailure({ firstStart: live.firstStart, turns: session.turns, detail: describeExit(exit) }), { fence: live.fence })
      return
    }
    const crashes = (this.#crashes.get(sessionId) ?? 0) + 1
    this.#crashes.set(sessionId, crashes)
    await this.#applyOutcome(sessionId, crashOutcome({ crashes, detail: describeExit(exit) }), { onlyFromActive: true, fence: live.fence })
  }

  /**
   * The user is told (an error event), then the session moves as the exit policy says: both only
   * while the agent's claim holds (a claim taken over by another instance is that one's to judge).
   */
  async #applyOutcome (sessionId: string, outcome: ExitOutcome, opts: { onlyFromActive?: boolean, fence: Fence }): Promise<void> {
    let seq: number
    try {
      // the exit policy's codes are catalogued with every other: this stops compiling if one is not
      seq = await this.#o.events.append(sessionId, 'error', { code: outcome.code satisfies ErrorCode, message: outcome.message }, opts.fence)
    } catch (err) {
      if (err instanceof FencedWrite) return
      throw err
    }
    this.#attention(sessionId, 'error', seq)
    if (opts.onlyFromActive) {
      const session = await this.#o.manager.find(sessionId)
      if (!session || session.state !== 'active') return
    }
    await this.#o.manager.transitionState(sessionId, outcome.to, { actor: 'system', reason: outcome.reason, lastError: outcome.lastError, fence: opts.fence })
      .catch((err: Error) => this.#log.warn({ err, sessionId }, `could not record the agent's ${outcome.reason}`))
  }
}
