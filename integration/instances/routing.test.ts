/**
 * Several instances on one PostgreSQL, none of them failing: whatever instance a phone reaches, its
 * requests act on the instance that runs the session's agent, and its stream carries every event.
 *
 * A and B start; C joins in the first test and serves in the others. Sessions are the test user's;
 * the agents are the fake CLI (test/fixtures/fake-claude.mjs). Waits are bounded polls or frames.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import {
  Cluster, HARNESS, LEASE_MS, Viewer, apiEvents, contiguity, createSession, describeAgents, framesDiffer, isInit, isReplyTo,
  isResult, postMessage, send, soft, waitUntil, type Instance
} from './harness.js'

const cluster = await Cluster.start(t, { names: ['A', 'B'] })
const A = cluster.instance('A')
const B = cluster.instance('B')

/** C, started by the first test (or here, if that one failed before it started C). */
async function instanceC (): Promise<Instance> {
  return cluster.instances.get('C') ?? await cluster.add('C')
}

const sessionOn = (on: Instance, prompt: string) => cluster.sessionOn(on, prompt)

t.test('starting a third instance leaves the active sessions of A and B alone', async (t) => {
  const onA = await sessionOn(A, 'kept on A')
  const onB = await sessionOn(B, 'kept on B')
  const before = { a: await cluster.session(onA.id), b: await cluster.session(onB.id) }
  t.equal(await cluster.workerOf(onA.id), A.tag, 'the session of A is owned by A (worker_id)')
  t.equal(await cluster.workerOf(onB.id), B.tag, 'the session of B is owned by B (worker_id)')

  const C = await instanceC()
  t.ok(await cluster.instanceId(C, { live: true }), 'C registered a live instance row')
  // nothing may move for a whole lease after C's start: its start-up, its sweeps, its lease checks
  const until = Date.now() + LEASE_MS + 1000
  let changed = ''
  await waitUntil('a lease with nothing changed', async () => {
    for (const [s, was, agent, on] of [[onA.id, before.a, onA.agent, 'A'], [onB.id, before.b, onB.agent, 'B']] as const) {
      const now = await cluster.session(s)
      const agents = await cluster.agentsOf(s)
      if (now.state !== 'active' || now.version !== was.version || now.worker_id !== was.worker_id) {
        changed = `${on}'s session: ${JSON.stringify({ state: now.state, version: now.version, worker_id: now.worker_id })} (was version ${was.version}); transitions: ${JSON.stringify((await cluster.transitions(s)).slice(-2))}`
        return true
      }
      if (agents.length !== 1 || agents[0]!.pid !== agent.pid) {
        changed = `${on}'s session: agents ${describeAgents(agents)} (was pid ${agent.pid})`
        return true
      }
    }
    return Date.now() > until
  }, { timeoutMs: LEASE_MS + 5000, intervalMs: 100 })
  t.equal(changed, '', 'both sessions stay active, same version and owner, the same agent process, for a lease after C started')

  // and C serves them, through the agents where they run
  await send(C, onA.id, 'to A through C')
  await cluster.waitReply(onA.id, 'to A through C')
  await send(C, onB.id, 'to B through C')
  await cluster.waitReply(onB.id, 'to B through C')
  t.same((await cluster.agentsOf(onA.id)).map((a) => a.pid), [onA.agent.pid], 'A\'s agent answered the message sent to C')
  t.same((await cluster.agentsOf(onB.id)).map((a) => a.pid), [onB.agent.pid], 'B\'s agent answered the message sent to C')
})

