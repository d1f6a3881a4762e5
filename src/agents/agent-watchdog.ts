import { spawn, type ChildProcessByStdio } from 'node:child_process'
import type { Socket } from 'node:net'
import type { Writable } from 'node:stream'
import { setTimeout as delay } from 'node:timers/promises'
import type { Log } from '../logger.js'

/**
 * The dead man's switch: what it reads on its stdin, one line at a time, is
 *   `+<pgid> <start time>`  an agent's process group started (the start time of its leader,
 *                           /proc/<pid>/stat field 22, tells a reused pid apart)
 *   `-<pgid>`               it ended
 *   `.`                     a heartbeat
 *   `q`                     the service closes: exit and kill nothing
 * When no line comes for `$1` seconds (the service is frozen: SIGSTOP, a paused VM, a stalled
 * event loop) or stdin ends without `q` (the service died, kill -9 included), it SIGKILLs every
 * group still registered whose leader has the recorded start time (a zombie leader too: its group
 * may live on, and its pid cannot be reused while it is one), then exits: 3 after a silence, 4 after
 * an EOF. Builtins only: it must work when the host is out of processes or memory.
 */
/* eslint-disable no-template-curly-in-string -- bash's expansions, not templates */
const SCRIPT = [
  'set -f',
  't=$1',
  'declare -A groups=()',
  'while :; do',
  '  if IFS= read -r -t "$t" line; then',
  '    case $line in',
  '      .) ;;',
  '      q) exit 0 ;;',
  '      +*)',
  '        rest=${line#+}; pgid=${rest%% *}; start=${rest#* }',
  '        [[ $pgid =~ ^[1-9][0-9]*$ && $start =~ ^[0-9]+$ ]] && groups[$pgid]=$start ;;',
  '      -*)',
  '        pgid=${line#-}',
  '        [[ $pgid =~ ^[1-9][0-9]*$ ]] && unset "groups[$pgid]" ;;',
  '    esac',
  '  else',
  '    status=$?',
  '    for pgid in "${!groups[@]}"; do',
  '      stat=',
  '      { IFS= read -r stat < "/proc/$pgid/stat"; } 2>/dev/null || continue',
  '      fields=(${stat##*) })',
  '      [[ ${fields[19]} == "${groups[$pgid]}" ]] && kill -KILL -- "-$pgid" 2>/dev/null',
  '    done',
  '    (( status > 128 )) && exit 3',
  '    exit 4',
  '  fi',
  'done'
].join('\n')
/* eslint-enable no-template-curly-in-string */

/** Numbers of the watchdog's supervision; named once. */
const WATCHDOG = {
  /** the heartbeat's period, at most: a quarter of the timeout when that is shorter */
  heartbeatMs: 1000,
  /** a watchdog that ran this long before exiting resets the count of quick exits */
  stableMs: 10_000,
  /** consecutive quick exits before the service stops starting new ones */
  maxQuickExits: 5,
  /** how long close() waits for the watchdog to exit before SIGKILLing it (which kills nothing) */
  closeWaitMs: 2000
} as const

/** The name the watchdog's bash runs as (`$0`): what `ps` shows of it. */
export const WATCHDOG_NAME = 'mobvibe-agent-watchdog'

export interface AgentWatchdogOptions {
  /** how long the service may be silent (frozen, or dead) before its agents are killed */
  timeoutMs: number
  logger: Log
  /** where bash is looked up (the watchdog gets nothing else of the service's environment) */
  path?: string | undefined
  /**
   * Heartbeats are sent only while this says so (the instance's lease is fresh): an instance that
   * cannot renew its lease and then freezes must not keep its agents alive past the lease
   */
  beatWhile?: () => boolean
}

interface Watcher {
  proc: ChildProcessByStdio<Writable, null, null>
  exited: Promise<void>
  startedAt: number
}

/**
 * One helper process per service that kills the service's agents when the service stops
 * heartbeating: a frozen or dead instance must not keep agents running while another instance,
 * once the lease has run out, takes their sessions over and resumes them. bwrap's
 * `--die-with-parent` covers a death but not a freeze, and unconfined agents have neither.
 *
 * The helper runs in its own session (a SIGKILL of the service, or a signal to its process group,
 * does not reach it) and is unref'd; the heartbeats come from an unref'd timer of the service's
 * event loop, so a stalled loop stops them. A helper that exits while the service runs is
 * replaced (with every group still registered), up to a limit of quick exits.
 */
export class AgentWatchdog {
  readonly #o: AgentWatchdogOptions
  readonly #log: Log
  /** the registered groups: pgid → the start time of its leader */
  readonly #groups = new Map<number, string>()
  #watcher: Watcher | undefined
  #heartbeat: NodeJS.Timeout | undefined
  #quickExits = 0
  #started = false
  /** start() succeeded: from now on a helper that exits is replaced */
  #running = false
  #closing: Promise<void> | undefined

  constructor (opts: AgentWatchdogOptions) {
    if (!(opts.timeoutMs >= 100)) throw new RangeError(`watchdog timeout ${opts.timeoutMs} ms: at least 100 ms`)
    this.#o = opts
    this.#log = opts.logger
  }

