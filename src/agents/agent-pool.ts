import { mkdir, realpath, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { Config } from '../config.js'
import type { Log } from '../logger.js'
import { AgentProcess } from './agent-process.js'
import { AgentSlots } from './agent-slots.js'
import { adoptLegacyTranscript, agentStateDir, ownerKey } from './agent-state.js'
import { claudeCommand, type ClaudeCommand, type Conversation } from './claude-command.js'
import { AgentWatchdog } from './agent-watchdog.js'
import type { ProcessRegistry } from './process-registry.js'
import { findExecutable, installationDirs, resolveSandbox, SANDBOX_TMP, sandboxCommand, sandboxedAgentPid, type Sandbox } from './sandbox.js'
import { processStartTime } from '../system/proc.js'

/**
 * Where a live agent is in its life: `live` takes messages; `evicting` was chosen to make room and
 * is being suspended; `leaving` has been asked to stop (a pause may first spend a while
 * interrupting its turn) and takes nothing more.
 */
export type AgentPhase = 'live' | 'evicting' | 'leaving'

/** What the pool needs to know of an agent the supervisor runs. */
export interface PooledAgent {
  readonly sessionId: string
  readonly proc: AgentProcess
  phase: AgentPhase
  /** a turn is running: never evicted */
  readonly inflight: object | null
}

export interface AgentPoolOptions {
  config: Pick<Config, 'agent' | 'dataDir' | 'workspaceRoot' | 'sandbox' | 'perUser'>
  registry: ProcessRegistry
  /**
   * How long this service may be frozen or dead before the watchdog kills its agents: less than
   * the instance lease, so that they are gone before another instance takes their sessions over.
   */
  watchdogMs: number
  /** the watchdog is fed only while this holds (the instance's lease is fresh) */
  watchdogWhile?: () => boolean
  logger: Log
  /**
   * Suspends a session to make room (through the lifecycle manager); its agent's exit frees a
   * slot. False when the session could not be suspended.
   */
  evict: (sessionId: string) => Promise<boolean>
  parentEnv?: NodeJS.ProcessEnv
}

export interface LaunchOptions {
  sessionId: string
  /** the session's user (JWT `sub`); null for a session created before users existed */
  owner: string | null
  workdir: string
  model: string | null
  permissionMode: string | null
  conversation: Conversation
  /** the slots acquireSlot() gave this start */
  slot: SlotHold
}

/** The slots one start holds: one of MAX_LIVE_AGENTS, one of its user's MAX_LIVE_AGENTS_PER_USER. */
export interface SlotHold {
  readonly user: string
}

/**
 * The live agent processes of this service: starting them (command, sandbox, state and temp
 * directories, the on-disk record that lets a crashed service end its orphans), the caps on how
 * many run (MAX_LIVE_AGENTS, and MAX_LIVE_AGENTS_PER_USER for each user; idle ones evicted first,
 * first come first served beyond), and what each leaves behind.
 */
export class AgentPool<A extends PooledAgent> {
  readonly #o: AgentPoolOptions
  readonly #slots: AgentSlots
  /** each user's slots, while they hold or wait for one */
  readonly #userSlots = new Map<string, AgentSlots>()
  /** in order of activity, least recent first: touch() moves an agent to the end */
  readonly #live = new Map<string, A>()
  /** the slots each live agent holds */
  readonly #holds = new Map<A, SlotHold>()
  /** the on-disk record of each process, written while it starts */
  readonly #recorded = new Map<A, Promise<void>>()
  /** kills the agents if this service freezes or dies */
  readonly #watchdog: AgentWatchdog
  /** each process's group registered with the watchdog, once its start time is read */
  readonly #watched = new Map<A, Promise<void>>()
  /** sessions with an agent temp directory (created since start-up) */
  readonly #tmpDirs = new Set<string>()
  #sandbox: Sandbox = { mode: 'none', reason: 'not started' }
  /** what the sandbox hides, resolved once at start-up */
  #hidden: string[] = []

  constructor (opts: AgentPoolOptions) {
    this.#o = opts
    this.#slots = new AgentSlots(opts.config.agent.maxLive)
    this.#watchdog = new AgentWatchdog({
      timeoutMs: opts.watchdogMs,
      ...(opts.watchdogWhile ? { beatWhile: opts.watchdogWhile } : {}),
      logger: opts.logger.child({ component: 'agent-watchdog' }),
      path: this.#env.PATH
    })
  }

  get size (): number { return this.#live.size }
  /** starts waiting for a slot, of everybody's or of their user's */
  get waiting (): number {
    let n = this.#slots.waiting
    for (const slots of this.#userSlots.values()) n += slots.waiting
    return n
  }

  /** what confines the agents: decided at start-up */
  get sandbox (): Sandbox { return this.#sandbox }

  get (sessionId: string): A | undefined { return this.#live.get(sessionId) }
  ids (): string[] { return [...this.#live.keys()] }

  /**
   * Start-up: decides the sandbox (throws when AGENT_SANDBOX=bwrap and bwrap does not work), ends
   * what a previous run left, starts the watchdog (throws when it cannot run); returns the pids it
   * ended.
   */
  async start (): Promise<number[]> {
    const { config, logger } = this.#o
    await mkdir(config.agent.configDir, { recursive: true })
    // hidden only if it exists: a workspace root created later would be in plain sight
    await mkdir(config.workspaceRoot, { recursive: true })
    this.#sandbox = await resolveSandbox(config.sandbox, this.#env)
    if (this.#sandbox.mode === 'bwrap') {
      this.#hidden = await existingDirs([config.dataDir, config.workspaceRoot, config.agent.configDir, this.#env.HOME])
      logger.info({ sandbox: 'bwrap', bwrap: this.#sandbox.bwrap, hidden: this.#hidden }, 'agents run in a bubblewrap sandbox')
    } else if (config.sandbox === 'auto') {
      logger.warn({ sandbox: 'none', reason: this.#sandbox.reason },
        'AGENT_SANDBOX=auto: bubblewrap does not work here, so agents run UNCONFINED: each can read and write ' +
        'whatever the service can (the database, other users\' workspaces and transcripts). Fix bwrap or set AGENT_SANDBOX=none to silence this')
    } else {
      logger.info({ sandbox: 'none' }, 'AGENT_SANDBOX=none: agents run unconfined')
    }
    const reaped = await this.#o.registry.reapOrphans()
    // no agent runs yet: whatever temp files earlier runs left are nobody's
    await rm(join(config.dataDir, 'tmp'), { recursive: true, force: true })
    await this.#watchdog.start()
    return reaped
  }

  /** Shutdown, once the agents are stopped: the watchdog exits without killing anything. */
  async close (): Promise<void> {
    await this.#watchdog.close()
  }

  get #env (): NodeJS.ProcessEnv { return this.#o.parentEnv ?? process.env }

  /** The agent printed something or was given a message: it is the most recently active. */
  touch (agent: A): void {
    if (this.#live.get(agent.sessionId) !== agent) return
    this.#live.delete(agent.sessionId)
    this.#live.set(agent.sessionId, agent)
  }

  /**
   * Takes a slot of the session's user, then one of everybody's. At a cap, evicts the least recently
   * active idle agent (of that user's own for their cap: never another user's for it), or waits its
   * turn (FIFO) after `onWait` (called once at most).
   */
  async acquireSlot (sessionId: string, owner: string | null, onWait: () => Promise<void>): Promise<SlotHold> {
    const hold: SlotHold = { user: ownerKey(owner) }
    let told = false
    const wait = async () => {
      if (told) return
      told = true
      await onWait().catch((err: Error) => this.#o.logger.warn({ err, sessionId }, 'slot wait notice not stored'))
    }
    const mine = this.#userSlotsOf(hold.user)
    if (!mine.tryAcquire()) {
      const granted = mine.acquire()
      // the slot is this caller's once granted, whatever happens to the notice: never leak it
      if (!await this.evictIdle(sessionId, hold.user)) await wait()
      await granted
    }
    if (!this.#slots.tryAcquire()) {
      const granted = this.#slots.acquire()
      if (!await this.evictIdle(sessionId)) await wait()
      await granted
    }
    return hold
  }

  releaseSlot (hold: SlotHold): void {
    this.#slots.release()
    const mine = this.#userSlots.get(hold.user)
    if (!mine) return
    mine.release()
    if (mine.used === 0 && mine.waiting === 0) this.#userSlots.delete(hold.user)
  }

  /** A turn has ended: starts waiting for a slot (everybody's, or a user's) may have its agent's. */
  makeRoom (): void {
    const failed = (err: Error) => this.#o.logger.warn({ err }, 'making room failed')
    for (const [user, slots] of this.#userSlots) {
      if (slots.waiting > 0) this.evictIdle(undefined, user).catch(failed)
    }
    if (this.#slots.waiting > 0) this.evictIdle().catch(failed)
  }

  #userSlotsOf (user: string): AgentSlots {
    let slots = this.#userSlots.get(user)
    if (!slots) {
      slots = new AgentSlots(this.#o.config.perUser.liveAgents)
      this.#userSlots.set(user, slots)
    }
    return slots
  }

  /**
   * Makes room: suspends the least recently active idle agent (of `user`'s, when given). An idle
   * agent already on its way out (stopping for another reason) frees a slot by itself, so nobody
   * else is evicted for it. False when every such agent is busy or already being evicted: the
   * caller waits its turn.
   */
  async evictIdle (except?: string, user?: string): Promise<boolean> {
    let victim: A | undefined
    for (const agent of this.#live.values()) {
      if (user !== undefined && this.#holds.get(agent)?.user !== user) continue
      if (agent.sessionId !== except && !agent.inflight && agent.phase !== 'evicting') {
        victim = agent
        break
      }
    }
    if (!victim) return false
    if (victim.phase === 'leaving') return true
    victim.phase = 'evicting'
    // an eviction that did not happen (the session moved on meanwhile) leaves the agent as it was
    if (!await this.#o.evict(victim.sessionId) && victim.phase === 'evicting') victim.phase = 'live'
    return true
  }

  /**
   * Starts an agent in a slot already taken. `wire` builds the agent's record and attaches its
   * listeners before the process starts, so no line and no exit can slip past. A start that fails
   * gives the slot back and rejects.
   */
  async launch (opts: LaunchOptions, wire: (proc: AgentProcess) => A): Promise<A> {
    const { sessionId } = opts
    const { agent: agentConfig } = this.#o.config
    const log = this.#o.logger.child({ sessionId })
    let agent: A
    try {
      const tmpDir = this.#tmpDir(sessionId)
      await mkdir(tmpDir, { recursive: true })
      this.#tmpDirs.add(sessionId)
      const stateDir = agentStateDir(agentConfig.configDir, opts.owner, sessionId)
      await mkdir(stateDir, { recursive: true })
      if (opts.conversation.mode === 'resume') {
        const adopted = await adoptLegacyTranscript(agentConfig.configDir, stateDir, opts.conversation.agentSessionId)
        if (adopted.length > 0) log.info({ projects: adopted, stateDir }, 'copied the conversation\'s transcript from the shared config directory of earlier versions')
      }
      let command = claudeCommand({
        agent: agentConfig,
        sessionId,
        model: opts.model,
        permissionMode: opts.permissionMode,
        conversation: opts.conversation,
        parentEnv: this.#env,
        home: this.#o.config.dataDir,
        stateDir,
        tmpDir
      })
      const sandboxed = this.#sandbox.mode === 'bwrap'
      if (this.#sandbox.mode === 'bwrap') command = await this.#sandboxed(command, this.#sandbox.bwrap, { workdir: opts.workdir, stateDir, tmpDir })
      const proc = new AgentProcess({
        sessionId,
        command,
        cwd: opts.workdir,
        killGraceMs: agentConfig.killGraceMs,
        logger: log,
        agentPid: sandboxed ? sandboxedAgentPid : undefined
      })
      agent = wire(proc)
      await proc.start()
    } catch (err) {
      this.releaseSlot(opts.slot)
      throw err
    }
    this.#holds.set(agent, opts.slot)
    this.#live.set(sessionId, agent)
    const pid = agent.proc.pid!
    this.#recorded.set(agent, this.#o.registry.record(sessionId, pid)
      .catch((err: Error) => this.#o.logger.warn({ err, sessionId }, 'could not record the agent process')))
    // spawned detached: its pid is its process group's id
    this.#watched.set(agent, processStartTime(pid).then((startTime) => {
      // null: gone already, nothing to guard
      if (startTime !== null) this.#watchdog.watch(pid, startTime)
    }))
    return agent
  }

  /** The agent's process has exited: its slot and its record go. */
  async retire (agent: A): Promise<void> {
    if (this.#live.get(agent.sessionId) === agent) this.#live.delete(agent.sessionId)
    const hold = this.#holds.get(agent)
    this.#holds.delete(agent)
    if (hold) this.releaseSlot(hold)
    await this.#watched.get(agent)
    this.#watched.delete(agent)
    if (agent.proc.pid !== undefined) this.#watchdog.unwatch(agent.proc.pid)
    await this.#recorded.get(agent)
    this.#recorded.delete(agent)
    await this.#o.registry.forget(agent.sessionId).catch(() => {})
  }

  /**
   * An expired or deleted session's runtime resources: the agent's temp directory. Never its
   * working directory (the user's code). Only sessions that ran an agent since start-up have one,
   * so a sweep of 100k costs nothing.
   */
  async releaseResources (sessionId: string): Promise<void> {
    if (!this.#tmpDirs.delete(sessionId)) return
    await rm(this.#tmpDir(sessionId), { recursive: true, force: true })
  }

  #tmpDir (sessionId: string): string {
    return join(this.#o.config.dataDir, 'tmp', sessionId)
  }

  /**
   * The command run through bwrap. The agent executable is looked up on the service's PATH and
   * run by its real path when its own lies under a hidden directory (a symlink in ~/.local/bin);
   * its installation is bound back read-only where it would be hidden.
   */
  async #sandboxed (command: ClaudeCommand, bwrap: string, dirs: { workdir: string, stateDir: string, tmpDir: string }): Promise<ClaudeCommand> {
    const path = this.#env.PATH
    const found = await findExecutable(command.bin, path)
    // the same failure as an unconfined spawn's, before bwrap runs
    if (!found) throw Object.assign(new Error(`spawn ${command.bin} ENOENT`), { code: 'ENOENT' })
    const real = await realpath(found)
    // out of sight inside: the hidden directories, and the host's /tmp (replaced by the session's)
    const isHidden = (p: string) => [...this.#hidden, SANDBOX_TMP].some((h) => p === h || p.startsWith(h + '/'))
    const agentPath = isHidden(found) ? real : found
    return sandboxCommand(command, {
      bwrap,
      agentPath,
      layout: {
        workdir: await realpath(dirs.workdir),
        stateDir: await realpath(dirs.stateDir),
        tmpDir: await realpath(dirs.tmpDir),
        hidden: this.#hidden,
        exposed: (await installationDirs(real, path)).filter(isHidden)
      }
    })
  }
}

/** The real paths of those of `paths` that are existing directories (not `/`). */
async function existingDirs (paths: Array<string | undefined>): Promise<string[]> {
  const dirs: string[] = []
  for (const p of paths) {
    if (!p || !p.startsWith('/')) continue
    try {
      const real = await realpath(p)
      if (real !== '/' && (await stat(real)).isDirectory()) dirs.push(real)
    } catch {
      // absent: nothing to hide
    }
  }
  return [...new Set(dirs)]
}
