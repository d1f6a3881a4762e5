import { randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type { Log } from '../logger.js'
import type { Config } from '../config.js'
import type { SessionRow, SnapshotRow, TransitionRow } from '../db/schema.js'
import { type KeysetCursor } from '../domain/cursor.js'
import { ifMatchAccepts, type IfMatch } from '../domain/if-match.js'
import {
  allowedTargets,
  canTransition,
  isTerminal,
  type Actor,
  type SessionState
} from '../domain/state-machine.js'
import { stopReasonFor, type StopReason } from '../domain/stop-reasons.js'
import { fenceKey, type Fence } from '../domain/lease.js'
import { addSeconds, planHeartbeat } from '../domain/timers.js'
import {
  FencedWrite,
  instanceLeaseLost,
  NoSnapshot,
  SessionNotFound,
  SnapshotNotFound,
  WriteContention,
  invalidTransition,
  outOfRange,
  permissionModeNotAllowed,
  sessionTerminal,
  versionConflict
} from '../errors.js'
import type { CreateSessionInput, PatchSessionInput } from '../schemas/session.js'
import { LivenessCache, type LivenessEntry } from './liveness-cache.js'
import type { SessionRepository, SweepHit, TransitionWrite } from './session-repository.js'
import { snapshotDataOf, type SnapshotData } from './session-view.js'
import { prepareWorkdir, userWorkspace } from './workspace.js'

/**
 * What the lifecycle asks of whoever runs the agents (the supervisor). The manager stays the one
 * writer of state; these hooks only act on processes and resources.
 */
export interface SessionProcessHooks {
  /** `worker`: the instance that owned the session until now (its agent runs there) */
  stopProcess (sessionId: string, reason: StopReason, worker: string | null): Promise<void> | void
  /** an expired or deleted session's runtime resources; never its working directory */
  releaseResources (sessionId: string): Promise<void> | void
}

export interface TransitionEvent {
  sessionId: string
  version: number
  from: SessionState
  to: SessionState
  actor: Actor
  reason: string | null
}

/** Settings a PATCH changed that a live agent takes at once (undefined: unchanged; null: back to the default). */
export interface SettingsEvent {
  sessionId: string
  permissionMode?: string | null | undefined
  model?: string | null | undefined
  permissionTimeoutSeconds?: number | null | undefined
}

export interface LifecycleEvents {
  /** one change, by a user request or a system decision */
  transition: [TransitionEvent]
  /** the agent's settings changed */
  settings: [SettingsEvent]
  /** many at once (a sweep): one event for the lot */
  transitions: [TransitionEvent[]]
}

export interface MutationOptions {
  ifMatch?: IfMatch | undefined
  reason?: string | undefined
}

export interface TransitionOptions extends MutationOptions {
  actor?: Actor
  /** a write of an agent: only while its claim on the session holds (else FencedWrite) */
  fence?: Fence | undefined
  /** recorded as the session's lastError (system transitions after a failure) */
  lastError?: string | null | undefined
}

export interface HeartbeatResult {
  state: SessionState
  version: number
  expiresAt: Date
  serverTime: Date
}

export interface LifecycleManagerOptions {
  repo: SessionRepository
  config: Pick<Config, 'workspaceRoot' | 'idleTimeout' | 'ttl' | 'heartbeatCoalesceFraction'> & { agent: Pick<Config['agent'], 'allowedPermissionModes'> }
  logger: Log
  clock?: () => Date
  hooks?: Partial<SessionProcessHooks>
  /** this instance's id while its lease holds (null: it may claim nothing); a move to `active` claims the session for it */
  worker?: () => string | null
}

/** The reason recorded when a dead instance's sessions are suspended. */
export const ORPHANED = 'worker lost'

/** The owner of every claim when the manager runs without instances (unit tests of the manager alone). */
const SINGLE_INSTANCE = '00000000-0000-4000-8000-000000000000'

/** A write that lost a race is re-read and re-checked this many times before giving up. */
const MAX_CAS_ATTEMPTS = 8

/** Session owners remembered (an owner never changes): the ownership check costs no query for them. */
const OWNER_CACHE_SIZE = 50_000

/**
 * The one writer of session state. Every change is a versioned compare-and-set checked against the
 * transition table; a caller that sent If-Match gets 412 when it lost, one that did not is
 * re-checked against the state that won.
 */
export class SessionLifecycleManager extends EventEmitter<LifecycleEvents> {
  readonly #repo: SessionRepository
  readonly #config: LifecycleManagerOptions['config']
  readonly #log: Log
  readonly #clock: () => Date
  readonly #hooks: SessionProcessHooks
  readonly #liveness = new LivenessCache()
  readonly #owners = new Map<string, string | null>()
  readonly #worker: () => string | null

  constructor (opts: LifecycleManagerOptions) {
    super()
    this.#repo = opts.repo
    this.#config = opts.config
    this.#log = opts.logger
    this.#clock = opts.clock ?? (() => new Date())
    this.#worker = opts.worker ?? (() => SINGLE_INSTANCE)
    this.#hooks = {
      stopProcess: opts.hooks?.stopProcess ?? (() => {}),
      releaseResources: opts.hooks?.releaseResources ?? (() => {})
    }
  }

  now (): Date {
    return this.#clock()
  }

  /** This instance's id while it holds its lease; null while it may own nothing. */
  get worker (): string | null {
    return this.#worker()
  }

  /** Lets the agent supervisor plug in once it exists; the manager works without it. */
  setHooks (hooks: Partial<SessionProcessHooks>): void {
    Object.assign(this.#hooks, hooks)
  }

  /**
   * A new session of `owner` (a user's `sub`). Its working directory lies in the owner's own
   * area of the workspace root, `<root>/<userKey(owner)>`, which no other user's path can reach.
   */
  async create (input: CreateSessionInput, owner: string): Promise<SessionRow> {
    const idle = input.idleTimeoutSeconds ?? this.#config.idleTimeout.defaultSeconds
    const ttl = input.ttlSeconds ?? this.#config.ttl.defaultSeconds
    this.#checkRanges({ idleTimeoutSeconds: idle, ttlSeconds: ttl })
    this.#checkMode(input.permissionMode)
    const id = randomUUID()
    const workdir = await prepareWorkdir(userWorkspace(this.#config.workspaceRoot, owner), input.workdir ?? id)
    const now = this.#clock()
    const row = await this.#repo.insert({
      id,
      owner,
      title: input.title ?? null,
      workdir,
      model: input.model ?? null,
      permissionMode: input.permissionMode ?? null,
      permissionTimeoutSeconds: input.permissionTimeoutSeconds ?? null,
      idleTimeoutSeconds: idle,
      ttlSeconds: ttl,
      expiresAt: addSeconds(now, ttl),
      createdAt: now
    })
    this.#rememberOwner(id, owner)
    return row
  }

  async get (id: string): Promise<SessionRow> {
    const row = await this.#repo.findById(id)
    if (!row) throw new SessionNotFound(id)
    return row
  }

  /**
   * Another user's session is, to `userId`, a session that does not exist: the same 404, so ids
   * reveal nothing. Sessions created before users existed (no owner) are nobody's.
   */
  async assertOwned (id: string, userId: string): Promise<void> {
    let owner = this.#owners.get(id)
    if (owner === undefined) {
      const found = await this.#repo.ownerOf(id)
      if (found === undefined) throw new SessionNotFound(id)
      owner = found
      this.#rememberOwner(id, owner)
    }
    if (owner === null || owner !== userId) throw new SessionNotFound(id)
  }

  #rememberOwner (id: string, owner: string | null): void {
    if (this.#owners.size >= OWNER_CACHE_SIZE) this.#owners.delete(this.#owners.keys().next().value!)
    this.#owners.set(id, owner)
  }

  /** As get, with null for a session that does not exist (or was deleted). */
  async find (id: string): Promise<SessionRow | null> {
    return this.#repo.findById(id)
  }

  /** One user's sessions, newest first. */
  async list (q: { owner: string, states?: SessionState[] | undefined, waiting?: boolean | undefined, cursor?: KeysetCursor | undefined, limit: number }): Promise<SessionRow[]> {
    return this.#repo.list(q)
  }

  async history (id: string, after: number, limit: number): Promise<TransitionRow[]> {
    await this.get(id)
    return this.#repo.history(id, after, limit)
  }

  async snapshots (id: string): Promise<SnapshotRow[]> {
    await this.get(id)
    return this.#repo.snapshots(id)
  }

  async update (id: string, patch: PatchSessionInput, opts: MutationOptions = {}): Promise<SessionRow> {
    this.#checkRanges(patch)
    this.#checkMode(patch.permissionMode ?? undefined)
    const before = { permissionMode: undefined as string | null | undefined, model: undefined as string | null | undefined }
    const written = await this.#compareAndSet(id, opts, async (row) => {
      if (isTerminal(row.state)) throw sessionTerminal(row.state, row.version)
      before.permissionMode = row.permissionMode
      before.model = row.model
      return this.#repo.updateSettings({
        id,
        version: row.version,
        now: this.#clock(),
        title: patch.title,
        idleTimeoutSeconds: patch.idleTimeoutSeconds,
        ttlSeconds: patch.ttlSeconds,
        permissionMode: patch.permissionMode,
        model: patch.model,
        permissionTimeoutSeconds: patch.permissionTimeoutSeconds
      })
    })
    // only what changed goes to a live agent
    const changed = <T>(next: T | undefined, prev: T) => (next !== undefined && next !== prev ? next : undefined)
    const e: SettingsEvent = {
      sessionId: id,
      permissionMode: changed(patch.permissionMode, before.permissionMode),
      model: changed(patch.model, before.model),
      permissionTimeoutSeconds: patch.permissionTimeoutSeconds
    }
    if (e.permissionMode !== undefined || e.model !== undefined || e.permissionTimeoutSeconds !== undefined) this.emit('settings', e)
    return written
  }

  /** Stops the session's process (a live session is completed first, in the history) and archives it. */
  async remove (id: string, opts: MutationOptions = {}): Promise<SessionRow> {
    const archived = await this.#compareAndSet(id, opts, async (row) => {
      const now = this.#clock()
      if (isTerminal(row.state)) return this.#repo.archiveTerminal({ id, version: row.version, now })
      return this.#write(row, { to: 'completed', actor: 'user', reason: opts.reason ?? 'deleted', archive: true, now })
    })
    // leaving `active` already stopped the process (#write); only resources remain
    await this.#hooks.releaseResources(id)
    return archived
  }

  /**
   * The single entry point for state changes. `paused` takes a snapshot (as POST /pause) and
   * `active` from `paused` restores the latest one (as POST /resume).
   */
  async transitionState (id: string, to: SessionState, opts: TransitionOptions = {}): Promise<SessionRow> {
    const actor = opts.actor ?? 'user'
    if (to === 'paused' && actor === 'user') return (await this.pauseSession(id, opts)).session
    const fence = opts.fence ? fenceKey(opts.fence) : undefined
    return this.#compareAndSet(id, opts, async (row) => {
      // the agent's claim was replaced: what it would decide is no longer its to decide
      if (fence !== undefined && `${row.workerId}:${row.workerEpoch}` !== fence) throw new FencedWrite(id)
      this.#assertEdge(row, to, actor)
      if (row.state === 'paused' && to === 'active') return this.#resumeWrite(row, undefined, opts)
      return this.#write(row, { to, actor, reason: opts.reason ?? null, lastError: opts.lastError, now: this.#clock(), fence })
    })
  }

  /** Snapshot + pause, in one statement. Returns the snapshot with the paused session. */
  async pauseSession (id: string, opts: MutationOptions = {}): Promise<{ session: SessionRow, snapshot: SnapshotRow }> {
    let snapshot: SnapshotRow | undefined
    const session = await this.#compareAndSet(id, opts, async (row) => {
      this.#assertEdge(row, 'paused', 'user')
      const now = this.#clock()
      const data = snapshotDataOf(row, now)
      const snapshotId = randomUUID()
      const written = await this.#write(row, {
        to: 'paused', actor: 'user', reason: opts.reason ?? 'paused by user', now, snapshot: { id: snapshotId, data }
      })
      if (written) snapshot = { id: snapshotId, sessionId: id, version: row.version, data, createdAt: now }
      return written
    })
    return { session, snapshot: snapshot! }
  }

  /** Resumes a paused session from its latest snapshot, or from the one named. */
  async resumeSession (id: string, opts: MutationOptions & { snapshotId?: string | undefined } = {}): Promise<SessionRow> {
    return this.#compareAndSet(id, opts, async (row) => {
      // Resume means "from a snapshot": only a pause leaves one that describes the session now
      if (row.state !== 'paused') throw invalidTransition(row.state, 'active', allowedTargets(row.state, 'user'), row.version, 'only a paused session can be resumed')
      return this.#resumeWrite(row, opts.snapshotId, opts)
    })
  }

  async heartbeat (id: string, ifMatch?: IfMatch): Promise<HeartbeatResult> {
    const now = this.#clock()
    const cached = this.#liveness.get(id, now.getTime())
    if (cached && ifMatchAccepts(ifMatch, cached.version)) {
      const plan = planHeartbeat({ now, expiresAt: cached.expiresAt, ttlSeconds: cached.ttlSeconds, coalesceFraction: this.#config.heartbeatCoalesceFraction })
      if (!plan.write) return { state: cached.state, version: cached.version, expiresAt: cached.expiresAt, serverTime: now }
    }
    // One statement decides and writes; only when it writes nothing is the row read to say why.
    // What it answers is cached only if no write of this instance overtook it meanwhile.
    const read = this.#liveness.beginRead(id)
    let answer: LivenessEntry | undefined
    try {
      const written = await this.#repo.heartbeat({
        id, now, fraction: this.#config.heartbeatCoalesceFraction, versions: ifMatch === undefined || ifMatch === '*' ? null : ifMatch
      })
      if (written) {
        answer = { ...written, cachedAt: now.getTime() }
        return { state: written.state, version: written.version, expiresAt: written.expiresAt, serverTime: now }
      }
      const row = await this.get(id)
      if (isTerminal(row.state)) throw sessionTerminal(row.state, row.version)
      if (!ifMatchAccepts(ifMatch, row.version)) throw versionConflict(formatIfMatch(ifMatch), row)
      answer = { state: row.state, version: row.version, expiresAt: row.expiresAt, ttlSeconds: row.ttlSeconds, cachedAt: now.getTime() }
      return { state: row.state, version: row.version, expiresAt: row.expiresAt, serverTime: now }
    } finally {
      this.#liveness.endRead(read, answer)
    }
  }

  /** Expires the live sessions past their deadline (this instance's, and nobody's); returns their ids. */
  async checkExpiration (now: Date = this.#clock()): Promise<string[]> {
    const hits = await this.#repo.expireDue(now, this.#worker())
    await this.#afterSweep(hits, 'expired', 'ttl')
    await Promise.all(hits.map((hit) => this.#hooks.releaseResources(hit.id)))
    return hits.map((h) => h.id)
  }

  /** Suspends this instance's active, not busy sessions idle past their timeout; returns their ids. */
  async suspendIdle (now: Date = this.#clock()): Promise<string[]> {
    const me = this.#worker()
    if (me === null) return []
    const hits = await this.#repo.suspendIdle(now, me)
    await this.#afterSweep(hits, 'suspended', 'idle')
    return hits.map((h) => h.id)
  }

  /** Suspends the active sessions of instances whose lease ran out; returns their ids. */
  async suspendOrphans (now: Date = this.#clock()): Promise<string[]> {
    const hits = await this.#repo.suspendOrphans(now)
    await this.#afterSweep(hits, 'suspended', ORPHANED)
    return hits.map((h) => h.id)
  }

  async #afterSweep (hits: SweepHit[], to: SessionState, reason: string): Promise<void> {
    if (hits.length === 0) return
    this.#log.info({ count: hits.length, to, reason }, 'sessions swept')
    for (const hit of hits) this.#liveness.delete(hit.id)
    // recorded before the processes stop, so the stream shows the change in version order
    this.emit('transitions', hits.map((hit) => ({ sessionId: hit.id, version: hit.version, from: hit.from, to, actor: 'system' as const, reason })))
    // a sweep acts only on the active sessions of its own instance (or of dead ones)
    const stopReason = stopReasonFor(to, reason)
    await Promise.all(hits.filter((hit) => hit.from === 'active').map((hit) => this.#stop(hit.id, stopReason, this.#worker())))
  }

  /**
   * Start-up: what the previous run on this data directory left active is suspended (none of its
   * agents runs any more), and so is whatever says active without an owner.
   */
  async takeOver (previous: string[], now: Date = this.#clock()): Promise<string[]> {
    const hits = await this.#repo.takeOver(previous, now)
    await this.#afterSweep(hits, 'suspended', 'restart')
    return hits.map((h) => h.id)
  }

  /** The active sessions of instance `me`, and whether each has queued messages. */
  async ownedBy (me: string): Promise<{ id: string, epoch: number, queued: boolean }[]> {
    return this.#repo.ownedBy(me)
  }

  /** Shutdown, once its agents are stopped: this instance's sessions are suspended, anyone's to resume at once. */
  async handBack (now: Date = this.#clock()): Promise<string[]> {
    const me = this.#worker()
    if (me === null) return []
    const hits = await this.#repo.handBack(me, now)
    await this.#afterSweep(hits, 'suspended', 'shutdown')
    return hits.map((h) => h.id)
  }

  async #resumeWrite (row: SessionRow, snapshotId: string | undefined, opts: MutationOptions): Promise<SessionRow | null> {
    const snapshot = await this.#repo.findSnapshot(row.id, snapshotId)
    if (!snapshot) throw snapshotId ? new SnapshotNotFound(snapshotId, row.id) : new NoSnapshot(row.id)
    const data = snapshot.data as SnapshotData
    return this.#write(row, {
      to: 'active',
      actor: 'user',
      reason: opts.reason ?? `resumed from snapshot ${snapshot.id}`,
      now: this.#clock(),
      restore: {
        title: data.title,
        workdir: data.workdir,
        model: data.model,
        idleTimeoutSeconds: data.idleTimeoutSeconds,
        ttlSeconds: data.ttlSeconds,
        agentSessionId: data.agentSessionId
      },
      lastError: data.lastError
    })
  }

  async #write (row: SessionRow, w: Omit<TransitionWrite, 'id' | 'version' | 'from' | 'worker'>): Promise<SessionRow | null> {
    // a move to active makes this instance the session's owner: without a lease it may not
    const worker = this.#worker()
    if (w.to === 'active' && worker === null) throw instanceLeaseLost()
    const written = await this.#repo.transition({ ...w, worker, id: row.id, version: row.version, from: row.state })
    if (written && written.state !== row.state) {
      this.emit('transition', { sessionId: row.id, version: written.version, from: row.state, to: written.state, actor: w.actor, reason: w.reason })
      if (row.state === 'active') await this.#stop(row.id, stopReasonFor(written.state, w.reason), row.workerId)
    }
    return written
  }

  async #stop (id: string, reason: StopReason, worker: string | null): Promise<void> {
    try {
      await this.#hooks.stopProcess(id, reason, worker)
    } catch (err) {
      this.#log.error({ err, sessionId: id, reason }, 'stopping the agent process failed')
    }
  }

  #assertEdge (row: SessionRow, to: SessionState, actor: Actor): void {
    if (!canTransition(row.state, to, actor)) {
      throw invalidTransition(row.state, to, allowedTargets(row.state, 'user'), row.version)
    }
  }

  /** A mode the operator did not allow (ALLOWED_PERMISSION_MODES) is refused, whatever the CLI would take. */
  #checkMode (mode: string | null | undefined): void {
    const allowed = this.#config.agent.allowedPermissionModes
    if (mode !== undefined && mode !== null && !(allowed as readonly string[]).includes(mode)) throw permissionModeNotAllowed(mode, allowed)
  }

  #checkRanges (v: { idleTimeoutSeconds?: number | undefined, ttlSeconds?: number | undefined }): void {
    const { idleTimeout, ttl } = this.#config
    if (v.idleTimeoutSeconds !== undefined && (v.idleTimeoutSeconds < idleTimeout.minSeconds || v.idleTimeoutSeconds > idleTimeout.maxSeconds)) {
      throw outOfRange('idleTimeoutSeconds', idleTimeout.minSeconds, idleTimeout.maxSeconds)
    }
    if (v.ttlSeconds !== undefined && (v.ttlSeconds < ttl.minSeconds || v.ttlSeconds > ttl.maxSeconds)) {
      throw outOfRange('ttlSeconds', ttl.minSeconds, ttl.maxSeconds)
    }
  }

  /**
   * Read, check, write with the version read. A lost race with If-Match is a 412; without it the
   * attempt starts over on the winner's state, where `attempt` may now refuse (409).
   */
  async #compareAndSet (id: string, opts: MutationOptions, attempt: (row: SessionRow) => Promise<SessionRow | null>): Promise<SessionRow> {
    for (let i = 0; i < MAX_CAS_ATTEMPTS; i++) {
      const row = await this.get(id)
      if (!ifMatchAccepts(opts.ifMatch, row.version)) throw versionConflict(formatIfMatch(opts.ifMatch), row)
      const written = await attempt(row)
      if (written) {
        this.#liveness.delete(id)
        return written
      }
      if (opts.ifMatch !== undefined && opts.ifMatch !== '*') {
        const current = await this.get(id)
        throw versionConflict(formatIfMatch(opts.ifMatch), current)
      }
    }
    throw new WriteContention()
  }
}

function formatIfMatch (ifMatch: IfMatch | undefined): string {
  if (ifMatch === undefined || ifMatch === '*') return String(ifMatch ?? '')
  return ifMatch.map((v) => `"${v}"`).join(', ')
}