  /** the helper's pid while it runs */
  get pid (): number | undefined { return this.#watcher?.proc.pid }

  /** Starts the helper and the heartbeats; rejects when bash cannot be started. Idempotent. */
  async start (): Promise<void> {
    if (this.#started || this.#closing) return
    this.#started = true
    const { proc } = this.#spawn()
    await new Promise<void>((resolve, reject) => {
      proc.once('spawn', resolve)
      proc.once('error', reject)
    })
    this.#running = true
    const beatMs = Math.min(WATCHDOG.heartbeatMs, this.#o.timeoutMs / 4)
    const beatWhile = this.#o.beatWhile ?? (() => true)
    this.#heartbeat = setInterval(() => { if (beatWhile()) this.#write('.') }, beatMs)
    // the heartbeat must not be what keeps the service alive; a stalled loop must stop it
    this.#heartbeat.unref()
    this.#log.info({ pid: proc.pid, timeoutMs: this.#o.timeoutMs, heartbeatMs: beatMs }, 'agent watchdog started')
  }

  /** An agent's process group started; `startTime` is its leader's (processStartTime). */
  watch (pgid: number, startTime: string): void {
    this.#groups.set(pgid, startTime)
    this.#write(`+${pgid} ${startTime}`)
  }

  /** The group ended (or is being stopped by the service itself). */
  unwatch (pgid: number): void {
    if (!this.#groups.delete(pgid)) return
    this.#write(`-${pgid}`)
  }

  /** Ends the helper quietly: nothing is killed. Idempotent. */
  close (): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async #close (): Promise<void> {
    clearInterval(this.#heartbeat)
    const watcher = this.#watcher
    if (!watcher) return
    this.#write('q')
    watcher.proc.stdin.end()
    const ac = new AbortController()
    const exited = await Promise.race([
      watcher.exited.then(() => true),
      delay(WATCHDOG.closeWaitMs, false, { signal: ac.signal }).catch(() => false)
    ])
    ac.abort()
    if (!exited) {
      // a SIGKILL of the helper itself kills no agent
      this.#log.warn({ pid: watcher.proc.pid }, 'agent watchdog did not exit when told to: SIGKILL')
      watcher.proc.kill('SIGKILL')
      await watcher.exited
    }
  }

  #spawn (): Watcher {
    const seconds = (this.#o.timeoutMs / 1000).toFixed(3)
    const proc = spawn('bash', ['-c', SCRIPT, WATCHDOG_NAME, seconds], {
      // its own session: neither a SIGKILL of the service nor a signal to the service's group reaches it
      detached: true,
      stdio: ['pipe', 'ignore', 'ignore'],
      cwd: '/',
      env: { PATH: this.#o.path ?? '/usr/bin:/bin' }
    })
    const exited = new Promise<void>((resolve) => {
      proc.once('exit', (code, signal) => {
        resolve()
        this.#onExit(watcher, `exit code ${code ?? '-'}, signal ${signal ?? '-'}`, code)
      })
      proc.once('error', (err) => {
        // a failed spawn has no exit to wait for
        if (proc.pid === undefined) resolve()
        this.#onExit(watcher, err.message, null)
      })
    })
    const watcher: Watcher = { proc, exited, startedAt: Date.now() }
    // a helper that died raises EPIPE here: its exit handler replaces it
    proc.stdin.on('error', () => {})
    proc.unref()
    ;(proc.stdin as Socket).unref()
    this.#watcher = watcher
    for (const [pgid, startTime] of this.#groups) this.#write(`+${pgid} ${startTime}`)
    return watcher
  }

  #onExit (watcher: Watcher, how: string, code: number | null): void {
    if (this.#watcher !== watcher) return // handled already ('error', then 'exit')
    this.#watcher = undefined
    // at start-up, start() rejects instead
    if (this.#closing || !this.#running) return
    const pid = watcher.proc.pid
    if (code === 3) {
      // it did its job: this service was frozen (or its loop stalled) past the timeout. `groups`
      // may already miss agents whose exits were handled first
      this.#log.error({ pid, timeoutMs: this.#o.timeoutMs, groups: this.#groups.size },
        'this service sent no heartbeat to its agent watchdog in time (frozen, or its event loop stalled): the watchdog killed the agents it guarded')
    } else {
      const ranMs = Date.now() - watcher.startedAt
      this.#quickExits = ranMs >= WATCHDOG.stableMs ? 0 : this.#quickExits + 1
      if (this.#quickExits > WATCHDOG.maxQuickExits) {
        this.#log.error({ pid, how }, 'the agent watchdog keeps exiting: no new one is started, so agents are NOT killed if this service freezes')
        clearInterval(this.#heartbeat)
        return
      }
    }
    this.#log.warn({ pid, how, groups: this.#groups.size }, 'the agent watchdog exited: starting a new one')
    this.#spawn()
  }

  #write (line: string): void {
    const stdin = this.#watcher?.proc.stdin
    if (!stdin || !stdin.writable) return
    stdin.write(line + '\n')
  }
}
