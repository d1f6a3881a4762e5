import { mkdir, stat, writeFile, readFile } from 'node:fs/promises'
import { isAbsolute, join } from 'node:path'
import t, { type Test } from 'tap'
import type { SessionView } from '../src/schemas/session.js'
import { call, createSession, getSession, transition, authHeader } from './helpers/api.js'
import { userKey } from '../src/domain/user-key.js'
import { build, manualClock, TEST_USER } from './helpers/build.js'

// One app for the whole file, on a clock the tests move by hand: timestamps, deadlines and
// durations are then exact. The worker is off so nothing changes behind the tests' backs.
const clock = manualClock()
const { app, config } = await build(t, { clock: clock.now, startWorker: false })
// the test user's own area of the workspace root: where its working directories live
const root = join(config.workspaceRoot, userKey(TEST_USER))

const SECOND = 1000
const iso = (ms: number) => new Date(ms).toISOString()
const nowMs = () => clock.now().getTime()

/** Creates a session one second after the previous one, so creation order is unambiguous. */
async function fresh (body: Record<string, unknown> = {}): Promise<SessionView> {
  clock.advance(SECOND)
  return createSession(app, body)
}

async function isDir (path: string): Promise<boolean> {
  return stat(path).then((s) => s.isDirectory(), () => false)
}

interface Page { items: SessionView[], nextCursor: string | null }

/** Every session the list gives for `query`, following nextCursor to the end. */
async function listAll (query = ''): Promise<SessionView[]> {
  const all: SessionView[] = []
  let cursor: string | null = null
  for (let i = 0; i < 100; i++) {
    const sep = query ? '&' : ''
    const url: string = `/v1/sessions?${query}${sep}limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`
    const res = await call<Page>(app, 'GET', url)
    if (res.status !== 200) throw new Error(`list failed: ${res.status} ${JSON.stringify(res.body)}`)
    all.push(...res.body.items)
    cursor = res.body.nextCursor
    if (cursor === null) return all
  }
  throw new Error('list never ended')
}

function isProblem (t: Test, res: { status: number, contentType: string, body: any }, status: number, code: string) {
  t.equal(res.status, status, `status ${status}`)
  t.match(res.contentType, /^application\/problem\+json/, 'problem+json')
  t.equal(res.body?.code, code, `code ${code}`)
  t.equal(res.body?.status, status, 'status in the body')
}

