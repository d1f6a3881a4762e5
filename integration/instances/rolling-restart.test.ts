/**
 * A rolling restart under load: A, B and C are stopped with SIGTERM one at a time and started
 * again on their own data directories, while clients send messages round-robin to every instance
 * (a refused or failed request is retried on the next instance with the same clientMessageId) and
 * viewers stream every session, reconnecting with `?after=<last seq>` to the next instance when
 * theirs goes away. Then: every accepted message is stored once and answered once, every viewer saw
 * every event once and in order, no session ever had two agents, and nothing waited for a lease.
 */
import t from 'tap'
import {
  Cluster, DoubleOwnerSampler, Viewer, apiEvents, contiguity, createSession, framesDiffer, isReplyTo, kinds, postMessage, send,
  soft, waitUntil, type Instance
} from './harness.js'

const SESSIONS = 3
/** the clients' pace between two messages (load shape, not synchronisation) */
const PAUSE_MS = 120
/** messages each client gets accepted before each restart, and after the last one */
const PER_STEP = 5

const cluster = await Cluster.start(t)
const ring = ['A', 'B', 'C'].map((n) => cluster.instance(n))

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

interface AcceptedMessage { text: string, clientMessageId: string, seq: number, duplicate: boolean, via: string }

/** Sends `s<i> m<k>` for k = 1, 2, … round-robin over the ring until stopped; retries elsewhere with the same id. */
class LoadClient {
  readonly accepted: AcceptedMessage[] = []
  readonly retried: string[] = []
  readonly givenUp: string[] = []
  readonly #state = { running: true }
  readonly done: Promise<void>

  constructor (readonly index: number, readonly sessionId: string) {
    this.done = this.#run()
  }

  async #run (): Promise<void> {
    for (let k = 1; this.#state.running; k++) {
      const text = `s${this.index} m${k}`
      const clientMessageId = `s${this.index}-m${k}`
      let ok = false
      for (let attempt = 0; attempt < 30 && !ok; attempt++) {
        const instance: Instance = ring[(k + this.index + attempt) % ring.length]!
        if (!instance.running || instance.url === '') continue
        const res = await postMessage(instance, this.sessionId, text, clientMessageId)
          .catch((err: Error) => ({ status: 0, body: { code: err.message } as any }))
        if (res.status === 202) {
          this.accepted.push({ text, clientMessageId, seq: res.body.seq, duplicate: res.body.duplicate, via: instance.name })
          ok = true
        } else {
          this.retried.push(`${text} on ${instance.name}: ${res.status} ${res.body?.code ?? ''}`)
          await pause(50)
        }
      }
      if (!ok) this.givenUp.push(text)
      await pause(PAUSE_MS)
    }
  }

  async stop (): Promise<void> {
    this.#state.running = false
    await this.done
  }
}

t.test('a rolling restart under load: every accepted message stored once and answered once, every stream whole', async (t) => {
  const ids: string[] = []
  for (let i = 0; i < SESSIONS; i++) {
    const on = ring[i % ring.length]!
    const { id } = await createSession(on, { title: `rolling ${i}` })
    await send(on, id, `s${i} first`)
    ids.push(id)
  }
  await Promise.all(ids.map((id, i) => cluster.waitReply(id, `s${i} first`)))
  const viewers = await Promise.all(ids.map((id, i) =>
    Viewer.open(t, cluster, id, [1, 2, 0].map((d) => ring[(i + d) % ring.length]!), { reconnect: true })))
  const sampler = new DoubleOwnerSampler(cluster, () => ids).start()
  t.teardown(() => sampler.stop())
  const clients = ids.map((id, i) => new LoadClient(i, id))
  t.teardown(() => Promise.all(clients.map((c) => c.stop())))

  const progressed = async (what: string) => {
    const marks = clients.map((c) => c.accepted.length)
    await waitUntil(what, () => clients.every((c, i) => c.accepted.length >= marks[i]! + PER_STEP),
      { timeoutMs: 30_000, intervalMs: 50, describe: () => clients.map((c) => `s${c.index}: ${c.accepted.length} accepted, last retries ${JSON.stringify(c.retried.slice(-3))}`).join('\n') })
  }
  const began = Date.now()
  const steps: string[] = []
  for (const instance of ring) {
    await progressed(`${PER_STEP} messages per client before ${instance.name}'s restart`)
    const stopping = Date.now()
    const exit = await instance.service.stop('SIGTERM')
    t.same(exit, { code: 0, signal: null }, `${instance.name} exits 0 on SIGTERM`)
    const restarting = Date.now()
    await cluster.restart(instance.name)
    steps.push(`${instance.name}: stop ${restarting - stopping} ms, start ${Date.now() - restarting} ms`)
  }
  await progressed(`${PER_STEP} messages per client after the last restart`)
  await Promise.all(clients.map((c) => c.stop()))
  t.comment(`load for ${Date.now() - began} ms; ${steps.join('; ')}`)
  t.comment(`accepted: ${clients.map((c) => c.accepted.length).join(', ')}; retried: ${clients.map((c) => c.retried.length).join(', ')}`)

  for (const [i, id] of ids.entries()) {
    const c = clients[i]!
    t.same(c.givenUp, [], `s${i}: no message given up (${c.retried.length} retries)`)
    const all = await soft(t, cluster.waitEvents(id, 'every accepted message answered',
      (frames) => c.accepted.every((m) => frames.some(isReplyTo(m.text))), { timeoutMs: 30_000 })) ?? await cluster.events(id)
    const users = all.filter((f) => f.type === 'user')
    const stored = (m: AcceptedMessage) => users.filter((f) => (f as any).clientMessageId === m.clientMessageId)
    const notOnce = c.accepted.filter((m) => stored(m).length !== 1).map((m) => `${m.text}: ${stored(m).length}`)
    t.same(notOnce, [], `s${i}: each of the ${c.accepted.length} accepted messages has exactly one user event`)
    const wrongSeq = c.accepted.filter((m) => stored(m)[0]?.seq !== m.seq).map((m) => `${m.text}: 202 said ${m.seq}, stored ${stored(m)[0]?.seq}`)
    t.same(wrongSeq, [], `s${i}: at the seq the 202 answered`)
    const answers = c.accepted.filter((m) => all.filter(isReplyTo(m.text)).length !== 1).map((m) => `${m.text}: ${all.filter(isReplyTo(m.text)).length}`)
    t.same(answers, [], `s${i}: each got exactly one turn`)
    const lost = (await cluster.transitions(id)).filter((h) => h.reason === 'worker lost')
    t.same(lost, [], `s${i}: no session waited for a lease (no 'worker lost')`)

    const viewer = viewers[i]!
    const events = await apiEvents(ring.find((r) => r.running)!, id)
    await soft(t, viewer.waitSeq(events.at(-1)!.seq))
    t.equal(contiguity(viewer.frames, 0, events.at(-1)!.seq), '', `s${i}: the viewer got seqs 1..${viewer.frames.length} once each, over ${viewer.connections.length} connections`)
    t.same(framesDiffer(viewer.frames, events), [], `s${i}: exactly what GET /events holds`)
    if (contiguity(viewer.frames, 0, events.at(-1)!.seq) !== '') t.comment(viewer.summary())
    t.comment(`s${i}: ${kinds(events).filter((k) => k.startsWith('state:')).join(' ')}`)
  }
  await Promise.all(viewers.map((v) => v.close()))
  await sampler.stop()
  t.ok(sampler.samples >= 20, `the sampler looked ${sampler.samples} times`)
  t.same(sampler.violations.slice(0, 5), [], 'no moment with two agents for one session')
})
