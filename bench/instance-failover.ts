// 4.: kill -9 of the instance that runs a streaming session's agent. A message is sent to another
// instance at once (a user who sees the stream stop types again): it is stored, and once the dead
// instance's lease has run out the session is suspended (`worker lost`) and resumed. Timed from the
// kill: the lease's expiry (the instance row, the database's clock: the same host's), the
// `worker lost` transition, the first agent frame of the resumed session at a viewer. Viewers on
// the two other instances are open throughout: each must have every seq once, exactly the seqs
// (and types) of GET /events.
import { setTimeout as sleep } from 'node:timers/promises'
import type { BenchInstance } from './instance-cluster.js'
import { INSTANCES, wallMs, type Cluster } from './instance-context.js'
import { fmt } from './report.js'

/** Polls `probe` every 50 ms until it returns a value; throws after `timeoutMs`. */
async function poll<T> (what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await probe()
    if (v !== undefined) return v
    if (Date.now() > deadline) throw new Error(`failover: no ${what} within ${timeoutMs} ms`)
    await sleep(50)
  }
}

export async function failover (c: Cluster): Promise<void> {
  const s = c.settings
  const [victim, sender, third] = c.instances as [BenchInstance, BenchInstance, BenchInstance]
  const leaseMs = INSTANCES.leaseSeconds * 1000
  const id = await victim.createSession()
  c.watched.add(id)
  const onSender = await c.openViewer(sender, id, 'failover')
  const onThird = await c.openViewer(third, id, 'failover')
  // a long turn at 100 lines/s on the victim; streaming for a second before the kill
  const { seq } = await victim.message(id, `/lines 1000000 ${s.lineBytes} 100 60`)
  await c.firstAfter(onThird, seq, false, 15_000)
  await sleep(1000)
  if (await c.ownerOf(id) !== victim) throw new Error(`session ${id} is not ${victim.name}'s`)
  const [row] = await c.sql<{ id: string }[]>`
    select id from service_instances where pid = ${victim.pid} and data_dir = ${victim.dataDir} and stopped_at is null
    order by started_at desc limit 1`
  if (!row) throw new Error(`no live instance row of ${victim.name}`)
  const before = (await c.sampler.sample()).get(id) ?? []
  const cpu0 = await c.cpu.snapshot()

  const killedAt = wallMs()
  victim.kill('SIGKILL')
  const directive = `/lines ${INSTANCES.failoverLines} ${s.lineBytes} ${INSTANCES.failoverRate} ${INSTANCES.failoverLines / INSTANCES.failoverRate + 10}`
  let refused = 0
  const accepted = await poll('202 for the message', c.within(leaseMs + 10_000), () => sender.message(id, directive).catch(() => {
    refused++
    return sleep(100).then(() => undefined)
  }))
  const acceptedMs = wallMs() - killedAt
  await victim.waitExit()

  const [lease] = await c.sql<{ heartbeat_at: Date, lease_seconds: number }[]>`
    select heartbeat_at, lease_seconds from service_instances where id = ${row.id}`
  const expiryMs = lease ? lease.heartbeat_at.getTime() + lease.lease_seconds * 1000 - killedAt : NaN
  const lost = await poll('worker lost', c.within(leaseMs + 10_000), async () => {
    const [t] = await c.sql<{ at: Date }[]>`
      select at from session_transitions where session_id = ${id} and reason = 'worker lost' order by version limit 1`
    return t
  })
  const lostMs = lost.at.getTime() - killedAt
  const first = await c.firstAfter(onThird, accepted.seq, false, leaseMs + 15_000)
  const firstMs = first.atMs - killedAt
  await c.firstAfter(onThird, accepted.seq, true, 30_000)
  const cpu1 = await c.cpu.snapshot()
  const newOwner = await c.ownerOf(id)
  // the old agent (the watchdog's work): gone at the sampler's first look without it
  const goneMs = (c.sampler.goneAt(before, killedAt) ?? NaN) - killedAt

  // every stored event reached both viewers, once
  const stored = await third.events(id)
  const last = stored.at(-1)?.seq ?? 0
  const viewers = await poll('both viewers at the last seq', c.within(10_000), async () => {
    const f = await Promise.all([c.frames(onSender), c.frames(onThird)])
    return f.every((v) => (v.seqs.at(-1) ?? 0) >= last) ? f : undefined
  }).catch(() => Promise.all([c.frames(onSender), c.frames(onThird)]))
  const problems: string[] = []
  for (const [name, v] of [[sender.name, viewers[0]], [third.name, viewers[1]]] as const) {
    const seen = new Set(v.seqs)
    const lostSeqs = stored.filter((e) => !seen.has(e.seq)).length
    const dups = v.seqs.length - seen.size
    const same = v.seqs.length === stored.length && stored.every((e, i) => v.seqs[i] === e.seq && v.types[i] === e.type)
    if (lostSeqs || dups || !same || v.closed) {
      problems.push(`${name}: ${lostSeqs} lost, ${dups} duplicates${same ? '' : ', differs from GET /events'}${v.closed ? `, closed ${v.closeCode}` : ''}`)
    }
  }

  const what = `failover after kill -9 of ${victim.name}, the owner of a session streaming 100 lines/s (lease ${INSTANCES.leaseSeconds} s)`
  const at = (ms: number) => `${fmt.int(ms)} ms after the kill`
  c.report.add({ figure: `${what}: the lease's expiry (its row's last renewal + lease)`, db: 'postgres', value: at(expiryMs) })
  c.report.add({
    figure: `${what}: session suspended, reason 'worker lost'`,
    db: 'postgres',
    value: `${at(lostMs)} (${fmt.int(lostMs - expiryMs)} ms after the expiry)`
  })
  const limit = leaseMs + INSTANCES.failoverMarginMs
  c.report.add({
    figure: `${what}: first agent frame of the resumed session at a viewer on ${third.name}, after a message sent to ${sender.name} at the kill`,
    db: 'postgres',
    value: `${at(firstMs)} (message accepted ${fmt.int(acceptedMs)} ms after the kill${refused ? `, ${refused} refusals first` : ''}; ` +
      `resumed on ${newOwner?.name ?? 'nobody'}; ${before.length} old agent${before.length === 1 ? '' : 's'} gone at the first look ${fmt.int(goneMs)} ms after the kill)`,
    target: `≤ lease + ${INSTANCES.failoverMarginMs / 1000} s (${fmt.int(limit)} ms)`,
    pass: firstMs <= limit
  })
  c.report.add({
    figure: `${what}: viewers on ${sender.name} and ${third.name}, open throughout`,
    db: 'postgres',
    value: problems.length ? problems.join('; ') : `0 lost, 0 duplicates; seqs 1..${last} as GET /events`,
    target: '0 lost, 0 duplicates, = GET /events',
    pass: problems.length === 0 && last > 0
  })
  c.cpuRow('the failover figure', c.cpu.between(cpu0, cpu1))
}
