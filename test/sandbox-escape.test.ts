// Database-incidental: uses a database only as storage for what it tests, so CI runs it once, in the PostgreSQL pass (.ci/run).
/**
 * Escape probes (docs/AGENTS.md, "The sandbox"): an agent of user alice, through the fake CLI's
 * `/sh`, tries to read the data directory's `jwt-secret`, the database files, user bob's
 * workspace and transcript, the transcript of alice's other session, and to write into /usr.
 * Under AGENT_SANDBOX=bwrap every probe fails; under AGENT_SANDBOX=none the same probes succeed,
 * which shows they can fail. In both modes the agent still works in its own directories.
 */
import { readFile, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { agentStateDir } from '../src/agents/agent-state.js'
import { fakeAgentEnv, killLeftovers, newSession, session, sh, turn, userOf, type SessionRes, type User } from './helpers/as-user.js'
import { build } from './helpers/build.js'

// every process a test may leave behind is killed at the end
const sessionIds: string[] = []
const strays: number[] = []
t.teardown(() => killLeftovers(sessionIds, strays))

// ---------------------------------------------------------------------------------------------
// Escape probes, sandboxed and not

const PROBES = ['jwt-secret', 'database', 'other user\'s workspace', 'other user\'s transcript', 'own user\'s other session\'s transcript', 'write /usr'] as const
type Probe = typeof PROBES[number]

async function escapeProbes (t: Test, mode: 'bwrap' | 'none'): Promise<{ reached: Record<Probe, boolean>, sandbox: string }> {
  const built = await build(t, { env: fakeAgentEnv({ AGENT_SANDBOX: mode }) })
  const { config } = built
  const alice = await userOf(built, 'alice')
  const bob = await userOf(built, 'bob')
  const jwtSecret = join(config.dataDir, 'jwt-secret')
  await stat(jwtSecret).catch(() => writeFile(jwtSecret, 'not-a-real-secret\n', { mode: 0o600 }))

  // bob's code and conversation; alice's other conversation
  const b = await newSession(bob, sessionIds)
  await writeFile(join(b.workdir, 'bob-secret.txt'), 'bob was here\n')
  await turn(bob, b.id, 'hello from bob')
  const a2 = await newSession(alice, sessionIds)
  await turn(alice, a2.id, 'hello from alice 2')
  const transcriptOf = async (u: User, s: SessionRes, owner: string) => {
    const agentSessionId = (await session(u, s.id)).agentSessionId!
    const projects = join(agentStateDir(config.agent.configDir, owner, s.id), 'projects')
    const [project] = await readdir(projects)
    return join(projects, project!, `${agentSessionId}.jsonl`)
  }
  const bobTranscript = await transcriptOf(bob, b, 'bob')
  const alice2Transcript = await transcriptOf(alice, a2, 'alice')
  t.ok((await stat(bobTranscript)).isFile() && (await stat(alice2Transcript)).isFile(), 'the transcripts exist on the host')

  const a = await newSession(alice, sessionIds)
  const can = async (command: string) => (await sh(alice, a.id, `${command} >/dev/null 2>&1 && echo yes || echo no`)).stdout.trim() === 'yes'
  const database = config.databaseUrl ? join(config.dataDir, 'service.lock') : join(config.dataDir, 'pglite', 'PG_VERSION')
  const reached: Record<Probe, boolean> = {
    'jwt-secret': await can(`cat ${jwtSecret}`),
    database: await can(`cat ${database}`),
    'other user\'s workspace': await can(`cat ${join(b.workdir, 'bob-secret.txt')}`),
    'other user\'s transcript': await can(`cat ${bobTranscript}`),
    'own user\'s other session\'s transcript': await can(`cat ${alice2Transcript}`),
    'write /usr': await can('touch /usr/mobvibe-escape-probe')
  }
  await rm('/usr/mobvibe-escape-probe', { force: true })

  // what the agent must still be able to do, confined or not
  const own = await sh(alice, a.id, 'echo mine > own.txt && cat own.txt && cat "$CLAUDE_CONFIG_DIR"/projects/*/*.jsonl | wc -l && echo "$HOME" && echo tmp > "$CLAUDE_CODE_TMPDIR/t.txt" && env')
  t.equal(own.code, 0, `the agent works in its own directories: ${own.stderr}`)
  const [mine, transcriptLines, home] = own.stdout.split('\n')
  t.equal(mine, 'mine', 'its workdir is writable')
  t.ok(Number(transcriptLines) >= 1, 'it reads its own transcript')
  t.equal(await readFile(join(a.workdir, 'own.txt'), 'utf8'), 'mine\n', 'what it writes is in the workdir on the host')
  t.equal(await readFile(join(config.dataDir, 'tmp', a.id, 't.txt'), 'utf8'), 'tmp\n', 'its temp dir is the session\'s on the host')
  t.notMatch(own.stdout, /DATABASE_URL|JWT_SECRET|MOBVIBE_DATA_DIR/, 'no service setting in its environment')
  const stateDir = agentStateDir(config.agent.configDir, 'alice', a.id)
  t.match(own.stdout, new RegExp(`CLAUDE_CONFIG_DIR=${stateDir}\\n`), 'its own state dir')
  if (mode === 'bwrap') {
    t.equal(home, stateDir, 'HOME is its state dir: the service user\'s home is hidden')
    t.match(own.stdout, /CLAUDE_CODE_TMPDIR=\/tmp\n/)
  }
  return { reached, sandbox: built.app.agents.sandbox }
}

t.test('escape probes: confined under bwrap; the same probes reach everything unconfined', async (t) => {
  const confined = await escapeProbes(t, 'bwrap')
  t.equal(confined.sandbox, 'bwrap')
  for (const probe of PROBES) t.equal(confined.reached[probe], false, `bwrap: ${probe} is out of reach`)

  const unconfined = await escapeProbes(t, 'none')
  t.equal(unconfined.sandbox, 'none')
  for (const probe of PROBES.filter((p) => p !== 'write /usr')) t.equal(unconfined.reached[probe], true, `none: ${probe} is reachable (the probe works)`)
})
