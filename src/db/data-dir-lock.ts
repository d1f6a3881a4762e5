import { open, readFile, unlink } from 'node:fs/promises'
import { join } from 'node:path'
import { processStartTime } from '../system/proc.js'

/**
 * One service per data directory: a lock file holding the holder's pid and process start time. A
 * holder that is dead, a zombie, or a different process under a reused pid leaves a stale lock,
 * which is taken over.
 */
export interface DataDirLock {
  readonly path: string
  release (): Promise<void>
}

class DataDirLocked extends Error {
  override name = 'DataDirLocked'
}

interface LockRecord { pid: number, startTime: string | null }

async function holderAlive (rec: LockRecord): Promise<boolean> {
  if (rec.pid === process.pid) return false
  const start = await processStartTime(rec.pid)
  if (start === null) return false
  return rec.startTime === null || rec.startTime === start
}

export async function acquireDataDirLock (dir: string): Promise<DataDirLock> {
  const path = join(dir, 'service.lock')
  const me: LockRecord = { pid: process.pid, startTime: await processStartTime(process.pid) }
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fh = await open(path, 'wx')
      await fh.writeFile(JSON.stringify(me))
      await fh.close()
      return {
        path,
        release: async () => {
          const current = await readRecord(path)
          if (current?.pid === me.pid) await unlink(path).catch(() => {})
        }
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    const holder = await readRecord(path)
    if (holder && await holderAlive(holder)) {
      throw new DataDirLocked(`data directory ${dir} is in use by another running service (pid ${holder.pid}); stop it or set MOBVIBE_DATA_DIR to another directory`)
    }
    await unlink(path).catch(() => {})
  }
  throw new DataDirLocked(`could not take the lock on data directory ${dir}`)
}

async function readRecord (path: string): Promise<LockRecord | null> {
  try {
    const parsed = JSON.parse(await readFile(path, 'utf8')) as Partial<LockRecord>
    return typeof parsed.pid === 'number' ? { pid: parsed.pid, startTime: parsed.startTime ?? null } : null
  } catch {
    return null
  }
}