t.test('create with nothing given uses the configured defaults', async (t) => {
  clock.advance(SECOND)
  const at = nowMs()
  const res = await call<SessionView>(app, 'POST', '/v1/sessions', {})
  t.equal(res.status, 201)
  t.match(res.contentType, /^application\/json/)
  const s = res.body
  t.match(s.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
  t.equal(res.headers.location, `/v1/sessions/${s.id}`, 'Location names the new resource')
  t.equal(res.headers.etag, '"1"', 'ETag is the version')
  t.equal(s.state, 'pending')
  t.equal(s.version, 1)
  t.equal(s.idleTimeoutSeconds, 600, 'IDLE_TIMEOUT_DEFAULT_SECONDS')
  t.equal(s.ttlSeconds, 86400, 'SESSION_TTL_SECONDS')
  t.equal(s.title, null)
  t.equal(s.model, null)
  t.equal(s.busy, false)
  t.equal(s.agentSessionId, null)
  t.equal(s.lastError, null)
  t.equal(s.createdAt, iso(at))
  t.equal(s.updatedAt, iso(at))
  t.equal(s.stateChangedAt, iso(at))
  t.equal(s.expiresAt, iso(at + 86400 * SECOND), 'expiresAt = createdAt + TTL')
  t.equal(s.startedAt, null)
  t.equal(s.endedAt, null)
  t.equal(s.lastActivityAt, null)
  t.equal(s.lastHeartbeatAt, null)
  t.equal(s.transitionCount, 0)
  t.same(s.usage, { activeMs: 0, inputTokens: 0, outputTokens: 0, cacheReadTokens: 0, cacheCreationTokens: 0, costUsd: 0, turns: 0 })
  t.ok(isAbsolute(s.workdir), 'workdir is absolute')
  t.equal(s.workdir, join(root, s.id), 'a fresh directory under the workspace root')
  t.ok(await isDir(s.workdir), 'and it exists')

  const history = await call(app, 'GET', `/v1/sessions/${s.id}/history`)
  t.equal(history.status, 200)
  t.match(history.body.items, [{ from: null, to: 'pending', actor: 'user', version: 1 }])
  t.equal(history.body.items.length, 1)
})

t.test('create with a relative workdir resolves it under the root and creates it', async (t) => {
  const s = await fresh({ workdir: 'projects/alpha' })
  t.equal(s.workdir, join(root, 'projects', 'alpha'))
  t.ok(await isDir(s.workdir))

  const normalised = await fresh({ workdir: 'projects/./beta/../gamma/' })
  t.equal(normalised.workdir, join(root, 'projects', 'gamma'), 'dot segments are resolved')
  t.ok(await isDir(normalised.workdir))
})

t.test('create with an absolute workdir inside the root keeps it, and keeps what is there', async (t) => {
  const path = join(root, 'existing', 'repo')
  await mkdir(path, { recursive: true })
  await writeFile(join(path, 'README.md'), 'user code')
  const s = await fresh({ workdir: path })
  t.equal(s.workdir, path)
  t.equal(await readFile(join(path, 'README.md'), 'utf8'), 'user code', 'an existing directory is used as it is')

  const created = await fresh({ workdir: join(root, 'new', 'absolute') })
  t.equal(created.workdir, join(root, 'new', 'absolute'))
  t.ok(await isDir(created.workdir))
})

t.test('create with every optional member given', async (t) => {
  clock.advance(SECOND)
  const at = nowMs()
  const s = await createSession(app, { title: 'Fix the flaky build ✓', model: 'claude-sonnet-4', idleTimeoutSeconds: 120, ttlSeconds: 3600 })
  t.equal(s.title, 'Fix the flaky build ✓')
  t.equal(s.model, 'claude-sonnet-4')
  t.equal(s.idleTimeoutSeconds, 120)
  t.equal(s.ttlSeconds, 3600)
  t.equal(s.expiresAt, iso(at + 3600 * SECOND), 'the deadline uses the given TTL')

  const bounds = await fresh({ idleTimeoutSeconds: 60, ttlSeconds: 2592000, title: 'x'.repeat(200) })
  t.equal(bounds.idleTimeoutSeconds, 60, 'the minimum idle timeout is allowed')
  t.equal(bounds.ttlSeconds, 2592000, 'the maximum TTL is allowed')
  t.equal(bounds.title?.length, 200, 'a title of exactly the maximum length is allowed')
  const other = await fresh({ idleTimeoutSeconds: 86400, ttlSeconds: 60 })
  t.equal(other.idleTimeoutSeconds, 86400)
  t.equal(other.ttlSeconds, 60)
})

t.test('get', async (t) => {
  const created = await fresh({ title: 'get me' })

  const res = await call<SessionView>(app, 'GET', `/v1/sessions/${created.id}`)
  t.equal(res.status, 200)
  t.equal(res.headers.etag, '"1"')
  t.same(res.body, created, 'the same resource as the create returned')

  const notModified = await app.inject({ method: 'GET', url: `/v1/sessions/${created.id}`, headers: { ...authHeader(app), 'if-none-match': '"1"' } })
  t.equal(notModified.statusCode, 304, 'If-None-Match with the current ETag')
  t.equal(notModified.headers.etag, '"1"')
  t.equal(notModified.body, '', 'no body')

  for (const tag of ['W/"1"', '"7", "1"', '*']) {
    const r = await app.inject({ method: 'GET', url: `/v1/sessions/${created.id}`, headers: { ...authHeader(app), 'if-none-match': tag } })
    t.equal(r.statusCode, 304, `If-None-Match: ${tag}`)
  }
  const other = await app.inject({ method: 'GET', url: `/v1/sessions/${created.id}`, headers: { ...authHeader(app), 'if-none-match': '"2"' } })
  t.equal(other.statusCode, 200, 'another ETag gets the resource')

  const patched = await call(app, 'PATCH', `/v1/sessions/${created.id}`, { title: 'changed' })
  t.equal(patched.status, 200)
  const stale = await app.inject({ method: 'GET', url: `/v1/sessions/${created.id}`, headers: { ...authHeader(app), 'if-none-match': '"1"' } })
  t.equal(stale.statusCode, 200, 'after a change the old ETag is not current')
  t.equal(stale.headers.etag, '"2"')
  t.equal(JSON.parse(stale.body).title, 'changed')

  const missing = await call(app, 'GET', '/v1/sessions/6f1c1a2e-7d3b-4c6e-9a1f-0b2c3d4e5f60')
  isProblem(t, missing, 404, 'SESSION_NOT_FOUND')
  t.match(missing.body.detail, /6f1c1a2e-7d3b-4c6e-9a1f-0b2c3d4e5f60/)
})

t.test('list: newest first', async (t) => {
  const a = await fresh({ title: 'a' })
  const b = await fresh({ title: 'b' })
  const c = await fresh({ title: 'c' })
  const res = await call<Page>(app, 'GET', '/v1/sessions?limit=3')
  t.equal(res.status, 200)
  t.same(res.body.items.map((s) => s.id), [c.id, b.id, a.id])
  t.type(res.body.nextCursor, 'string', 'older sessions remain')

  const all = await listAll()
  for (let i = 1; i < all.length; i++) {
    const prev = all[i - 1]!
    const cur = all[i]!
    const ordered = prev.createdAt > cur.createdAt || (prev.createdAt === cur.createdAt && prev.id > cur.id)
    if (!ordered) t.fail(`out of order at ${i}: ${prev.createdAt}/${prev.id} then ${cur.createdAt}/${cur.id}`)
  }
  t.pass(`${all.length} sessions in (createdAt, id) descending order`)

  const defaults = await call<Page>(app, 'GET', '/v1/sessions')
  t.equal(defaults.status, 200)
  t.ok(defaults.body.items.length <= 50, 'the default limit is 50')
})

t.test('list: state filter, single and repeated', async (t) => {
  const pending = await fresh({ title: 'filter pending' })
  const active = await fresh({ title: 'filter active' })
  t.equal((await transition(app, active.id, 'active')).status, 200)
  const paused = await fresh({ title: 'filter paused' })
  t.equal((await transition(app, paused.id, 'active')).status, 200)
  t.equal((await call(app, 'POST', `/v1/sessions/${paused.id}/pause`)).status, 200)
  const completed = await fresh({ title: 'filter completed' })
  t.equal((await transition(app, completed.id, 'completed')).status, 200)

  const onlyActive = await listAll('state=active')
  t.ok(onlyActive.length >= 1)
  t.ok(onlyActive.every((s) => s.state === 'active'), 'only active sessions')
  const activeIds = onlyActive.map((s) => s.id)
  t.ok(activeIds.includes(active.id))
  t.notOk(activeIds.includes(pending.id) || activeIds.includes(paused.id) || activeIds.includes(completed.id))

  const two = await listAll('state=active&state=paused')
  t.ok(two.every((s) => s.state === 'active' || s.state === 'paused'), 'only active or paused sessions')
  const twoIds = two.map((s) => s.id)
  t.ok(twoIds.includes(active.id) && twoIds.includes(paused.id), 'both states are listed')
  t.notOk(twoIds.includes(pending.id) || twoIds.includes(completed.id))

  const done = await listAll('state=completed')
  t.ok(done.every((s) => s.state === 'completed'))
  t.ok(done.map((s) => s.id).includes(completed.id))

  const none = await call<Page>(app, 'GET', '/v1/sessions?state=failed')
  t.equal(none.status, 200)
  t.same(none.body, { items: [], nextCursor: null }, 'no failed sessions: an empty last page')

  // pagination inside a filter
  const seen: string[] = []
  let cursor: string | null = null
  do {
    const res: { status: number, body: Page } = await call<Page>(app, 'GET', `/v1/sessions?state=pending&limit=2${cursor ? `&cursor=${cursor}` : ''}`)
    t.equal(res.status, 200)
    t.ok(res.body.items.every((s) => s.state === 'pending'))
    seen.push(...res.body.items.map((s) => s.id))
    cursor = res.body.nextCursor
  } while (cursor)
  t.same(seen, (await listAll('state=pending')).map((s) => s.id), 'pages of a filtered list add up to the filtered list')
})

t.test('list: keyset pagination visits every session exactly once', async (t) => {
  // some at distinct instants, and a batch created at one instant (ties on createdAt)
  for (let i = 0; i < 5; i++) await fresh({ title: `page ${i}` })
  clock.advance(SECOND)
  for (let i = 0; i < 6; i++) await createSession(app, { title: `same instant ${i}` })

  const expected = (await listAll()).map((s) => s.id)
  t.ok(expected.length > 20, `${expected.length} sessions to page through`)

  const limit = 4
  const visited: SessionView[] = []
  const sameInstant: string[] = []
  const later: string[] = []
  let cursor: string | null = null
  let pages = 0
  for (;;) {
    const url: string = `/v1/sessions?limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`
    const res = await call<Page>(app, 'GET', url)
    t.equal(res.status, 200)
    pages++
    visited.push(...res.body.items)
    if (res.body.nextCursor === null) {
      t.ok(res.body.items.length <= limit, 'the last page holds at most limit items')
      break
    }
    t.equal(res.body.items.length, limit, 'every page but the last is full')
    cursor = res.body.nextCursor
    // new sessions arrive while the client pages: at the newest instant already listed (their
    // random ids may sort after the cursor), and strictly later (always before the cursor)
    sameInstant.push((await createSession(app, { title: 'between pages' })).id)
    later.push((await fresh({ title: 'between pages, later' })).id)
    clock.advance(-SECOND)
  }
  clock.advance(SECOND)
  const ids = visited.map((s) => s.id)
  t.equal(new Set(ids).size, ids.length, 'no session twice')
  t.same(ids.filter((id) => !sameInstant.includes(id)), expected, 'every session that existed, once, in order')
  t.same(ids.filter((id) => later.includes(id)), [], 'sessions newer than the cursor do not show up on later pages')
  t.equal(pages, Math.ceil((expected.length + ids.filter((id) => sameInstant.includes(id)).length) / limit), 'no empty or missing page')
  let ordered = true
  for (let i = 1; i < visited.length; i++) {
    const a = visited[i - 1]!
    const b = visited[i]!
    if (!(a.createdAt > b.createdAt || (a.createdAt === b.createdAt && a.id > b.id))) ordered = false
  }
  t.ok(ordered, 'the pages together are in strict (createdAt, id) descending order')

  const last = await call<Page>(app, 'GET', `/v1/sessions?limit=${(await listAll()).length}`)
  t.equal(last.body.nextCursor, null, 'a page holding the rest has no next cursor')
  const exact = await call<Page>(app, 'GET', `/v1/sessions?limit=${(await listAll()).length + 1}`)
  t.equal(exact.body.nextCursor, null)
})

t.test('patch', async (t) => {
  const s = await fresh({ title: 'before' })
  clock.advance(SECOND)
  const title = await call<SessionView>(app, 'PATCH', `/v1/sessions/${s.id}`, { title: 'after' })
  t.equal(title.status, 200)
  t.equal(title.headers.etag, '"2"')
  t.equal(title.body.version, 2, 'a settings change bumps the version by one')
  t.equal(title.body.title, 'after')
  t.equal(title.body.updatedAt, iso(nowMs()))
  t.equal(title.body.createdAt, s.createdAt)
  t.equal(title.body.state, 'pending', 'state is untouched')
  t.equal(title.body.transitionCount, s.transitionCount, 'a settings change is not a transition')

  const idle = await call<SessionView>(app, 'PATCH', `/v1/sessions/${s.id}`, { idleTimeoutSeconds: 300 }, { 'if-match': '"2"' })
  t.equal(idle.status, 200)
  t.equal(idle.body.version, 3)
  t.equal(idle.body.idleTimeoutSeconds, 300)
  t.equal(idle.body.title, 'after', 'members not given are kept')

  const both = await call<SessionView>(app, 'PATCH', `/v1/sessions/${s.id}`, { idleTimeoutSeconds: 900, ttlSeconds: 7200, title: 'both' }, { 'if-match': '*' })
  t.equal(both.status, 200)
  t.equal(both.body.version, 4)
  t.same([both.body.idleTimeoutSeconds, both.body.ttlSeconds, both.body.title], [900, 7200, 'both'])

  const cleared = await call<SessionView>(app, 'PATCH', `/v1/sessions/${s.id}`, { title: null })
  t.equal(cleared.status, 200)
  t.equal(cleared.body.title, null, 'title: null clears the title')
  t.equal(cleared.body.version, 5)

  t.same((await getSession(app, s.id)), cleared.body, 'GET agrees with the PATCH response')

  const history = await call(app, 'GET', `/v1/sessions/${s.id}/history`)
  t.equal(history.body.items.length, 1, 'settings changes add no transitions')
})

t.test('patch of an active session keeps it active', async (t) => {
  const s = await fresh()
  await transition(app, s.id, 'active')
  const res = await call<SessionView>(app, 'PATCH', `/v1/sessions/${s.id}`, { idleTimeoutSeconds: 120 })
  t.equal(res.status, 200)
  t.equal(res.body.state, 'active')
  t.equal(res.body.version, 3)
})

t.test('patch of a terminal session is 409 SESSION_TERMINAL', async (t) => {
  const s = await fresh()
  const done = await transition(app, s.id, 'completed')
  t.equal(done.status, 200)
  const res = await call(app, 'PATCH', `/v1/sessions/${s.id}`, { title: 'too late' })
  isProblem(t, res, 409, 'SESSION_TERMINAL')
  t.equal(res.body.state, 'completed')
  t.equal(res.body.currentVersion, done.body.version)
  t.same(await getSession(app, s.id), done.body, 'unchanged')

  // system-ended sessions too
  for (const to of ['failed', 'expired'] as const) {
    const x = await fresh()
    await app.sessions.transitionState(x.id, to, { actor: 'system', reason: 'test' })
    const r = await call(app, 'PATCH', `/v1/sessions/${x.id}`, { ttlSeconds: 600 })
    isProblem(t, r, 409, 'SESSION_TERMINAL')
    t.equal(r.body.state, to)
  }
})

t.test('a TTL patch recomputes expiresAt from the last sign of life, earlier or later', async (t) => {
  // The deadline counts from the latest of creation, last heartbeat, last activity and the PATCH
  // itself (a user request is a sign of life too), so it is the PATCH's time plus the new TTL.
  const s = await fresh()
  const created = Date.parse(s.createdAt)
  t.equal(s.expiresAt, iso(created + 86400 * SECOND))

  clock.advance(100 * SECOND)
  const firstPatch = nowMs()
  const shorter = await call<SessionView>(app, 'PATCH', `/v1/sessions/${s.id}`, { ttlSeconds: 3600 })
  t.equal(shorter.status, 200)
  t.equal(shorter.body.ttlSeconds, 3600)
  t.equal(shorter.body.expiresAt, iso(firstPatch + 3600 * SECOND), 'recomputed with the new TTL')
  t.ok(Date.parse(shorter.body.expiresAt) < Date.parse(s.expiresAt), 'moved earlier')

  clock.advance(2000 * SECOND)
  const beatAt = nowMs()
  const beat = await call(app, 'POST', `/v1/sessions/${s.id}/heartbeat`)
  t.equal(beat.status, 200)
  t.equal(beat.body.expiresAt, iso(beatAt + 3600 * SECOND), 'a heartbeat pushes the deadline out')
  t.equal(beat.body.version, 2, 'a heartbeat does not bump the version')
  t.equal((await getSession(app, s.id)).lastHeartbeatAt, iso(beatAt))

  clock.advance(50 * SECOND)
  const secondPatch = nowMs()
  const earlier = await call<SessionView>(app, 'PATCH', `/v1/sessions/${s.id}`, { ttlSeconds: 600 })
  t.equal(earlier.body.expiresAt, iso(secondPatch + 600 * SECOND), 'recomputed after the heartbeat')
  t.ok(Date.parse(earlier.body.expiresAt) < Date.parse(beat.body.expiresAt), 'earlier than the heartbeat had pushed it')
  t.equal(earlier.body.version, 3)

  const later = await call<SessionView>(app, 'PATCH', `/v1/sessions/${s.id}`, { ttlSeconds: 7200 })
  t.equal(later.body.expiresAt, iso(secondPatch + 7200 * SECOND), 'moved later')

  clock.advance(10 * SECOND)
  const titleOnly = await call<SessionView>(app, 'PATCH', `/v1/sessions/${s.id}`, { title: 'no ttl change' })
  t.equal(titleOnly.body.expiresAt, later.body.expiresAt, 'a patch without ttlSeconds leaves the deadline alone')
  const idleOnly = await call<SessionView>(app, 'PATCH', `/v1/sessions/${s.id}`, { idleTimeoutSeconds: 120 })
  t.equal(idleOnly.body.expiresAt, later.body.expiresAt)
})

t.test('delete', async (t) => {
  const s = await fresh({ title: 'to delete' })
  const res = await app.inject({ headers: authHeader(app), method: 'DELETE', url: `/v1/sessions/${s.id}` })
  t.equal(res.statusCode, 204)
  t.equal(res.body, '')

  isProblem(t, await call(app, 'GET', `/v1/sessions/${s.id}`), 404, 'SESSION_NOT_FOUND')
  isProblem(t, await call(app, 'GET', `/v1/sessions/${s.id}/history`), 404, 'SESSION_NOT_FOUND')
  isProblem(t, await call(app, 'GET', `/v1/sessions/${s.id}/snapshots`), 404, 'SESSION_NOT_FOUND')
  isProblem(t, await call(app, 'PATCH', `/v1/sessions/${s.id}`, { title: 'x' }), 404, 'SESSION_NOT_FOUND')
  isProblem(t, await call(app, 'POST', `/v1/sessions/${s.id}/heartbeat`), 404, 'SESSION_NOT_FOUND')
  isProblem(t, await transition(app, s.id, 'active'), 404, 'SESSION_NOT_FOUND')
  isProblem(t, await call(app, 'DELETE', `/v1/sessions/${s.id}`), 404, 'SESSION_NOT_FOUND')
  t.notOk((await listAll()).some((x) => x.id === s.id), 'not in the list')
  t.ok(await isDir(s.workdir), 'the working directory (the user\'s code) is left alone')
})

t.test('delete works in every state', async (t) => {
  const ids: Record<string, string> = {}
  const make = async (state: string) => {
    const s = await fresh({ title: `delete ${state}` })
    ids[state] = s.id
    return s.id
  }
  await make('pending')
  await transition(app, await make('active'), 'active')
  const suspended = await make('suspended')
  await transition(app, suspended, 'active')
  await transition(app, suspended, 'suspended')
  const paused = await make('paused')
  await transition(app, paused, 'active')
  await call(app, 'POST', `/v1/sessions/${paused}/pause`)
  await transition(app, await make('completed'), 'completed')
  await app.sessions.transitionState(await make('failed'), 'failed', { actor: 'system', reason: 'test' })
  await app.sessions.transitionState(await make('expired'), 'expired', { actor: 'system', reason: 'test' })

  for (const [state, id] of Object.entries(ids)) {
    t.equal((await getSession(app, id)).state, state, `set up in ${state}`)
    const res = await app.inject({ headers: authHeader(app), method: 'DELETE', url: `/v1/sessions/${id}` })
    t.equal(res.statusCode, 204, `DELETE of a ${state} session`)
    t.equal((await call(app, 'GET', `/v1/sessions/${id}`)).status, 404, `${state}: gone afterwards`)
  }
  const listed = new Set((await listAll()).map((s) => s.id))
  t.notOk(Object.values(ids).some((id) => listed.has(id)), 'none of them is listed')
})

t.test('delete honours If-Match', async (t) => {
  const s = await fresh()
  await call(app, 'PATCH', `/v1/sessions/${s.id}`, { title: 'v2' })
  const stale = await call(app, 'DELETE', `/v1/sessions/${s.id}`, undefined, { 'if-match': '"1"' })
  isProblem(t, stale, 412, 'SESSION_VERSION_CONFLICT')
  t.equal(stale.body.currentVersion, 2)
  const still = await getSession(app, s.id)
  t.equal(still.version, 2, 'the session still exists, unchanged')
  t.equal(still.title, 'v2')

  const ok = await app.inject({ method: 'DELETE', url: `/v1/sessions/${s.id}`, headers: { ...authHeader(app), 'if-match': '"2"' } })
  t.equal(ok.statusCode, 204)
  t.equal((await call(app, 'GET', `/v1/sessions/${s.id}`)).status, 404)
})

t.test('/healthz, /readyz', async (t) => {
  const health = await call(app, 'GET', '/healthz')
  t.equal(health.status, 200)
  t.same(health.body, { status: 'ok' })
  const ready = await call(app, 'GET', '/readyz')
  t.equal(ready.status, 200)
  t.same(ready.body, { status: 'ready', database: process.env.DATABASE_URL ? 'postgres' : 'pglite' })
})

t.test('a database that cannot be reached: 503 DATABASE_UNAVAILABLE with Retry-After, never a 500', async (t) => {
  // an app of its own: its database goes away under it
  const { app: lost } = await build(t, { startWorker: false })
  const s = await createSession(lost)
  await lost.database.close()
  for (const [method, url, body] of [
    ['GET', `/v1/sessions/${s.id}`, undefined],
    ['GET', '/v1/sessions', undefined],
    ['POST', '/v1/sessions', {}],
    ['POST', `/v1/sessions/${s.id}/heartbeat`, undefined],
    ['POST', `/v1/sessions/${s.id}/transitions`, { to: 'active' }]
  ] as const) {
    const res = await call(lost, method, url, body)
    isProblem(t, res, 503, 'DATABASE_UNAVAILABLE')
    t.equal(res.headers['retry-after'], '1', `${method} ${url}: Retry-After`)
  }
  isProblem(t, await call(lost, 'GET', '/readyz'), 503, 'SERVICE_UNAVAILABLE')
  t.equal((await call(lost, 'GET', '/healthz')).status, 200, 'alive, though not ready')
})

t.test('/openapi.json and /docs', async (t) => {
  const doc = await call(app, 'GET', '/openapi.json')
  t.equal(doc.status, 200)
  t.match(doc.contentType, /^application\/json/)
  t.match(doc.body.openapi, /^3\./)
  const paths = Object.keys(doc.body.paths ?? {})
  for (const p of ['/v1/sessions', '/v1/sessions/{id}', '/v1/sessions/{id}/transitions', '/v1/sessions/{id}/heartbeat', '/healthz', '/readyz']) {
    t.ok(paths.includes(p), `documents ${p}`)
  }
  t.ok(doc.body.paths['/v1/sessions'].post && doc.body.paths['/v1/sessions'].get, 'create and list')
  t.ok(doc.body.components?.schemas?.Session, 'the Session schema is a component')

  let res = await app.inject({ headers: authHeader(app), method: 'GET', url: '/docs' })
  if (res.statusCode >= 300 && res.statusCode < 400) {
    t.type(res.headers.location, 'string', 'a redirect says where')
    res = await app.inject({ headers: authHeader(app), method: 'GET', url: String(res.headers.location) })
  }
  t.equal(res.statusCode, 200, 'Swagger UI')
  t.match(String(res.headers['content-type']), /text\/html/)
  t.match(res.body, /swagger/i)
})

t.test('metadata: startedAt, endedAt, transitionCount, activeMs', async (t) => {
  const s = await fresh()
  t.equal(s.startedAt, null)
  t.equal(s.transitionCount, 0)

  clock.advance(SECOND)
  const activatedAt = nowMs()
  const active = await transition(app, s.id, 'active')
  t.equal(active.status, 200)
  t.equal(active.body.startedAt, iso(activatedAt), 'startedAt is set on the first activation')
  t.equal(active.body.stateChangedAt, iso(activatedAt))
  t.equal(active.body.transitionCount, 1)
  t.equal(active.body.usage.activeMs, 0)

  clock.advance(5 * SECOND)
  t.equal((await getSession(app, s.id)).usage.activeMs, 5000, 'activeMs grows while active')
  clock.advance(2 * SECOND)
  t.equal((await getSession(app, s.id)).usage.activeMs, 7000)

  const paused = await call(app, 'POST', `/v1/sessions/${s.id}/pause`)
  t.equal(paused.status, 200)
  t.equal(paused.body.data.usage.activeMs, 7000, 'the snapshot holds the usage at the pause')
  clock.advance(60 * SECOND)
  const whilePaused = await getSession(app, s.id)
  t.equal(whilePaused.state, 'paused')
  t.equal(whilePaused.usage.activeMs, 7000, 'activeMs stops while paused')
  t.equal(whilePaused.transitionCount, 2)

  const resumedAt = nowMs()
  const resumed = await call<SessionView>(app, 'POST', `/v1/sessions/${s.id}/resume`)
  t.equal(resumed.status, 200)
  t.equal(resumed.body.state, 'active')
  t.equal(resumed.body.startedAt, iso(activatedAt), 'startedAt keeps the first activation')
  t.equal(resumed.body.stateChangedAt, iso(resumedAt))
  t.equal(resumed.body.transitionCount, 3)
  clock.advance(3 * SECOND)
  t.equal((await getSession(app, s.id)).usage.activeMs, 10000, 'and grows again once active')

  const suspended = await transition(app, s.id, 'suspended')
  t.equal(suspended.status, 200)
  clock.advance(30 * SECOND)
  t.equal((await getSession(app, s.id)).usage.activeMs, 10000, 'activeMs stops while suspended')
  t.equal((await transition(app, s.id, 'active')).status, 200)
  t.equal((await getSession(app, s.id)).startedAt, iso(activatedAt))
  clock.advance(SECOND)

  const endedAt = nowMs()
  const completed = await transition(app, s.id, 'completed')
  t.equal(completed.status, 200)
  t.equal(completed.body.endedAt, iso(endedAt), 'endedAt is set on completion')
  t.equal(completed.body.usage.activeMs, 11000)
  t.equal(completed.body.transitionCount, 6)
  t.equal(completed.body.version, 7)
  clock.advance(60 * SECOND)
  const later = await getSession(app, s.id)
  t.equal(later.usage.activeMs, 11000, 'a terminal session accrues nothing')
  t.equal(later.endedAt, iso(endedAt))

  const history = await call(app, 'GET', `/v1/sessions/${s.id}/history`)
  t.same(history.body.items.map((h: { to: string }) => h.to), ['pending', 'active', 'paused', 'active', 'suspended', 'active', 'completed'])
  t.same(history.body.items.map((h: { version: number }) => h.version), [1, 2, 3, 4, 5, 6, 7])
})

t.test('endedAt on a session completed straight from pending; never started', async (t) => {
  const s = await fresh()
  const at = nowMs()
  const res = await transition(app, s.id, 'completed')
  t.equal(res.body.endedAt, iso(at))
  t.equal(res.body.startedAt, null)
  t.equal(res.body.usage.activeMs, 0)
})
