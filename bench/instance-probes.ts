// What the multi-instance figures watch besides the streams: the agent processes of every session
// (never two at once), the doorbell's notices on `mv_events` and PostgreSQL's notification queue,
// and the machine's CPU (a saturated 2-core box makes every latency a measure of the box).
import { readFile } from 'node:fs/promises'
import { availableParallelism } from 'node:os'
import { basename } from 'node:path'
import postgres from 'postgres'
import { decodeEventNotice } from '../src/cluster/event-notice.js'
import { environValue, processTable } from './instance-cluster.js'

const wallMs = () => performance.timeOrigin + performance.now()

// ---------------------------------------------------------------------------------------------
// Agent processes

/**
 * Every `sampleEveryMs`, the live processes of the benchmark agent (node running `agentScript`,
 * not a zombie) whose environment holds MOBVIBE_AGENT_SESSION=<one of the watched sessions>
 * (src/system/proc.ts' marker): a moment where one session has two is a double owner.
 */
export class AgentSampler {
  samples = 0
  /** when each look started (wall ms) */
  readonly looks: number[] = []
  readonly violations: { at: number, sessionId: string, pids: number[] }[] = []
  /** every agent process seen: its session and when it was first and last seen (wall ms) */
  readonly seen = new Map<number, { sessionId: string, first: number, last: number }>()
  #timer: NodeJS.Timeout | undefined
  #running: Promise<void> | undefined
  #stopped = false

  constructor (readonly agentScript: string, readonly watched: () => ReadonlySet<string>, readonly sampleEveryMs: number) {}

  start (): this {
    const loop = () => {
      if (this.#stopped) return
      this.#running = this.sample().then(() => {}, () => {}).finally(() => {
        if (!this.#stopped) this.#timer = setTimeout(loop, this.sampleEveryMs)
      })
    }
    loop()
    return this
  }

  /** One look: the session → agent pids map, recorded. */
  async sample (): Promise<Map<string, number[]>> {
    const watched = this.watched()
    const bySession = new Map<string, number[]>()
    const at = wallMs()
    await Promise.all((await processTable()).map(async (p) => {
      if (p.state === 'Z' || p.state === 'X' || !p.comm.startsWith('node')) return
      const sessionId = await environValue(p.pid, 'MOBVIBE_AGENT_SESSION')
      if (!watched.has(sessionId)) return
      const argv = (await readFile(`/proc/${p.pid}/cmdline`, 'utf8').catch(() => '')).split('\0')
      if (!basename(argv[0] ?? '').startsWith('node') || !argv.includes(this.agentScript)) return
      bySession.set(sessionId, [...(bySession.get(sessionId) ?? []), p.pid])
    }))
    this.samples++
    this.looks.push(at)
    for (const [sessionId, pids] of bySession) {
      if (pids.length > 1) this.violations.push({ at, sessionId, pids })
      for (const pid of pids) {
        const s = this.seen.get(pid)
        if (s) s.last = at
        else this.seen.set(pid, { sessionId, first: at, last: at })
      }
    }
    return bySession
  }

  /** The first look after `after` that found none of `pids` (wall ms), if there was one yet. */
  goneAt (pids: number[], after: number): number | undefined {
    const lastSeen = Math.max(after, ...pids.map((pid) => this.seen.get(pid)?.last ?? after))
    return this.looks.find((t) => t > lastSeen)
  }

  async stop (): Promise<void> {
    this.#stopped = true
    clearTimeout(this.#timer)
    await this.#running
  }
}

// ---------------------------------------------------------------------------------------------
// The doorbell

export interface NoticeWindow {
  seconds: number
  notices: number
  /** sum of last − first + 1 over every entry of every notice */
  events: number
  /** of those, the events whose frames came in the notice (no read of the table needed) */
  carried: number
  /** notices by the instance id that sent them */
  byInstance: Map<string, number>
}

/**
 * LISTEN mv_events (src/cluster/event-notice.ts): every notice's arrival, the events it names and
 * those it carries; and `pg_notification_queue_usage()` every `sampleEveryMs`, its maximum.
 */
export class NotifyMeter {
  readonly #notices: { at: number, from: string, events: number, carried: number }[] = []
  readonly #listener: postgres.Sql
  readonly #probe: postgres.Sql
  maxQueueUsage = 0
  queueSamples = 0
  #timer: NodeJS.Timeout | undefined
  #stopped = false

