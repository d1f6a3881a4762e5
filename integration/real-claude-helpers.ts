/**
 * What the real-CLI integration tests (real-claude.test.ts, real-claude-permissions.test.ts) share:
 * their start (the pinned CLAUDE_BIN checked, a HOME of their own, the fake Anthropic API, the
 * environment the CLI gets) and a client on a session's WebSocket stream, which keeps every stored
 * frame (those with a `seq`) and every other frame (answers to frames it sent), and waits on them
 * with a bound, failing early when the stream closes. Not a test file: tap runs only what
 * scripts/real-claude-integration.sh names.
 */
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { Test } from 'tap'
import WebSocket from 'ws'
import { startFakeAnthropicApi, type FakeAnthropicApi } from './fake-anthropic-api.js'

export const PINNED_VERSION = '2.1.330'

const execFileAsync = promisify(execFile)

/** Sets process.env for the test (the service's allow-list passes these to the CLI), restored in teardown. */
function setEnv (t: Test, vars: Record<string, string>): void {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]))
  Object.assign(process.env, vars)
  t.teardown(() => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  })
}

export interface RealClaude {
  /** CLAUDE_BIN, which prints PINNED_VERSION */
  bin: string
  /** the temporary HOME of the test process (and so of the CLI) */
  home: string
  api: FakeAnthropicApi
}

/**
 * The start of a real-CLI test: CLAUDE_BIN (set by scripts/real-claude-integration.sh) asserted to
 * be PINNED_VERSION, a temporary HOME (nothing of the developer's ~/.claude or CLAUDE.md reaches the
 * CLI), the fake Anthropic API, and HOME, ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY=test-key and
 * CLAUDE_CODE_MAX_RETRIES=0 in process.env (the test's AGENT_ENV_PASSTHROUGH hands them to the CLI);
 * all undone in `t`'s teardown. Undefined, after a failed assertion, when CLAUDE_BIN is not set.
 */
export async function startRealClaude (t: Test): Promise<RealClaude | undefined> {
  const bin = process.env.CLAUDE_BIN
  if (!bin) {
    t.fail('CLAUDE_BIN is not set: run scripts/real-claude-integration.sh, which installs the pinned CLI and sets it')
    return undefined
  }
  const home = await mkdtemp(join(tmpdir(), 'mobvibe-real-claude-home-'))
  t.teardown(() => rm(home, { recursive: true, force: true }))
  const version = await execFileAsync(bin, ['--version'], { timeout: 60_000, env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home } })
  t.match(version.stdout, new RegExp(`^${PINNED_VERSION.replaceAll('.', '\\.')} `), `CLAUDE_BIN is the pinned ${PINNED_VERSION}: ${version.stdout.trim()}`)

  const api = await startFakeAnthropicApi({ log: (m) => t.comment(m) })
  t.teardown(() => api.close())
  setEnv(t, { HOME: home, ANTHROPIC_BASE_URL: api.url, ANTHROPIC_API_KEY: 'test-key', CLAUDE_CODE_MAX_RETRIES: '0' })
  return { bin, home, api }
}

/** A stored stream frame. */
export interface Frame {
  seq: number
  type: string
  at: string
  data: any
}

export interface StreamClientOptions {
  /** how long `next` and `reply` wait when the call gives no bound of its own */
  timeoutMs: number
  /** extra state for the message of a failed wait (the session, the fake API's requests…) */
  describe?: () => Promise<string>
}

/** Matches an agent line of that `type` (and `subtype`, when given). */
export const isAgent = (type: string, subtype?: string) => (f: Frame) =>
  f.type === 'agent' && f.data.type === type && (subtype === undefined || f.data.subtype === subtype)

/** A client on a session's WebSocket stream: the stored frames, the other frames, bounded waits. */
export class StreamClient {
  readonly frames: Frame[] = []
  readonly others: any[] = []
  #waiters = new Set<() => void>()
  #closed: string | undefined

  private constructor (readonly socket: WebSocket, readonly options: StreamClientOptions) {
    socket.on('message', (data) => {
      const frame = JSON.parse(String(data))
      if (typeof frame.seq === 'number') this.frames.push(frame as Frame)
      else this.others.push(frame)
      this.#wake()
    })
    socket.on('close', (code, reason) => {
      this.#closed = `${code} ${String(reason)}`
      this.#wake()
    })
  }

  /**
   * Opens `/v1/sessions/{sessionId}/stream?after=0`; the socket is terminated in `t`'s teardown.
   * `headers`: the bearer token of the session's owner, as a phone sends it on the upgrade.
   */
  static async open (t: Test, baseUrl: string, sessionId: string, headers: Record<string, string>, options: StreamClientOptions): Promise<StreamClient> {
    const socket = new WebSocket(`${baseUrl.replace(/^http/, 'ws')}/v1/sessions/${sessionId}/stream?after=0`, { headers })
    const client = new StreamClient(socket, options)
    t.teardown(() => { if (socket.readyState !== WebSocket.CLOSED) socket.terminate() })
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve())
      socket.once('error', reject)
    })
    return client
  }

  #wake (): void {
    for (const waiter of this.#waiters) waiter()
  }

  #until<T> (find: () => T | undefined, what: string, timeoutMs: number): Promise<T> {
    return new Promise((resolve, reject) => {
      const fail = (why: string) => {
        done()
        const frames = () => `frames: ${this.summary()}`
        if (this.options.describe === undefined) reject(new Error(`${why}: ${what}\n${frames()}`))
        else this.options.describe().then((state) => reject(new Error(`${why}: ${what}\n${state}\n${frames()}`)), reject)
      }
      const check = () => {
        const found = find()
        if (found !== undefined) {
          done()
          resolve(found)
        } else if (this.#closed !== undefined) {
          fail(`the stream closed (${this.#closed}) before`)
        }
      }
      const timer = setTimeout(() => fail(`nothing within ${timeoutMs} ms`), timeoutMs)
      const done = () => {
        clearTimeout(timer)
        this.#waiters.delete(check)
      }
      this.#waiters.add(check)
      check()
    })
  }

  /** The first stored frame after `afterSeq` that matches; rejects on timeout or when the stream closes. */
  next (match: (f: Frame) => boolean, what: string, afterSeq = 0, timeoutMs = this.options.timeoutMs): Promise<Frame> {
    return this.#until(() => this.frames.find((f) => f.seq > afterSeq && match(f)), what, timeoutMs)
  }

  /** The first frame without a seq (an answer to a frame we sent) that matches. */
  reply (match: (f: any) => boolean, what: string, timeoutMs = this.options.timeoutMs): Promise<any> {
    return this.#until(() => this.others.find(match), what, timeoutMs)
  }

  send (frame: unknown): void {
    this.socket.send(JSON.stringify(frame))
  }

  /** The stored frames after `afterSeq` up to and including `untilSeq`. */
  between (afterSeq: number, untilSeq: number): Frame[] {
    return this.frames.filter((f) => f.seq > afterSeq && f.seq <= untilSeq)
  }

  /** One word per stored frame (`3:agent/system/init`, `9:state(active→suspended)`), for diagnostics. */
  summary (): string {
    return this.frames.map((f) => f.type === 'agent'
      ? `${f.seq}:agent/${f.data.type}${f.data.subtype ? `/${f.data.subtype}` : ''}`
      : `${f.seq}:${f.type}${f.type === 'state' ? `(${f.data.from}→${f.data.to})` : ''}`).join(' ')
  }
}
