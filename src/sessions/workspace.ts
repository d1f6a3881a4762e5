import { mkdir, realpath } from 'node:fs/promises'
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path'
import { userKey } from '../domain/user-key.js'
import { WorkdirOutsideRoot, WorkdirUnusable } from '../errors.js'

/** A user's own area of the workspace root: every working directory of theirs lies inside it. */
export function userWorkspace (workspaceRoot: string, owner: string): string {
  return join(workspaceRoot, userKey(owner))
}

function strictlyInside (root: string, path: string): boolean {
  const rel = relative(root, path)
  return rel !== '' && !rel.startsWith('..' + sep) && rel !== '..' && !isAbsolute(rel)
}

/**
 * Resolves a session's working directory inside `root` (the user's area of the workspace root)
 * and creates it. Checked twice: lexically, then after resolving symlinks, so a link inside the
 * root cannot lead out of it (into another user's area, or anywhere else).
 */
export async function prepareWorkdir (root: string, requested: string): Promise<string> {
  if (requested.includes('\0')) throw new WorkdirUnusable(JSON.stringify(requested), 'contains a NUL byte')
  const path = resolve(root, requested)
  if (!strictlyInside(root, path)) throw new WorkdirOutsideRoot(JSON.stringify(requested))
  await mkdir(root, { recursive: true })
  const realRoot = await realpath(root)
  // Before creating anything: the part that exists already must not lead out of the root
  const existing = await deepestExisting(path).catch((err: NodeJS.ErrnoException) => {
    throw new WorkdirUnusable(JSON.stringify(requested), err.code ?? 'cannot be resolved')
  })
  if (existing !== realRoot && !strictlyInside(realRoot, existing)) throw new WorkdirOutsideRoot(JSON.stringify(requested))
  try {
    await mkdir(path, { recursive: true })
  } catch (err) {
    throw new WorkdirUnusable(JSON.stringify(requested), (err as NodeJS.ErrnoException).code ?? 'cannot be created')
  }
  const realPath = await realpath(path)
  if (!strictlyInside(realRoot, realPath)) throw new WorkdirOutsideRoot(JSON.stringify(requested))
  return path
}

async function deepestExisting (path: string): Promise<string> {
  for (let p = path; ; p = dirname(p)) {
    try {
      return await realpath(p)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(p) === p) throw err
    }
  }
}
