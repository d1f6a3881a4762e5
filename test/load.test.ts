import { performance } from 'node:perf_hooks'
import t from 'tap'
import { build } from './helpers/build.js'
import { prng } from './helpers/prng.js'

// A bounded load test over the real network: 50 clients of the sessions' owner hammer 5 shared
// sessions for about 5 s with heartbeats, transitions, pauses, resumes and PATCHes, half of them
// with If-Match, while 5 clients of another user send the same mix at the same sessions. Every
// response is kept, and at the end the record must add up: no 5xx, no lost or doubled write, a
// history and snapshots that match the owner's successful writes, heartbeats that never moved a
// version, and every request of the other user a 404 that changed nothing.
// LOAD_SEED replays a run (the seed is printed), LOAD_DURATION_MS changes its length.

const CLIENTS = 50
/** clients of another user, on the owner's sessions */
const INTRUDERS = 5
const SESSIONS = 5
const DURATION_MS = Number(process.env.LOAD_DURATION_MS ?? 5000)
/** the count bound: however fast the service is, a client stops after this many requests */
const MAX_REQUESTS_PER_CLIENT = 1000
const SEED = Number(process.env.LOAD_SEED ?? Math.floor(Math.random() * 2 ** 31))
const IDLE = { min: 60, max: 86_400 }
const TTL = { min: 60, max: 2_592_000 }
const DATABASE = process.env.DATABASE_URL ? 'postgres' : 'pglite'

type Op = 'heartbeat' | 'transition' | 'pause' | 'resume' | 'patch'
const WRITES: ReadonlySet<Op> = new Set(['transition', 'pause', 'resume', 'patch'])
/** the writes that move the state, and so leave a history row */
const STATE_WRITES: ReadonlySet<Op> = new Set(['transition', 'pause', 'resume'])
const TARGETS = ['active', 'suspended', 'paused'] as const
const USER_EDGES: Record<string, readonly string[]> = {
  pending: ['active', 'completed'],
  active: ['suspended', 'paused', 'completed'],
  suspended: ['active', 'paused', 'completed'],
  paused: ['active', 'completed']
}

interface Call {
  client: number
  seq: number
  session: number
  op: Op
  target?: string
  ifMatch: number | null
  sentAt: number
  receivedAt: number
  /** 0: the request itself failed (connection refused or reset) */
  status: number
  contentType: string
  etag: string | null
  body: any
  error?: string
}

const { baseUrl, token, tokenFor } = await build(t, {
  listen: true,
  startWorker: false,
  env: {
    // one user sends thousands of requests a minute here: the per-user limits would answer 429
    RATE_LIMIT_PER_MINUTE: '0',
    HEARTBEAT_RATE_LIMIT_PER_MINUTE: '0',
    // no load shedding: this tests correctness under load (no 5xx, no lost update) on a shared
    // 2-core CI box whose event loop may well lag by a second under 55 clients; a 503
    // SERVICE_OVERLOADED would be a 5xx that says nothing about that. Load shedding has its own test.
    MAX_EVENT_LOOP_DELAY_MS: '0'
  }
})
/** one token per user, reused by all of its clients, as a phone reuses its token */
const OWNER = { authorization: `Bearer ${token}` }
const INTRUDER = { authorization: `Bearer ${await tokenFor('load-intruder')}` }

/** A request as the owner of the sessions, unless `headers` carry another authorization. */
async function http (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
  const sent = { ...OWNER, ...headers }
  const res = await fetch(baseUrl + path, {
    method,
    headers: body === undefined ? sent : { 'content-type': 'application/json', ...sent },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })
  const text = await res.text()
  return {
    status: res.status,
    contentType: (res.headers.get('content-type') ?? '').split(';')[0]!.trim(),
    etag: res.headers.get('etag'),
    body: text ? JSON.parse(text) : undefined
  }
}

function versionOfEtag (etag: string | null): number | undefined {
  const m = etag === null ? null : /^"(\d+)"$/.exec(etag)
  return m ? Number(m[1]) : undefined
}

