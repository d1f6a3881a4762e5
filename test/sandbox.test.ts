// Database-incidental: uses a database only as storage for what it tests, so CI runs it once, in the PostgreSQL pass (.ci/run).
/**
 * The agents' bubblewrap sandbox (src/agents/sandbox.ts, docs/AGENTS.md "The sandbox"): the command
 * line it builds, the start-up probe and its fallback (the seam: bwrap is looked up on the
 * service's PATH, so a PATH with a failing `bwrap` first, or none, makes it fail), the mode in
 * effect, and an agent installed under the hidden home. The escape probes are in
 * sandbox-escape.test.ts, the processes in sandbox-processes.test.ts.
 */
import { chmod, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import pino from 'pino'
import t, { type Test } from 'tap'
import { BWRAP_FLAGS, bwrapArgs, resolveSandbox, sandboxCommand } from '../src/agents/sandbox.js'
import { buildApp, type App } from '../src/app.js'
import { loadConfig } from '../src/config.js'
import { FAKE_CLAUDE, fakeAgentEnv, killLeftovers, marked, newSession, sh, userOf } from './helpers/as-user.js'
import { build, freshDatabaseUrl } from './helpers/build.js'
import { seedPglite } from './helpers/pglite-template.js'

const BWRAP = '/usr/bin/bwrap'

// every process a test may leave behind is killed at the end
const sessionIds: string[] = []
const strays: number[] = []
t.teardown(() => killLeftovers(sessionIds, strays))

// ---------------------------------------------------------------------------------------------
// Pure: the command line

t.test('bwrapArgs: the system read-only, the service hidden, the session bound back, shallowest first', async (t) => {
  const args = bwrapArgs({
    workdir: '/srv/ws/alice-1/proj',
    stateDir: '/srv/data/claude/users/alice-1/sessions/s1',
    tmpDir: '/srv/data/tmp/s1',
    hidden: ['/srv/data', '/srv/ws', '/srv/data/claude', '/home/svc'],
    exposed: ['/home/svc/.local/share/claude/versions', '/usr/lib/node']
  })
  t.same(args, [
    ...BWRAP_FLAGS,
    '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev',
    '--bind', '/srv/data/tmp/s1', '/tmp',
    '--tmpfs', '/srv/data',
    '--tmpfs', '/srv/ws',
    '--tmpfs', '/home/svc',
    // /srv/data/claude: already out of sight inside /srv/data; /usr/lib/node: visible anyway
    '--bind', '/srv/ws/alice-1/proj', '/srv/ws/alice-1/proj',
    '--ro-bind', '/home/svc/.local/share/claude/versions', '/home/svc/.local/share/claude/versions',
    '--bind', '/srv/data/claude/users/alice-1/sessions/s1', '/srv/data/claude/users/alice-1/sessions/s1',
    '--chdir', '/srv/ws/alice-1/proj'
  ])
  t.ok(BWRAP_FLAGS.includes('--unshare-pid') && BWRAP_FLAGS.includes('--die-with-parent'), 'own PID namespace, dies with the service')
  t.notOk(BWRAP_FLAGS.includes('--unshare-net') || BWRAP_FLAGS.includes('--unshare-all'), 'the network is kept')
  t.same(BWRAP_FLAGS.slice(BWRAP_FLAGS.indexOf('--cap-drop'), BWRAP_FLAGS.indexOf('--cap-drop') + 2), ['--cap-drop', 'ALL'])

  // everything under /tmp (as in these tests): /tmp is replaced, so nothing under it is hidden again
  const underTmp = bwrapArgs({
    workdir: '/tmp/x/ws/u/p',
    stateDir: '/tmp/x/data/claude/users/u/sessions/s',
    tmpDir: '/tmp/x/data/tmp/s',
    hidden: ['/tmp/x/data', '/tmp/x/ws', '/root'],
    exposed: []
  })
  t.notOk(underTmp.includes('/tmp/x/data') && underTmp[underTmp.indexOf('/tmp/x/data') - 1] === '--tmpfs', 'no tmpfs under the replaced /tmp')
  t.same(underTmp.filter((a) => a === '--tmpfs').length, 1, 'only /root is hidden by a tmpfs')

  // a hidden directory inside a bound one stays hidden: the most specific mount wins
  const nested = bwrapArgs({ workdir: '/w/p', stateDir: '/s', tmpDir: '/t', hidden: ['/w', '/w/p/.data'], exposed: [] })
  t.ok(nested.join(' ').includes('--bind /w/p /w/p --tmpfs /w/p/.data'), nested.join(' '))

  const cmd = sandboxCommand({ bin: 'claude', args: ['-p', '--verbose'], env: { PATH: '/usr/bin', HOME: '/root', CLAUDE_CODE_TMPDIR: '/d/tmp/s', ANTHROPIC_API_KEY: 'k' } }, {
    bwrap: BWRAP,
    agentPath: '/opt/claude/bin/claude',
    layout: { workdir: '/w/p', stateDir: '/s', tmpDir: '/t', hidden: [], exposed: [] }
  })
  t.equal(cmd.bin, BWRAP)
  t.same(cmd.args.slice(cmd.args.indexOf('--')), ['--', '/opt/claude/bin/claude', '-p', '--verbose'])
  t.same(cmd.env, { PATH: '/usr/bin', HOME: '/s', CLAUDE_CODE_TMPDIR: '/tmp', ANTHROPIC_API_KEY: 'k' }, 'HOME is the state dir, the temp dir is /tmp')
  t.notOk(cmd.args.some((a) => a.includes('k') && a === 'k'), 'the environment is not on the command line')
})

// ---------------------------------------------------------------------------------------------
// The probe

t.test('resolveSandbox: none, a working bwrap, a missing one, a failing one', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-bwrap-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const failing = join(dir, 'failing')
  await mkdir(failing)
  await writeFile(join(failing, 'bwrap'), '#!/bin/sh\necho "bwrap: No permissions to create new namespace" >&2\nexit 1\n')
  await chmod(join(failing, 'bwrap'), 0o755)
  const empty = join(dir, 'empty')
  await mkdir(empty)

  t.same(await resolveSandbox('none', { PATH: process.env.PATH }), { mode: 'none', reason: 'AGENT_SANDBOX=none' })
  t.same(await resolveSandbox('auto', { PATH: process.env.PATH }), { mode: 'bwrap', bwrap: BWRAP }, 'bwrap works on this host')
  t.same(await resolveSandbox('bwrap', { PATH: process.env.PATH }), { mode: 'bwrap', bwrap: BWRAP })

  const missing = await resolveSandbox('auto', { PATH: empty })
  t.match(missing, { mode: 'none', reason: /not on PATH/ }, 'auto without bwrap: unconfined, with the reason')
  await t.rejects(resolveSandbox('bwrap', { PATH: empty }), /AGENT_SANDBOX=bwrap, but bubblewrap does not work here: bwrap is not on PATH/)

  const broken = await resolveSandbox('auto', { PATH: `${failing}:${process.env.PATH}` })
  t.match(broken, { mode: 'none', reason: /No permissions to create new namespace/ }, 'auto with a bwrap that fails: unconfined, with its stderr')
  await t.rejects(resolveSandbox('bwrap', { PATH: `${failing}:${process.env.PATH}` }), /No permissions to create new namespace/)
})

