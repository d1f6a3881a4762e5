/**
 * The session stream (GET /v1/sessions/{id}/stream) over a real listening server, with the fake
 * Claude CLI as the agent: refusal before the upgrade, replay then live with no gap and no
 * duplicate (also while a flood is being produced), reconnection with ?after=, inbound frames,
 * the slow-consumer cut-off (4008), ping/pong liveness, shutdown (1001) and a 100-client fan-out.
 *
 * Nothing here waits a fixed time to synchronise: every wait is for a frame, a close or a stored
 * event, under a deadline.
 */
import type { Socket } from 'node:net'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import type { App } from '../src/app.js'
import { call, createSession, getSession, transition } from './helpers/api.js'
import { build } from './helpers/build.js'

const FAKE = fileURLToPath(new URL('./fixtures/fake-claude.mjs', import.meta.url))
const FRAME_LIMIT = 2048
/** STREAM_LIMITS.highWaterBytes: past this many unsent bytes a client is cut off with 4008 */
const HIGH_WATER = 8 * 1024 * 1024

// The main app: a small frame limit for the inbound-frame tests, the default (30 s) ping interval
// so that a client that stops reading is cut off by flow control, not by the ping check.
/** The bearer token of each app under test, by its base URL: every stream opens as that app's user. */
const tokens = new Map<string, string>()
const main = await build(t, {
  listen: true,
  // 100 subscribers of one user on one session, in one test: above the per-user stream cap's default
  env: { CLAUDE_BIN: FAKE, WS_MAX_FRAME_BYTES: String(FRAME_LIMIT), KILL_GRACE_MS: '1000', MAX_STREAMS_PER_USER: '200' }
})
const { app } = main
tokens.set(main.baseUrl, main.token)

interface Frame {
  seq?: number
  type: string
  at?: string
  data?: any
  [key: string]: unknown
}

interface Closed { code: number, reason: string }

const isResult = (f: Frame) => f.type === 'agent' && f.data?.type === 'result'

/** One WebSocket client that records everything it receives and can wait for it. */
class StreamClient {
  readonly ws: WebSocket
  readonly after: number
  /** frames with a seq (persisted events), in arrival order */
  readonly events: Frame[] = []
  /** their text as received */
  readonly raw: string[] = []
  /** frames without a seq (ack, heartbeat, error) */
  readonly replies: Frame[] = []
  /** frames that were not JSON text */
  readonly garbage: unknown[] = []
  pings = 0
  closeInfo: Closed | undefined
  /** set by dropAt: the connection was cut (as a network drop would) and records nothing more */
  dropped = false
  #dropAt = Infinity
  readonly closed: Promise<Closed>
  readonly #waiters = new Set<() => void>()

  constructor (ws: WebSocket, after: number) {
    this.ws = ws
    this.after = after
    ws.on('message', (data, isBinary) => {
      if (this.dropped) return
      const text = isBinary ? undefined : (data as Buffer).toString('utf8')
      let frame: Frame | undefined
      try {
        frame = text === undefined ? undefined : JSON.parse(text) as Frame
      } catch {}
      if (!frame || typeof frame !== 'object') this.garbage.push(data)
      // an ack is a reply even though it (wrongly, see the inbound-frames test) carries a `seq`
      else if (typeof frame.seq === 'number' && frame.type !== 'ack') {
        this.events.push(frame)
        this.raw.push(text!)
        if (frame.seq >= this.#dropAt) {
          this.dropped = true
          ws.terminate()
        }
      } else this.replies.push(frame)
      this.#notify()
    })
    ws.on('ping', () => { this.pings++; this.#notify() })
    ws.on('error', () => {}) // a refused or cut connection also emits 'close'
    this.closed = new Promise((resolve) => {
      ws.once('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString('utf8') }
        this.#notify()
        resolve(this.closeInfo)
      })
    })
  }

  /** The last seq received, or `after` when nothing came yet. */
  get lastSeq (): number { return this.events.at(-1)?.seq ?? this.after }

  get seqs (): number[] { return this.events.map((e) => e.seq!) }

  #notify (): void { for (const w of [...this.#waiters]) w() }

  /** Resolves once cond() holds; rejects at the deadline, or at once if the socket closed first. */
  until (cond: () => boolean, what: string, ms = 20_000, allowClosed = false): Promise<void> {
    if (cond()) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const done = () => { clearTimeout(timer); this.#waiters.delete(check) }
      const check = () => {
        if (cond()) {
          done()
          resolve()
        } else if (this.closeInfo && !allowClosed) {
          done()
          reject(new Error(`closed (${this.closeInfo.code} ${this.closeInfo.reason}) while waiting for ${what}; last seq ${this.lastSeq}`))
        }
      }
      const timer = setTimeout(() => {
        done()
        reject(new Error(`timed out after ${ms} ms waiting for ${what}; last seq ${this.lastSeq}, ${this.events.length} events`))
      }, ms)
      this.#waiters.add(check)
      check()
    })
  }

