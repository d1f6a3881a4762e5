/**
 * The agents' dead man's switch (src/agents/agent-watchdog.ts; docs/AGENTS.md, "The watchdog"): a
 * service that dies or freezes takes its agents down with it, so that another instance may resume
 * their sessions once the lease has run out.
 *
 * First with the watchdog alone, in a stand-in for the service (test/fixtures/watchdog-host.ts)
 * guarding `sleep` process groups; then end to end with the real launcher and the fake CLI. Waits
 * are events (log lines, replies, exits) or polling of /proc and the API with a deadline; the only
 * fixed waits are the observation windows in which nothing may happen.
 */
import { spawn, type ChildProcessByStdio } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Readable, Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { WATCHDOG_NAME } from '../src/agents/agent-watchdog.js'
import { isRunning, markedPids, waitUntil } from './helpers/agents.js'
import { freshDatabaseUrl } from './helpers/build.js'
import { launch, type Service } from './helpers/service-process.js'
import { seedPglite } from './helpers/pglite-template.js'

const root = fileURLToPath(new URL('../', import.meta.url))
const HOST = join(root, 'test/fixtures/watchdog-host.ts')
const FAKE_CLAUDE = join(root, 'test/fixtures/fake-claude.mjs')
/** tsx's first start on a busy machine takes seconds */
const START_MS = 60_000

// whatever a test leaves running is killed at the end: the sleeps by their group, agents by marker
const strays = new Set<number>()
const sessionIds: string[] = []
t.teardown(async () => {
  for (const pid of strays) signal(-pid, 'SIGKILL')
  for (const id of sessionIds) for (const pid of await markedPids(id)) signal(pid, 'SIGKILL')
})

function signal (pid: number, sig: NodeJS.Signals): void {
  try { process.kill(pid, sig) } catch {}
}

interface Reply { reply: string, [key: string]: unknown }
interface LogLine { msg?: string, level?: number, [key: string]: unknown }

/** The stand-in service: orders on its stdin, replies and log lines on its stdout. */
class Host {
  readonly proc: ChildProcessByStdio<Writable, Readable, Readable>
  readonly exited: Promise<void>
  readonly #lines: Array<Reply | LogLine> = []
  #output = ''
  #replies = 0
  #wake = new Set<() => void>()

  constructor (t: Test, readonly timeoutMs: number) {
    this.proc = spawn(process.execPath, ['--import', 'tsx', HOST, String(timeoutMs)], { cwd: root, stdio: ['pipe', 'pipe', 'pipe'] })
    let rest = ''
    this.proc.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      this.#output += chunk
      const parts = (rest + chunk).split('\n')
      rest = parts.pop() ?? ''
      for (const part of parts) {
        try { this.#lines.push(JSON.parse(part) as Reply | LogLine) } catch {}
      }
      for (const w of this.#wake) w()
    })
    this.proc.stderr.setEncoding('utf8').on('data', (chunk: string) => { this.#output += chunk })
    this.exited = new Promise((resolve) => this.proc.once('exit', () => {
      for (const w of this.#wake) w()
      resolve()
    }))
    t.teardown(async () => {
      if (this.proc.exitCode === null && this.proc.signalCode === null) {
        signal(this.proc.pid!, 'SIGCONT')
        this.proc.kill('SIGKILL')
      }
      await this.exited
    })
  }

  /** The first line from `from` on that matches; rejects on the host's exit or after `timeoutMs`. */
  waitLine<L> (match: (line: Reply | LogLine) => boolean, what: string, timeoutMs = START_MS): Promise<L> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const line = this.#lines.find(match)
        if (line) return done(() => resolve(line as L))
        if (this.proc.exitCode !== null || this.proc.signalCode !== null) done(() => reject(new Error(`host exited before ${what}:\n${this.#output}`)))
      }
      const timer = setTimeout(() => done(() => reject(new Error(`no ${what} within ${timeoutMs} ms:\n${this.#output}`))), timeoutMs)
      const done = (settle: () => void) => {
        clearTimeout(timer)
        this.#wake.delete(check)
        settle()
      }
      this.#wake.add(check)
      check()
    })
  }

  /** The watchdog's pid once the host is up. */
  async ready (): Promise<number> {
    const line = await this.waitLine<Reply>((l) => 'reply' in l && l.reply === 'ready', 'readiness')
    this.#replies = 1
    return Number(line.watchdog)
  }

  /** Sends an order; resolves with its reply (orders are answered in order). */
  async order (order: Record<string, unknown>): Promise<Reply> {
    const index = this.#replies++
    this.proc.stdin.write(JSON.stringify(order) + '\n')
    return this.waitLine<Reply>((l) => 'reply' in l && this.#lines.filter((x) => 'reply' in x).indexOf(l) === index, `the reply to ${JSON.stringify(order)}`, 10_000)
  }

  /** A detached `sleep 1000`, registered with the watchdog unless told otherwise; its pid. */
  async spawnGroup (opts: { register?: boolean, startTime?: string } = {}): Promise<{ pid: number, startTime: string }> {
    const spawned = await this.order({ op: 'spawn', ...opts })
    const pid = Number(spawned.pid)
    strays.add(pid)
    return { pid, startTime: String(spawned.startTime) }
  }
}

