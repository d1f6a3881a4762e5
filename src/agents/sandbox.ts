import { execFile } from 'node:child_process'
import { constants } from 'node:fs'
import { access, open, readFile, realpath, stat } from 'node:fs/promises'
import { delimiter, dirname, isAbsolute, join, sep } from 'node:path'
import type { Config } from '../config.js'
import type { ClaudeCommand } from './claude-command.js'

/**
 * The agents' confinement with bubblewrap (`bwrap`): what the command line of a sandboxed agent is
 * (pure: `bwrapArgs`, `sandboxCommand`), and whether bwrap works on this host (`resolveSandbox`,
 * which runs it once at start-up).
 *
 * Inside, an agent sees the system read-only, its session's working directory and its own state
 * directory read-write at their real paths, its own temp directory as /tmp, and nothing of the
 * service's data directory, the workspace root (other users' code), the agents' state root (other
 * sessions' transcripts) or the service user's home. It has its own PID, IPC and UTS namespaces
 * and no capabilities; it keeps the network (the API). See docs/AGENTS.md, "The sandbox".
 */

/** What confines the agents, decided at start-up. */
export type Sandbox =
  | { mode: 'bwrap', bwrap: string }
  | { mode: 'none', reason: string }

/**
 * Namespaces, lifetime and privileges, the same for the start-up probe and every agent:
 * - a user namespace and no capabilities: even as root, the agent cannot undo a mount that hides
 *   something (umount the tmpfs over the data directory) nor gain anything by being uid 0;
 * - a PID namespace whose init is bwrap: when the agent's process ends, or bwrap is killed, the
 *   kernel kills everything left in the namespace, `setsid` or not; `--die-with-parent` does the
 *   same when the service itself dies (kill -9 included);
 * - IPC and UTS namespaces (and the cgroup one where possible): no shared memory with other agents;
 * - no NODE_OPTIONS: the environment the service builds is an allow-list, but preloaders that
 *   patch child_process (APM agents, tap's process-info) add the service's own NODE_OPTIONS to
 *   every spawn; inside, the module it names usually lies in a hidden directory, and the agent's
 *   Node would refuse to start (and should not run the service's preloads anyway).
 * The network is kept: the agent talks to the Anthropic API.
 */
export const BWRAP_FLAGS: readonly string[] = [
  '--unshare-user', '--unshare-pid', '--unshare-ipc', '--unshare-uts', '--unshare-cgroup-try',
  '--die-with-parent', '--cap-drop', 'ALL', '--unsetenv', 'NODE_OPTIONS'
]

/** The system, read-only, with its own /proc and a minimal /dev. */
const BASE_MOUNTS: readonly string[] = ['--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev']

/**
 * The agent's temp directory inside the sandbox. The session's temp directory on disk
 * (`$MOBVIBE_DATA_DIR/tmp/<session id>`) is bound there, rather than a tmpfs: the CLI and its tools
 * may write large files (tool outputs, builds), which belong on disk, not in the host's memory
 * (bwrap 0.8 cannot bound a tmpfs's size); the service already removes that directory with the
 * session and at start-up; and it is the same directory the unconfined agent gets, so
 * CLAUDE_CODE_TMPDIR points at it either way (as /tmp inside).
 */
export const SANDBOX_TMP = '/tmp'

/** The paths that make one agent's sandbox. All absolute and already resolved (realpath). */
export interface SandboxLayout {
  /** the session's working directory: read-write, at the same path (the CLI finds its transcripts by it) */
  workdir: string
  /** the session's CLAUDE_CONFIG_DIR: read-write, at the same path; also the agent's HOME */
  stateDir: string
  /** the session's temp directory: read-write, as /tmp */
  tmpDir: string
  /** hidden behind an empty tmpfs: the data directory, the workspace root, the agents' state root, the service's HOME */
  hidden: readonly string[]
  /** bound back read-only: the agent's installation, where it lies under a hidden path */
  exposed: readonly string[]
}

type Mount = { kind: 'tmpfs', dest: string } | { kind: 'ro-bind' | 'bind', src: string, dest: string }