/** The version a response shows: the ETag of a success, `currentVersion` of a refusal. */
function observedVersion (c: Call): number | undefined {
  if (c.status >= 200 && c.status < 300) return versionOfEtag(c.etag)
  return typeof c.body?.currentVersion === 'number' ? c.body.currentVersion : undefined
}

function isOk (c: Call): boolean {
  return c.status >= 200 && c.status < 300
}

t.test(`${CLIENTS} clients on ${SESSIONS} shared sessions for ${DURATION_MS} ms, ${INTRUDERS} of another user: every response adds up`, async (t) => {
  const ids: string[] = []
  for (let i = 0; i < SESSIONS; i++) {
    const created = await http('POST', '/v1/sessions', { title: `load ${i}` })
    t.equal(created.status, 201)
    t.equal(created.body.version, 1)
    ids.push(created.body.id)
  }

  const calls: Call[] = []
  /** the other user's requests: kept apart, every one must be a 404 */
  const intruderCalls: Call[] = []
  const started = performance.now()
  const deadline = started + DURATION_MS

  /** Client n: the owner's for n < CLIENTS, the other user's beyond. */
  async function client (n: number): Promise<void> {
    const intruder = n >= CLIENTS
    const record = intruder ? intruderCalls : calls
    const rnd = prng(SEED + n)
    const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1))
    const seen: number[] = Array.from({ length: SESSIONS }, () => 1)
    for (let seq = 0; seq < MAX_REQUESTS_PER_CLIENT && performance.now() < deadline; seq++) {
      const session = int(0, SESSIONS - 1)
      const id = ids[session]!
      const r = rnd()
      const op: Op = r < 0.3 ? 'heartbeat' : r < 0.6 ? 'transition' : r < 0.7 ? 'pause' : r < 0.8 ? 'resume' : 'patch'
      const ifMatch = rnd() < 0.5 ? seen[session]! : null
      const headers: Record<string, string> = { ...(intruder ? INTRUDER : OWNER), ...(ifMatch === null ? {} : { 'if-match': `"${ifMatch}"` }) }
      let path = `/v1/sessions/${id}`
      let method = 'POST'
      let body: unknown
      let target: string | undefined
      switch (op) {
        case 'heartbeat':
          path += '/heartbeat'
          break
        case 'transition':
          target = TARGETS[int(0, TARGETS.length - 1)]!
          path += '/transitions'
          body = rnd() < 0.5 ? { to: target } : { to: target, reason: `client ${n}` }
          break
        case 'pause':
          path += '/pause'
          body = rnd() < 0.5 ? {} : { reason: `client ${n}` }
          break
        case 'resume':
          path += '/resume'
          body = {}
          break
        case 'patch': {
          method = 'PATCH'
          const patch: Record<string, unknown> = {}
          const which = int(1, 7) // a non-empty subset of the three settings
          if (which & 1) patch.title = `client ${n} #${seq}`
          if (which & 2) patch.idleTimeoutSeconds = int(IDLE.min, IDLE.max)
          if (which & 4) patch.ttlSeconds = int(TTL.min, TTL.max)
          body = patch
          break
        }
      }
      const sentAt = performance.now()
      let call: Call
      try {
        const res = await http(method, path, body, headers)
        call = { client: n, seq, session, op, ...(target ? { target } : {}), ifMatch, sentAt, receivedAt: performance.now(), ...res }
      } catch (err) {
        call = { client: n, seq, session, op, ...(target ? { target } : {}), ifMatch, sentAt, receivedAt: performance.now(), status: 0, contentType: '', etag: null, body: undefined, error: String(err) }
      }
      record.push(call)
      const v = observedVersion(call)
      if (v !== undefined) seen[session] = v
    }
  }

  await Promise.all(Array.from({ length: CLIENTS + INTRUDERS }, (_, n) => client(n)))
  const elapsed = (performance.now() - started) / 1000

  // ---- the other user: a 404 for every request, whatever it was (its writes are in no count below) ----
  const intruderStatuses: Record<string, number> = {}
  for (const c of intruderCalls) intruderStatuses[`${c.status} ${c.body?.code}`] = (intruderStatuses[`${c.status} ${c.body?.code}`] ?? 0) + 1
  t.comment(`the other user: ${intruderCalls.length} requests, ${JSON.stringify(intruderStatuses)}`)
  t.ok(intruderCalls.length >= INTRUDERS, 'every client of the other user sent something')
  t.same(intruderCalls.filter((c) => c.status !== 404 || c.body?.code !== 'SESSION_NOT_FOUND' || c.contentType !== 'application/problem+json')
    .slice(0, 5).map((c) => ({ op: c.op, status: c.status, body: c.body, error: c.error })), [],
  'every request of the other user on the owner\'s sessions is a 404 SESSION_NOT_FOUND problem')
  const theirList = await http('GET', '/v1/sessions', undefined, INTRUDER)
  t.equal(theirList.status, 200)
  t.same(theirList.body.items, [], 'the other user lists none of them')

  // ---- statuses: no 5xx, no transport error, every refusal an expected problem ----
  const statuses: Record<string, number> = {}
  for (const c of calls) statuses[c.status] = (statuses[c.status] ?? 0) + 1
  const codes: Record<string, number> = {}
  for (const c of calls) if (!isOk(c)) codes[String(c.body?.code)] = (codes[String(c.body?.code)] ?? 0) + 1
  t.comment(`load on ${DATABASE}: ${calls.length} requests in ${elapsed.toFixed(2)} s (${Math.round(calls.length / elapsed)} req/s), ` +
    `statuses ${JSON.stringify(statuses)}, refusals ${JSON.stringify(codes)}, seed ${SEED}`)
  t.ok(calls.length >= CLIENTS, 'every client sent something')
  t.ok(calls.length <= CLIENTS * MAX_REQUESTS_PER_CLIENT, 'bounded by count')
  t.same(Object.keys(statuses).filter((code) => code === '0' || Number(code) >= 500), [], 'no 5xx and no failed request at all')

  const bad = (c: Call, why: string) => ({ why, client: c.client, seq: c.seq, op: c.op, target: c.target, ifMatch: c.ifMatch, status: c.status, body: c.body, error: c.error })
  const unexpected: unknown[] = []
  for (const c of calls) {
    if (isOk(c)) continue
    if (c.status === 0 || c.status >= 500) { unexpected.push(bad(c, 'transport error or 5xx')); continue }
    if (c.contentType !== 'application/problem+json') { unexpected.push(bad(c, `content type ${c.contentType}`)); continue }
    if (c.body?.status !== c.status) { unexpected.push(bad(c, 'problem status differs from the HTTP status')); continue }
    if (c.status === 412) {
      if (c.body.code !== 'SESSION_VERSION_CONFLICT') unexpected.push(bad(c, '412 with another code'))
      else if (c.ifMatch === null) unexpected.push(bad(c, '412 without If-Match'))
      else if (c.body.currentVersion === c.ifMatch) unexpected.push(bad(c, '412 although If-Match names the current version'))
    } else if (c.status === 409) {
      if (c.body.code === 'SESSION_WRITE_CONTENTION') {
        if (c.ifMatch !== null || c.op === 'heartbeat') unexpected.push(bad(c, 'write contention is for retried writes without If-Match'))
      } else if (c.body.code === 'SESSION_INVALID_TRANSITION') {
        const state: string = c.body.state
        const wanted = c.op === 'pause' ? 'paused' : c.op === 'resume' ? 'active' : c.target
        if (c.op === 'heartbeat' || c.op === 'patch') unexpected.push(bad(c, 'an invalid transition for a request that is no transition'))
        else if (c.op === 'resume' ? state === 'paused' : (USER_EDGES[state] ?? []).includes(wanted!)) unexpected.push(bad(c, 'refused an edge the table allows'))
        else if (JSON.stringify(c.body.allowedTargets) !== JSON.stringify(USER_EDGES[state])) unexpected.push(bad(c, 'allowedTargets differ from the table'))
      } else {
        unexpected.push(bad(c, '409 with an unexpected code'))
      }
    } else {
      unexpected.push(bad(c, 'unexpected status'))
    }
  }
  t.same(unexpected.slice(0, 5), [], `every non-2xx is an expected 409/412 problem (${unexpected.length} are not)`)

  // ---- per session: versions, history, snapshots, heartbeats ----
  let staleHeartbeats = 0
  for (let s = 0; s < SESSIONS; s++) {
    const id = ids[s]!
    const mine = calls.filter((c) => c.session === s)
    const writes = mine.filter((c) => WRITES.has(c.op) && isOk(c))
    const problems: unknown[] = []

    // each successful write returned its own new version (the ETag, and the body's for sessions)
    const versionState = new Map<number, string>([[1, 'pending']])
    for (const w of writes) {
      const v = versionOfEtag(w.etag)
      if (v === undefined) { problems.push(bad(w, `no ETag: ${w.etag}`)); continue }
      const state = w.op === 'pause' ? 'paused' : w.body.state
      if (w.op !== 'pause' && w.body.version !== v) problems.push(bad(w, 'the body\'s version differs from the ETag'))
      if (w.op === 'pause' && w.body.version !== v - 1) problems.push(bad(w, 'the snapshot is not of the version before the pause'))
      if (w.op === 'transition' && state !== w.target) problems.push(bad(w, `a transition to ${w.target} answered ${state}`))
      if (w.op === 'resume' && state !== 'active') problems.push(bad(w, `a resume answered ${state}`))
      if (w.ifMatch !== null && v !== w.ifMatch + 1) problems.push(bad(w, `a write with If-Match ${w.ifMatch} made version ${v}`))
      if (versionState.has(v)) problems.push(bad(w, `version ${v} returned by two successful writes`))
      versionState.set(v, state)
    }
    t.same(problems, [], `session ${s}: every successful write returned a version of its own`)

    const final = await http('GET', `/v1/sessions/${id}`)
    t.equal(final.status, 200)
    t.equal(final.body.version, 1 + writes.length, `session ${s}: version ${final.body.version} = 1 + ${writes.length} successful writes (no lost update)`)
    t.same([...versionState.keys()].sort((a, b) => a - b), Array.from({ length: final.body.version }, (_, i) => i + 1),
      `session ${s}: the writes returned exactly the versions 2..${final.body.version}`)
    t.equal(final.body.state, versionState.get(final.body.version), `session ${s}: the final state is the last write's`)
    t.equal(final.etag, `"${final.body.version}"`)

    // the history, page by page: the creation row, then one row per successful state write
    const history: { from: string | null, to: string, version: number, actor: string }[] = []
    let cursor: string | null = null
    let pages = 0
    do {
      const page = await http('GET', `/v1/sessions/${id}/history?limit=50${cursor ? `&cursor=${cursor}` : ''}`)
      t.equal(page.status, 200)
      history.push(...page.body.items)
      cursor = page.body.nextCursor
      pages++
    } while (cursor && pages < 10_000)
    const stateWrites = writes.filter((w) => STATE_WRITES.has(w.op))
    t.equal(history.length, 1 + stateWrites.length, `session ${s}: ${history.length} history rows = creation + ${stateWrites.length} successful transitions (${pages} pages)`)
    t.match(history[0], { from: null, to: 'pending', version: 1 }, 'the first row is the creation')
    const chain: unknown[] = []
    for (let i = 1; i < history.length; i++) {
      const [prev, row] = [history[i - 1]!, history[i]!]
      if (row.version <= prev.version) chain.push({ why: 'versions not increasing', prev, row })
      if (row.from !== prev.to) chain.push({ why: 'from is not the previous to', prev, row })
      if (row.actor !== 'user') chain.push({ why: 'a transition nobody here asked for', row })
      if (versionState.get(row.version) !== row.to) chain.push({ why: 'no successful write returned this version and state', row, returned: versionState.get(row.version) })
    }
    t.same(chain.slice(0, 5), [], `session ${s}: the history is a chain of the successful transitions`)
    t.same(history.slice(1).map((h) => h.version), stateWrites.map((w) => versionOfEtag(w.etag)).sort((a, b) => a! - b!),
      `session ${s}: the history rows are exactly the successful state writes`)

    // one snapshot per successful pause (POST /pause or a transition to paused)
    const pauses = writes.filter((w) => w.op === 'pause' || (w.op === 'transition' && w.target === 'paused'))
    const snapshots = await http('GET', `/v1/sessions/${id}/snapshots`)
    t.equal(snapshots.status, 200)
    t.equal(snapshots.body.items.length, pauses.length, `session ${s}: ${snapshots.body.items.length} snapshots = ${pauses.length} successful pauses`)
    t.same(snapshots.body.items.map((x: { version: number }) => x.version).sort((a: number, b: number) => a - b),
      pauses.map((p) => versionOfEtag(p.etag)! - 1).sort((a, b) => a - b), `session ${s}: each snapshot holds the version its pause started from`)

    // heartbeats never made a version: each shows one a write returned (or the first), with its state
    const beats = mine.filter((c) => c.op === 'heartbeat' && isOk(c))
    const beatProblems: unknown[] = []
    for (const b of beats) {
      const v = versionOfEtag(b.etag)
      if (v === undefined || b.body.version !== v) beatProblems.push(bad(b, `ETag ${b.etag} and version ${b.body.version}`))
      else if (!versionState.has(v)) beatProblems.push(bad(b, `a heartbeat showed version ${v}, which no write made`))
      else if (versionState.get(v) !== b.body.state) beatProblems.push(bad(b, `a heartbeat showed version ${v} as ${b.body.state}, the write made it ${versionState.get(v)}`))
      else if (b.ifMatch !== null && v !== b.ifMatch) beatProblems.push(bad(b, `a heartbeat with If-Match ${b.ifMatch} answered version ${v}`))
    }
    t.same(beatProblems.slice(0, 5), [], `session ${s}: ${beats.length} successful heartbeats never changed the version`)

    // refusals name a version and state that really existed
    const refusalProblems: unknown[] = []
    for (const c of mine) {
      if (isOk(c) || (c.status !== 409 && c.status !== 412) || c.body?.code === 'SESSION_WRITE_CONTENTION') continue
      if (versionState.get(c.body.currentVersion) !== c.body.state) {
        refusalProblems.push(bad(c, `refused with version ${c.body.currentVersion} as ${c.body.state}; the writes made it ${versionState.get(c.body.currentVersion)}`))
      }
    }
    t.same(refusalProblems.slice(0, 5), [], `session ${s}: every refusal names a (version, state) that a write made`)

    // real time: nothing answers with a version older than a write acknowledged before it was sent
    const acks = writes.map((w) => ({ at: w.receivedAt, version: versionOfEtag(w.etag)! })).sort((a, b) => a.at - b.at)
    const stale: ReturnType<typeof bad>[] = []
    for (const c of mine) {
      const v = observedVersion(c)
      if (v === undefined) continue
      let known = 1
      let knownAt = 0
      for (const a of acks) {
        if (a.at >= c.sentAt) break
        if (a.version > known) [known, knownAt] = [a.version, a.at]
      }
      const fresh = WRITES.has(c.op) && isOk(c) ? v > known : v >= known
      if (!fresh) stale.push(bad(c, `shows version ${v}, but ${known} was acknowledged ${(c.sentAt - knownAt).toFixed(1)} ms before it was sent`))
    }
    const staleBeats = stale.filter((x) => x.op === 'heartbeat')
    staleHeartbeats += staleBeats.length
    t.same(stale.filter((x) => x.op !== 'heartbeat').slice(0, 5), [],
      `session ${s}: no write or refusal shows a version older than a write acknowledged before it was sent`)
    // A heartbeat whose read a write overtook must not re-cache the replaced row (it would answer
    // the old version, and accept an If-Match naming it, until the entry aged out)
    t.same(staleBeats.slice(0, 3), [], `session ${s}: no heartbeat answers from before an acknowledged write (${staleBeats.length} do)`)
  }
  t.comment(`load on ${DATABASE}: ${staleHeartbeats} heartbeat answers older than an acknowledged write`)
})