  /** The first turn result with a seq above `after`. */
  async result (after: number, ms = 20_000): Promise<Frame> {
    const find = () => this.events.find((e) => e.seq! > after && isResult(e))
    await this.until(() => find() !== undefined, `a turn result after seq ${after}`, ms)
    return find()!
  }

  /** Sends a frame and resolves with the next reply (ack, heartbeat or error). */
  async request (data: string | Buffer | object, opts: { binary?: boolean } = {}): Promise<Frame> {
    const index = this.replies.length
    const payload = typeof data === 'string' || Buffer.isBuffer(data) ? data : JSON.stringify(data)
    this.ws.send(payload, { binary: opts.binary ?? false })
    await this.until(() => this.replies.length > index, `a reply to ${String(payload).slice(0, 60)}`, 10_000)
    return this.replies[index]!
  }

  async waitClosed (ms = 10_000): Promise<Closed> {
    await this.until(() => this.closeInfo !== undefined, 'the socket to close', ms, true)
    return this.closeInfo!
  }

  /** Cuts the connection abruptly (no close handshake) as soon as an event with this seq arrives. */
  async dropAt (seq: number, ms = 20_000): Promise<void> {
    this.#dropAt = seq
    if (this.lastSeq >= seq && !this.dropped) {
      this.dropped = true
      this.ws.terminate()
    }
    await this.until(() => this.dropped && this.closeInfo !== undefined, `the drop at seq ${seq}`, ms, true)
  }

  /** Closes from the client side (if still open) and waits for the close to complete. */
  async close (): Promise<void> {
    if (this.closeInfo) return
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(1000)
    await Promise.race([this.closed, new Promise((resolve) => setTimeout(resolve, 5000).unref())])
    if (!this.closeInfo) this.ws.terminate()
  }
}

function wsBase (baseUrl: string): string {
  return baseUrl.replace(/^http/, 'ws')
}

const authFor = (url: string): Record<string, string> => {
  const token = [...tokens].find(([base]) => url.startsWith(wsBase(base)))?.[1]
  return token === undefined ? {} : { authorization: `Bearer ${token}` }
}

/** Opens a stream; every client is closed at the end of the subtest that opened it. */
async function open (t: Test, baseUrl: string, id: string, after?: number, options: WebSocket.ClientOptions = {}): Promise<StreamClient> {
  const query = after === undefined ? '' : `?after=${after}`
  const url = `${wsBase(baseUrl)}/v1/sessions/${id}/stream${query}`
  const ws = new WebSocket(url, { perMessageDeflate: false, ...options, headers: { ...authFor(url), ...options.headers } })
  const client = new StreamClient(ws, after ?? 0)
  t.teardown(() => client.close())
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the upgrade timed out')), 10_000)
    ws.once('open', () => { clearTimeout(timer); resolve() })
    ws.once('unexpected-response', (_req, res) => {
      clearTimeout(timer)
      reject(new Error(`upgrade refused: ${res.statusCode}`))
    })
    ws.once('close', () => { clearTimeout(timer); reject(new Error('closed before it opened')) })
  })
  return client
}

/** An upgrade the server must refuse: the HTTP status and body it answered with. */
function refusedUpgrade (url: string, headers: Record<string, string> = authFor(url)): Promise<{ status: number | undefined, body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, headers })
    const timer = setTimeout(() => { ws.terminate(); reject(new Error('no answer to the upgrade')) }, 10_000)
    ws.on('error', () => {})
    ws.once('open', () => {
      clearTimeout(timer)
      ws.terminate()
      reject(new Error('the upgrade was accepted'))
    })
    ws.once('unexpected-response', (req, res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => {
        clearTimeout(timer)
        req.destroy()
        resolve({ status: res.statusCode, body })
      })
    })
  })
}

/** Every persisted event of a session, through GET /events. */
async function storedEvents (app: App, id: string): Promise<Frame[]> {
  const out: Frame[] = []
  let after = 0
  for (;;) {
    const res = await call(app, 'GET', `/v1/sessions/${id}/events?after=${after}&limit=1000`)
    if (res.status !== 200) throw new Error(`GET /events: ${res.status} ${JSON.stringify(res.body)}`)
    out.push(...res.body.items as Frame[])
    if (res.body.nextAfter === null) return out
    after = res.body.nextAfter
  }
}