/** The whole app with its log lines captured (build() logs to stdout). */
async function buildLogged (t: Test, extra: Record<string, string>): Promise<{ app: App, lines: Array<Record<string, any>> }> {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-sandbox-'))
  const databaseUrl = await freshDatabaseUrl(t)
  const config = loadConfig({
    MOBVIBE_DATA_DIR: join(dir, 'data'),
    MOBVIBE_WORKSPACE_ROOT: join(dir, 'workspaces'),
    JWT_SECRET: 'x'.repeat(40),
    LOG_LEVEL: 'info',
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
    ...fakeAgentEnv(extra)
  })
  const lines: Array<Record<string, any>> = []
  const sink = new Writable({
    write (chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, any>)
      done()
    }
  })
  if (config.databaseUrl === undefined) await seedPglite(config.dataDir)
  const app = await buildApp({ config, logger: pino({ level: 'info' }, sink) })
  t.teardown(async () => {
    await app.close()
    await rm(dir, { recursive: true, force: true })
  })
  return { app, lines }
}

t.test('start-up: auto falls back loudly when bwrap fails, bwrap refuses to start, the mode is known', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-bwrap-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await writeFile(join(dir, 'bwrap'), '#!/bin/sh\necho "bwrap: setting up uid map: Permission denied" >&2\nexit 1\n')
  await chmod(join(dir, 'bwrap'), 0o755)
  const path = process.env.PATH
  // the seam: bwrap is looked up on the service's PATH at start-up
  process.env.PATH = `${dir}:${path}`
  t.teardown(() => { process.env.PATH = path })

  const auto = await buildLogged(t, { AGENT_SANDBOX: 'auto' })
  await auto.app.ready()
  t.equal(auto.app.agents.sandbox, 'none', 'auto: unconfined')
  const warning = auto.lines.find((l) => l.level === 40 && /UNCONFINED/.test(l.msg))
  t.ok(warning, 'a warning says the agents run unconfined')
  t.match(warning?.reason, /Permission denied/, 'with the reason')

  const strict = await buildLogged(t, { AGENT_SANDBOX: 'bwrap' })
  await t.rejects(async () => { await strict.app.ready() }, /AGENT_SANDBOX=bwrap, but bubblewrap does not work here: .*Permission denied/, 'bwrap: start-up fails, saying why')

  process.env.PATH = path
  const working = await buildLogged(t, { AGENT_SANDBOX: 'auto' })
  await working.app.ready()
  t.equal(working.app.agents.sandbox, 'bwrap', 'auto with a working bwrap: sandboxed')
  t.ok(working.lines.find((l) => l.level === 30 && l.sandbox === 'bwrap'), 'said at start-up')
  t.notOk(working.lines.find((l) => l.level >= 40), 'no warning')
})

