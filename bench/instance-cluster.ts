// The instances of the multi-instance figures: the real launcher (`node --import tsx src/server.ts`)
// as child processes, as an operator runs several of them on one PostgreSQL, each on a port of its
// own on 127.0.0.1 (LOG_LEVEL=warn has no "listening" line: readiness is GET /readyz). Their
// warnings and errors are kept (counted by message) for the report; a child is SIGKILLed whatever
// happens (the caller's closers), its descendants too.
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { readFile, readdir } from 'node:fs/promises'
import { createServer, type AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'

const ROOT = fileURLToPath(new URL('../', import.meta.url))
/** bytes of a child's unparsed output kept for a failure message */
const TAIL_BYTES = 4096

/** A port free on 127.0.0.1 right now (the child binds it a moment later). */
async function freePort (): Promise<number> {
  const server = createServer()
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

export interface Accepted { seq: number }

/** One instance: its data directory, its environment, its current process. */
export class BenchInstance {
  proc: ChildProcess | undefined
  url = ''
  exit: { code: number | null, signal: NodeJS.Signals | null } | undefined
  /** warn/error/fatal log lines of every process it ran, counted by message */
  readonly complaints = new Map<string, number>()
  #exited: Promise<void> = Promise.resolve()
  #tail = ''

  constructor (readonly name: string, readonly dataDir: string, readonly env: Record<string, string>, readonly auth: Record<string, string>) {}

  get pid (): number {
    const pid = this.proc?.pid
    if (pid === undefined) throw new Error(`${this.name} has no process`)
    return pid
  }

  get running (): boolean {
    return this.proc !== undefined && this.exit === undefined
  }

  /** Starts the launcher and waits until GET /readyz answers 200 (the database is reachable). */
  async start (timeoutMs: number): Promise<void> {
    const port = await freePort()
    const proc = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], {
      cwd: ROOT,
      env: { ...this.env, PORT: String(port) },
      stdio: ['ignore', 'pipe', 'pipe']
    })
    this.proc = proc
    this.exit = undefined
    this.url = `http://127.0.0.1:${port}`
    this.#exited = new Promise((resolve) => proc.once('exit', (code, signal) => {
      this.exit = { code, signal }
      resolve()
    }))
    let rest = ''
    proc.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      const parts = (rest + chunk).split('\n')
      rest = parts.pop() ?? ''
      for (const part of parts) this.#logLine(part)
    })
    proc.stderr.setEncoding('utf8').on('data', (chunk: string) => this.#keep(chunk))
    const deadline = Date.now() + timeoutMs
    for (;;) {
      if (this.exit) throw new Error(`${this.name} exited (${JSON.stringify(this.exit)}) before it was ready:\n${this.#tail}`)
      const ok = await fetch(`${this.url}/readyz`).then((r) => r.ok, () => false)
      if (ok) return
      if (Date.now() > deadline) throw new Error(`${this.name}: not ready within ${timeoutMs} ms:\n${this.#tail}`)
      await sleep(100)
    }
  }

  #logLine (line: string): void {
    let parsed: { level?: number, msg?: string } | undefined
    try {
      parsed = JSON.parse(line) as { level?: number, msg?: string }
    } catch {
      this.#keep(line + '\n')
      return
    }
    if ((parsed.level ?? 0) >= 40) {
      const key = `${parsed.level === 40 ? 'warn' : parsed.level === 50 ? 'error' : 'fatal'}: ${parsed.msg ?? '?'}`
      this.complaints.set(key, (this.complaints.get(key) ?? 0) + 1)
    }
  }

  #keep (text: string): void {
    this.#tail = (this.#tail + text).slice(-TAIL_BYTES)
  }

  kill (signal: NodeJS.Signals): void {
    if (this.running) this.proc!.kill(signal)
  }

  /** SIGTERM (a graceful stop), SIGKILL after `graceMs`; resolves once it has exited. */
  async stop (graceMs: number): Promise<void> {
    if (!this.running) return
    this.kill('SIGTERM')
    const timer = setTimeout(() => this.kill('SIGKILL'), graceMs)
    await this.#exited
    clearTimeout(timer)
  }

  async waitExit (): Promise<void> {
    await this.#exited
  }

  /** A request as the bench's user, JSON in and out; throws on a status other than 2xx. */
  async api<T = unknown> (method: string, path: string, body?: unknown): Promise<T> {
    const res = await fetch(this.url + path, {
      method,
      headers: body === undefined ? this.auth : { ...this.auth, 'content-type': 'application/json' },
      ...(body === undefined ? {} : { body: JSON.stringify(body) })
    })
    const text = await res.text()
    if (!res.ok) throw new Error(`${this.name}: ${method} ${path}: ${res.status} ${text.slice(0, 300)}`)
    return (text ? JSON.parse(text) : undefined) as T
  }

  async createSession (): Promise<string> {
    return (await this.api<{ id: string }>('POST', '/v1/sessions', { title: `bench on ${this.name}` })).id
  }

  message (id: string, text: string): Promise<Accepted> {
    return this.api<Accepted>('POST', `/v1/sessions/${id}/messages`, { text })
  }

  streamUrl (id: string): string {
    return `${this.url.replace(/^http/, 'ws')}/v1/sessions/${id}/stream?after=0`
  }

  /** Every stored event of the session (seq and type), through GET /events, paged. */
  async events (id: string): Promise<{ seq: number, type: string }[]> {
    const all: { seq: number, type: string }[] = []
    for (let after = 0; ;) {
      const page = await this.api<{ items: { seq: number, type: string }[], nextAfter: number | null }>('GET', `/v1/sessions/${id}/events?after=${after}&limit=1000`)
      all.push(...page.items.map((e) => ({ seq: e.seq, type: e.type })))
      if (page.nextAfter === null) return all
      after = page.nextAfter
    }
  }

  /** Waits until `turns` turns of the session have ended and none runs. */
  async waitTurns (id: string, turns: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const s = await this.api<{ busy: boolean, state: string, usage: { turns: number } }>('GET', `/v1/sessions/${id}`)
      if (!s.busy && s.usage.turns >= turns) return
      if (Date.now() > deadline) throw new Error(`session ${id}: ${s.usage.turns}/${turns} turns after ${timeoutMs} ms (state ${s.state}, busy ${s.busy})`)
      await sleep(20)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// /proc

export interface ProcInfo { pid: number, ppid: number, comm: string, state: string, ticks: number }

/** Every process's /proc/<pid>/stat: parent, command name, state, CPU ticks (user + system). */
export async function processTable (): Promise<ProcInfo[]> {
  const pids = (await readdir('/proc')).filter((d) => /^\d+$/.test(d))
  const out: ProcInfo[] = []
  await Promise.all(pids.map(async (name) => {
    const stat = await readFile(`/proc/${name}/stat`, 'latin1').catch(() => '')
    if (!stat) return
    // the command name may hold spaces and parentheses: fields count from the last ')'
    const close = stat.lastIndexOf(')')
    const f = stat.slice(close + 2).split(' ')
    out.push({ pid: Number(name), ppid: Number(f[1]), comm: stat.slice(stat.indexOf('(') + 1, close), state: f[0] ?? '', ticks: Number(f[11]) + Number(f[12]) })
  }))
  return out
}

/** The pids below `roots` in the process tree (not the roots themselves). */
export function descendants (table: ProcInfo[], roots: number[]): number[] {
  const below = new Set<number>()
  let frontier = new Set(roots)
  while (frontier.size > 0) {
    const next = new Set<number>()
    for (const p of table) if (frontier.has(p.ppid) && !below.has(p.pid)) next.add(p.pid)
    for (const pid of next) below.add(pid)
    frontier = next
  }
  return [...below]
}

/** The value of `name` in a process's environment ('' when unreadable or absent). */
export async function environValue (pid: number, name: string): Promise<string> {
  const environ = await readFile(`/proc/${pid}/environ`, 'latin1').catch(() => '')
  const entry = environ.split('\0').find((e) => e.startsWith(`${name}=`))
  return entry === undefined ? '' : entry.slice(name.length + 1)
}

/** Live processes (not zombies) whose environment names something under `dir` (the run's agents and their children). */
export async function processesUnder (dir: string): Promise<number[]> {
  const found: number[] = []
  await Promise.all((await processTable()).map(async (p) => {
    if (p.pid === process.pid || p.state === 'Z' || p.state === 'X') return
    for (const name of ['CLAUDE_CONFIG_DIR', 'MOBVIBE_AGENT_HOME']) {
      if ((await environValue(p.pid, name)).startsWith(dir)) return found.push(p.pid)
    }
  }))
  return found
}

export function kill (pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal)
    return true
  } catch {
    return false
  }
}
