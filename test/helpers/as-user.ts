/**
 * The API as one user (a bearer token), for the tests of the agents' confinement and per-user
 * limits: sessions, messages, events, a `/sh` tool call of the fake CLI, and the host processes
 * that carry a session's marker. Waits are bounded polling, never sleeps.
 */
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import type { App } from '../../src/app.js'
import { call } from './api.js'
import { kinds, markedPids, waitUntil, type Frame } from './agents.js'

export const FAKE_CLAUDE = fileURLToPath(new URL('../fixtures/fake-claude.mjs', import.meta.url))

/** The environment of an app whose agents are the fake, with short timers. */
export const fakeAgentEnv = (extra: Record<string, string> = {}): Record<string, string> => ({
  CLAUDE_BIN: FAKE_CLAUDE,
  SWEEP_INTERVAL_MS: '50',
  KILL_GRACE_MS: '300',
  ...extra
})

export interface User { app: App, auth: Record<string, string> }

/** The default test user of a built app, or `name` (a token signed with the app's key). */
export async function userOf (built: { app: App, token: string, tokenFor: (user: string) => Promise<string> }, name?: string): Promise<User> {
  const token = name === undefined ? built.token : await built.tokenFor(name)
  return { app: built.app, auth: { authorization: `Bearer ${token}` } }
}

export interface SessionRes { id: string, workdir: string, state: string, agentSessionId: string | null }

export async function newSession (u: User, ids?: string[]): Promise<SessionRes> {
  const res = await call<SessionRes>(u.app, 'POST', '/v1/sessions', {}, u.auth)
  if (res.status !== 201) throw new Error(`POST /sessions: ${res.status} ${JSON.stringify(res.body)}`)
  ids?.push(res.body.id)
  return res.body
}

export async function session (u: User, id: string): Promise<SessionRes> {
  const res = await call<SessionRes>(u.app, 'GET', `/v1/sessions/${id}`, undefined, u.auth)
  if (res.status !== 200) throw new Error(`GET /sessions: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body
}

export async function events (u: User, id: string, after = 0): Promise<Frame[]> {
  const res = await call<{ items: Frame[] }>(u.app, 'GET', `/v1/sessions/${id}/events?after=${after}&limit=1000`, undefined, u.auth)
  if (res.status !== 200) throw new Error(`GET /events: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body.items
}

export async function send (u: User, id: string, text: string): Promise<void> {
  const res = await call(u.app, 'POST', `/v1/sessions/${id}/messages`, { text }, u.auth)
  if (res.status !== 202) throw new Error(`POST /messages: ${res.status} ${JSON.stringify(res.body)}`)
}

export async function waitFor (u: User, id: string, what: string, ready: (f: Frame[]) => boolean, timeoutMs?: number): Promise<Frame[]> {
  let last: Frame[] = []
  return waitUntil(what, async () => {
    // the log only grows: each poll reads what came after the last one
    const more = await events(u, id, last.at(-1)?.seq ?? 0)
    if (more.length > 0) last = last.concat(more)
    return ready(last) ? last : undefined
  }, { describe: () => JSON.stringify(kinds(last)), ...(timeoutMs ? { timeoutMs } : {}) })
}

export const resultsOf = (f: Frame[]) => f.filter((e) => e.type === 'agent' && e.data.type === 'result')

/** Sends a message and returns the reply of its turn. */
export async function turn (u: User, id: string, text: string): Promise<string> {
  const before = resultsOf(await events(u, id)).length
  await send(u, id, text)
  const frames = await waitFor(u, id, `the reply to ${text.slice(0, 40)}`, (f) => resultsOf(f).length > before)
  return String(resultsOf(frames)[before]!.data.result)
}

export interface ShResult { code: number | string, stdout: string, stderr: string }

/** The fake CLI's `/sh`: runs a shell command as the agent's tools would. */
export async function sh (u: User, id: string, command: string): Promise<ShResult> {
  const reply = await turn(u, id, `/sh ${command}`)
  if (!reply.startsWith('sh ')) throw new Error(`not a /sh reply: ${reply}`)
  return JSON.parse(reply.slice(3)) as ShResult
}

/** Host processes still running that carry the session's marker, with their command lines. */
export async function marked (id: string): Promise<Array<{ pid: number, cmd: string }>> {
  const found = []
  for (const pid of await markedPids(id)) {
    const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')
    found.push({ pid, cmd: cmd.split('\0').join(' ').trim() })
  }
  return found
}

/** Kills, at the end of the test file, every process still carrying one of `ids`' markers and `pids`. */
export async function killLeftovers (ids: string[], pids: number[] = []): Promise<void> {
  for (const id of ids) pids.push(...await markedPids(id))
  for (const pid of pids) {
    try { process.kill(pid, 'SIGKILL') } catch {}
  }
}
