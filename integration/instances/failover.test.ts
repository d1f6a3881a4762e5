/**
 * An instance that goes away, three ways: SIGTERM (it hands its sessions back at once), kill -9
 * (its agents die within half a lease and another instance takes its sessions over once the lease
 * has run out), and SIGSTOP beyond the lease (the same, and when it wakes up it owns nothing and
 * its late writes change nothing). A, B and C share one PostgreSQL; A is the one that goes away
 * and is started again on its data directory after each scenario.
 *
 * Waits are bounded polls, frames or exits; the lease is INSTANCE_LEASE_SECONDS=4 (the smallest allowed).
 */
import t from 'tap'
import {
  Cluster, DoubleOwnerSampler, LEASE_MS, Viewer, apiEvents, contiguity, describeAgents, framesDiffer, isInit,
  isReplyTo, kinds, send, soft, waitUntil, type Instance
} from './harness.js'

const cluster = await Cluster.start(t)
const A = cluster.instance('A')
const B = cluster.instance('B')
const C = cluster.instance('C')

const sessionOn = (on: Instance, prompt: string) => cluster.sessionOn(on, prompt)

/** A running again on its data directory, if an earlier scenario ended before it restarted it. */
async function upA (): Promise<void> {
  if (!A.running) await cluster.restart('A')
}

/**
 * Waits until the instance row `id` is no longer live (its lease ran out, or it was stopped); with
 * no row to watch (a build that registers no instances), until a lease and a second have passed.
 */
async function leaseOver (id: string | undefined, what: string): Promise<void> {
  const leaseEnds = Date.now() + LEASE_MS + 1000
  await waitUntil(what, async () => {
    if (id === undefined) return Date.now() > leaseEnds
    const row = (await cluster.instanceRows()).find((r) => r.id === id)
    return row !== undefined && !row.live
  }, { timeoutMs: LEASE_MS + 5000, intervalMs: 100, describe: async () => JSON.stringify(await cluster.instanceRows()) })
}

/** Polls for `ms` that `check` says nothing ('' = all well); the first complaint, or ''. */
async function staysSo (ms: number, check: () => Promise<string>): Promise<string> {
  const until = Date.now() + ms
  let complaint = ''
  await waitUntil(`${ms} ms of stability`, async () => {
    complaint = await check()
    return complaint !== '' || Date.now() > until
  }, { timeoutMs: ms + 10_000, intervalMs: 100 })
  return complaint
}

/** '' while the session is active, `owner`'s, served by its one agent `pid` there; else what differs. */
async function stillServedBy (id: string, owner: Instance, pid: number | undefined): Promise<string> {
  const row = await cluster.session(id)
  const agents = await cluster.agentsOf(id)
  const worker = await cluster.workerOf(id)
  if (row.state === 'active' && worker === owner.tag && agents.length === 1 && agents[0]!.pid === pid) return ''
  const history = (await cluster.transitions(id)).slice(-3).map((h) => `v${h.version} ${h.from_state}->${h.to_state}(${h.reason})`)
  return `state ${row.state}, owned by ${worker}, agents: ${describeAgents(agents)} (expected pid ${pid} on ${owner.tag}); last transitions: ${history.join(', ')}`
}

/** The transitions after the one that says `worker lost`: '' when it is there and followed by the takeover. */
async function workerLost (id: string): Promise<string> {
  const history = await cluster.transitions(id)
  const i = history.findIndex((h) => h.reason === 'worker lost')
  const describe = JSON.stringify(history.map((h) => `${h.from_state}->${h.to_state}(${h.reason})`))
  if (i < 0) return `no 'worker lost' transition: ${describe}`
  const lost = history[i]!
  const next = history[i + 1]
  if (lost.from_state !== 'active' || lost.to_state !== 'suspended') return `worker lost is not active → suspended: ${describe}`
  if (next?.from_state !== 'suspended' || next.to_state !== 'active') return `no suspended → active after it: ${describe}`
  return ''
}