/** Polls GET /events until cond holds (bounded). */
async function storedUntil (app: App, id: string, cond: (events: Frame[]) => boolean, what: string, ms = 20_000): Promise<Frame[]> {
  const deadline = Date.now() + ms
  for (;;) {
    const events = await storedEvents(app, id)
    if (cond(events)) return events
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${events.length} events stored`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

async function send (app: App, id: string, text: string, clientMessageId?: string): Promise<{ seq: number, duplicate: boolean }> {
  const res = await call(app, 'POST', `/v1/sessions/${id}/messages`, { text, ...(clientMessageId ? { clientMessageId } : {}) })
  if (res.status !== 202) throw new Error(`POST /messages: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body
}

/**
 * null when `seqs` is exactly after+1 … to, in order; otherwise what is wrong (duplicates, gaps,
 * disorder), short enough for a test message.
 */
function runProblem (seqs: number[], after: number, to: number): string | null {
  const seen = new Set<number>()
  const dups: number[] = []
  for (const s of seqs) {
    if (seen.has(s)) dups.push(s)
    seen.add(s)
  }
  const missing: number[] = []
  for (let s = after + 1; s <= to; s++) if (!seen.has(s)) missing.push(s)
  const extra = [...seen].filter((s) => s <= after || s > to)
  let disorder = -1
  for (let i = 1; i < seqs.length; i++) {
    if (seqs[i]! <= seqs[i - 1]!) { disorder = i; break }
  }
  if (dups.length === 0 && missing.length === 0 && extra.length === 0 && disorder < 0) return null
  const few = (a: number[]) => `${a.length} [${a.slice(0, 8).join(',')}${a.length > 8 ? ',…' : ''}]`
  return [
    dups.length ? `duplicates ${few(dups)}` : '',
    missing.length ? `missing ${few(missing)}` : '',
    extra.length ? `outside (${after}, ${to}] ${few(extra)}` : '',
    disorder >= 0 ? `out of order at index ${disorder}: ${seqs[disorder - 1]} then ${seqs[disorder]}` : ''
  ].filter(Boolean).join('; ')
}

/** Frames compared by content (stored payloads are jsonb: key order may differ, values may not). */
function sameEvents (t: Test, got: Frame[], want: Frame[], what: string): void {
  const norm = (e: Frame) => ({ seq: e.seq, type: e.type, at: e.at, data: e.data })
  const g = got.map(norm)
  const w = want.map(norm)
  const firstDiff = g.findIndex((e, i) => JSON.stringify(sortKeys(e)) !== JSON.stringify(sortKeys(w[i])))
  t.equal(g.length, w.length, `${what}: as many events as stored`)
  t.equal(firstDiff, -1, `${what}: every event as stored${firstDiff >= 0 ? ` (first difference at seq ${g[firstDiff]?.seq})` : ''}`)
}

function sortKeys (v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys)
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).sort(([a], [b]) => a < b ? -1 : 1).map(([k, x]) => [k, sortKeys(x)]))
  return v
}

function socketOf (client: StreamClient): Socket {
  return (client.ws as unknown as { _socket: Socket })._socket
}

t.test('the upgrade is refused before it happens: 404 for an unknown or another user\'s session, 400 for a malformed id, 401 without a token', async (t) => {
  const unknown = await refusedUpgrade(`${wsBase(main.baseUrl)}/v1/sessions/7a1c9f0e-2b3d-4c5e-8f60-718293a4b5c6/stream`)
  t.equal(unknown.status, 404, 'unknown session: 404')
  t.match(JSON.parse(unknown.body), { status: 404 }, 'with a problem body')
  const malformed = await refusedUpgrade(`${wsBase(main.baseUrl)}/v1/sessions/not-a-uuid/stream`)
  t.equal(malformed.status, 400, 'malformed id: 400')
  const { id } = await createSession(app)
  const badAfter = await refusedUpgrade(`${wsBase(main.baseUrl)}/v1/sessions/${id}/stream?after=-1`)
  t.equal(badAfter.status, 400, 'a negative after: 400')
  const anonymous = await refusedUpgrade(`${wsBase(main.baseUrl)}/v1/sessions/${id}/stream`, {})
  t.equal(anonymous.status, 401, 'no token: 401')
  t.match(JSON.parse(anonymous.body), { code: 'UNAUTHORIZED' })
  const stranger = await refusedUpgrade(`${wsBase(main.baseUrl)}/v1/sessions/${id}/stream`, { authorization: `Bearer ${await main.tokenFor('a-stranger')}` })
  t.equal(stranger.status, 404, 'another user\'s session: 404, as if it did not exist')
  t.match(JSON.parse(stranger.body), { code: 'SESSION_NOT_FOUND' })
  const ok = await open(t, main.baseUrl, id)
  t.equal(ok.ws.readyState, WebSocket.OPEN, 'an existing session upgrades')
})

