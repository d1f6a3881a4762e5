// Database-incidental: uses a database only as storage for what it tests, so CI runs it once, in the PostgreSQL pass (.ci/run).
/**
 * Each session's own agent state directory (src/agents/agent-state.ts, docs/AGENTS.md "State"):
 * `<CLAUDE_CONFIG_DIR>/users/<userKey(owner)>/sessions/<id>`, where the CLI keeps its transcript;
 * and a conversation begun before that layout (its transcript in the shared
 * `<CLAUDE_CONFIG_DIR>/projects/<project>/`) still resumes, its transcript copied in.
 */
import { mkdir, mkdtemp, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { adoptLegacyTranscript, agentStateDir, ownerKey } from '../src/agents/agent-state.js'
import { userKey } from '../src/domain/user-key.js'
import { call } from './helpers/api.js'
import { fakeAgentEnv, killLeftovers, newSession, session, turn, userOf } from './helpers/as-user.js'
import { build, TEST_USER } from './helpers/build.js'

const sessionIds: string[] = []
t.teardown(() => killLeftovers(sessionIds))

t.test('the path of a session\'s state', async (t) => {
  t.equal(agentStateDir('/d/claude', 'auth0|alice', 's1'), `/d/claude/users/${userKey('auth0|alice')}/sessions/s1`)
  t.equal(agentStateDir('/d/claude', null, 's1'), '/d/claude/users/_unowned/sessions/s1', 'no owner: _unowned')
  t.equal(ownerKey(null), '_unowned')
  t.not(ownerKey('_unowned'), '_unowned', 'no user can have the unowned directory')
})

t.test('adoptLegacyTranscript copies the old transcript and its directory once, and never overwrites', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'mobvibe-legacy-'))
  t.teardown(() => rm(root, { recursive: true, force: true }))
  const id = '0f9e8d7c-6b5a-4c3d-8e1f-0a1b2c3d4e5f'
  const old = join(root, 'projects', '-srv-ws-proj')
  await mkdir(join(old, id, 'subagents'), { recursive: true })
  await writeFile(join(old, `${id}.jsonl`), '{"old":1}\n')
  await writeFile(join(old, id, 'subagents', 'a.jsonl'), 'x\n')
  await mkdir(join(root, 'projects', '-other'))
  const state = join(root, 'users', 'u', 'sessions', 's')

  t.same(await adoptLegacyTranscript(root, state, 'aaaaaaaa-0000-4000-8000-000000000000'), [], 'nothing to copy for an unknown conversation')
  t.same(await adoptLegacyTranscript(root, state, id), ['-srv-ws-proj'])
  t.equal(await readFile(join(state, 'projects', '-srv-ws-proj', `${id}.jsonl`), 'utf8'), '{"old":1}\n', 'under the same project name')
  t.equal(await readFile(join(state, 'projects', '-srv-ws-proj', id, 'subagents', 'a.jsonl'), 'utf8'), 'x\n', 'with its directory')
  t.ok((await stat(join(old, `${id}.jsonl`))).isFile(), 'the original stays')

  await writeFile(join(state, 'projects', '-srv-ws-proj', `${id}.jsonl`), '{"new":1}\n')
  t.same(await adoptLegacyTranscript(root, state, id), [], 'the session has it: nothing copied')
  t.equal(await readFile(join(state, 'projects', '-srv-ws-proj', `${id}.jsonl`), 'utf8'), '{"new":1}\n', 'not overwritten')
})

t.test('through the service: per-session state, and a conversation of the old layout resumes with its memory', async (t) => {
  // the default sandbox (auto: bwrap here), where the shared state root is hidden from the agent
  const built = await build(t, { env: fakeAgentEnv() })
  const { config } = built
  const u = await userOf(built)
  const s = await newSession(u, sessionIds)
  t.equal(await turn(u, s.id, 'first'), 'echo: first')
  const agentSessionId = (await session(u, s.id)).agentSessionId!
  const stateDir = agentStateDir(config.agent.configDir, TEST_USER, s.id)
  t.equal(stateDir, join(config.agent.configDir, 'users', userKey(TEST_USER), 'sessions', s.id))
  const [project] = await readdir(join(stateDir, 'projects'))
  t.ok(project, 'the transcript is in the session\'s own state directory')
  t.ok((await stat(join(stateDir, 'projects', project!, `${agentSessionId}.jsonl`))).isFile())
  t.same(await readdir(config.agent.configDir), ['users'], 'nothing in the shared root')

  // another session of the same user: its own directory, not the first one's
  const other = await newSession(u, sessionIds)
  await turn(u, other.id, 'second session')
  t.not(agentStateDir(config.agent.configDir, TEST_USER, other.id), stateDir)
  t.same(await readdir(join(stateDir, 'projects')), [project], 'the first session\'s directory holds only its own project')

  // make it a session of before: its transcript moved to the shared layout, its own directory gone
  t.equal((await call(u.app, 'POST', `/v1/sessions/${s.id}/transitions`, { to: 'suspended' }, u.auth)).status, 200)
  const legacy = join(config.agent.configDir, 'projects', project!)
  await mkdir(legacy, { recursive: true })
  await rename(join(stateDir, 'projects', project!, `${agentSessionId}.jsonl`), join(legacy, `${agentSessionId}.jsonl`))
  await mkdir(join(legacy, agentSessionId))
  await writeFile(join(legacy, agentSessionId, 'tool-output.txt'), 'kept\n')
  await rm(stateDir, { recursive: true, force: true })

  t.equal(await turn(u, s.id, 'again'), 'echo: again | remembered: first', 'resumed with the memory of the old transcript')
  t.equal((await session(u, s.id)).agentSessionId, agentSessionId, 'the same conversation')
  const copied = await readFile(join(stateDir, 'projects', project!, `${agentSessionId}.jsonl`), 'utf8')
  t.match(copied, /"again"/, 'the copy is the one the agent appended to')
  t.equal(await readFile(join(stateDir, 'projects', project!, agentSessionId, 'tool-output.txt'), 'utf8'), 'kept\n', 'with its directory')
  t.notMatch(await readFile(join(legacy, `${agentSessionId}.jsonl`), 'utf8'), /"again"/, 'the old one is left as it was')
})