t.test('SIGTERM of A hands its sessions back at once; a message on B resumes without waiting for the lease', async (t) => {
  await upA()
  const { id } = await sessionOn(A, 'before the handback')
  t.teardown(() => { if (!t.passing()) t.comment(`what the instances logged about the session:\n${cluster.logsAbout(id)}`) })
  t.equal(await cluster.workerOf(id), A.tag, 'owned by A')
  const exit = await A.service.stop('SIGTERM')
  t.same(exit, { code: 0, signal: null }, 'A exits 0')
  const row = await cluster.session(id)
  t.equal(row.state, 'suspended', 'suspended as A exits')
  t.equal(await cluster.workerOf(id), undefined, 'owned by nobody')
  const [stopped] = await cluster.sql`select stopped_at from service_instances where id = ${String(row.worker_id)}`
  t.ok(stopped?.stopped_at, 'A\'s row is stopped: nobody waits for its lease')
  t.match((await cluster.transitions(id)).at(-1), { from_state: 'active', to_state: 'suspended', reason: 'shutdown' }, 'reason shutdown')
  t.same(await cluster.agentsOf(id), [], 'A stopped its agent')

  const sent = Date.now()
  const { seq } = await send(B, id, 'after the handback')
  const reply = await cluster.waitReply(id, 'after the handback', { afterSeq: seq })
  const ms = Date.now() - sent
  t.ok(ms < LEASE_MS, `answered ${ms} ms after the message: no wait for A's lease (${LEASE_MS} ms)`)
  t.equal(reply.data.result, 'echo: after the handback | remembered: before the handback', 'the conversation went on (--resume)')
  t.notOk((await cluster.transitions(id)).some((h) => h.reason === 'worker lost'), 'no "worker lost": nothing was taken over')
  const agents = await cluster.agentsOf(id)
  t.same(agents.map((a) => a.instance), ['B'], `one agent, on B: ${describeAgents(agents)}`)
  t.equal(await cluster.workerOf(id), B.tag, 'owned by B')
  await cluster.restart('A')
})

t.test('kill -9 of A mid-turn: its agents die, B takes the session over after the lease, a stream on C sees it all', async (t) => {
  await upA()
  const { id } = await sessionOn(A, 'before the crash')
  t.teardown(() => { if (!t.passing()) t.comment(`what the instances logged about the session:\n${cluster.logsAbout(id)}`) })
  // a second session of A's, idle: a message reaches it while A's lease still runs
  const { id: idle } = await sessionOn(A, 'idle before the crash')
  const viewer = await Viewer.open(t, cluster, id, C)
  const { seq } = await send(A, id, '/slow 60000 mid turn')
  await cluster.waitEvents(id, 'the slow turn started', (f) => f.some(isInit), { afterSeq: seq })
  const [agent] = await cluster.agentsOf(id)
  t.equal(agent?.instance, 'A', `the slow turn runs on A: pid ${agent?.pid}`)
  const dead = await cluster.instanceId(A)

  const killedAt = Date.now()
  t.same(await A.service.stop('SIGKILL'), { code: null, signal: 'SIGKILL' }, 'A is killed')
  if (await soft(t, cluster.waitAgents(id, 'no agent of A left', (a) => a.length === 0, LEASE_MS / 2 + 2000))) {
    t.pass(`no agent of the session left ${Date.now() - killedAt} ms after the kill (bound: lease/2 + 2 s)`)
  }

  // sent while the dead A still holds its lease: stored, and delivered once the lease has run out
  const { seq: earlySeq } = await send(C, idle, 'while the lease runs')
  await leaseOver(dead, 'A\'s lease to run out')
  const early = await soft(t, cluster.waitReply(idle, 'while the lease runs', { afterSeq: earlySeq, timeoutMs: 20_000 }))
  const earlyMs = Date.now() - killedAt
  t.equal(early?.data.result, 'echo: while the lease runs | remembered: idle before the crash', `the message sent during A's lease was answered ${earlyMs} ms after the kill (lease ${LEASE_MS} ms), with the conversation's memory`)
  t.equal(await workerLost(idle), '', 'that session too: active → suspended (worker lost) → active')
  const { seq: afterSeq } = await send(B, id, 'after the crash')
  const reply = await soft(t, cluster.waitReply(id, 'after the crash', { afterSeq, timeoutMs: 20_000 }))
  t.equal(reply?.data.result, 'echo: after the crash | remembered: before the crash / mid turn', 'the conversation went on, the cut turn included')
  t.equal(await workerLost(id), '', 'the history: active → suspended (worker lost), then → active')
  const agents = await cluster.agentsOf(id)
  t.same(agents.map((a) => a.instance), ['B'], `one agent, on B: ${describeAgents(agents)}`)
  t.ok(agents[0]?.argv.includes('--resume'), `started with --resume: ${agents[0]?.argv.join(' ')}`)
  t.equal(await cluster.workerOf(id), B.tag, 'owned by B')

  const stored = await apiEvents(C, id)
  await soft(t, viewer.waitSeq(stored.at(-1)!.seq))
  t.equal(contiguity(viewer.frames, 0, stored.at(-1)!.seq), '', `the stream on C, open throughout, got seqs 1..${viewer.frames.length}, each once`)
  t.same(framesDiffer(viewer.frames, stored), [], 'exactly what GET /events holds')
  t.same(viewer.connections.map((c) => c.closed), [undefined], 'on one connection, never closed')
  await viewer.close()

  // A again on its data directory: its start-up takes over only what its last run left, and B has that
  const before = (await cluster.agentsOf(id))[0]
  await cluster.restart('A')
  const complaint = await staysSo(LEASE_MS / 2, () => stillServedBy(id, B, before?.pid))
  t.equal(complaint, '', 'A\'s restart leaves B\'s session alone: active, B\'s, the same agent')
})