  constructor (url: string, readonly sampleEveryMs: number) {
    this.#listener = postgres(url, { max: 1, onnotice: () => {} })
    this.#probe = postgres(url, { max: 1, onnotice: () => {} })
  }

  async start (): Promise<void> {
    await this.#listener.listen('mv_events', (payload) => {
      const { from, runs } = decodeEventNotice(payload)
      let events = 0
      let carried = 0
      for (const run of runs) {
        events += run.last - run.first + 1
        carried += run.frames?.length ?? 0
      }
      this.#notices.push({ at: wallMs(), from, events, carried })
    })
    const loop = async () => {
      if (this.#stopped) return
      try {
        const [row] = await this.#probe<{ u: number }[]>`select pg_notification_queue_usage() as u`
        this.maxQueueUsage = Math.max(this.maxQueueUsage, Number(row?.u ?? 0))
        this.queueSamples++
      } catch {}
      if (!this.#stopped) this.#timer = setTimeout(() => { loop().catch(() => {}) }, this.sampleEveryMs)
    }
    await loop()
  }

  /** The notices received between two wall-clock times. */
  window (fromMs: number, toMs: number): NoticeWindow {
    const inside = this.#notices.filter((n) => n.at >= fromMs && n.at <= toMs)
    const byInstance = new Map<string, number>()
    for (const n of inside) byInstance.set(n.from, (byInstance.get(n.from) ?? 0) + 1)
    return {
      seconds: (toMs - fromMs) / 1000,
      notices: inside.length,
      events: inside.reduce((a, n) => a + n.events, 0),
      carried: inside.reduce((a, n) => a + n.carried, 0),
      byInstance
    }
  }

  async stop (): Promise<void> {
    this.#stopped = true
    clearTimeout(this.#timer)
    await Promise.all([this.#listener.end({ timeout: 2 }), this.#probe.end({ timeout: 2 })])
  }
}

// ---------------------------------------------------------------------------------------------
// CPU

interface CpuSnapshot { at: number, total: number, idle: number, ticks: Map<number, { group: string, ticks: number }> }

/** CPU time of the whole machine (/proc/stat) and of groups of processes, between two snapshots. */
export interface CpuUse {
  cores: number
  /** cores busy on average (0..cores) */
  busy: number
  /** cores used by each named group; `other`: the rest of the machine (other work, exited processes) */
  groups: Record<string, number>
}

const CLK_TCK = 100

/**
 * Snapshots of the machine's CPU: `group(pid, comm)` names the group a process counts in (or
 * undefined: not counted apart); between two snapshots, each group's cores.
 */
export class CpuMeter {
  constructor (readonly group: (pid: number, comm: string) => Promise<string | undefined>) {}

  async snapshot (): Promise<CpuSnapshot> {
    const stat = await readFile('/proc/stat', 'latin1')
    const cpu = stat.slice(0, stat.indexOf('\n')).trim().split(/\s+/).slice(1, 9).map(Number)
    const idle = (cpu[3] ?? 0) + (cpu[4] ?? 0)
    const ticks = new Map<number, { group: string, ticks: number }>()
    await Promise.all((await processTable()).map(async (p) => {
      const group = await this.group(p.pid, p.comm)
      if (group !== undefined) ticks.set(p.pid, { group, ticks: p.ticks })
    }))
    return { at: performance.now(), total: cpu.reduce((a, b) => a + b, 0), idle, ticks }
  }

  between (a: CpuSnapshot, b: CpuSnapshot): CpuUse {
    const cores = availableParallelism()
    const busy = b.total > a.total ? ((b.total - a.total) - (b.idle - a.idle)) / (b.total - a.total) * cores : NaN
    const seconds = (b.at - a.at) / 1000
    const groups: Record<string, number> = {}
    let counted = 0
    for (const [pid, p] of b.ticks) {
      // a process that started in between counts from its start; one that ended is in `other`
      const used = Math.max(0, p.ticks - (a.ticks.get(pid)?.ticks ?? 0)) / CLK_TCK / seconds
      groups[p.group] = (groups[p.group] ?? 0) + used
      counted += used
    }
    groups.other = Math.max(0, busy - counted)
    return { cores, busy, groups }
  }
}
