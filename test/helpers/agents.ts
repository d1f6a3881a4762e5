/**
 * Helpers for the agent tests: the fake CLI as CLAUDE_BIN, messages and events through the public
 * API, bounded polling (never a fixed sleep for synchronisation), and what /proc says about the
 * processes an agent left (or did not leave) behind.
 */
import { readFile, readdir, readlink } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { App } from '../../src/app.js'
import type { Config } from '../../src/config.js'
import type { EventType } from '../../src/domain/event-types.js'
import { call, getSession } from './api.js'

const FAKE_CLAUDE = fileURLToPath(new URL('../fixtures/fake-claude.mjs', import.meta.url))

/** The environment of an app whose agents are the fake, with timers short enough for tests. */
export function agentEnv (extra: Record<string, string> = {}): Record<string, string> {
  return {
    CLAUDE_BIN: FAKE_CLAUDE,
    IDLE_TIMEOUT_MIN_SECONDS: '1',
    SWEEP_INTERVAL_MS: '50',
    KILL_GRACE_MS: '300',
    ...extra
  }
}

const WAIT_MS = 15_000

export interface Frame {
  seq: number
  type: EventType
  at: string
  data: any
}

/** Polls `probe` until it returns something other than undefined/null/false, or fails after `timeoutMs`. */
export async function waitUntil<T> (what: string, probe: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  opts: { timeoutMs?: number, intervalMs?: number, describe?: () => Promise<string> | string } = {}): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? WAIT_MS)
  for (;;) {
    const value = await probe()
    if (value !== undefined && value !== null && value !== false) return value
    if (Date.now() > deadline) {
      const detail = opts.describe ? `\n${await opts.describe()}` : ''
      throw new Error(`timed out after ${opts.timeoutMs ?? WAIT_MS} ms waiting for ${what}${detail}`)
    }
    await new Promise((resolve) => setTimeout(resolve, opts.intervalMs ?? 20))
  }
}

/** Every persisted event of the session after `after` (default: all), oldest first (GET /events, paged). */
export async function allEvents (app: App, id: string, after = 0): Promise<Frame[]> {
  const frames: Frame[] = []
  for (;;) {
    const res = await call<{ items: Frame[], nextAfter: number | null }>(app, 'GET', `/v1/sessions/${id}/events?after=${after}&limit=1000`)
    if (res.status !== 200) throw new Error(`GET /events: ${res.status} ${JSON.stringify(res.body)}`)
    frames.push(...res.body.items)
    if (res.body.nextAfter === null) return frames
    after = res.body.nextAfter
  }
}

/** A compact view of a session's story, for assertion messages and the order checks. */
export function kinds (frames: Frame[]): string[] {
  return frames.map((f) => {
    switch (f.type) {
      case 'agent': return `agent:${f.data.type}${f.data.subtype ? `/${f.data.subtype}` : ''}`
      case 'state': return `state:${f.data.from}->${f.data.to}(${f.data.reason})`
      case 'status': return `status:${f.data.message}`
      case 'error': return `error:${f.data.code}`
      case 'permission_request': return `permission_request:${f.data.toolName}`
      case 'question': return 'question'
      case 'permission_response': return `permission_response:${f.data.decision}(${f.data.by})`
      case 'permission_cancelled': return `permission_cancelled(${f.data.reason})`
      default: return `user:${f.data.text}`
    }
  })
}

export const isResult = (f: Frame) => f.type === 'agent' && f.data.type === 'result'
export const isInit = (f: Frame) => f.type === 'agent' && f.data.type === 'system' && f.data.subtype === 'init'
export const results = (frames: Frame[]) => frames.filter(isResult)
/** The reply texts of the successful results, in order. */
export const replies = (frames: Frame[]): string[] => results(frames).filter((f) => !f.data.is_error).map((f) => String(f.data.result))

/** Waits until the session's events satisfy `ready`; returns them. */
export async function waitEvents (app: App, id: string, what: string, ready: (frames: Frame[]) => boolean, timeoutMs?: number): Promise<Frame[]> {
  let last: Frame[] = []
  return waitUntil(what, async () => {
    // the log only grows: each poll reads what came after the last one (re-reading a long
    // session's every event fifty times a second was a good part of the suite's CPU)
    const more = await allEvents(app, id, last.at(-1)?.seq ?? 0)
    if (more.length > 0) last = last.concat(more)
    return ready(last) ? last : undefined
  }, { ...(timeoutMs ? { timeoutMs } : {}), describe: () => `events: ${JSON.stringify(kinds(last))}` })
}

export function waitResults (app: App, id: string, n: number, timeoutMs?: number): Promise<Frame[]> {
  return waitEvents(app, id, `${n} result(s)`, (frames) => results(frames).length >= n, timeoutMs)
}