t.test('SIGSTOP of A beyond the lease, then SIGCONT: B serves, never two agents, A\'s late writes change nothing', async (t) => {
  await upA()
  const { id } = await sessionOn(A, 'before the freeze')
  t.teardown(() => { if (!t.passing()) t.comment(`what the instances logged about the session:\n${cluster.logsAbout(id)}`) })
  const { seq } = await send(A, id, '/slow 60000 frozen turn')
  await cluster.waitEvents(id, 'the slow turn started', (f) => f.some(isInit), { afterSeq: seq })
  const sampler = new DoubleOwnerSampler(cluster).start()
  t.teardown(() => sampler.stop())
  const frozen = await cluster.instanceId(A)
  const frozenAt = Date.now()
  A.signal('SIGSTOP')
  t.teardown(() => { if (A.running) A.signal('SIGCONT') })

  if (await soft(t, cluster.waitAgents(id, 'A\'s agents killed by its watchdog', (a) => a.length === 0, LEASE_MS / 2 + 2000))) {
    t.pass(`A's agent gone ${Date.now() - frozenAt} ms after the freeze (bound: lease/2 + 2 s)`)
  }
  await leaseOver(frozen, 'the frozen A\'s lease to run out')
  const { seq: afterSeq } = await send(B, id, 'while A is frozen')
  const reply = await soft(t, cluster.waitReply(id, 'while A is frozen', { afterSeq, timeoutMs: 20_000 }))
  t.equal(reply?.data.result, 'echo: while A is frozen | remembered: before the freeze / frozen turn')
  t.equal(await workerLost(id), '', 'the history: active → suspended (worker lost), then → active')
  const [onB, ...more] = await cluster.agentsOf(id)
  t.equal(onB?.instance, 'B', `B serves it: ${describeAgents([onB!, ...more].filter(Boolean))}`)
  t.equal(await cluster.workerOf(id), B.tag, 'owned by B')

  // what A's late writes must not change: measured before it wakes up, watched from the moment it does
  const asleep = { version: (await cluster.session(id)).version, events: (await cluster.events(id)).length }
  A.signal('SIGCONT')
  const complaint = await staysSo(LEASE_MS, () => stillServedBy(id, B, onB?.pid))
  t.equal(complaint, '', 'for a lease after A woke up: still active, B\'s, the same agent on B')
  const again = await soft(t, waitUntil('A to register again under a new id', async () => {
    const now = await cluster.instanceId(A, { live: true })
    return now !== undefined && now !== frozen ? now : undefined
  }, { timeoutMs: LEASE_MS + 10_000, intervalMs: 100, describe: async () => JSON.stringify(await cluster.instanceRows()) }))
  if (again) t.pass(`A registered again: ${frozen} → ${again}`)
  t.ok(A.running, 'A keeps running')
  t.equal((await cluster.session(id)).version, asleep.version, 'the session\'s version did not move after A woke up')
  const events = await cluster.events(id)
  t.equal(contiguity(events), '', `the events stay contiguous (1..${events.length})`)
  t.same(kinds(events.slice(asleep.events)), [], 'nothing was appended after A woke up')
  t.equal(events.filter(isReplyTo('while A is frozen')).length, 1, 'one reply to the message')

  // A serves again, under its new id
  const fresh = await sessionOn(A, 'A serves again')
  t.equal(fresh.agent.instance, 'A', 'a new session\'s agent runs on A')
  await sampler.stop()
  t.ok(sampler.samples >= 20, `the sampler looked ${sampler.samples} times`)
  t.same(sampler.violations.slice(0, 5), [], 'no moment with two agents for one session')
})