t.test('replay from ?after=0, then live: every event in seq order, no gap, no duplicate', async (t) => {
  const { id } = await createSession(app)
  const first = await send(app, id, 'hello')
  const second = await send(app, id, 'second thought')
  t.equal(first.seq, 1, 'the first message is seq 1')
  t.ok(second.seq > first.seq)
  const stored = await storedUntil(app, id, (ev) => ev.filter(isResult).length === 2, 'two turn results')

  const client = await open(t, main.baseUrl, id, 0)
  await client.until(() => client.events.length >= stored.length, `the ${stored.length} stored events`)
  t.equal(runProblem(client.seqs, 0, stored.length), null, 'replayed 1…n contiguously')
  sameEvents(t, client.events, stored, 'replay')
  const types = client.events.map((e) => e.type === 'agent' ? `agent:${e.data.type}${e.data.subtype ? '/' + e.data.subtype : ''}` : e.type)
  t.equal(types[0], 'user', 'starts with the user message')
  t.match(client.events[0], { seq: 1, type: 'user', data: { text: 'hello' } })
  t.ok(types.includes('state'), 'a state event')
  t.match(client.events.find((e) => e.type === 'state'), { data: { from: 'pending', to: 'active' } })
  for (const kind of ['agent:system/init', 'agent:assistant', 'agent:result/success']) t.ok(types.includes(kind), `has ${kind}`)
  t.ok(types.indexOf('agent:system/init') < types.indexOf('agent:assistant'), 'init before the reply')
  t.match(client.events.find((e) => e.type === 'agent' && e.data.type === 'assistant'), { data: { message: { content: [{ text: 'echo: hello' }] } } })

  // live
  const replayedTo = client.lastSeq
  const third = await send(app, id, 'and live')
  t.equal(third.seq, replayedTo + 1, 'the next message follows the last stored event')
  const result = await client.result(third.seq)
  const all = await storedEvents(app, id)
  t.equal(runProblem(client.seqs, 0, result.seq!), null, 'replay + live: 1…last, contiguous, none twice')
  t.equal(all.at(-1)?.seq, result.seq, 'nothing stored beyond what the client got')
  sameEvents(t, client.events, all, 'replay + live')
  t.match(client.events.find((e) => e.seq === third.seq), { type: 'user', data: { text: 'and live' } }, 'the live user event has the seq of the 202')
  t.same(client.garbage, [], 'only JSON text frames')
  t.same(client.replies, [], 'no replies without being asked')
})

t.test('clients joining at different moments of a flood get exactly their seqs, none twice', async (t) => {
  const { id } = await createSession(app)
  const watcher = await open(t, main.baseUrl, id, 0)
  const lines = 2000
  const sent = await send(app, id, `/flood ${lines} 200 go`)
  const joiners: { client: StreamClient, label: string, joinedLive: boolean }[] = []
  const join = async (label: string, at: number, after: (now: number) => number) => {
    await watcher.until(() => watcher.lastSeq >= sent.seq + at, `seq ${sent.seq + at}`)
    const liveWhenJoining = !watcher.events.some(isResult)
    const client = await open(t, main.baseUrl, id, after(watcher.lastSeq))
    joiners.push({ client, label, joinedLive: liveWhenJoining })
  }
  await join('from 0 at +50', 50, () => 0)
  await join('from 0 at +400 (past one replay page)', 400, () => 0)
  await join('from 30 at +700', 700, () => 30)
  await join('from now-5 at +1000', 1000, (now) => now - 5)
  await join('from now at +1300', 1300, (now) => now)
  await join('from 600 at +1600', 1600, () => 600)
  await join('from now-300 at +1900', 1900, (now) => now - 300)
  const result = await watcher.result(sent.seq, 30_000)
  await join('from 1234 after the end', 0, () => 1234)
  const end = result.seq!
  t.ok(end >= sent.seq + lines, `the turn produced at least ${lines} events (result at ${end})`)
  t.comment(`${joiners.filter((j) => j.joinedLive).length} of ${joiners.length} clients joined while the flood was still being produced`)
  for (const { client, label } of joiners) {
    await client.until(() => client.lastSeq >= end, `${label}: seq ${end}`, 30_000)
    t.equal(runProblem(client.seqs, client.after, end), null, `${label} (after=${client.after}): exactly ${client.after + 1}…${end}`)
  }
  t.equal(runProblem(watcher.seqs, 0, end), null, 'the watcher: 1…end')
  const stored = await storedEvents(app, id)
  t.equal(stored.at(-1)?.seq, end, 'nothing after the result')
  sameEvents(t, watcher.events, stored, 'watcher')
  // The watcher got every frame live; this joiner (?after=0, mid-flood) got what was stored before
  // it joined by replay. docs/STREAM.md: a live frame carries the CLI's line byte for byte, a
  // replayed one the stored jsonb value (same JSON value, key order may differ). Values were
  // compared above (sameEvents); the byte differences are only reported.
  const replayed = joiners[1]!.client
  const differing = replayed.raw.filter((r, i) => r !== watcher.raw[i]).length
  t.comment(`${differing} of ${replayed.raw.length} replayed frames differ in bytes (not in value) from the live frame of the same seq`)
  t.equal(runProblem(replayed.seqs, 0, end), null, 'the replayed joiner: same seqs as the watcher')
  const late = joiners.find((j) => j.label.startsWith('from 600'))!.client
  sameEvents(t, late.events, stored.filter((e) => e.seq! > 600), 'a joiner')
})

