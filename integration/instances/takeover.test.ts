/**
 * "A session with no live owner is claimed and resumed by the instance that received the message",
 * with nothing else that could do it: every instance's sweep is slowed to an hour, so no sweep ends
 * the dead owner's claim (the orphan sweep) and none delivers anything. Only the instance that took
 * the message can move the session, by ending the dead claim itself and claiming the session.
 *
 * This pins down a bug the benchmark's failover found (2 runs in 9): the receiving instance ended
 * the dead owner's claim and then returned instead of claiming, so the message waited until
 * something else (a sweep, another message) looked at the session again. With the sweeps running
 * every 100 ms, as in failover.test.ts, a sweep usually got there first and hid it.
 *
 * Two ways in: a message sent while the dead owner's lease still runs (the receiver nudges the
 * owner and looks again every quarter of a lease), and one sent after the lease ran out (the
 * receiver ends the claim at once).
 */
import t from 'tap'
import { Cluster, LEASE_MS, describeAgents, send, soft, waitUntil } from './harness.js'

const cluster = await Cluster.start(t, { names: ['A', 'B'], env: { SWEEP_INTERVAL_MS: '3600000' } })
const A = cluster.instance('A')
const B = cluster.instance('B')

/** '' when the history has active → suspended (worker lost) → active (message); else what it has. */
async function takenOver (id: string): Promise<string> {
  const history = (await cluster.transitions(id)).map((h) => `${h.from_state}->${h.to_state}(${h.reason})`)
  const i = history.indexOf('active->suspended(worker lost)')
  return i >= 0 && history[i + 1] === 'suspended->active(message)' ? '' : JSON.stringify(history)
}

t.test('kill -9 of the owner: the instance that took the message claims the session, with no sweep to help', async (t) => {
  const during = await cluster.sessionOn(A, 'first, on A')
  const after = await cluster.sessionOn(A, 'second, on A')
  t.teardown(() => {
    if (!t.passing()) for (const id of [during.id, after.id]) t.comment(`what the instances logged about ${id}:\n${cluster.logsAbout(id)}`)
  })
  const dead = await cluster.instanceId(A)
  t.ok(dead, 'A is registered')

  const killedAt = Date.now()
  t.same(await A.service.stop('SIGKILL'), { code: null, signal: 'SIGKILL' }, 'A is killed')

  // while A's lease still runs: B nudges the dead A and must come back to it by itself
  const { seq: duringSeq } = await send(B, during.id, 'sent during the lease')
  t.equal((await cluster.session(during.id)).state, 'active', 'the session is still A\'s (its lease runs) when B takes the message')
  const bound = LEASE_MS + 3000
  const reply = await soft(t, cluster.waitReply(during.id, 'sent during the lease', { afterSeq: duringSeq, timeoutMs: bound + 2000 }))
  const ms = Date.now() - killedAt
  t.equal(reply?.data.result, 'echo: sent during the lease | remembered: first, on A', 'answered, with the conversation\'s memory (--resume)')
  t.ok(ms <= bound, `answered ${ms} ms after the kill (bound: the lease ${LEASE_MS} ms + 3 s)`)
  t.equal(await takenOver(during.id), '', 'the history: active → suspended (worker lost) → active (message)')
  t.equal(await cluster.workerOf(during.id), B.tag, 'owned by B, the instance that took the message')

  // after A's lease ran out: B ends the dead claim at once and claims the session
  await waitUntil('A\'s lease to run out', async () => {
    const row = (await cluster.instanceRows()).find((r) => r.id === dead)
    return row !== undefined && !row.live
  }, { timeoutMs: LEASE_MS + 5000, intervalMs: 100 })
  t.equal((await cluster.session(after.id)).state, 'active', 'the other session is still marked A\'s: no sweep ended the claim')
  const sent = Date.now()
  const { seq: afterSeq } = await send(B, after.id, 'sent after the lease')
  const second = await soft(t, cluster.waitReply(after.id, 'sent after the lease', { afterSeq, timeoutMs: 10_000 }))
  const secondMs = Date.now() - sent
  t.equal(second?.data.result, 'echo: sent after the lease | remembered: second, on A', 'answered, with the conversation\'s memory')
  // no quarter-lease wait on this path: the claim is ended and taken in the same pass
  t.ok(secondMs < LEASE_MS / 4 + 2000, `answered ${secondMs} ms after the message`)
  t.equal(await takenOver(after.id), '', 'the history: active → suspended (worker lost) → active (message)')
  const agents = await cluster.agentsOf(after.id)
  t.same(agents.map((a) => a.instance), ['B'], `one agent, on B: ${describeAgents(agents)}`)
  t.ok(agents[0]?.argv.includes('--resume'), 'started with --resume')
})