/** POST /messages, expecting 202. */
export async function send (app: App, id: string, text: string, clientMessageId?: string): Promise<{ seq: number, duplicate: boolean }> {
  const res = await call(app, 'POST', `/v1/sessions/${id}/messages`, { text, ...(clientMessageId ? { clientMessageId } : {}) })
  if (res.status !== 202) throw new Error(`POST /messages: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body
}

/** Waits until the session's resource satisfies `ready`. */
export async function waitSession (app: App, id: string, what: string, ready: (s: Awaited<ReturnType<typeof getSession>>) => boolean, timeoutMs?: number) {
  let last: unknown
  return waitUntil(what, async () => {
    const s = await getSession(app, id)
    last = s
    return ready(s) ? s : undefined
  }, { ...(timeoutMs ? { timeoutMs } : {}), describe: () => `session: ${JSON.stringify(last)}` })
}

/** The state event that moved the session to `to` (the first after `afterSeq`). */
const stateEvent = (frames: Frame[], to: string, afterSeq = 0): Frame | undefined =>
  frames.find((f) => f.seq > afterSeq && f.type === 'state' && f.data.to === to)

/**
 * Waits for the state event of a move to `to`. The event is recorded once the move is complete,
 * its process stop included (the row changes first): the moment to check processes.
 */
export async function waitStateEvent (app: App, id: string, to: string, opts: { afterSeq?: number, timeoutMs?: number } = {}): Promise<{ frames: Frame[], event: Frame }> {
  const frames = await waitEvents(app, id, `a state event to ${to}`, (f) => stateEvent(f, to, opts.afterSeq) !== undefined, opts.timeoutMs)
  return { frames, event: stateEvent(frames, to, opts.afterSeq)! }
}

// ---------------------------------------------------------------------------------------------
// Processes

/** The pid the supervisor recorded for the session's live agent (data dir `agents/<id>.json`). */
export async function recordedPid (config: Config, id: string): Promise<number | undefined> {
  try {
    const rec = JSON.parse(await readFile(join(config.dataDir, 'agents', `${id}.json`), 'utf8')) as { pid: number }
    return rec.pid
  } catch {
    return undefined
  }
}

/** /proc/<pid>/stat: the state letter and start time; undefined when the pid does not exist. */
export async function procStat (pid: number): Promise<{ state: string, ppid: number, startTime: string } | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return { state: fields[0]!, ppid: Number(fields[1]), startTime: fields[19]! }
  } catch {
    return undefined
  }
}

/**
 * Does the process still run? A zombie has ended: only its parent's wait() is missing. A process
 * reparented to a PID 1 that never reaps (this sandbox's init does not) stays a zombie forever.
 */
export async function isRunning (pid: number): Promise<boolean> {
  const stat = await procStat(pid)
  return stat !== undefined && stat.state !== 'Z' && stat.state !== 'X'
}

export async function waitGone (pid: number, what: string, timeoutMs?: number): Promise<void> {
  await waitUntil(what, async () => !(await isRunning(pid)), timeoutMs ? { timeoutMs } : {})
}

export async function environOf (pid: number): Promise<Map<string, string>> {
  const raw = await readFile(`/proc/${pid}/environ`, 'utf8')
  const env = new Map<string, string>()
  for (const entry of raw.split('\0')) {
    if (!entry) continue
    const eq = entry.indexOf('=')
    env.set(entry.slice(0, eq), entry.slice(eq + 1))
  }
  return env
}

export async function cwdOf (pid: number): Promise<string> {
  return readlink(`/proc/${pid}/cwd`)
}

/** Running processes (not zombies) whose environment holds MOBVIBE_AGENT_SESSION=<sessionId>. */
export async function markedPids (sessionId: string): Promise<number[]> {
  const entry = `MOBVIBE_AGENT_SESSION=${sessionId}`
  const found: number[] = []
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const pid = Number(name)
    try {
      const env = await readFile(`/proc/${pid}/environ`, 'utf8')
      if (env.split('\0').includes(entry) && await isRunning(pid)) found.push(pid)
    } catch {
      // gone, or not ours to read
    }
  }
  return found
}

/** The pid in a `/grandchild` reply: `grandchild <pid> | echo: …`. */
export function grandchildPid (reply: string): number {
  const m = /^grandchild (\d+) \|/.exec(reply)
  if (!m) throw new Error(`not a grandchild reply: ${reply}`)
  return Number(m[1])
}

/**
 * The host pid of a process of the session that calls itself `reportedPid` (a pid the agent
 * reports, like the fake CLI's `/grandchild`): in a sandbox that is a pid of the agent's PID
 * namespace, so the process is found among the session's marked ones by the last pid of its
 * `NSpid` line (/proc/<pid>/status: host pid first, innermost namespace's last). Unconfined, the
 * two are the same. Undefined when no marked process matches.
 */
export async function hostPidOf (sessionId: string, reportedPid: number): Promise<number | undefined> {
  for (const pid of await markedPids(sessionId)) {
    try {
      const line = (await readFile(`/proc/${pid}/status`, 'utf8')).split('\n').find((l) => l.startsWith('NSpid:'))
      if (line && Number(line.trim().split(/\s+/).at(-1)) === reportedPid) return pid
    } catch {
      // gone
    }
  }
  return undefined
}

/**
 * The session's agent starts still running: its marked processes whose parent is not marked.
 * Unconfined that is the CLI itself; in a sandbox the outer bwrap (the inner bwrap and the CLI are
 * its descendants and carry the marker too). A second agent of the session, or one orphaned by a
 * first, counts on its own.
 */
export async function agentRoots (sessionId: string): Promise<number[]> {
  const pids = await markedPids(sessionId)
  const roots: number[] = []
  for (const pid of pids) {
    const stat = await procStat(pid)
    if (stat && !pids.includes(stat.ppid)) roots.push(pid)
  }
  return roots
}

/** The command line of a process, its arguments joined by spaces ('' when gone). */
export async function cmdlineOf (pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0').join(' ').trim()
}
