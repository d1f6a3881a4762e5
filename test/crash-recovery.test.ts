/**
 * Crash recovery, end to end: the real launcher (src/server.ts) is SIGKILLed while its agents
 * stream, then started again on the same data directory and database (docs/AGENTS.md, "Start-up").
 * The scenario runs twice: with unconfined agents (AGENT_SANDBOX=none) and with agents in the
 * bubblewrap sandbox (AGENT_SANDBOX=bwrap, when bwrap works on this host).
 *
 * Three sessions, each watched by a WebSocket client that records every frame:
 * - `grandchild`: a turn that spawns a detached `sleep` (its own session, outside the agent's
 *   process group: only the MOBVIBE_AGENT_SESSION marker finds it) and streams 200 lines, then a
 *   long turn (`/slow`) that is in progress at the kill;
 * - `slow`: the same without the grandchild;
 * - `flood`: one endless turn, streaming as fast as the service takes it: killed mid-stream, with
 *   events in flight. Unconfined, its agent writes into a pipe nobody reads any more after the kill
 *   and dies of EPIPE on its own: it is not among the agents checked to outlive the kill (the fake
 *   CLI cannot stream and survive its reader; the two `/slow` agents can, as they write nothing
 *   meanwhile).
 *
 * The service is killed alone (not its process group). Unconfined, its watchdog (one process per
 * instance, docs/AGENTS.md) kills its agents' process groups as it dies; only the grandchild that
 * left its group and session stays behind, and the restart ends it by its marker (logged). In the sandbox,
 * `--die-with-parent` ends every agent with the service, and its PID namespace the grandchild: the
 * test checks that nothing of the old run is left shortly after the kill, before any restart. In
 * both modes the restart suspends every active session, has kept every event any client had
 * received (persist, then publish), and a message resumes each conversation with its memory of the
 * turns before the crash.
 *
 * Waits are events (log lines, exits, frames) or bounded polling, never sleeps; every child and
 * every process carrying one of the sessions' markers is killed in teardown.
 */
import { readFile, readdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import type { SessionView } from '../src/schemas/session.js'
import { resolveSandbox } from '../src/agents/sandbox.js'
import { agentEnv, agentRoots, grandchildPid, hostPidOf, isRunning, kinds, markedPids, procStat, replies, results, waitUntil, type Frame } from './helpers/agents.js'
import { freshDatabaseUrl } from './helpers/build.js'
import { launch, type Service } from './helpers/service-process.js'
import { seedPglite } from './helpers/pglite-template.js'

const WAIT_MS = 15_000
/** a turn still in progress long after the test is over: only a kill ends these agents */
const LONG_TURN_MS = 120_000

async function withTimeout<T> (promise: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(what())), ms)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

// ---------------------------------------------------------------------------------------------
// HTTP and the stream