t.test('a client that reconnects with ?after=<last seq> gets exactly what it missed', async (t) => {
  const { id } = await createSession(app)
  const observer = await open(t, main.baseUrl, id, 0)
  const first = await open(t, main.baseUrl, id, 0)
  const sent = await send(app, id, '/flood 400 300 one')
  await first.dropAt(sent.seq + 50)
  const lastSeen = first.lastSeq
  t.equal(lastSeen, sent.seq + 50, 'the first connection dropped mid-flood')
  const result = await observer.result(sent.seq)
  t.ok(result.seq! > lastSeen, 'events happened while disconnected')

  const second = await open(t, main.baseUrl, id, lastSeen)
  await second.until(() => second.lastSeq >= result.seq!, 'the missed events')
  t.equal(runProblem(second.seqs, lastSeen, result.seq!), null, `got exactly ${lastSeen + 1}…${result.seq}`)
  t.equal(runProblem([...first.seqs, ...second.seqs], 0, result.seq!), null, 'both connections together: everything once')

  // again, this time reconnecting while the output is still being produced, and then live
  const again = await send(app, id, '/flood 1500 200 two')
  await second.dropAt(again.seq + 100)
  t.comment(`reconnecting ${observer.events.some((e) => e.seq! > again.seq && isResult(e)) ? 'after' : 'while'} the second flood is produced`)
  const third = await open(t, main.baseUrl, id, second.lastSeq)
  const result2 = await third.result(again.seq, 30_000)
  const live = await send(app, id, 'after the reconnect')
  const result3 = await third.result(live.seq)
  t.equal(runProblem(third.seqs, second.lastSeq, result3.seq!), null, `third connection: ${second.lastSeq + 1}…${result3.seq}`)
  t.ok(result2.seq! < live.seq)
  const stored = await storedEvents(app, id)
  sameEvents(t, [...first.events, ...second.events, ...third.events], stored, 'three connections')
  await observer.until(() => observer.lastSeq >= result3.seq!, 'the observer to catch up')
  sameEvents(t, observer.events, stored, 'the observer')
})