const depth = (path: string): number => path === '/' ? 0 : path.split('/').length - 1
const isWithin = (path: string, dir: string): boolean => path === dir || path.startsWith(dir === '/' ? '/' : dir + sep)

/**
 * bwrap's arguments for one agent, up to (not including) `--`. Mounts are applied shallowest first,
 * so the most specific one wins: a hidden directory inside a bound one stays hidden (the data
 * directory inside a workspace), a bound one inside a hidden one is visible (the session's
 * workdir inside the workspace root). A hidden path already out of sight (inside another hidden
 * one, or under /tmp, which is replaced) is not mounted again.
 */
export function bwrapArgs (layout: SandboxLayout): string[] {
  const mounts: Mount[] = [
    ...layout.hidden.map((dest): Mount => ({ kind: 'tmpfs', dest })),
    ...layout.exposed.map((dir): Mount => ({ kind: 'ro-bind', src: dir, dest: dir })),
    { kind: 'bind', src: layout.tmpDir, dest: SANDBOX_TMP },
    { kind: 'bind', src: layout.workdir, dest: layout.workdir },
    { kind: 'bind', src: layout.stateDir, dest: layout.stateDir }
  ]
  // shallowest first; at the same path a tmpfs goes before a bind (the bind wins)
  mounts.sort((a, b) => depth(a.dest) - depth(b.dest) || (a.kind === 'tmpfs' ? 0 : 1) - (b.kind === 'tmpfs' ? 0 : 1))
  const applied: Mount[] = []
  const args = [...BWRAP_FLAGS, ...BASE_MOUNTS]
  for (const m of mounts) {
    if (m.kind === 'tmpfs') {
      if (!showsHost(m.dest, applied)) continue
      if (applied.some((a) => a.dest === m.dest)) continue
      args.push('--tmpfs', m.dest)
    } else {
      if (m.kind === 'ro-bind' && showsHost(m.dest, applied)) continue // visible anyway
      args.push(`--${m.kind}`, m.src, m.dest)
    }
    applied.push(m)
  }
  args.push('--chdir', layout.workdir)
  return args
}

/** Does `path` show the host's file there, given the mounts made so far (over `--ro-bind / /`)? */
function showsHost (path: string, applied: readonly Mount[]): boolean {
  let nearest: Mount | undefined
  for (const m of applied) {
    if (isWithin(path, m.dest) && (!nearest || depth(m.dest) >= depth(nearest.dest))) nearest = m
  }
  if (!nearest) return true
  return nearest.kind !== 'tmpfs' && nearest.src === nearest.dest
}

/**
 * The agent's command run through bwrap: `bwrap <flags and mounts> -- <agent> <its args>`, with
 * the same allow-listed environment (passed in the environment, never on the command line, where
 * any user could read a key), except what the sandbox changes: HOME is the session's state
 * directory (the service user's home is hidden) and the temp directory is /tmp.
 */
export function sandboxCommand (cmd: ClaudeCommand, sandbox: { bwrap: string, agentPath: string, layout: SandboxLayout }): ClaudeCommand {
  return {
    bin: sandbox.bwrap,
    args: [...bwrapArgs(sandbox.layout), '--', sandbox.agentPath, ...cmd.args],
    env: { ...cmd.env, HOME: sandbox.layout.stateDir, CLAUDE_CODE_TMPDIR: SANDBOX_TMP }
  }
}

// ---------------------------------------------------------------------------------------------
// The host: finding things, and the probe

/** `name` looked up on `PATH` like execvp does (a name with a slash is taken as is); undefined if absent. */
export async function findExecutable (name: string, path: string | undefined): Promise<string | undefined> {
  const candidates = name.includes('/') ? [name] : (path ?? '').split(delimiter).filter((d) => isAbsolute(d)).map((d) => join(d, name))
  for (const candidate of candidates) {
    try {
      await access(candidate, constants.X_OK)
      if ((await stat(candidate)).isFile()) return candidate
    } catch {
      // not here
    }
  }
  return undefined
}

