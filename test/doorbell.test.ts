/**
 * The doorbell between instances (src/cluster/doorbell.ts) on PostgreSQL's LISTEN/NOTIFY: what one
 * instance rings another hears, every run in order with its frames, also when a commit's runs take
 * several notices (sent in one statement); an instance does not hear itself; what is rung while a
 * ring is on its way goes in the next one, merged; a control message reaches only the instance it
 * is addressed to. On PGlite (one instance by construction) it rings nobody.
 */
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import t, { type Test } from 'tap'
import { Doorbell, type ControlMessage } from '../src/cluster/doorbell.js'
import type { StoredRun } from '../src/cluster/event-notice.js'
import { openDatabase } from '../src/db/database.js'
import { waitUntil } from './helpers/agents.js'
import { freshDatabaseUrl } from './helpers/build.js'
import { seedPglite } from './helpers/pglite-template.js'

const silent = pino({ level: 'silent' })
const frame = (seq: number, text: string) => JSON.stringify({ seq, type: 'agent', at: new Date(0).toISOString(), data: { text } })
const run = (first: number, last: number, text = 'x'): StoredRun => ({
  sessionId: randomUUID(),
  first,
  last,
  frames: Array.from({ length: last - first + 1 }, (_, i) => frame(first + i, text))
})

/** One instance's doorbell on its own database handle, and what it heard. */
async function instance (t: Test, url: string | undefined) {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-doorbell-'))
  if (!url) await seedPglite(dir)
  const handle = await openDatabase({ url, pgliteDir: dir })
  const id = randomUUID()
  const doorbell = new Doorbell({ pubsub: handle.pubsub, logger: silent, self: () => id })
  doorbell.addOwnId(id)
  const heard: StoredRun[] = []
  const controls: ControlMessage[] = []
  doorbell.on('events', (runs) => heard.push(...runs))
  doorbell.on('control', (m) => controls.push(m))
  await doorbell.start()
  t.teardown(async () => {
    await handle.close()
    await rm(dir, { recursive: true, force: true })
  })
  return { id, doorbell, heard, controls }
}

t.test('what one instance rings, another hears: every run once, in order, frames included', async (t) => {
  const url = await freshDatabaseUrl(t, 'mobvibe_doorbell')
  const x = await instance(t, url)
  if (!url) {
    t.notOk(x.doorbell.shared, 'PGlite: no other instance can exist')
    x.doorbell.ringEvents([run(1, 2)])
    await x.doorbell.control(randomUUID(), { op: 'sync', sid: randomUUID() })
    t.same([x.heard, x.controls], [[], []], 'nothing is rung')
    return
  }
  const y = await instance(t, url)
  t.ok(x.doorbell.shared)

  // one commit whose runs need several notices (each under 8,000 bytes); then, while those are on
  // their way, two commits of one session (merged into one run, frames kept) and another session
  const big = Array.from({ length: 40 }, () => run(1, 3, 'é'.repeat(300)))
  x.doorbell.ringEvents(big)
  const later = run(4, 5)
  const latest = { ...run(6, 7), sessionId: later.sessionId }
  const alone = run(1, 1)
  x.doorbell.ringEvents([later])
  x.doorbell.ringEvents([latest, alone])
  const merged = { sessionId: later.sessionId, first: 4, last: 7, frames: [...later.frames!, ...latest.frames!] }
  await waitUntil('every run heard', () => y.heard.length >= big.length + 2, { timeoutMs: 5000, describe: () => `${y.heard.length} runs heard` })
  t.same(y.heard, [...big, merged, alone], 'every run once, in order, with its frames')
  t.same(x.heard, [], 'an instance does not hear its own notices')

  const sid = randomUUID()
  await x.doorbell.control(randomUUID(), { op: 'sync', sid })
  await x.doorbell.control(y.id, { op: 'interrupt', sid, deliverQueued: true })
  await waitUntil('the control message', () => y.controls.length > 0, { timeoutMs: 5000 })
  t.same(y.controls, [{ to: y.id, op: 'interrupt', sid, deliverQueued: true }], 'only what is addressed to it')
})