/** Milliseconds from now until `pid` no longer runs, polling /proc; rejects after `timeoutMs`. */
async function timeUntilGone (pid: number, what: string, timeoutMs: number): Promise<number> {
  const from = Date.now()
  await waitUntil(what, async () => !(await isRunning(pid)), { timeoutMs, intervalMs: 10 })
  return Date.now() - from
}

/** Checks for `ms` that every one of `pids` keeps running; false at the first that does not. */
async function allRunFor (pids: number[], ms: number): Promise<boolean> {
  const until = Date.now() + ms
  while (Date.now() < until) {
    for (const pid of pids) if (!(await isRunning(pid))) return false
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return true
}

// ---------------------------------------------------------------------------------------------
// The watchdog alone

t.test('the watchdog is one bash in a session of its own, with the timeout as its argument', async (t) => {
  const host = new Host(t, 1500)
  const watchdog = await host.ready()
  const cmdline = (await readFile(`/proc/${watchdog}/cmdline`, 'utf8')).split('\0')
  t.equal(cmdline[0], 'bash')
  t.same(cmdline.slice(-3, -1), [WATCHDOG_NAME, '1.500'], 'named, with its timeout in seconds')
  const stat = await readFile(`/proc/${watchdog}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  t.equal(Number(fields[1]), host.proc.pid, 'a child of the service')
  t.equal(Number(fields[3]), watchdog, 'the leader of its own session: signals to the service\'s group miss it')
})

t.test('a SIGKILL of the service: its registered groups die at once, from the EOF', async (t) => {
  const host = new Host(t, 4000)
  const watchdog = await host.ready()
  const guarded = await host.spawnGroup()
  const unregistered = await host.spawnGroup({ register: false })
  // a pid reused since it was registered: the start time no longer matches
  const reused = await host.spawnGroup({ startTime: '1' })
  host.proc.kill('SIGKILL')
  await host.exited
  const ms = await timeUntilGone(guarded.pid, 'the guarded group to die', host.timeoutMs + 1000)
  t.ok(ms < host.timeoutMs / 2, `gone ${ms} ms after the kill: the EOF, not the silence, ended it`)
  await waitUntil('the watchdog to exit', async () => !(await isRunning(watchdog)), { timeoutMs: 5000 })
  t.ok(await isRunning(unregistered.pid), 'an unregistered group is never touched')
  t.ok(await isRunning(reused.pid), 'a group whose leader has another start time is not touched')
})

t.test('a SIGSTOP of the service: its groups die once it has been silent for the timeout', async (t) => {
  const host = new Host(t, 3000)
  await host.ready()
  const guarded = await host.spawnGroup()
  const unregistered = await host.spawnGroup({ register: false })
  signal(host.proc.pid!, 'SIGSTOP')
  t.ok(await isRunning(guarded.pid), 'still running just after the stop')
  const ms = await timeUntilGone(guarded.pid, 'the guarded group to die', host.timeoutMs + 1000)
  // the last heartbeat came at most a heartbeat (T/4 here) before the stop
  t.ok(ms >= host.timeoutMs / 2, `not before half the timeout (${ms} ms)`)
  t.ok(ms <= host.timeoutMs + 1000, `within the timeout and a second (${ms} ms)`)
  t.ok(await isRunning(unregistered.pid), 'the unregistered group runs on')

  signal(host.proc.pid!, 'SIGCONT')
  await host.waitLine((l) => l.level === 50 && String(l.msg).endsWith('the watchdog killed the agents it guarded') && l.groups === 1,
    'the error log of the silence', 10_000)
  await host.waitLine((l) => l.msg === 'the agent watchdog exited: starting a new one', 'the new watchdog', 10_000)
  const status = await host.order({ op: 'status' })
  t.type(status.watchdog, 'number', 'a new watchdog guards what starts next')
})

t.test('while the service heartbeats, nothing is killed; a graceful close kills nothing', async (t) => {
  const host = new Host(t, 1000)
  const watchdog = await host.ready()
  const guarded = await host.spawnGroup()
  t.ok(await allRunFor([guarded.pid, watchdog], 3 * host.timeoutMs), 'group and watchdog run through three timeouts')
  t.same(await host.order({ op: 'close' }), { reply: 'closed' }, 'closed, once the watchdog exited')
  t.notOk(await isRunning(watchdog), 'the watchdog is gone')
  t.ok(await isRunning(guarded.pid), 'its group is not')
  host.proc.stdin.end()
  await host.exited
  t.ok(await allRunFor([guarded.pid], 500), 'nor after the service has gone')
})

t.test('a watchdog that dies is replaced, with every registered group', async (t) => {
  const host = new Host(t, 4000)
  const first = await host.ready()
  const guarded = await host.spawnGroup()
  signal(first, 'SIGKILL')
  await host.waitLine((l) => l.msg === 'the agent watchdog exited: starting a new one' && l.groups === 1, 'the warning', 10_000)
  const second = Number((await host.order({ op: 'status' })).watchdog)
  t.not(second, first, 'another watchdog')
  t.ok(await isRunning(guarded.pid), 'the death of the watchdog killed nothing')
  host.proc.kill('SIGKILL')
  await host.exited
  await timeUntilGone(guarded.pid, 'the group, registered again with the new watchdog, to die', host.timeoutMs + 1000)
  t.pass('the new watchdog knew the group')
})

// ---------------------------------------------------------------------------------------------
// End to end: the real launcher and the fake CLI

const LEASE_SECONDS = 4
/** what the supervisor gives the watchdog: half the lease */
const T = LEASE_SECONDS * 500

type Frame = { type: string, data: { type?: string, subtype?: string } }
const answered = (e: Frame) => e.type === 'agent' && e.data.type === 'result'

/**
 * A service whose agent for a new session runs, sent `text`, once the session has an event that
 * is `until` (by then the agent has long been registered with the watchdog: that happens right
 * after its spawn); the session's agent pids.
 */
async function serviceWithAgent (t: Test, sandbox: 'none' | 'bwrap', text: string, until: (e: Frame) => boolean): Promise<{ service: Service, sessionId: string, pids: number[] }> {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-watchdog-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const databaseUrl = await freshDatabaseUrl(t)
  if (!databaseUrl) await seedPglite(join(dir, 'data'))
  const service = launch(t, `service (${sandbox})`, {
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'info',
    MOBVIBE_DATA_DIR: join(dir, 'data'),
    MOBVIBE_WORKSPACE_ROOT: join(dir, 'workspaces'),
    CLAUDE_BIN: FAKE_CLAUDE,
    AGENT_SANDBOX: sandbox,
    INSTANCE_LEASE_SECONDS: String(LEASE_SECONDS),
    DATABASE_URL: databaseUrl
  })
  await service.ready()
  const created = await service.fetch('/v1/sessions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
  t.equal(created.status, 201, 'session created')
  const sessionId = (await created.json() as { id: string }).id
  sessionIds.push(sessionId)
  const sent = await service.fetch(`/v1/sessions/${sessionId}/messages`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text })
  })
  t.equal(sent.status, 202, 'message accepted')
  await waitUntil('the agent\'s event', async () => {
    const res = await service.fetch(`/v1/sessions/${sessionId}/events?after=0&limit=1000`)
    return ((await res.json()) as { items: Frame[] }).items.some(until)
  }, { timeoutMs: 30_000 })
  const pids = await markedPids(sessionId)
  t.ok(pids.length > 0, `the agent runs (${pids.length} process(es) with the session's marker)`)
  return { service, sessionId, pids }
}

/** Polls until nothing carries the session's marker; the milliseconds that took. */
async function timeUntilNoAgent (sessionId: string, timeoutMs: number): Promise<number> {
  const from = Date.now()
  let left: number[] = []
  await waitUntil('no process of the session to run', async () => {
    left = await markedPids(sessionId)
    return left.length === 0
  }, { timeoutMs, intervalMs: 20, describe: () => `still running: ${left.join(', ')}` })
  return Date.now() - from
}

// A SIGKILL of the service with unconfined agents mid-turn: test/crash-recovery.test.ts checks that
// they die with it (the watchdog), on both databases
t.test('end to end, unconfined: a SIGSTOP of the service takes its agent down after the timeout', async (t) => {
  const { service, sessionId, pids } = await serviceWithAgent(t, 'none', 'hello', answered)
  const stoppedAt = Date.now()
  signal(service.proc.pid!, 'SIGSTOP')
  t.ok(await allRunFor(pids, T / 4), 'the agent runs on for a while')
  await timeUntilNoAgent(sessionId, stoppedAt + T + 2000 - Date.now())
  t.pass(`the agent is gone ${Date.now() - stoppedAt} ms after the stop`)
  signal(service.proc.pid!, 'SIGCONT')
  await service.waitForLine((l) => l.msg === 'the agent watchdog exited: starting a new one', 'a new watchdog', 10_000)
  t.ok(service.lines.some((l) => l.level === 50 && String(l.msg).endsWith('the watchdog killed the agents it guarded')), 'the silence is logged as an error')
  await service.stop('SIGKILL')
})

t.test('end to end, under bwrap: a SIGSTOP of the service takes the sandbox down after the timeout', async (t) => {
  // no skip: CI installs bubblewrap, and AGENT_SANDBOX=bwrap refuses to start without it
  const { service, sessionId, pids } = await serviceWithAgent(t, 'bwrap', 'hello', answered)
  t.ok(pids.length >= 3, 'bwrap, bwrap as init, and the agent')
  const stoppedAt = Date.now()
  signal(service.proc.pid!, 'SIGSTOP')
  t.ok(await allRunFor(pids, T / 4), 'the sandbox runs on for a while (--die-with-parent sees no death)')
  await timeUntilNoAgent(sessionId, stoppedAt + T + 2000 - Date.now())
  t.pass(`the sandbox is gone ${Date.now() - stoppedAt} ms after the stop`)
  signal(service.proc.pid!, 'SIGCONT')
  await service.stop('SIGKILL')
})
