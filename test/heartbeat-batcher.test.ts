// Database-independent: opens no database, so CI runs it once, in the PGlite pass (.ci/run).
import t from 'tap'
import { HeartbeatBatcher, type HeartbeatWrite } from '../src/sessions/heartbeat-batcher.js'

const T0 = new Date('2030-01-01T00:00:00.000Z')
const row = (id: string): HeartbeatWrite => ({ id, state: 'active', version: 1, expiresAt: T0, ttlSeconds: 60 })

t.test('heartbeats of one tick go in one statement, each caller gets its own row', async (t) => {
  const calls: { now: Date, items: { id: string, v: number[] | null }[] }[] = []
  const batcher = new HeartbeatBatcher(async (batch) => {
    calls.push(batch)
    // "b" was coalesced or refused: no row for it
    return batch.items.filter((i) => i.id !== 'b').map((i) => row(i.id))
  })
  const later = new Date(T0.getTime() + 5)
  const [a, b, c] = await Promise.all([
    batcher.write({ id: 'a', now: T0, versions: null }),
    batcher.write({ id: 'b', now: later, versions: [3] }),
    batcher.write({ id: 'c', now: T0, versions: null })
  ])
  t.equal(calls.length, 1, 'one statement')
  t.same(calls[0]!.items, [{ id: 'a', v: null }, { id: 'b', v: [3] }, { id: 'c', v: null }], 'with every If-Match kept')
  t.same(calls[0]!.now, later, 'written at the latest request time')
  t.same(a, row('a'))
  t.equal(b, null, 'a session with no row written gets null')
  t.same(c, row('c'))
})

t.test('the same session twice in a tick waits for the next statement', async (t) => {
  const batches: string[][] = []
  const batcher = new HeartbeatBatcher(async (batch) => {
    batches.push(batch.items.map((i) => i.id))
    return batch.items.map((i) => row(i.id))
  })
  const results = await Promise.all([
    batcher.write({ id: 'x', now: T0, versions: null }),
    batcher.write({ id: 'x', now: T0, versions: [1] }),
    batcher.write({ id: 'y', now: T0, versions: null })
  ])
  t.same(batches, [['x', 'y'], ['x']], 'one row per session per statement')
  t.same(results.map((r) => r?.id), ['x', 'x', 'y'])
})

t.test('a failed statement fails every heartbeat in it, and the next tick works again', async (t) => {
  let fail = true
  const batcher = new HeartbeatBatcher(async (batch) => {
    if (fail) throw new Error('database down')
    return batch.items.map((i) => row(i.id))
  })
  const results = await Promise.allSettled([
    batcher.write({ id: 'a', now: T0, versions: null }),
    batcher.write({ id: 'b', now: T0, versions: null })
  ])
  t.same(results.map((r) => r.status), ['rejected', 'rejected'])
  fail = false
  t.same(await batcher.write({ id: 'a', now: T0, versions: null }), row('a'))
})

t.test('with maxInFlight 1, what arrives during a statement goes into the next one, all of it', async (t) => {
  const batches: string[][] = []
  let running = 0
  let maxRunning = 0
  const gates: (() => void)[] = []
  const batcher = new HeartbeatBatcher(async (batch) => {
    running++
    maxRunning = Math.max(maxRunning, running)
    batches.push(batch.items.map((i) => i.id))
    await new Promise<void>((resolve) => gates.push(resolve))
    running--
    return batch.items.map((i) => row(i.id))
  }, { maxInFlight: 1 })
  const first = batcher.write({ id: 'a', now: T0, versions: null })
  // the first statement is running: these come in over several ticks while it does
  while (batches.length === 0) await new Promise((resolve) => setImmediate(resolve))
  const rest: Promise<HeartbeatWrite | null>[] = []
  for (const id of ['b', 'c', 'd']) {
    rest.push(batcher.write({ id, now: T0, versions: null }))
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.same(batches, [['a']], 'nothing else started while a statement runs')
  gates.shift()!()
  t.same(await first, row('a'))
  while (batches.length < 2) await new Promise((resolve) => setImmediate(resolve))
  gates.shift()!()
  t.same((await Promise.all(rest)).map((r) => r?.id), ['b', 'c', 'd'])
  t.same(batches, [['a'], ['b', 'c', 'd']], 'one statement for everything that waited')
  t.equal(maxRunning, 1)
})
