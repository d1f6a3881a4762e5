import { spawn, type ChildProcessByStdio } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { EventEmitter, once } from 'node:events'
import type { Readable, Writable } from 'node:stream'
import { setTimeout as delay } from 'node:timers/promises'
import type { Log } from '../logger.js'
import type { StopReason } from '../domain/stop-reasons.js'
import { findByEnvMarker, signal } from '../system/proc.js'
import { AGENT_HOME_MARKER, AGENT_MARKER, type ClaudeCommand } from './claude-command.js'

export interface AgentExit {
  code: number | null
  signal: NodeJS.Signals | null
  /** set when the service asked the process to stop; null means it ended on its own */
  reason: StopReason | null
  stderrTail: string
}

export interface AgentProcessEvents {
  line: [string]
  exit: [AgentExit]
}

/** The numbers that bound one agent process's buffers. */
const AGENT_LIMITS = {
  /** kept from stderr for error reports */
  stderrTailBytes: 16 * 1024,
  /** a stdout line longer than this is passed on in pieces of this size (the CLI's lines are JSON objects, rarely > 1 MiB) */
  maxLineBytes: 32 * 1024 * 1024
} as const

/**
 * One `claude` child: its own process group, stdout split into lines, stderr's tail kept, stdin
 * written only as whole JSON lines, and a stop sequence that leaves nothing behind.
 */
export class AgentProcess extends EventEmitter<AgentProcessEvents> {
  readonly sessionId: string
  readonly #cmd: ClaudeCommand
  readonly #cwd: string
  readonly #killGraceMs: number
  readonly #log: Log
  readonly #agentPid: ((pid: number) => Promise<number | undefined>) | undefined
  #child: ChildProcessByStdio<Writable, Readable, Readable> | undefined
  #stopReason: StopReason | null = null
  #spawned = false
  #stderr = ''
  #partial: Buffer[] = []
  #partialBytes = 0
  #exit: Promise<AgentExit> | undefined
  #stopping: Promise<AgentExit> | undefined

  /**
   * `agentPid`: where the agent runs under a wrapper (bwrap) that does not pass SIGTERM on, finds
   * the agent's own process from the wrapper's pid, for the stop sequence's SIGTERM.
   */
  constructor (opts: {
    sessionId: string
    command: ClaudeCommand
    cwd: string
    killGraceMs: number
    logger: Log
    agentPid?: ((pid: number) => Promise<number | undefined>) | undefined
  }) {
    super()
    this.sessionId = opts.sessionId
    this.#cmd = opts.command
    this.#cwd = opts.cwd
    this.#killGraceMs = opts.killGraceMs
    this.#log = opts.logger
    this.#agentPid = opts.agentPid
  }

  /** a stop was asked for: the process takes no more input */
  get stopping (): boolean {
    return this.#stopReason !== null
  }

  get pid (): number | undefined {
    return this.#child?.pid
  }