t.test('an agent installed under the hidden home is bound back and runs; the home stays hidden', async (t) => {
  // as the native installer does: ~/.local/bin/claude → ~/.local/share/claude/versions/<version>
  // (.mjs: the fake is an ES module)
  const home = await mkdtemp(join(tmpdir(), 'mobvibe-home-'))
  t.teardown(() => rm(home, { recursive: true, force: true }))
  const versions = join(home, '.local', 'share', 'claude', 'versions')
  await mkdir(versions, { recursive: true })
  await writeFile(join(versions, '9.9.9.mjs'), await readFile(FAKE_CLAUDE))
  await chmod(join(versions, '9.9.9.mjs'), 0o755)
  await mkdir(join(home, '.local', 'bin'))
  await symlink(join(versions, '9.9.9.mjs'), join(home, '.local', 'bin', 'claude'))
  await writeFile(join(home, '.service-credentials'), 'secret\n')
  const previousHome = process.env.HOME
  process.env.HOME = home
  t.teardown(() => { process.env.HOME = previousHome })

  const built = await build(t, { env: fakeAgentEnv({ AGENT_SANDBOX: 'bwrap', CLAUDE_BIN: join(home, '.local', 'bin', 'claude') }) })
  const u = await userOf(built)
  const s = await newSession(u, sessionIds)
  const probe = await sh(u, s.id, `cat ${join(home, '.service-credentials')} || echo hidden; ls ${join(home, '.local', 'bin')} || echo hidden; echo "$HOME"`)
  const lines = probe.stdout.trim().split('\n')
  t.same(lines.slice(0, 2), ['hidden', 'hidden'], 'the service user\'s home and the link are out of reach')
  t.not(lines[2], home, 'the agent\'s HOME is not the service\'s')
  t.ok((await marked(s.id)).some((p) => p.cmd.includes(join(versions, '9.9.9.mjs'))), 'the agent runs by its real path')
})