t.test('inbound frames', async (t) => {
  const { id } = await createSession(app)
  const client = await open(t, main.baseUrl, id, 0)

  t.test('a message frame: an ack with the seq of its user event, which the stream carries', async (t) => {
    const ack = await client.request({ type: 'message', text: 'hi', clientMessageId: 'c1' })
    t.match(ack, { type: 'ack', duplicate: false, clientMessageId: 'c1' })
    // docs/STREAM.md ("Replies"): replies that concern one connection (an ack…) carry no `seq`; the message's seq
    // is what the ack reports. Whatever the field, it must be the user event's seq.
    t.notOk('seq' in ack, 'an ack carries no seq of its own (docs/STREAM.md "Replies")')
    const messageSeq = (ack.messageSeq ?? ack.seq) as number
    t.type(messageSeq, 'number', 'the ack reports the message\'s seq')
    const user = client.events.filter((e) => e.type === 'user')
    t.equal(user.length, 1, 'the user event reached this stream before its ack')
    t.match(user[0], { seq: messageSeq, data: { text: 'hi', clientMessageId: 'c1' } })
    const result = await client.result(messageSeq)
    t.match(result.data, { subtype: 'success', result: 'echo: hi' }, 'the agent got it')

    const dup = await client.request({ type: 'message', text: 'hi', clientMessageId: 'c1' })
    t.match(dup, { type: 'ack', duplicate: true, clientMessageId: 'c1' })
    t.equal(dup.messageSeq ?? dup.seq, messageSeq, 'the first message\'s seq')
    t.equal(client.events.filter((e) => e.type === 'user').length, 1, 'no second user event')

    const next = await client.request({ type: 'message', text: 'next' })
    t.match(next, { type: 'ack', duplicate: false })
    const nextSeq = (next.messageSeq ?? next.seq) as number
    const result2 = await client.result(nextSeq)
    t.match(result2.data, { result: 'echo: next | remembered: hi' }, 'the duplicate was not delivered to the agent')
    const stored = await storedEvents(app, id)
    t.equal(stored.filter((e) => e.type === 'user').length, 2, 'two user events stored')
    t.equal(stored.filter(isResult).length, 2, 'two turns')
    t.equal(runProblem(client.seqs, 0, result2.seq!), null, 'the stream: contiguous')

    // one idempotency key across both ways in: POST first, then the same id as a frame
    const posted = await send(app, id, 'by http', 'c3')
    const viaWs = await client.request({ type: 'message', text: 'by http', clientMessageId: 'c3' })
    t.match(viaWs, { type: 'ack', duplicate: true, clientMessageId: 'c3' })
    t.equal(viaWs.messageSeq ?? viaWs.seq, posted.seq, 'the POSTed message\'s seq')
    await client.result(posted.seq)
    t.equal((await storedEvents(app, id)).filter((e) => e.type === 'user' && e.data.clientMessageId === 'c3').length, 1, 'stored once')
  })

  t.test('a heartbeat frame: a heartbeat reply', async (t) => {
    const before = await getSession(app, id)
    const beat = await client.request({ type: 'heartbeat' })
    t.match(beat, { type: 'heartbeat', state: 'active', version: before.version })
    t.notOk('seq' in beat, 'no seq')
    t.type(beat.expiresAt, 'string')
    t.ok(Number.isFinite(Date.parse(beat.expiresAt as string)), 'expiresAt is a date')
    t.ok(Date.parse(beat.expiresAt as string) >= Date.parse(before.expiresAt), 'not earlier than before')
  })

  t.test('invalid frames: an INVALID_FRAME error, and the connection stays open', async (t) => {
    const eventsBefore = client.events.length
    const bad: [string, string | Buffer, boolean][] = [
      ['invalid JSON', '{"type":', false],
      ['not an object', '42', false],
      ['null', 'null', false],
      ['an unknown type', '{"type":"bogus"}', false],
      ['a message without text', '{"type":"message"}', false],
      ['an empty text', '{"type":"message","text":""}', false],
      ['a text that is not a string', '{"type":"message","text":5}', false],
      ['an unknown member', '{"type":"heartbeat","extra":1}', false],
      ['a binary frame', Buffer.from('{"type":"heartbeat"}'), true]
    ]
    for (const [what, data, binary] of bad) {
      const reply = await client.request(data, { binary })
      t.match(reply, { type: 'error', code: 'INVALID_FRAME', message: String }, what)
      t.notOk('seq' in reply, `${what}: no seq`)
    }
    t.equal(client.ws.readyState, WebSocket.OPEN, 'still open')
    t.match(await client.request({ type: 'heartbeat' }), { type: 'heartbeat' }, 'and still answering')
    t.equal(client.events.length, eventsBefore, 'nothing was stored')
    const stored = await storedEvents(app, id)
    t.equal(stored.length, client.events.length, 'nothing was stored')
  })

  t.test('a message to a paused session: SESSION_NOT_ACCEPTING_MESSAGES', async (t) => {
    const paused = await createSession(app)
    t.equal((await transition(app, paused.id, 'active')).status, 200)
    t.equal((await transition(app, paused.id, 'paused')).status, 200)
    const c = await open(t, main.baseUrl, paused.id, 0)
    const reply = await c.request({ type: 'message', text: 'are you there', clientMessageId: 'p1' })
    t.match(reply, { type: 'error', code: 'SESSION_NOT_ACCEPTING_MESSAGES', clientMessageId: 'p1' })
    t.match(await c.request({ type: 'heartbeat' }), { type: 'heartbeat', state: 'paused' }, 'still open')
    // (state events are stored asynchronously after a transition: count user events only)
    t.equal((await storedEvents(app, paused.id)).filter((e) => e.type === 'user').length, 0, 'the message was not stored')
    t.equal(c.events.filter((e) => e.type === 'user').length, 0, 'nor streamed')
  })

  t.test('frames up to WS_MAX_FRAME_BYTES are taken; a larger one closes the connection with 1009', async (t) => {
    const c = await open(t, main.baseUrl, id)
    const envelope = JSON.stringify({ type: 'message', text: '' })
    const fits = JSON.stringify({ type: 'message', text: 'y'.repeat(FRAME_LIMIT - envelope.length) })
    t.equal(Buffer.byteLength(fits), FRAME_LIMIT)
    t.match(await c.request(fits), { type: 'ack', duplicate: false }, `a ${FRAME_LIMIT}-byte frame is accepted`)
    const tooBig = JSON.stringify({ type: 'message', text: 'z'.repeat(FRAME_LIMIT - envelope.length + 1) })
    c.ws.send(tooBig)
    const closed = await c.waitClosed()
    t.equal(closed.code, 1009, 'closed with 1009 (message too big)')
    t.equal(app.eventBus.subscriberCount(id), 1, 'its subscription is gone')
    t.equal(client.ws.readyState, WebSocket.OPEN, 'other clients are unaffected')
    t.match(await client.request({ type: 'heartbeat' }), { type: 'heartbeat' })
  })
})

