import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { Log } from '../logger.js'
import { findByEnvMarker, isSameProcess, processStartTime, signal } from '../system/proc.js'
import { AGENT_HOME_MARKER, AGENT_MARKER } from './claude-command.js'

interface ProcessRecord {
  sessionId: string
  pid: number
  startTime: string | null
}

/**
 * Every live agent process is recorded on disk (pid, start time, session marker) so that a service
 * that crashed can end its orphans on the next start, after checking each is really ours.
 */
export class ProcessRegistry {
  readonly #dir: string
  readonly #log: Log

  readonly #dataDir: string
  constructor (opts: { dataDir: string, logger: Log }) {
    this.#dir = join(opts.dataDir, 'agents')
    this.#dataDir = opts.dataDir
    this.#log = opts.logger
  }

  async record (sessionId: string, pid: number): Promise<void> {
    await mkdir(this.#dir, { recursive: true })
    const rec: ProcessRecord = { sessionId, pid, startTime: await processStartTime(pid) }
    await writeFile(this.#path(sessionId), JSON.stringify(rec))
  }

  async forget (sessionId: string): Promise<void> {
    await rm(this.#path(sessionId), { force: true })
  }

  /** Ends whatever a previous run left behind; returns the pids it signalled. */
  async reapOrphans (): Promise<number[]> {
    let files: string[]
    try {
      files = (await readdir(this.#dir)).filter((f) => f.endsWith('.json'))
    } catch {
      return []
    }
    const ended: number[] = []
    for (const file of files) {
      const rec = await readRecord(join(this.#dir, file))
      if (rec) {
        const marker = { name: AGENT_MARKER, value: rec.sessionId }
        // pids are reused: only a process with the recorded start time and our marker is ours
        if (await isSameProcess(rec.pid, rec.startTime, marker)) {
          this.#log.warn({ pid: rec.pid, sessionId: rec.sessionId }, 'ending an agent left by a previous run')
          signal(-rec.pid, 'SIGKILL')
          signal(rec.pid, 'SIGKILL')
          ended.push(rec.pid)
        }
        // this data directory's only: another instance on the host may run the session's agent by now
        for (const pid of await findByEnvMarker(AGENT_MARKER, rec.sessionId, { name: AGENT_HOME_MARKER, value: this.#dataDir })) {
          signal(pid, 'SIGKILL')
          ended.push(pid)
        }
      }
      await rm(join(this.#dir, file), { force: true })
    }
    return ended
  }

  #path (sessionId: string): string {
    return join(this.#dir, `${sessionId}.json`)
  }
}

async function readRecord (path: string): Promise<ProcessRecord | null> {
  try {
    const rec = JSON.parse(await readFile(path, 'utf8')) as Partial<ProcessRecord>
    if (typeof rec.pid !== 'number' || typeof rec.sessionId !== 'string' || !/^[0-9a-f-]{36}$/i.test(rec.sessionId)) return null
    return { pid: rec.pid, sessionId: rec.sessionId, startTime: rec.startTime ?? null }
  } catch {
    return null
  }
}