t.test('a stream on B while the agent runs on A: every event once, in order; ?after= on B replays from the table', async (t) => {
  const { id } = await createSession(A, { title: 'streamed elsewhere' })
  const viewer = await Viewer.open(t, cluster, id, B)
  const prompt = 'streamed to B'
  await send(A, id, `/flood 300 300 ${prompt}`)
  await cluster.waitReply(id, prompt)
  const agents = await cluster.agentsOf(id)
  t.same(agents.map((a) => a.instance), ['A'], `the agent runs on A (first message sent to A): ${describeAgents(agents)}`)
  t.equal(await cluster.workerOf(id), A.tag, 'worker_id is A\'s instance id')

  // a second turn, its message sent to B, streamed to the same viewer
  await send(B, id, '/flood 50 100 second turn')
  await cluster.waitReply(id, 'second turn')
  const stored = await apiEvents(B, id)
  await soft(t, viewer.waitSeq(stored.at(-1)!.seq))
  t.equal(contiguity(viewer.frames, 0, stored.at(-1)!.seq), '', `the viewer on B got seqs 1..${viewer.frames.length}, each once`)
  t.same(framesDiffer(viewer.frames, stored), [], 'exactly what GET /events holds')
  t.same((await cluster.agentsOf(id)).map((a) => a.instance), ['A'], 'the message sent to B was run by A\'s agent')

  const half = Math.floor(stored.length / 2)
  const replay = await Viewer.open(t, cluster, id, B, { after: half })
  await soft(t, replay.waitSeq(stored.at(-1)!.seq))
  t.equal(contiguity(replay.frames, half, stored.at(-1)!.seq), '', `?after=${half} on B: seqs ${half + 1}..${stored.length}, each once`)
  t.same(framesDiffer(replay.frames, stored.slice(half)), [], 'the replay equals the stored tail')
  await Promise.all([viewer.close(), replay.close()])
})

t.test('a message on B for a session owned by A, retried on C with the same clientMessageId: stored once, delivered once', async (t) => {
  const C = await instanceC()
  const { id, agent } = await sessionOn(A, 'owned by A')
  const clientMessageId = randomUUID()
  const text = 'sent to B, retried on C'
  const first = await postMessage(B, id, text, clientMessageId)
  t.equal(first.status, 202, 'B accepts it')
  t.equal(first.body.duplicate, false)
  const retry = await postMessage(C, id, text, clientMessageId)
  t.equal(retry.status, 202, 'C accepts the retry')
  t.same(retry.body, { seq: first.body.seq, duplicate: true }, 'as a duplicate of the same seq')
  await cluster.waitReply(id, text)
  // a later message's turn: anything delivered twice would have run before it
  await send(C, id, 'the next one')
  await cluster.waitReply(id, 'the next one')
  const events = await cluster.events(id)
  t.equal(events.filter((f) => f.type === 'user' && (f as any).clientMessageId === clientMessageId).length, 1, 'one user event for the clientMessageId')
  t.equal(events.filter(isReplyTo(text)).length, 1, 'one turn answered it')
  t.equal(events.filter(isInit).length, 3, 'three turns in all: the first message, this one, the next one')
  t.equal(events.filter(isResult).length, 3, 'three results')
  const agents = await cluster.agentsOf(id)
  t.same(agents.map((a) => a.pid), [agent.pid], `A's agent ran it, and no other: ${describeAgents(agents)}`)
  t.equal(await cluster.workerOf(id), A.tag, 'still owned by A')
})

