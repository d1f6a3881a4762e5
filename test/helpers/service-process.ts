/**
 * The real launcher (src/server.ts) as a child process, as an operator runs it: only the
 * environment given (plus PATH, HOME, LANG, TMPDIR), pino JSON lines on stdout parsed as they
 * come. Readiness and exit are events (the "Server listening" line, the child's exit), never
 * sleeps; every wait is bounded, and every child is SIGKILLed in the teardown of the test that
 * started it (or when the test process dies).
 *
 * Every /v1 route and the stream need a bearer token: `launch` gives the child a `JWT_SECRET`
 * (`TEST_JWT_SECRET`) unless the environment given names `JWT_SECRET` or `JWT_JWKS_URL` itself, and
 * the Service mints tokens with it (`token()`, `authHeader()`, or `fetch()`, which sends one).
 * Load shedding is off (`MAX_EVENT_LOOP_DELAY_MS=0`) unless the environment given names it.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { Test } from 'tap'
import { TEST_USER } from './build.js'
import { mintToken } from './tokens.js'

const root = fileURLToPath(new URL('../../', import.meta.url))
/** generous: PGlite's first start on a busy 2-core machine takes seconds */
export const START_TIMEOUT_MS = 60_000
const EXIT_TIMEOUT_MS = 30_000
/** the HS256 key `launch` gives a child whose environment names no JWT setting */
const TEST_JWT_SECRET = 'service-process-test-secret-of-at-least-32-chars'

export interface LogLine { level?: number, msg?: string, [key: string]: unknown }
export interface Exit { code: number | null, signal: NodeJS.Signals | null }

export class Service {
  readonly lines: LogLine[] = []
  output = ''
  exit: Exit | undefined
  readonly exited: Promise<Exit>
  /** the base URL once `ready()` has resolved */
  url = ''
  #stdoutRest = ''
  #waiters = new Set<() => void>()
  #tokens = new Map<string, Promise<string>>()