/**
 * What the agent executable needs to run, as directories: the directory of its real file, the
 * outermost `node_modules` it lies in (its package and the packages it loads), and, for a script,
 * its interpreter's directory (`#!/usr/bin/env node` → node's, looked up on PATH).
 */
export async function installationDirs (realBin: string, path: string | undefined): Promise<string[]> {
  const dirs = [dirname(realBin)]
  const nm = realBin.indexOf(`${sep}node_modules${sep}`)
  if (nm !== -1) dirs.push(realBin.slice(0, nm + `${sep}node_modules`.length))
  const interpreter = await shebangInterpreter(realBin)
  if (interpreter) {
    const found = await findExecutable(interpreter, path)
    if (found) dirs.push(dirname(await realpath(found)))
  }
  return [...new Set(dirs)]
}

/** `#!/usr/bin/env node` → `node`; `#!/usr/bin/python3 -u` → `/usr/bin/python3`; undefined for a binary. */
async function shebangInterpreter (file: string): Promise<string | undefined> {
  const fh = await open(file, 'r')
  try {
    const buf = Buffer.alloc(256)
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0)
    const head = buf.subarray(0, bytesRead).toString('latin1')
    if (!head.startsWith('#!')) return undefined
    const words = head.slice(2).split('\n')[0]!.trim().split(/\s+/)
    if (words[0]?.endsWith('/env')) return words.slice(1).find((w) => !w.startsWith('-'))
    return words[0]
  } finally {
    await fh.close()
  }
}

/**
 * The sandbox in effect for `setting`: `none` is none; `bwrap` and `auto` look `bwrap` up on the
 * service's PATH (the seam the tests use: a PATH without it, or with a fake one that fails) and
 * run it once on `true` with the agents' flags. `bwrap` throws when that fails; `auto` then
 * returns `none` with the reason, for the caller to warn about.
 */
export async function resolveSandbox (setting: Config['sandbox'], env: NodeJS.ProcessEnv): Promise<Sandbox> {
  if (setting === 'none') return { mode: 'none', reason: 'AGENT_SANDBOX=none' }
  const failed = (reason: string): Sandbox => {
    if (setting === 'bwrap') throw new Error(`AGENT_SANDBOX=bwrap, but bubblewrap does not work here: ${reason}`)
    return { mode: 'none', reason }
  }
  const bwrap = await findExecutable('bwrap', env.PATH)
  if (!bwrap) return failed('bwrap is not on PATH (install bubblewrap)')
  const trueBin = await findExecutable('true', env.PATH) ?? '/bin/true'
  const probe = await run(bwrap, [...BWRAP_FLAGS, ...BASE_MOUNTS, '--', trueBin], PROBE_TIMEOUT_MS)
  if (!probe.ok) return failed(`\`${bwrap} … -- true\` failed: ${probe.detail} (user namespaces may be blocked: see README, "Sandbox")`)
  return { mode: 'bwrap', bwrap }
}

const PROBE_TIMEOUT_MS = 10_000

function run (bin: string, args: string[], timeoutMs: number): Promise<{ ok: boolean, detail: string }> {
  return new Promise((resolve) => {
    execFile(bin, args, { timeout: timeoutMs, env: { PATH: '/usr/bin:/bin' } }, (err, _stdout, stderr) => {
      const detail = stderr.trim().split('\n').slice(-3).join(' / ')
      resolve(err ? { ok: false, detail: detail || err.message } : { ok: true, detail })
    })
  })
}

/**
 * The agent's own process inside a sandbox started as `outerPid`: bwrap → bwrap as the namespace's
 * init → the agent. A SIGTERM to bwrap itself is not passed on (it dies, and the namespace with
 * it): the stop sequence's SIGTERM goes here, so the CLI can end its turn cleanly. Undefined when
 * it cannot be found (not started yet, already gone).
 */
export async function sandboxedAgentPid (outerPid: number): Promise<number | undefined> {
  const init = (await children(outerPid))[0]
  return init === undefined ? undefined : (await children(init))[0]
}

async function children (pid: number): Promise<number[]> {
  try {
    return (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8')).split(' ').filter(Boolean).map(Number)
  } catch {
    return []
  }
}