t.test('interrupt, pause and DELETE sent to B act on the agent that runs on A', async (t) => {
  await t.test('interrupt: the turn ends, the agent lives on', async (t) => {
    const { id, agent } = await sessionOn(A, 'to interrupt')
    const { seq } = await send(A, id, '/slow 60000 a long turn')
    await cluster.waitEvents(id, 'the long turn started', (f) => f.some(isInit), { afterSeq: seq })
    const res = await B.api('POST', `/v1/sessions/${id}/interrupt`, {})
    t.equal(res.status, 200)
    t.same(res.body, { interrupted: true }, 'B answers interrupted: true')
    const ended = await cluster.waitEvents(id, 'the interrupted turn\'s result', (f) => f.some(isResult), { afterSeq: seq, timeoutMs: 10_000 })
    t.match(ended.find(isResult)?.data, { is_error: true, subtype: 'error_during_execution' }, 'the turn ended interrupted')
    const row = await cluster.waitSession(id, 'active and not busy', (s) => s.state === 'active' && !s.busy)
    t.equal(row.state, 'active')
    t.equal(await cluster.workerOf(id), A.tag, 'still A\'s')
    t.same((await cluster.agentsOf(id)).map((a) => a.pid), [agent.pid], 'the same agent process on A lives on')
  })

  await t.test('pause: the agent on A stops', async (t) => {
    const { id, agent } = await sessionOn(A, 'to pause')
    const { seq } = await send(A, id, '/slow 60000 paused mid-turn')
    await cluster.waitEvents(id, 'the long turn started', (f) => f.some(isInit), { afterSeq: seq })
    const res = await B.api('POST', `/v1/sessions/${id}/pause`, {})
    t.equal(res.status, 200, `B pauses it: ${JSON.stringify(res.body)}`)
    const row = await cluster.waitState(id, 'paused')
    t.equal(row.state, 'paused', 'owned by nobody while paused')
    await cluster.waitAgents(id, `A's agent (pid ${agent.pid}) gone`, (a) => a.length === 0, 10_000)
    t.pass('no agent process is left')
  })

  await t.test('DELETE: the agent on A stops, the session is completed and archived', async (t) => {
    const { id, agent } = await sessionOn(A, 'to delete')
    const res = await B.api('DELETE', `/v1/sessions/${id}`)
    t.equal(res.status, 204)
    await cluster.waitAgents(id, `A's agent (pid ${agent.pid}) gone`, (a) => a.length === 0, 10_000)
    const row = await cluster.session(id)
    t.equal(row.state, 'completed')
    t.ok(row.deleted_at, 'archived')
    t.equal(await cluster.workerOf(id), undefined, 'owned by nobody')
    t.equal((await A.api('GET', `/v1/sessions/${id}`)).status, 404, 'gone for A too')
  })
})

t.test('the listen connections killed while an agent on A streams to a viewer on B: no frame missed', async (t) => {
  const { id } = await createSession(A, { title: 'listeners killed' })
  const viewer = await Viewer.open(t, cluster, id, B)
  // ten turns of 200 lines half a second apart: the agent streams for seconds
  const bursts = 10
  for (let i = 1; i <= bursts; i++) await send(A, id, `/slow 500 /flood 200 200 burst ${i}`)
  const listeners = async () => (await cluster.sql`select count(*)::int as n from pg_stat_activity
    where application_name = 'mobvibe-listen' and datname = current_database()`)[0]!.n as number
  const killed: number[] = []
  for (let round = 1; round <= 3; round++) {
    // each kill while the agent streams, once every instance listens again
    const seen = (await cluster.events(id)).length
    await cluster.waitEvents(id, `100 events more after kill #${round - 1}`, (f) => f.length > 100, { afterSeq: seen })
    await soft(t, waitUntil(`every instance listening again before kill #${round}`, async () => await listeners() >= 3,
      { timeoutMs: 10_000, intervalMs: 20, describe: async () => `${await listeners()} listen connections` }))
    const rows = await cluster.sql`select pg_terminate_backend(pid) as ok from pg_stat_activity
      where application_name = 'mobvibe-listen' and datname = current_database()`
    killed.push(rows.length)
  }
  t.ok(killed.every((n) => n >= 3), `each time, the listen connections of A, B and C were there to kill: ${killed.join(', ')}`)
  await cluster.waitReply(id, `burst ${bursts}`, { timeoutMs: 30_000 })
  const stored = await apiEvents(B, id)
  await soft(t, viewer.waitSeq(stored.at(-1)!.seq, 15_000))
  t.equal(contiguity(viewer.frames, 0, stored.at(-1)!.seq), '', `the viewer got seqs 1..${viewer.frames.length}, each once`)
  t.same(framesDiffer(viewer.frames, stored), [], 'exactly what GET /events holds')
  await viewer.close()
})

