import { readdir, readFile } from 'node:fs/promises'

/**
 * What /proc tells about processes: identity (start time, to tell a reused pid apart) and the
 * environment marker that finds an agent's descendants even after they left its process group.
 */

/** The kernel's start time of a process (clock ticks since boot); null if gone or a zombie. */
export async function processStartTime (pid: number): Promise<string | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
    // the command name may hold spaces and parentheses: fields count from the last ')'
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    if (fields[0] === 'Z' || fields[0] === 'X') return null
    return fields[19] ?? null
  } catch {
    return null
  }
}

async function environHas (pid: number, entry: Buffer): Promise<boolean> {
  try {
    const environ = await readFile(`/proc/${pid}/environ`)
    // entries are NUL-terminated: match a whole entry, not a prefix of a longer value
    for (let i = environ.indexOf(entry); i !== -1; i = environ.indexOf(entry, i + 1)) {
      if ((i === 0 || environ[i - 1] === 0) && (environ[i + entry.length] === 0 || i + entry.length === environ.length)) return true
    }
    return false
  } catch {
    return false
  }
}

/** Live processes whose environment holds `name=value` (ours only: others' environ is unreadable). */
export async function findByEnvMarker (name: string, value: string, also?: { name: string, value: string }): Promise<number[]> {
  const entry = Buffer.from(`${name}=${value}`)
  const second = also ? Buffer.from(`${also.name}=${also.value}`) : undefined
  const pids = (await readdir('/proc')).filter((d) => /^\d+$/.test(d)).map(Number).filter((pid) => pid !== process.pid)
  const found: number[] = []
  await Promise.all(pids.map(async (pid) => {
    if (await environHas(pid, entry) && (!second || await environHas(pid, second)) && await processStartTime(pid) !== null) found.push(pid)
  }))
  return found
}

export function signal (pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig)
    return true
  } catch {
    return false
  }
}

/** Is `pid` still the process that was started at `startTime` (and carries the marker)? */
export async function isSameProcess (pid: number, startTime: string | null, marker?: { name: string, value: string }): Promise<boolean> {
  const current = await processStartTime(pid)
  if (current === null || (startTime !== null && current !== startTime)) return false
  return marker ? environHas(pid, Buffer.from(`${marker.name}=${marker.value}`)) : true
}
