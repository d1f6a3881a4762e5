// Database-incidental: uses a database only as storage for what it tests, so CI runs it once, in the PostgreSQL pass (.ci/run).
/**
 * The processes of sandboxed agents (docs/AGENTS.md, "The sandbox" and "The stop sequence"): a
 * `setsid` grandchild does not outlive its agent (pause, suspend, delete, crash); the stop
 * sequence's SIGTERM reaches the CLI inside bwrap (which does not pass signals on), and its
 * SIGKILL ends one that ignores it; start-up reaping ends a sandboxed orphan of a previous run.
 * Waits are bounded polling of the API or /proc.
 */
import { spawn } from 'node:child_process'
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { BWRAP_FLAGS } from '../src/agents/sandbox.js'
import { processStartTime } from '../src/system/proc.js'
import { call } from './helpers/api.js'
import { isRunning, waitUntil } from './helpers/agents.js'
import { fakeAgentEnv, killLeftovers, marked, newSession, send, turn, userOf, waitFor } from './helpers/as-user.js'
import { build } from './helpers/build.js'

const BWRAP = '/usr/bin/bwrap'

// every process a test may leave behind is killed at the end
const sessionIds: string[] = []
const strays: number[] = []
t.teardown(() => killLeftovers(sessionIds, strays))

// ---------------------------------------------------------------------------------------------
// Nothing outlives the agent

t.test('under bwrap, a setsid grandchild does not outlive its agent: pause, suspend, delete, crash', async (t) => {
  const built = await build(t, { env: fakeAgentEnv({ AGENT_SANDBOX: 'bwrap' }) })
  const u = await userOf(built)
  const stops: Array<[string, (id: string) => Promise<unknown>]> = [
    ['pause', (id) => call(u.app, 'POST', `/v1/sessions/${id}/pause`, {}, u.auth)],
    ['suspend', (id) => call(u.app, 'POST', `/v1/sessions/${id}/transitions`, { to: 'suspended' }, u.auth)],
    ['delete', (id) => call(u.app, 'DELETE', `/v1/sessions/${id}`, undefined, u.auth)],
    ['crash', (id) => send(u, id, '/crash boom')]
  ]
  for (const [what, stop] of stops) {
    await t.test(what, async (t) => {
      const s = await newSession(u, sessionIds)
      t.match(await turn(u, s.id, '/grandchild gc'), /^grandchild \d+ \|/)
      const procs = await marked(s.id)
      const sleeper = procs.find((p) => p.cmd === 'sleep 600')
      t.ok(sleeper, `the grandchild runs on the host: ${JSON.stringify(procs)}`)
      const sid = (await readFile(`/proc/${sleeper!.pid}/stat`, 'utf8')).split(') ')[1]!.split(' ')[3]
      t.equal(Number(sid), sleeper!.pid, 'in a session of its own (setsid)')
      t.ok(procs.some((p) => p.cmd.startsWith(BWRAP)), 'the agent runs under bwrap')
      await stop(s.id)
      if (what === 'crash') await waitFor(u, s.id, 'the crash', (f) => f.some((e) => e.type === 'error' && e.data.code === 'AGENT_CRASHED'))
      let left: unknown[] = []
      await waitUntil(`nothing of the session to run after ${what}`, async () => {
        left = await marked(s.id)
        return left.length === 0
      }, { timeoutMs: 5_000, describe: () => JSON.stringify(left) })
      t.notOk(await isRunning(sleeper!.pid), 'the grandchild is gone')
    })
  }
})

t.test('under bwrap, the stop sequence\'s SIGTERM reaches the agent inside, and SIGKILL ends one that ignores it', async (t) => {
  const built = await build(t, { env: fakeAgentEnv({ AGENT_SANDBOX: 'bwrap', AGENT_ENV_PASSTHROUGH: 'FAKE_CLAUDE_IGNORE_EOF' }) })
  process.env.FAKE_CLAUDE_IGNORE_EOF = '1'
  t.teardown(() => { delete process.env.FAKE_CLAUDE_IGNORE_EOF })
  const u = await userOf(built)
  const s = await newSession(u, sessionIds)
  await turn(u, s.id, 'hello')
  const res = await call(u.app, 'POST', `/v1/sessions/${s.id}/transitions`, { to: 'suspended' }, u.auth)
  t.equal(res.status, 200)
  const frames = await waitFor(u, s.id, 'the agent\'s SIGTERM line', (f) => f.some((e) => e.type === 'agent' && e.data.subtype === 'fake_sigterm'))
  t.ok(frames, 'stdin EOF ignored, then SIGTERM reached the CLI itself (not only bwrap), which said so before exiting')
  t.same(await marked(s.id), [], 'nothing left')

  const stubborn = await build(t, { env: fakeAgentEnv({ AGENT_SANDBOX: 'bwrap', AGENT_ENV_PASSTHROUGH: 'FAKE_CLAUDE_IGNORE_TERM' }) })
  process.env.FAKE_CLAUDE_IGNORE_TERM = '1'
  t.teardown(() => { delete process.env.FAKE_CLAUDE_IGNORE_TERM })
  const v = await userOf(stubborn)
  const s2 = await newSession(v, sessionIds)
  await turn(v, s2.id, 'hello')
  t.ok((await marked(s2.id)).length > 0, 'the agent runs')
  t.equal((await call(v.app, 'POST', `/v1/sessions/${s2.id}/transitions`, { to: 'suspended' }, v.auth)).status, 200)
  t.same(await marked(s2.id), [], 'the SIGKILL of the group ended it: nothing left once the suspend answered')
})

t.test('start-up reaping ends a sandboxed orphan of a previous run, grandchild included', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-orphan-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const dataDir = join(dir, 'data')
  await mkdir(join(dataDir, 'agents'), { recursive: true })
  const sessionId = '6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d'
  sessionIds.push(sessionId)
  // what a crashed service leaves (were it not for --die-with-parent): bwrap, its init, the agent
  // and a grandchild in its own session, all carrying the marker
  const orphan = spawn(BWRAP, [...BWRAP_FLAGS, '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev', '--', '/bin/sh', '-c', 'setsid sleep 600 & exec sleep 601'], {
    env: { PATH: '/usr/bin:/bin', MOBVIBE_AGENT_SESSION: sessionId },
    detached: true,
    stdio: 'ignore'
  })
  orphan.unref()
  strays.push(orphan.pid!)
  await waitUntil('the orphan and its grandchild to run', async () => (await marked(sessionId)).filter((p) => p.cmd.startsWith('sleep')).length === 2)
  await writeFile(join(dataDir, 'agents', `${sessionId}.json`), JSON.stringify({ sessionId, pid: orphan.pid, startTime: await processStartTime(orphan.pid!) }))
  const before = await marked(sessionId)

  await build(t, { env: fakeAgentEnv({ AGENT_SANDBOX: 'bwrap', MOBVIBE_DATA_DIR: dataDir }) })
  let left: unknown[] = []
  await waitUntil('the orphan to be gone', async () => {
    left = await marked(sessionId)
    return left.length === 0
  }, { timeoutMs: 5_000, describe: () => JSON.stringify(left) })
  t.pass(`the ${before.length} processes of the orphan are gone`)
  t.same(await readdir(join(dataDir, 'agents')), [], 'its record is removed')
})
