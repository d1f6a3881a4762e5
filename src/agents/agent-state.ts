import { cp, mkdir, readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { userKey } from '../domain/user-key.js'

/** The directory of sessions that have no owner (created before users existed). */
const UNOWNED = '_unowned'

/** The key of a session's user: their directory name, and the bucket of the per-user cap. */
export function ownerKey (owner: string | null): string {
  return owner === null ? UNOWNED : userKey(owner)
}

/**
 * A session's own CLAUDE_CONFIG_DIR, in its user's area of the agents' state root:
 * `<configDir>/users/<userKey(owner)>/sessions/<sessionId>` (`_unowned` without an owner). Sessions
 * never share one: they would see each other's transcripts, and CLIs running at once on one
 * config directory corrupt its `.claude.json` (anthropics/claude-code#28922).
 */
export function agentStateDir (configDir: string, owner: string | null, sessionId: string): string {
  return join(configDir, 'users', ownerKey(owner), 'sessions', sessionId)
}

/**
 * A conversation begun before per-session state directories has its transcript in the old shared
 * layout, `<configDir>/projects/<project dir>/<agentSessionId>.jsonl` (with, maybe, a directory of
 * the same name beside it). When the session's own directory has no transcript of that
 * conversation, the old one is copied in under the same project directory name, so `--resume`
 * finds it. The original stays where it was. Returns the project directories copied.
 */
export async function adoptLegacyTranscript (configDir: string, stateDir: string, agentSessionId: string): Promise<string[]> {
  const file = `${agentSessionId}.jsonl`
  if ((await projectsHolding(join(stateDir, 'projects'), file)).length > 0) return []
  const legacy = await projectsHolding(join(configDir, 'projects'), file)
  for (const project of legacy) {
    const from = join(configDir, 'projects', project)
    const to = join(stateDir, 'projects', project)
    await mkdir(to, { recursive: true })
    await cp(join(from, file), join(to, file), { force: false, errorOnExist: false, preserveTimestamps: true })
    if (await isDirectory(join(from, agentSessionId))) {
      await cp(join(from, agentSessionId), join(to, agentSessionId), { recursive: true, force: false, errorOnExist: false, preserveTimestamps: true })
    }
  }
  return legacy
}

/** The project directories under `projects` that hold `file` (the glob `projects/*\/<file>`). */
async function projectsHolding (projects: string, file: string): Promise<string[]> {
  let dirs: string[]
  try {
    dirs = await readdir(projects)
  } catch {
    return []
  }
  const found: string[] = []
  for (const dir of dirs.sort()) {
    try {
      if ((await stat(join(projects, dir, file))).isFile()) found.push(dir)
    } catch {
      // not in this project
    }
  }
  return found
}

async function isDirectory (path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory()
  } catch {
    return false
  }
}
