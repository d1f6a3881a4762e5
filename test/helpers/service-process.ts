/**
 * The real launcher (src/server.ts) as a child process, as an operator runs it: only the
 * environment given (plus PATH, HOME, LANG, TMPDIR), pino JSON lines on stdout parsed as they
 * come. Readiness and exit are events (the "Server listening" line, the child's exit), never
 * sleeps; every wait is bounded, and every child is SIGKILLed in the teardown of the test that
 * started it (or when the test process dies).
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import type { Test } from 'tap'

const root = fileURLToPath(new URL('../../', import.meta.url))
/** generous: PGlite's first start on a busy 2-core machine takes seconds */
export const START_TIMEOUT_MS = 60_000
const EXIT_TIMEOUT_MS = 30_000

export interface LogLine { level?: number, msg?: string, [key: string]: unknown }
export interface Exit { code: number | null, signal: NodeJS.Signals | null }

export class Service {
  readonly lines: LogLine[] = []
  output = ''
  exit: Exit | undefined
  readonly exited: Promise<Exit>
  #stdoutRest = ''
  #waiters = new Set<() => void>()

  constructor (readonly name: string, readonly proc: ChildProcess) {
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
    return String(line.msg).slice('Server listening at '.length)
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
 * kills it in the teardown of `t` if it still runs then.
 */
export function launch (t: Test, name: string, env: Record<string, string | undefined>): Service {
  const clean: Record<string, string> = {}
  for (const key of ['PATH', 'HOME', 'LANG', 'TMPDIR']) {
    const value = process.env[key]
    if (value !== undefined) clean[key] = value
  }
  for (const [key, value] of Object.entries(env)) if (value !== undefined) clean[key] = value
  const proc = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
    cwd: root,
    env: clean,
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const service = new Service(name, proc)
  children.add(service)
  t.teardown(async () => {
    if (!service.exit) service.proc.kill('SIGKILL')
    await service.exited
  })
  return service
}
