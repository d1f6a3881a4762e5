// What the multi-instance figures share (instances.ts, instance-failover.ts): their settings and
// numbers, and the cluster under bench as the figures see it.
import type postgres from 'postgres'
import type { BenchInstance } from './instance-cluster.js'
import type { AgentSampler, CpuMeter, CpuUse } from './instance-probes.js'
import type { FirstFrame, ViewerCommand, ViewerFrames } from './instances-worker.js'
import type { Report } from './report.js'

export interface InstancesSettings {
  /** the server on which the scenario's database is created and dropped (BENCH_DATABASE_URL) */
  pgBase: string
  /** sessions streaming at once, their agents spread over A, B, C */
  sessions: number
  /** lines/s of all of them together */
  streamRate: number
  lineBytes: number
  durationS: number
  warmupS: number
  /** measured messages of the non-owner → stdin figure */
  messages: number
  poolSize: number
  logLevel: string
}

/** The numbers of the scenario, named once. */
export const INSTANCES = {
  names: ['A', 'B', 'C'],
  /** INSTANCE_LEASE_SECONDS: the smallest the service allows, for a short failover */
  leaseSeconds: 4,
  killGraceMs: 500,
  /** the double-owner sampler's period */
  sampleEveryMs: 100,
  /** pg_notification_queue_usage()'s */
  queueEveryMs: 250,
  /** the whole scenario, start-up and shutdown included, stays within this */
  budgetMs: 150_000,
  stopGraceMs: 10_000,
  /** the cross-instance viewers' p99 may exceed the owner's by this much */
  crossMarginMs: 20,
  /** kill → first line of the resumed session: at most the lease and this */
  failoverMarginMs: 2000,
  /** discarded messages before the measured ones */
  warmMessages: 5,
  /** the lines of the turn that resumes the session after the failover, and their rate */
  failoverLines: 200,
  failoverRate: 100
} as const

export type Without<T> = T extends unknown ? Omit<T, 'id'> : never
export const wallMs = () => performance.timeOrigin + performance.now()
export const percentile = (values: number[], p: number) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!
}

/** What the figures share: the instances, the viewers' thread, the probes, the database. */
export interface Cluster {
  instances: BenchInstance[]
  sql: postgres.Sql
  report: Report
  settings: InstancesSettings
  sampler: AgentSampler
  cpu: CpuMeter
  /** the sessions the sampler watches */
  watched: Set<string>
  viewers: (msg: Without<ViewerCommand>) => Promise<unknown>
  openViewer (on: BenchInstance, sessionId: string, role: string): Promise<number>
  firstAfter (viewer: number, afterSeq: number, result: boolean, timeoutMs: number): Promise<FirstFrame>
  frames (viewer: number): Promise<ViewerFrames>
  /** the instance that runs the session's agent (the row's claim), if it is active */
  ownerOf (id: string): Promise<BenchInstance | undefined>
  /** `ms`, cut to what is left of the scenario's budget */
  within (ms: number): number
  cpuRow (what: string, use: CpuUse): void
}