t.test('a client that stops reading is cut off with 4008 and catches up by replay; others get everything', async (t) => {
  const { id } = await createSession(app)
  const fast = await open(t, main.baseUrl, id, 0)
  const fast2 = await open(t, main.baseUrl, id, 0)
  const slow = await open(t, main.baseUrl, id, 0)
  const warmup = await send(app, id, 'warm up')
  const warm = await slow.result(warmup.seq)
  await fast.result(warmup.seq)
  socketOf(slow).pause()
  const started = Date.now()
  // ~17 MB: past the 8 MiB mark with room to spare for what the kernel's socket buffers absorb
  const flood = await send(app, id, '/flood 4000 4000 big')
  const result = await fast.result(flood.seq, 45_000)
  const floodMs = Date.now() - started
  await fast2.until(() => fast2.lastSeq >= result.seq!, 'the second fast client to finish', 20_000)
  t.comment(`flood of 4000 × 4000 B: ${floodMs} ms to the fast clients`)
  t.equal(runProblem(fast.seqs, 0, result.seq!), null, 'a fast client got everything')
  t.equal(runProblem(fast2.seqs, 0, result.seq!), null, 'the other fast client got everything')
  t.equal(app.eventBus.subscriberCount(id), 2, 'the slow client was dropped while not reading')

  socketOf(slow).resume()
  const closed = await slow.waitClosed(20_000)
  t.equal(closed.code, 4008, 'closed with 4008')
  t.match(closed.reason, /after=\d+/, 'the reason tells where to resume')
  const lastSeen = slow.lastSeq
  t.ok(lastSeen >= warm.seq! && lastSeen < result.seq!, `it got part of the flood (up to ${lastSeen})`)
  t.equal(runProblem(slow.seqs, 0, lastSeen), null, 'what it did get is contiguous')
  const hinted = Number(/after=(\d+)/.exec(closed.reason)?.[1])
  t.equal(hinted, lastSeen, 'the reason names the last seq it was sent')
  const bytesSeen = slow.raw.reduce((n, r) => n + Buffer.byteLength(r), 0) - slow.raw.slice(0, slow.events.findIndex((e) => e.seq! > warm.seq!)).reduce((n, r) => n + Buffer.byteLength(r), 0)
  t.ok(bytesSeen > HIGH_WATER, `it was cut only past the ${HIGH_WATER}-byte high-water mark (${bytesSeen} bytes of the flood received)`)

  const back = await open(t, main.baseUrl, id, lastSeen)
  await back.until(() => back.lastSeq >= result.seq!, 'the catch-up', 20_000)
  t.equal(runProblem(back.seqs, lastSeen, result.seq!), null, `the reconnection got exactly ${lastSeen + 1}…${result.seq}`)
  t.same([...slow.seqs, ...back.seqs], fast.seqs, 'together: the same sequence as a fast client')

  // The same bound while a client is still being replayed to: this session's ~12 MB history is
  // replayed to a client that stops reading at once, while another big flood runs. The live frames
  // held back for it until its replay ends must not pile up past the high-water mark either.
  const stalled = await open(t, main.baseUrl, id, 0)
  socketOf(stalled).pause()
  const flood2 = await send(app, id, '/flood 3000 4000 bigger')
  const result2 = await fast.result(flood2.seq, 45_000)
  await back.until(() => back.lastSeq >= result2.seq!, 'the caught-up client to finish', 20_000)
  t.equal(runProblem(back.seqs, lastSeen, result2.seq!), null, 'the caught-up client follows live again')
  const heldBytes = fast.raw.filter((_, i) => fast.events[i]!.seq! > flood2.seq).reduce((n, r) => n + Buffer.byteLength(r), 0)
  t.equal(app.eventBus.subscriberCount(id), 3, `a client that stopped reading during its replay is dropped too (${heldBytes} bytes of live frames went out meanwhile)`)
  socketOf(stalled).resume()
  await stalled.until(() => stalled.closeInfo !== undefined || stalled.lastSeq >= result2.seq!, 'the stalled client to end or finish', 30_000, true)
  t.comment(`the stalled client, once reading again: ${stalled.closeInfo ? `closed ${stalled.closeInfo.code} at seq ${stalled.lastSeq}` : 'got everything'}`)
  let tail: number[] = []
  if (stalled.closeInfo) {
    t.equal(stalled.closeInfo.code, 4008, 'the stalled client: 4008')
    const again = await open(t, main.baseUrl, id, stalled.lastSeq)
    await again.until(() => again.lastSeq >= result2.seq!, 'the stalled client to catch up', 20_000)
    tail = again.seqs
  }
  t.equal(runProblem([...stalled.seqs, ...tail], 0, result2.seq!), null, 'the stalled client, reconnected if cut: everything once')
})

