import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { Config } from '../config.js'
import type { Log } from '../logger.js'
import { AgentProcess } from './agent-process.js'
import { AgentSlots } from './agent-slots.js'
import { claudeCommand, type Conversation } from './claude-command.js'
import type { ProcessRegistry } from './process-registry.js'

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
  config: Pick<Config, 'agent' | 'dataDir'>
  registry: ProcessRegistry
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
  workdir: string
  model: string | null
  conversation: Conversation
}

/**
 * The live agent processes of this service: starting them (command, temp directory, the on-disk
 * record that lets a crashed service end its orphans), the cap on how many run (MAX_LIVE_AGENTS,
 * idle ones evicted first, first come first served beyond), and what each leaves behind.
 */
export class AgentPool<A extends PooledAgent> {
  readonly #o: AgentPoolOptions
  readonly #slots: AgentSlots
  /** in order of activity, least recent first: touch() moves an agent to the end */
  readonly #live = new Map<string, A>()
  /** the on-disk record of each process, written while it starts */
  readonly #recorded = new Map<A, Promise<void>>()
  /** sessions with an agent temp directory (created since start-up) */
  readonly #tmpDirs = new Set<string>()

  constructor (opts: AgentPoolOptions) {
    this.#o = opts
    this.#slots = new AgentSlots(opts.config.agent.maxLive)
  }

  get size (): number { return this.#live.size }
  /** starts waiting for a slot */
  get waiting (): number { return this.#slots.waiting }

  get (sessionId: string): A | undefined { return this.#live.get(sessionId) }
  ids (): string[] { return [...this.#live.keys()] }

  /** Start-up: ends what a previous run left; returns the pids it ended. */
  async start (): Promise<number[]> {
    await mkdir(this.#o.config.agent.configDir, { recursive: true })
    const reaped = await this.#o.registry.reapOrphans()
    // no agent runs yet: whatever temp files earlier runs left are nobody's
    await rm(join(this.#o.config.dataDir, 'tmp'), { recursive: true, force: true })
    return reaped
  }

  /** The agent printed something or was given a message: it is the most recently active. */
  touch (agent: A): void {
    if (this.#live.get(agent.sessionId) !== agent) return
    this.#live.delete(agent.sessionId)
    this.#live.set(agent.sessionId, agent)
  }

  /** Takes a slot; at the cap, evicts the least recently active idle agent, or waits its turn. */
  async acquireSlot (sessionId: string, onWait: () => Promise<void>): Promise<void> {
    if (this.#slots.tryAcquire()) return
    const granted = this.#slots.acquire()
    // the slot is this caller's once granted, whatever happens to the notice: never leak it
    if (!await this.evictIdle(sessionId)) await onWait().catch((err: Error) => this.#o.logger.warn({ err, sessionId }, 'slot wait notice not stored'))
    await granted
  }

  releaseSlot (): void {
    this.#slots.release()
  }

  /**
   * Makes room: suspends the least recently active idle agent. An idle agent already on its way
   * out (stopping for another reason) frees a slot by itself, so nobody else is evicted for it.
   * False when every agent is busy or already being evicted: the caller waits its turn.
   */
  async evictIdle (except?: string): Promise<boolean> {
    let victim: A | undefined
    for (const agent of this.#live.values()) {
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
    let agent: A
    try {
      const tmpDir = this.#tmpDir(sessionId)
      await mkdir(tmpDir, { recursive: true })
      this.#tmpDirs.add(sessionId)
      const proc = new AgentProcess({
        sessionId,
        command: claudeCommand({
          agent: this.#o.config.agent,
          sessionId,
          model: opts.model,
          conversation: opts.conversation,
          parentEnv: this.#o.parentEnv ?? process.env,
          tmpDir
        }),
        cwd: opts.workdir,
        killGraceMs: this.#o.config.agent.killGraceMs,
        logger: this.#o.logger.child({ sessionId })
      })
      agent = wire(proc)
      await proc.start()
    } catch (err) {
      this.#slots.release()
      throw err
    }
    this.#live.set(sessionId, agent)
    this.#recorded.set(agent, this.#o.registry.record(sessionId, agent.proc.pid!)
      .catch((err: Error) => this.#o.logger.warn({ err, sessionId }, 'could not record the agent process')))
    return agent
  }

  /** The agent's process has exited: its slot and its record go. */
  async retire (agent: A): Promise<void> {
    if (this.#live.get(agent.sessionId) === agent) this.#live.delete(agent.sessionId)
    this.#slots.release()
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
}