/** A request as the test's user (the service's default token). */
async function api<T> (service: Service, method: 'GET' | 'POST', path: string, body?: unknown): Promise<{ status: number, body: T }> {
  const res = await service.fetch(path, {
    method,
    ...(body === undefined ? {} : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  })
  const text = await res.text()
  return { status: res.status, body: (text === '' ? undefined : JSON.parse(text)) as T }
}

async function createSession (service: Service, title: string): Promise<SessionView> {
  const res = await api<SessionView>(service, 'POST', '/v1/sessions', { title })
  if (res.status !== 201) throw new Error(`POST /sessions: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body
}

async function getSession (service: Service, id: string): Promise<SessionView> {
  const res = await api<SessionView>(service, 'GET', `/v1/sessions/${id}`)
  if (res.status !== 200) throw new Error(`GET /sessions/${id}: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body
}

async function send (service: Service, id: string, text: string): Promise<number> {
  const res = await api<{ seq: number }>(service, 'POST', `/v1/sessions/${id}/messages`, { text })
  if (res.status !== 202) throw new Error(`POST /messages: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body.seq
}

/** Every stored event of the session, oldest first (GET /events, paged). */
async function storedEvents (service: Service, id: string): Promise<Frame[]> {
  const frames: Frame[] = []
  let after = 0
  for (;;) {
    const res = await api<{ items: Frame[], nextAfter: number | null }>(service, 'GET', `/v1/sessions/${id}/events?after=${after}&limit=1000`)
    if (res.status !== 200) throw new Error(`GET /events: ${res.status} ${JSON.stringify(res.body)}`)
    frames.push(...res.body.items)
    if (res.body.nextAfter === null) return frames
    after = res.body.nextAfter
  }
}

/** A WebSocket client on a session's stream from the start, as `headers` say (the bearer token), recording every frame it gets. */
class StreamClient {
  readonly frames: Frame[] = []
  readonly others: unknown[] = []
  readonly closed: Promise<number>
  readonly ws: WebSocket

  constructor (baseUrl: string, id: string, headers: Record<string, string>) {
    this.ws = new WebSocket(`${baseUrl.replace(/^http/, 'ws')}/v1/sessions/${id}/stream?after=0`, { perMessageDeflate: false, headers })
    this.ws.on('message', (data: Buffer) => {
      const frame = JSON.parse(data.toString('utf8')) as Frame
      if (typeof frame.seq === 'number') this.frames.push(frame)
      else this.others.push(frame)
    })
    this.ws.on('error', () => {}) // the kill resets the connection: 'close' says so
    this.closed = new Promise((resolve) => this.ws.once('close', (code) => resolve(code)))
  }

  async opened (): Promise<void> {
    if (this.ws.readyState === WebSocket.OPEN) return
    await withTimeout(new Promise<void>((resolve, reject) => {
      this.ws.once('open', () => resolve())
      this.ws.once('close', (code) => reject(new Error(`stream closed (${code}) before it opened`)))
    }), WAIT_MS, () => 'the stream did not open')
  }
}

const isAgent = (f: Frame) => f.type === 'agent'
const isInitFrame = (f: Frame) => f.type === 'agent' && f.data.type === 'system' && f.data.subtype === 'init'

// ---------------------------------------------------------------------------------------------

// bwrap where it works here; the unconfined run either way
const bwrapWorks = await resolveSandbox('bwrap', process.env).then(() => true, () => false)
const modes: Array<'none' | 'bwrap'> = bwrapWorks ? ['none', 'bwrap'] : ['none']
if (!bwrapWorks) t.comment('bwrap does not work here: only the unconfined scenario runs')

for (const mode of modes) {
  const title = mode === 'none'
    ? 'unconfined: kill -9 while agents stream; a restart on the same data reaps every orphan, keeps every event, suspends, resumes'
    : 'sandboxed: kill -9 while agents stream; the agents die with the service; a restart keeps every event, suspends, resumes'
  t.test(title, (t) => scenario(t, mode))
}

async function scenario (t: Test, mode: 'none' | 'bwrap'): Promise<void> {
  const began = Date.now()
  const timings: string[] = []
  const mark = (what: string) => timings.push(`${what} at ${((Date.now() - began) / 1000).toFixed(1)} s`)

  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-crash-'))
  const ids: string[] = []
  const known = new Set<number>() // every pid of the old run the test saw
  // registered first: runs last, after the services are gone
  t.teardown(async () => {
    for (const id of ids) {
      for (const pid of await markedPids(id)) {
        try { process.kill(pid, 'SIGKILL') } catch {}
      }
    }
    await rm(dir, { recursive: true, force: true })
  })
  const dataDir = join(dir, 'data')
  const databaseUrl = await freshDatabaseUrl(t)
  const env = {
    ...agentEnv({ KILL_GRACE_MS: '200', AGENT_SANDBOX: mode }),
    HOST: '127.0.0.1',
    PORT: '0',
    MOBVIBE_DATA_DIR: dataDir,
    MOBVIBE_WORKSPACE_ROOT: join(dir, 'workspaces'),
    LOG_LEVEL: 'info',
    DATABASE_URL: databaseUrl
  }

  // ------------------------------------------------------------------ 1. the first run, streaming
  if (!databaseUrl) await seedPglite(dataDir)
  const first = launch(t, 'first', env)
  const firstUrl = await first.ready()
  mark('first run listening')
  const names = ['grandchild', 'slow', 'flood'] as const
  type Name = typeof names[number]
  const sessions = {} as Record<Name, SessionView>
  const clients = {} as Record<Name, StreamClient>
  for (const name of names) {
    sessions[name] = await createSession(first, `crash ${name}`)
    ids.push(sessions[name].id)
    clients[name] = new StreamClient(firstUrl, sessions[name].id, await first.authHeader())
  }
  await Promise.all(names.map((n) => clients[n].opened()))
  const id = (n: Name) => sessions[n].id

  // turn 1 streams 200 lines (one spawns the grandchild); turn 2 is in progress at the kill
  const prompts: Record<Name, string[]> = { grandchild: ['alpha', 'beta'], slow: ['gamma', 'delta'], flood: ['epsilon'] }
  await send(first, id('grandchild'), '/grandchild /flood 200 1000 alpha')
  await send(first, id('slow'), '/flood 200 1000 gamma')
  await send(first, id('flood'), '/flood 1000000 400 epsilon')
  await send(first, id('grandchild'), `/slow ${LONG_TURN_MS} beta`)
  await send(first, id('slow'), `/slow ${LONG_TURN_MS} delta`)

  // ------------------------------------------------------------------ 2. mid-turn on every stream
  const describe = () => names.map((n) => `${n}: ${clients[n].frames.length} frames, last ${JSON.stringify(kinds(clients[n].frames.slice(-3)))}`).join('\n')
  // the second turn starts (its init) only after the first one's result
  const inSecondTurn = (frames: Frame[]) => results(frames).length === 1 && frames.filter(isInitFrame).length === 2
  await waitUntil('every client mid-turn', () =>
    inSecondTurn(clients.grandchild.frames) && inSecondTurn(clients.slow.frames) && clients.flood.frames.filter(isAgent).length >= 300,
  { timeoutMs: WAIT_MS, describe })
  mark('every client mid-turn')
  // the pid the agent reports is its PID namespace's in the sandbox: the host's is found by the marker
  const reportedGpid = grandchildPid(replies(clients.grandchild.frames)[0]!)
  const gpid = (await hostPidOf(id('grandchild'), reportedGpid))!
  t.ok(gpid, `the grandchild runs on the host, marked (reported as ${reportedGpid})`)
  known.add(gpid)

  const agentsDir = join(dataDir, 'agents')
  const records: Record<string, { pid: number, startTime: string }> = {}
  for (const file of await readdir(agentsDir)) {
    const rec = JSON.parse(await readFile(join(agentsDir, file), 'utf8')) as { sessionId: string, pid: number, startTime: string }
    records[rec.sessionId] = rec
    known.add(rec.pid)
  }
  t.same(Object.keys(records).sort(), [...ids].sort(), 'each session has a recorded agent')
  const pid = (n: Name) => records[id(n)]!.pid
  const marked: Record<string, number[]> = {}
  for (const n of names) {
    marked[n] = await markedPids(id(n))
    for (const p of marked[n]) known.add(p)
  }
  for (const n of names) t.same(await agentRoots(id(n)), [pid(n)], `${n}: one agent, the recorded pid`)
  // unconfined, an agent is the CLI; in the sandbox, bwrap → bwrap as the namespace's init → the CLI
  const cli = (await procStat(gpid))?.ppid
  const agentProcs = [pid('grandchild')]
  if (mode === 'bwrap') {
    const init = cli === undefined ? undefined : (await procStat(cli))?.ppid
    t.equal(init === undefined ? undefined : (await procStat(init))?.ppid, pid('grandchild'), 'the sleep\'s parent is the CLI inside the session\'s sandbox')
    agentProcs.push(init!, cli!)
  } else {
    t.equal(cli, pid('grandchild'), 'the sleep is the agent\'s child')
  }
  t.same([...marked.grandchild!].sort(), [...agentProcs, gpid].sort(), 'the grandchild session: its agent and the escaped sleep carry the marker')
  const [, , pgrp, sid] = (await readFile(`/proc/${gpid}/stat`, 'utf8')).split(') ')[1]!.split(' ')
  t.same([pgrp, sid], [String(gpid), String(gpid)], 'in its own process group and session, out of reach of a group kill of the agent')

  // ------------------------------------------------------------------ 3. kill -9, the service alone
  const received = Object.fromEntries(names.map((n) => [n, clients[n].frames])) as Record<Name, Frame[]>
  const killed = await first.stop('SIGKILL')
  mark('first run killed')
  t.same(killed, { code: null, signal: 'SIGKILL' }, 'the service died of SIGKILL')
  await withTimeout(Promise.all(names.map((n) => clients[n].closed)), WAIT_MS, () => 'the streams did not close')
  const counts = names.map((n) => `${n} ${received[n].length}`).join(', ')
  t.comment(`frames received before the kill: ${counts}`)

  let left: string[] = []
  const oldRunLeft = async (): Promise<boolean> => {
    left = []
    for (const p of known) if (await isRunning(p)) left.push(`pid ${p}`)
    for (const n of names) for (const p of await markedPids(id(n))) left.push(`pid ${p} marked ${n}`)
    return left.length === 0
  }

  if (mode === 'none') {
    // the instance's watchdog kills its agents' process groups when the service dies
    await waitUntil('the agents to die with the service (the watchdog)', async () => {
      for (const n of names) if (await isRunning(pid(n))) return false
      return true
    }, { timeoutMs: 5_000 })
    t.pass('every agent died with the service: the watchdog killed their process groups')
    t.ok(await isRunning(gpid), 'the grandchild that left its agent\'s group and session still runs (out of a group kill\'s reach)')
  } else {
    // --die-with-parent ends each sandbox with the service, and the PID namespace what ran in it
    await waitUntil('every process of the old run to die with the service', oldRunLeft,
      { timeoutMs: 5_000, describe: () => left.join(', ') })
    t.pass(`no process of the old run is left after the kill, before any restart (${known.size} pids, the grandchild's included)`)
    mark('old processes gone')
  }

  // ------------------------------------------------------------------ 4. restart on the same data
  const second = launch(t, 'second', env)
  await second.ready()
  mark('second run listening')

  const reaped = second.lines.filter((l) => l.msg === 'ending an agent left by a previous run').map((l) => l.pid)
  if (mode === 'none') {
    const ended = second.lines.find((l) => l.msg === 'ended agent processes left by a previous run')?.pids as number[] | undefined
    t.ok(ended?.includes(gpid), 'the restart ended the escaped grandchild, by its marker (logged)')
    await waitUntil('every process of the old run to be gone', oldRunLeft, { timeoutMs: 5_000, describe: () => left.join(', ') })
    t.pass(`no process of the old run is left (${known.size} pids, the grandchild's included)`)
    mark('old processes gone')
  } else {
    t.same(reaped, [], 'the restart found no agent of the old run to end')
    t.ok(await oldRunLeft(), `and none came back: ${left.join(', ')}`)
  }
  t.same(await readdir(agentsDir), [], 'the process records are cleared')

  for (const n of names) {
    const s = await getSession(second, id(n))
    t.match(s, { state: 'suspended', busy: false }, `${n}: suspended, not busy`)
  }

  for (const n of names) {
    const stored = await storedEvents(second, id(n))
    t.same(stored.map((f) => f.seq), stored.map((_f, i) => i + 1), `${n}: stored seqs run 1..${stored.length} without a hole`)
    const got = received[n]
    t.same(got.map((f) => f.seq), got.map((_f, i) => i + 1), `${n}: the client got seqs 1..${got.length} without a gap or a duplicate`)
    const bySeq = new Map(stored.map((f) => [f.seq, f]))
    const differing = got.filter((f) => {
      const s = bySeq.get(f.seq)
      return !s || s.type !== f.type || JSON.stringify(s.data) !== JSON.stringify(f.data)
    })
    t.same(differing.slice(0, 3), [], `${n}: each of the ${got.length} frames received before the kill is stored, identical`)
    const last = stored.filter((f) => f.type === 'state').at(-1)
    t.match(last?.data, { from: 'active', to: 'suspended', reason: 'restart', actor: 'system' }, `${n}: the restart's state event`)
    t.ok(last && last.seq > (got.at(-1)?.seq ?? 0), `${n}: recorded after everything the client saw`)
  }
  mark('events compared')

  // ------------------------------------------------------------------ 5. a message resumes, with memory
  const before: Record<string, number> = {}
  for (const n of names) {
    before[n] = (await storedEvents(second, id(n))).at(-1)!.seq
    await send(second, id(n), `after the crash ${n}`)
  }
  for (const n of names) {
    let events: Frame[] = []
    await waitUntil(`${n}: the reply after the restart`, async () => {
      events = (await storedEvents(second, id(n))).filter((f) => f.seq > before[n]!)
      return results(events).length >= 1
    }, { timeoutMs: WAIT_MS, describe: () => JSON.stringify(kinds(events)) })
    t.same(kinds(events).slice(0, 3), [`user:after the crash ${n}`, 'status:Resuming session…', 'state:suspended->active(message)'],
      `${n}: the message, "Resuming session…", suspended → active`)
    t.equal(events.filter((f) => f.type === 'user').length, 1, `${n}: no earlier message is sent again`)
    t.same(replies(events), [`echo: after the crash ${n} | remembered: ${prompts[n].join(' / ')}`],
      `${n}: the agent remembers the turns before the crash, the one cut short included`)
  }
  t.equal((await getSession(second, id('grandchild'))).state, 'active', 'the resumed session is active')
  mark('resumed')

  const stopped = await second.stop('SIGTERM')
  t.same(stopped, { code: 0, signal: null }, 'the second run shuts down cleanly')
  for (const n of names) t.same(await markedPids(id(n)), [], `${n}: nothing left running after the shutdown`)
  mark('second run stopped')
  t.comment(`${mode}, ${databaseUrl ? 'postgres' : 'pglite'}: ${timings.join(', ')}`)
}