t.test('100 subscribers on one session all receive the same complete flood', async (t) => {
  const { id } = await createSession(app)
  const clients = await Promise.all(Array.from({ length: 100 }, () => open(t, main.baseUrl, id, 0)))
  const sent = await send(app, id, '/flood 500 300 fan-out')
  const result = await clients[0]!.result(sent.seq, 30_000)
  await Promise.all(clients.map((c, i) => c.until(() => c.lastSeq >= result.seq!, `client ${i} to reach ${result.seq}`, 30_000)))
  const stored = await storedEvents(app, id)
  t.equal(stored.at(-1)?.seq, result.seq)
  t.ok(stored.length >= 500, `${stored.length} events`)
  const reference = clients[0]!.raw
  let complete = 0
  let identical = 0
  for (const c of clients) {
    if (runProblem(c.seqs, 0, result.seq!) === null) complete++
    if (c.raw.length === reference.length && c.raw.every((r, i) => r === reference[i])) identical++
  }
  t.equal(complete, 100, 'every client: 1…end, contiguous, none twice')
  t.equal(identical, 100, 'every client: byte-identical frames')
  sameEvents(t, clients[0]!.events, stored, 'a subscriber')
  t.equal(clients.filter((c) => c.closeInfo).length, 0, 'nobody was dropped')
  await Promise.all(clients.map((c) => c.close()))
})

t.test('with a second app: ping/pong liveness, then shutdown', async (t) => {
  const second = await build(t, {
    listen: true,
    env: { CLAUDE_BIN: FAKE, WS_PING_INTERVAL_MS: '200', KILL_GRACE_MS: '1000' }
  })
  tokens.set(second.baseUrl, second.token)
  const { id } = await createSession(second.app)

  await t.test('a client that does not answer pings is terminated; one that does stays', async (t) => {
    const alive = await open(t, second.baseUrl, id, 0)
    const deaf = await open(t, second.baseUrl, id, 0, { autoPong: false })
    const closed = await deaf.waitClosed(5000)
    t.ok(deaf.pings >= 1, `it was pinged (${deaf.pings})`)
    t.equal(closed.code, 1006, 'terminated (no close frame)')
    const pingsAtDeath = alive.pings
    await alive.until(() => alive.pings >= pingsAtDeath + 5, 'five more pings', 5000)
    t.equal(alive.ws.readyState, WebSocket.OPEN, `the answering client is still open after ${alive.pings} pings`)
    t.equal(second.app.eventBus.subscriberCount(id), 1, 'only the live one is subscribed')
    const sent = await send(second.app, id, 'still there?')
    const result = await alive.result(sent.seq)
    t.match(result.data, { result: 'echo: still there?' })
  })

  await t.test('app.close() closes open streams with 1001', async (t) => {
    const a = await open(t, second.baseUrl, id, 0)
    const b = await open(t, second.baseUrl, id, 0)
    const sent = await send(second.app, id, '/slow 30000 never finishes')
    await a.until(() => a.events.some((e) => e.seq! > sent.seq && e.type === 'agent' && e.data.type === 'system'), 'the turn to start')
    const closing = second.app.close()
    const [ca, cb] = await Promise.all([a.waitClosed(10_000), b.waitClosed(10_000)])
    t.equal(ca.code, 1001, 'going away')
    t.equal(cb.code, 1001, 'going away')
    await closing
    t.equal(second.app.agents.liveCount, 0, 'no agent left running')
  })
})