  get exited (): Promise<AgentExit> {
    if (!this.#exit) throw new Error('not started')
    return this.#exit
  }

  /** Spawns the process; rejects when it cannot start at all (missing binary, bad cwd). */
  async start (): Promise<void> {
    const child = spawn(this.#cmd.bin, this.#cmd.args, {
      cwd: this.#cwd,
      env: this.#cmd.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      // its own process group, so a stop can signal the whole tree it started
      detached: true
    })
    this.#child = child
    const exited = new Promise<AgentExit>((resolve) => {
      child.once('close', (code, sig) => {
        this.#flushPartial()
        resolve({ code, signal: sig, reason: this.#stopReason, stderrTail: this.#stderr })
      })
    })
    this.#exit = exited.then(async (exit) => {
      // descendants that left the group (the CLI's Bash tools use setsid) still carry the marker
      await this.#killEscaped()
      // a process that never started (start() rejected) has no exit to report
      if (this.#spawned) this.emit('exit', exit)
      return exit
    })
    child.stdout.on('data', (chunk: Buffer) => this.#onStdout(chunk))
    child.stderr.on('data', (chunk: Buffer) => {
      this.#stderr = (this.#stderr + chunk.toString('utf8')).slice(-AGENT_LIMITS.stderrTailBytes)
    })
    // writing to a process that died raises EPIPE on stdin: the exit handler reports it
    child.stdin.on('error', () => {})
    // 'error' after a successful spawn (a failed kill) must not go unhandled: log it
    child.on('error', (err) => this.#log.warn({ err }, 'agent process error'))
    const ac = new AbortController()
    try {
      await Promise.race([
        once(child, 'spawn', { signal: ac.signal }).then(() => { this.#spawned = true }),
        once(child, 'error', { signal: ac.signal }).then(([err]) => { throw err instanceof Error ? err : new Error(String(err)) })
      ])
    } finally {
      ac.abort()
    }
  }

  /** Writes one message as a single JSON line. False when the process cannot take input. */
  send (message: unknown): boolean {
    const stdin = this.#child?.stdin
    if (!stdin || stdin.destroyed || !stdin.writable || this.#stopReason) return false
    stdin.write(JSON.stringify(message) + '\n')
    return true
  }

  /** Asks the CLI to end the running turn; it answers with a result and lives on. */
  interrupt (): void {
    this.send({ type: 'control_request', request_id: randomUUID(), request: { subtype: 'interrupt' } })
  }

  pauseOutput (): void { this.#child?.stdout.pause() }
  resumeOutput (): void { this.#child?.stdout.resume() }

  /**
   * The stop sequence: close stdin and wait (the CLI finishes and flushes its transcript), then
   * SIGTERM to the CLI (it ends its own tool trees) and wait, then SIGKILL to the group, then any
   * escaped descendant by its marker. Idempotent; the first reason is the one recorded.
   */
  stop (reason: StopReason): Promise<AgentExit> {
    if (!this.#child || !this.#exit) return Promise.resolve({ code: null, signal: null, reason, stderrTail: '' })
    this.#stopReason ??= reason
    this.#stopping ??= this.#stopSequence(this.#child, this.#exit)
    return this.#stopping
  }

  /**
   * At once, without the grace of `stop`: SIGKILL to the whole group. For an instance that lost its
   * lease, whose sessions another instance may resume within moments.
   */
  kill (reason: StopReason): Promise<AgentExit> {
    if (!this.#child?.pid || !this.#exit) return Promise.resolve({ code: null, signal: null, reason, stderrTail: '' })
    this.#stopReason ??= reason
    signal(-this.#child.pid, 'SIGKILL')
    signal(this.#child.pid, 'SIGKILL')
    return this.#exit
  }

  async #stopSequence (child: ChildProcessByStdio<Writable, Readable, Readable>, exited: Promise<AgentExit>): Promise<AgentExit> {
    const pid = child.pid!
    const log = this.#log.child({ pid, reason: this.#stopReason })
    const waitExit = async (ms: number) => {
      const ac = new AbortController()
      const winner = await Promise.race([exited.then(() => true), delay(ms, false, { signal: ac.signal }).catch(() => false)])
      ac.abort()
      return winner
    }
    child.stdin.end()
    if (await waitExit(this.#killGraceMs)) return exited
    // through a wrapper, to the agent itself: a wrapper killed by it would take the agent down at once
    const target = await this.#agentPid?.(pid) ?? pid
    log.warn({ target }, 'agent did not exit after stdin closed: SIGTERM')
    signal(target, 'SIGTERM')
    if (await waitExit(this.#killGraceMs)) return exited
    log.warn('agent ignored SIGTERM: SIGKILL to its process group')
    signal(-pid, 'SIGKILL')
    signal(pid, 'SIGKILL')
    return exited
  }

  async #killEscaped (): Promise<void> {
    // only this service's: another instance on the host may run the session's agent by now
    const home = this.#cmd.env[AGENT_HOME_MARKER]
    const pids = await findByEnvMarker(AGENT_MARKER, this.sessionId, home === undefined ? undefined : { name: AGENT_HOME_MARKER, value: home })
    for (const pid of pids) {
      this.#log.info({ pid }, 'ending a descendant that escaped the agent\'s process group')
      signal(pid, 'SIGKILL')
    }
  }

  #onStdout (chunk: Buffer): void {
    let start = 0
    for (let nl = chunk.indexOf(10); nl !== -1; nl = chunk.indexOf(10, start)) {
      const piece = chunk.subarray(start, nl)
      start = nl + 1
      if (this.#partialBytes > 0) {
        this.#partial.push(piece)
        this.#emitLine(Buffer.concat(this.#partial).toString('utf8'))
        this.#partial = []
        this.#partialBytes = 0
      } else if (piece.length > 0) {
        this.#emitLine(piece.toString('utf8'))
      }
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start)
      if (this.#partialBytes + rest.length > AGENT_LIMITS.maxLineBytes) {
        this.#log.warn({ bytes: this.#partialBytes + rest.length }, 'agent line over the limit: passed on in pieces')
        this.#flushPartial()
      }
      this.#partial.push(rest)
      this.#partialBytes += rest.length
    }
  }

  #flushPartial (): void {
    if (this.#partialBytes === 0) return
    const line = Buffer.concat(this.#partial).toString('utf8')
    this.#partial = []
    this.#partialBytes = 0
    this.#emitLine(line)
  }

  #emitLine (line: string): void {
    if (line.trim() !== '') this.emit('line', line)
  }
}