t.test('a second instance on the same MOBVIBE_DATA_DIR is refused', async (t) => {
  const intruder = cluster.intruder('A')
  const exit = await intruder.waitExit(60_000)
  t.not(exit.code, 0, `exits non-zero (${JSON.stringify(exit)})`)
  t.match(intruder.output, `data directory ${A.dataDir} is in use`, 'says the data directory is in use')
  t.match(intruder.output, `pid ${A.pid}`, 'and by whom')
  t.notOk(intruder.lines.some((l) => String(l.msg).startsWith('Server listening')), 'never listened')
  t.ok(A.running, 'A runs on')
  t.equal((await A.api('GET', '/readyz')).status, 200, 'and is ready')
})

t.comment(`lease ${HARNESS.leaseSeconds} s, sweep every ${HARNESS.sweepIntervalMs} ms`)

t.test('a permission answer sent to B reaches the agent that asked on A', async (t) => {
  const { id, agent } = await sessionOn(A, 'before the ask')
  const { seq } = await send(A, id, '/tool Bash {"command":"echo across"} after the ask')
  const asked = await cluster.waitEvents(id, 'the permission request', (f) => f.some((e) => e.type === 'permission_request'), { afterSeq: seq })
  const request = asked.find((e) => e.type === 'permission_request')!
  const requestId = (request.data as { requestId: string }).requestId
  const res = await B.api('POST', `/v1/sessions/${id}/permissions/${requestId}`, { decision: 'allow' })
  t.equal(res.status, 200, `B takes the answer: ${JSON.stringify(res.body)}`)
  t.match(res.body, { requestId, decision: 'allow' })
  const done = await cluster.waitEvents(id, 'the turn\'s result', (f) => f.some(isResult), { afterSeq: request.seq, timeoutMs: 10_000 })
  const result = done.find(isResult)!
  t.match(result.data.result, /^tool Bash allowed: \{"command":"echo across"\}/, `A's agent got the allow: ${String(result.data.result)}`)
  const again = await A.api('POST', `/v1/sessions/${id}/permissions/${requestId}`, { decision: 'deny' })
  t.equal(again.status, 409, 'a second answer, on A, is refused: the first one won')
  t.same((await cluster.agentsOf(id)).map((a) => a.pid), [agent.pid], 'the same agent on A')
})

t.test('an interrupt sent to B holds the queue on A; a message sent to B releases it', async (t) => {
  const { id } = await sessionOn(A, 'before the interrupt')
  const { seq } = await send(A, id, '/slow 60000 a long turn')
  await cluster.waitEvents(id, 'the long turn started', (f) => f.some(isInit), { afterSeq: seq })
  const queued = await send(A, id, 'queued behind it')
  const res = await B.api('POST', `/v1/sessions/${id}/interrupt`, {})
  t.same(res.body, { interrupted: true }, 'B interrupts the turn on A')
  await cluster.waitEvents(id, 'the interrupted turn\'s result', (f) => f.some(isResult), { afterSeq: seq, timeoutMs: 10_000 })
  await cluster.waitSession(id, 'active and not busy', (s) => s.state === 'active' && !s.busy)
  // held: the queued message does not start a turn by itself, the owner's poll (every 2 s)
  // included. An absence has no event to wait for: it is watched for a bounded while
  const watchUntil = Date.now() + 2_500
  let started = false
  while (!started && Date.now() < watchUntil) {
    started = (await cluster.events(id, queued.seq)).some(isInit)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  t.notOk(started, 'the queued message waits behind the interrupt (watched for 2.5 s)')
  await send(B, id, 'released from B')
  await cluster.waitReply(id, 'released from B', { afterSeq: queued.seq, timeoutMs: 15_000 })
  const after = await cluster.events(id, queued.seq)
  // the interrupted turn's own result (an error) came after the queued message was stored
  const replies = after.filter((f) => isResult(f) && f.data.is_error !== true).map((f) => String(f.data.result))
  t.match(replies[0], /^echo: queued behind it/, 'the held message went first')
  t.match(replies[1], /^echo: released from B/, 'then the new one')
})