  /**
   * @param auth the child's HS256 key and JWT_ISSUER/JWT_AUDIENCE, from which it accepts tokens
   *   (no secret: the test configured authentication itself, and `token()` refuses)
   */
  constructor (readonly name: string, readonly proc: ChildProcess,
    readonly auth: { secret?: string | undefined, issuer?: string | undefined, audience?: string | undefined } = {}) {
    proc.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      this.output += chunk
      const parts = (this.#stdoutRest + chunk).split('\n')
      this.#stdoutRest = parts.pop() ?? ''
      for (const part of parts) {
        try {
          this.lines.push(JSON.parse(part) as LogLine)
        } catch {
          // not a log line (tsx or Node warnings): kept in output only
        }
      }
      this.#wake()
    })
    proc.stderr?.setEncoding('utf8').on('data', (chunk: string) => { this.output += chunk })
    this.exited = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        this.exit = { code, signal }
        this.#wake()
        resolve(this.exit)
      })
    })
  }

  #wake (): void {
    for (const w of this.#waiters) w()
  }

  /** Resolves with the first log line matching, rejects when the child exits first or on timeout. */
  waitForLine (match: (line: LogLine) => boolean, what: string, timeoutMs = START_TIMEOUT_MS): Promise<LogLine> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const line = this.lines.find(match)
        if (line) return done(() => resolve(line))
        if (this.exit) {
          return done(() => reject(new Error(`${this.name} exited (${JSON.stringify(this.exit)}) before ${what}:\n${this.output}`)))
        }
      }
      const timer = setTimeout(() => done(() => reject(new Error(`${this.name}: no ${what} within ${timeoutMs} ms:\n${this.output}`))), timeoutMs)
      const done = (settle: () => void) => {
        clearTimeout(timer)
        this.#waiters.delete(check)
        settle()
      }
      this.#waiters.add(check)
      check()
    })
  }

  /** The base URL from the "Server listening at …" line: the real port, also with PORT=0. */
  async ready (): Promise<string> {
    const line = await this.waitForLine((l) => typeof l.msg === 'string' && l.msg.startsWith('Server listening at '), 'listening')
    this.url = String(line.msg).slice('Server listening at '.length)
    return this.url
  }

  /**
   * A bearer token of `user` (default `TEST_USER`) signed with the child's key, minted once per
   * user and reused, as a phone reuses its token (an hour's validity: longer than any test).
   */
  token (user: string = TEST_USER): Promise<string> {
    const { secret, issuer, audience } = this.auth
    if (secret === undefined) return Promise.reject(new Error(`${this.name}: launched without a JWT_SECRET of the test's, no token to mint`))
    let token = this.#tokens.get(user)
    if (!token) {
      token = mintToken({ secret, sub: user, issuer, audience })
      this.#tokens.set(user, token)
    }
    return token
  }

  /** `{ authorization: 'Bearer <token of user>' }`, for fetch and `new WebSocket(url, { headers })`. */
  async authHeader (user?: string): Promise<{ authorization: string }> {
    return { authorization: `Bearer ${await this.token(user)}` }
  }

  /**
   * `fetch(<base URL><path>)` as `user` (default `TEST_USER`): the Authorization header is added
   * unless `init.headers` has one of its own. Only after `ready()`.
   */
  async fetch (path: string, init: RequestInit & { user?: string } = {}): Promise<Response> {
    if (this.url === '') throw new Error(`${this.name}: fetch before ready()`)
    const { user, ...rest } = init
    const headers = new Headers(rest.headers)
    if (!headers.has('authorization')) headers.set('authorization', (await this.authHeader(user)).authorization)
    return fetch(this.url + path, { ...rest, headers })
  }

  async waitExit (timeoutMs = EXIT_TIMEOUT_MS): Promise<Exit> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`${this.name} did not exit within ${timeoutMs} ms:\n${this.output}`)), timeoutMs)
    })
    try {
      return await Promise.race([this.exited, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  async stop (signal: NodeJS.Signals): Promise<Exit> {
    this.proc.kill(signal)
    return this.waitExit()
  }
}

const children = new Set<Service>()
// the teardown of the test that started a child covers failures; this, a test process that dies
process.once('exit', () => {
  for (const child of children) if (!child.exit) child.proc.kill('SIGKILL')
})

/**
 * Starts `node --import tsx src/server.ts` with only the environment given (plus PATH, HOME), and
 * kills it in the teardown of `t` if it still runs then. Unless `env` names `JWT_SECRET` or
 * `JWT_JWKS_URL` (even as undefined: then the child runs without, as configured), the child gets
 * `JWT_SECRET=TEST_JWT_SECRET` and the Service mints tokens with it.
 */
export function launch (t: Test, name: string, env: Record<string, string | undefined>): Service {
  const clean: Record<string, string> = {}
  for (const key of ['PATH', 'HOME', 'LANG', 'TMPDIR']) {
    const value = process.env[key]
    if (value !== undefined) clean[key] = value
  }
  const configuresAuth = 'JWT_SECRET' in env || 'JWT_JWKS_URL' in env
  if (!configuresAuth) clean.JWT_SECRET = TEST_JWT_SECRET
  // No load shedding unless the test asks for it: these tests are about the launcher (restarts,
  // locks, crash recovery), and on a busy 2-core CI box a child's loop is saturated for a while
  // after its start (PGlite, migrations, tsx), so its first requests would get a 503
  // SERVICE_OVERLOADED. Load shedding has a test of its own.
  if (!('MAX_EVENT_LOOP_DELAY_MS' in env)) clean.MAX_EVENT_LOOP_DELAY_MS = '0'
  for (const [key, value] of Object.entries(env)) if (value !== undefined) clean[key] = value
  const proc = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    cwd: root,
    env: clean,
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const service = new Service(name, proc, { secret: clean.JWT_SECRET, issuer: clean.JWT_ISSUER, audience: clean.JWT_AUDIENCE })
  children.add(service)
  t.teardown(async () => {
    if (!service.exit) service.proc.kill('SIGKILL')
    await service.exited
  })
  return service
}
