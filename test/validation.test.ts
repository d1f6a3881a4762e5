import { existsSync } from 'node:fs'
import { mkdir, readdir, symlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import type { SessionView } from '../src/schemas/session.js'
import { call, createSession, getSession, transition, type ApiResponse, authHeader } from './helpers/api.js'
import { userKey } from '../src/domain/user-key.js'
import { build, TEST_USER } from './helpers/build.js'

// One app with the default configuration (idle 60..86400, TTL 60..2592000, bodies up to 1 MiB).
const { app, config, dir } = await build(t, { startWorker: false })
// the test user's own area of the workspace root; another user's area is as much "outside" as /etc
const root = join(config.workspaceRoot, userKey(TEST_USER))
const othersArea = join(config.workspaceRoot, userKey('another-user'))
await mkdir(root, { recursive: true })
await mkdir(join(othersArea, 'their-project'), { recursive: true })

const UNKNOWN_ID = '0d6f3f0e-1b7a-4c55-8a51-6c1f3f2a9e01'

interface Problem {
  type: string
  title: string
  status: number
  detail: string
  code: string
  errors?: { field: string, message: string }[]
  field?: string
  state?: string
  allowedTargets?: string[]
  currentVersion?: number
}

/** Raw request: the payload is sent as given (malformed JSON, odd content types). */
async function raw (method: string, url: string, payload?: string, headers: Record<string, string> = {}): Promise<ApiResponse<any>> {
  const sent = { ...authHeader(app), ...headers }
  const res = await app.inject({
    method: method as 'POST',
    url,
    headers: payload === undefined ? sent : { 'content-type': 'application/json', ...sent },
    ...(payload === undefined ? {} : { payload })
  })
  let body: unknown
  try {
    body = res.body === '' ? undefined : JSON.parse(res.body)
  } catch {
    body = res.body
  }
  return { status: res.statusCode, headers: res.headers, body, contentType: String(res.headers['content-type'] ?? '') }
}

/**
 * Asserts a problem+json answer with `status` and one of `codes`; when `field` is given, the
 * problem names it: in errors[].field (schema validation), its own `field` member (range checks)
 * or its detail.
 */
function problem (t: Test, res: ApiResponse<any>, status: number, codes: string | string[], field?: string): Problem {
  const body = res.body as Problem
  const allowed = Array.isArray(codes) ? codes : [codes]
  // one failure with the whole answer rather than a cascade when the status is wrong
  if (!t.equal(res.status, status, `status ${status}`, { found: res.status, body: res.body })) return body
  t.match(res.contentType, /^application\/problem\+json/, 'content-type: application/problem+json')
  t.ok(allowed.includes(body?.code), `code ${body?.code} is one of ${allowed.join(', ')}`)
  t.equal(body?.status, status, 'status in the body')
  t.ok(typeof body?.type === 'string' && typeof body?.title === 'string' && typeof body?.detail === 'string', 'type, title and detail')
  if (field !== undefined) {
    const bare = field.replace(/^(body|params|querystring)\./, '')
    const named = (body.errors ?? []).some((e) => e.field === field || e.field.startsWith(`${field}.`)) ||
      body.field === bare ||
      (typeof body.detail === 'string' && body.detail.includes(bare))
    t.ok(named, `names ${field} (detail: ${body?.detail}, errors: ${JSON.stringify(body?.errors ?? [])})`)
  }
  return body
}

/** The parts of a session that must not move when a request is refused. */
function stable (s: SessionView) {
  const { usage, ...rest } = s
  const { activeMs, ...counters } = usage
  return { ...rest, usage: counters }
}

async function unchanged (t: Test, before: SessionView) {
  t.same(stable(await getSession(app, before.id)), stable(before), 'the session did not change')
}

async function countSessions (): Promise<number> {
  let n = 0
  let cursor: string | null = null
  do {
    const res: ApiResponse<{ items: unknown[], nextCursor: string | null }> =
      await call(app, 'GET', `/v1/sessions?limit=200${cursor ? `&cursor=${cursor}` : ''}`)
    n += res.body.items.length
    cursor = res.body.nextCursor
  } while (cursor)
  return n
}

async function sessionIn (state: 'pending' | 'active' | 'paused' | 'completed'): Promise<SessionView> {
  const s = await createSession(app, { title: `validation ${state}` })
  if (state === 'active' || state === 'paused') t.equal((await transition(app, s.id, 'active')).status, 200)
  if (state === 'paused') t.equal((await call(app, 'POST', `/v1/sessions/${s.id}/pause`)).status, 200)
  if (state === 'completed') t.equal((await transition(app, s.id, 'completed')).status, 200)
  return getSession(app, s.id)
}

/** What the workspace root holds: a refused create must leave nothing behind. */
const rootEntries = async () => (await readdir(root)).sort()

const cursorOf = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url')

t.test('create: bad bodies are refused and create nothing', async (t) => {
  const before = await countSessions()
  const entries = await rootEntries()

  problem(t, await raw('POST', '/v1/sessions', '{"title":'), 400, 'INVALID_JSON')
  problem(t, await raw('POST', '/v1/sessions', '{title: "x"}'), 400, 'INVALID_JSON')
  problem(t, await call(app, 'POST', '/v1/sessions', { idleTimeoutSeconds: 'abc' }), 400, 'VALIDATION_FAILED', 'body.idleTimeoutSeconds')
  problem(t, await call(app, 'POST', '/v1/sessions', { ttlSeconds: 'soon' }), 400, 'VALIDATION_FAILED', 'body.ttlSeconds')
  problem(t, await call(app, 'POST', '/v1/sessions', { title: { text: 'x' } }), 400, 'VALIDATION_FAILED', 'body.title')
  problem(t, await call(app, 'POST', '/v1/sessions', { model: '' }), 400, 'VALIDATION_FAILED', 'body.model')
  problem(t, await call(app, 'POST', '/v1/sessions', { workdir: '' }), 400, 'VALIDATION_FAILED', 'body.workdir')
  const bogus = problem(t, await call(app, 'POST', '/v1/sessions', { bogus: 1 }), 400, 'VALIDATION_FAILED', 'body.bogus')
  t.match(bogus.errors, [{ field: 'body.bogus' }])
  const several = problem(t, await call(app, 'POST', '/v1/sessions', { bogus: 1, idleTimeoutSeconds: 'x' }), 400, 'VALIDATION_FAILED')
  t.ok((several.errors ?? []).length >= 2, 'every problem is reported, not only the first')
  problem(t, await call(app, 'POST', '/v1/sessions', { title: 'x'.repeat(201) }), 400, 'VALIDATION_FAILED', 'body.title')
  problem(t, await call(app, 'POST', '/v1/sessions', [{ title: 'x' }]), 400, 'VALIDATION_FAILED', 'body')
  problem(t, await call(app, 'POST', '/v1/sessions', 'a string'), 400, 'VALIDATION_FAILED', 'body')

  t.equal(await countSessions(), before, 'no session was created')
  t.same(await rootEntries(), entries, 'no directory was created')
})

t.test('create: wrong types are not silently coerced', async (t) => {
  const before = await countSessions()
  // Type coercion (Fastify's default coerceTypes) must not apply to JSON bodies
  problem(t, await call(app, 'POST', '/v1/sessions', { title: 5 }), 400, 'VALIDATION_FAILED', 'body.title')
  problem(t, await call(app, 'POST', '/v1/sessions', { title: true }), 400, 'VALIDATION_FAILED', 'body.title')
  problem(t, await call(app, 'POST', '/v1/sessions', { idleTimeoutSeconds: '600' }), 400, 'VALIDATION_FAILED', 'body.idleTimeoutSeconds')
  problem(t, await call(app, 'POST', '/v1/sessions', { ttlSeconds: true }), 400, 'VALIDATION_FAILED', 'body.ttlSeconds')
  problem(t, await call(app, 'POST', '/v1/sessions', { title: null }), 400, 'VALIDATION_FAILED', 'body.title')
  problem(t, await call(app, 'POST', '/v1/sessions', { workdir: ['coerced'] }), 400, 'VALIDATION_FAILED', 'body.workdir')
  t.equal(await countSessions(), before, 'no session was created')
})

t.test('create: idle timeout and TTL out of range', async (t) => {
  const before = await countSessions()
  const cases: [string, unknown][] = [
    ['idleTimeoutSeconds', 59], ['idleTimeoutSeconds', 86401], ['idleTimeoutSeconds', 0], ['idleTimeoutSeconds', -1],
    ['idleTimeoutSeconds', 1.5], ['idleTimeoutSeconds', 1e20], ['idleTimeoutSeconds', 2147483648],
    ['ttlSeconds', 59], ['ttlSeconds', 2592001], ['ttlSeconds', 0], ['ttlSeconds', -60], ['ttlSeconds', 1.5],
    ['ttlSeconds', 1e20], ['ttlSeconds', 2147483648]
  ]
  for (const [field, value] of cases) {
    await t.test(`${field}: ${value}`, async (t) => {
      problem(t, await call(app, 'POST', '/v1/sessions', { [field]: value }), 400, ['VALUE_OUT_OF_RANGE', 'VALIDATION_FAILED'], `body.${field}`)
    })
  }
  const range = problem(t, await call(app, 'POST', '/v1/sessions', { idleTimeoutSeconds: 59 }), 400, 'VALUE_OUT_OF_RANGE', 'body.idleTimeoutSeconds')
  t.match(range, { minimum: 60, maximum: 86400 }, 'the range is in the problem')
  t.equal(await countSessions(), before, 'no session was created')
})

t.test('create: workdir outside the workspace root', async (t) => {
  const outside = join(dir, 'outside')
  await mkdir(outside, { recursive: true })
  await symlink(outside, join(root, 'escape'))
  await symlink(othersArea, join(root, 'neighbour'))
  await writeFile(join(root, 'a-file'), 'not a directory')
  const before = await countSessions()

  const cases: [string, string][] = [
    ['../x', join(root, '..', 'x')],
    ['a/../../y', join(root, '..', 'y')],
    ['/etc', '/etc'],
    ['/etc/mobvibe-should-not-exist', '/etc/mobvibe-should-not-exist'],
    [`${root}-evil/z`, `${root}-evil`],
    ['.', root],
    [root, root],
    ['escape', outside],
    ['escape/sub/deeper', join(outside, 'sub')],
    [`../${userKey('another-user')}/their-project`, join(othersArea, 'their-project', 'x')],
    [`../${userKey('another-user')}/new`, join(othersArea, 'new')],
    [join(othersArea, 'their-project'), join(othersArea, 'their-project', 'x')],
    [join(othersArea, 'created-by-me'), join(othersArea, 'created-by-me')],
    ['neighbour/their-project', join(othersArea, 'their-project', 'x')],
    ['neighbour/planted', join(othersArea, 'planted')],
    [config.workspaceRoot, config.workspaceRoot]
  ]
  for (const [workdir, mustNotExist] of cases) {
    await t.test(`workdir ${workdir}`, async (t) => {
      const res = await call(app, 'POST', '/v1/sessions', { workdir })
      problem(t, res, 400, 'WORKDIR_OUTSIDE_ROOT', 'body.workdir')
      if (![root, outside, '/etc', config.workspaceRoot].includes(mustNotExist)) {
        t.notOk(existsSync(mustNotExist), `${mustNotExist} was not created`)
      }
    })
  }
  t.notOk(existsSync(join(outside, 'sub')), 'nothing was created through the symlink')

  problem(t, await call(app, 'POST', '/v1/sessions', { workdir: 'a\u0000b' }), 400, ['WORKDIR_UNUSABLE', 'VALIDATION_FAILED'], 'body.workdir')
  problem(t, await call(app, 'POST', '/v1/sessions', { workdir: 'a-file' }), 400, ['WORKDIR_UNUSABLE', 'VALIDATION_FAILED'], 'body.workdir')
  problem(t, await call(app, 'POST', '/v1/sessions', { workdir: 'a-file/below' }), 400, ['WORKDIR_UNUSABLE', 'VALIDATION_FAILED'], 'body.workdir')
  problem(t, await call(app, 'POST', '/v1/sessions', { workdir: 'x'.repeat(1025) }), 400, 'VALIDATION_FAILED', 'body.workdir')
  problem(t, await call(app, 'POST', '/v1/sessions', { workdir: 'x'.repeat(300) }), 400, ['WORKDIR_UNUSABLE', 'VALIDATION_FAILED'], 'body.workdir')
  t.equal(await countSessions(), before, 'no session was created')
})

t.test('text with a NUL byte is refused, not a database error', async (t) => {
  const before = await countSessions()
  const entries = await rootEntries()
  problem(t, await call(app, 'POST', '/v1/sessions', { title: 'a\u0000b' }), 400, 'VALIDATION_FAILED', 'body.title')
  problem(t, await call(app, 'POST', '/v1/sessions', { model: 'a\u0000b' }), 400, 'VALIDATION_FAILED', 'body.model')
  t.equal(await countSessions(), before, 'no session was created')
  t.same(await rootEntries(), entries, 'no orphan working directory was left behind')

  const s = await sessionIn('pending')
  problem(t, await call(app, 'PATCH', `/v1/sessions/${s.id}`, { title: 'a\u0000b' }), 400, 'VALIDATION_FAILED', 'body.title')
  problem(t, await call(app, 'POST', `/v1/sessions/${s.id}/transitions`, { to: 'active', reason: 'a\u0000b' }), 400, 'VALIDATION_FAILED', 'body.reason')
  await unchanged(t, s)
  const active = await sessionIn('active')
  problem(t, await call(app, 'POST', `/v1/sessions/${active.id}/pause`, { reason: 'a\u0000b' }), 400, 'VALIDATION_FAILED', 'body.reason')
  await unchanged(t, active)
})

t.test('body over the 1 MiB limit is 413', async (t) => {
  const before = await countSessions()
  const big = JSON.stringify({ title: 'x'.repeat(1024 * 1024 + 10) })
  problem(t, await raw('POST', '/v1/sessions', big), 413, 'BODY_TOO_LARGE')
  const s = await sessionIn('pending')
  problem(t, await raw('PATCH', `/v1/sessions/${s.id}`, big), 413, 'BODY_TOO_LARGE')
  await unchanged(t, s)
  t.equal(await countSessions(), before + 1, 'only the target session exists')
})

t.test('unsupported content types are 415', async (t) => {
  const before = await countSessions()
  problem(t, await raw('POST', '/v1/sessions', '<session/>', { 'content-type': 'application/xml' }), 415, 'UNSUPPORTED_MEDIA_TYPE')
  problem(t, await raw('POST', '/v1/sessions', 'title=x', { 'content-type': 'application/x-www-form-urlencoded' }), 415, 'UNSUPPORTED_MEDIA_TYPE')
  // the API speaks JSON only: a text/plain body is not something to validate as JSON
  problem(t, await raw('POST', '/v1/sessions', '{"title":"x"}', { 'content-type': 'text/plain' }), 415, 'UNSUPPORTED_MEDIA_TYPE')
  const s = await sessionIn('pending')
  problem(t, await raw('PATCH', `/v1/sessions/${s.id}`, '<title>x</title>', { 'content-type': 'application/xml' }), 415, 'UNSUPPORTED_MEDIA_TYPE')
  await unchanged(t, s)
  t.equal(await countSessions(), before + 1)
})

t.test('patch: bad input changes nothing', async (t) => {
  const s = await sessionIn('pending')
  const url = `/v1/sessions/${s.id}`

  problem(t, await raw('PATCH', url, '{"title": "x",}'), 400, 'INVALID_JSON')
  problem(t, await call(app, 'PATCH', url, {}), 400, 'VALIDATION_FAILED')
  problem(t, await raw('PATCH', url), 400, 'VALIDATION_FAILED')
  problem(t, await raw('PATCH', url, ''), 400, 'VALIDATION_FAILED')
  problem(t, await call(app, 'PATCH', url, { idleTimeoutSeconds: 'abc' }), 400, 'VALIDATION_FAILED', 'body.idleTimeoutSeconds')
  problem(t, await call(app, 'PATCH', url, { bogus: 1 }), 400, 'VALIDATION_FAILED', 'body.bogus')
  problem(t, await call(app, 'PATCH', url, { title: 'ok', bogus: 1 }), 400, 'VALIDATION_FAILED', 'body.bogus')
  problem(t, await call(app, 'PATCH', url, { workdir: 'elsewhere' }), 400, 'VALIDATION_FAILED', 'body.workdir')
  problem(t, await call(app, 'PATCH', url, { model: '' }), 400, 'VALIDATION_FAILED', 'body.model')
  problem(t, await call(app, 'PATCH', url, { permissionMode: 'yolo' }), 400, 'VALIDATION_FAILED', 'body.permissionMode')
  problem(t, await call(app, 'PATCH', url, { permissionTimeoutSeconds: 0 }), 400, 'VALIDATION_FAILED', 'body.permissionTimeoutSeconds')
  problem(t, await call(app, 'PATCH', url, { state: 'active' }), 400, 'VALIDATION_FAILED', 'body.state')
  problem(t, await call(app, 'PATCH', url, { version: 9 }), 400, 'VALIDATION_FAILED', 'body.version')
  problem(t, await call(app, 'PATCH', url, { title: 'x'.repeat(201) }), 400, 'VALIDATION_FAILED', 'body.title')
  problem(t, await call(app, 'PATCH', url, [{ title: 'x' }]), 400, 'VALIDATION_FAILED', 'body')
  for (const [field, value] of [
    ['idleTimeoutSeconds', 59], ['idleTimeoutSeconds', 86401], ['idleTimeoutSeconds', 0], ['idleTimeoutSeconds', -1], ['idleTimeoutSeconds', 1.5],
    ['ttlSeconds', 59], ['ttlSeconds', 2592001], ['ttlSeconds', 0], ['ttlSeconds', -1], ['ttlSeconds', 1.5]
  ] as [string, number][]) {
    problem(t, await call(app, 'PATCH', url, { [field]: value }), 400, ['VALUE_OUT_OF_RANGE', 'VALIDATION_FAILED'], `body.${field}`)
  }
  // a valid member next to an invalid one: nothing of the request is applied
  problem(t, await call(app, 'PATCH', url, { title: 'half', ttlSeconds: 1 }), 400, ['VALUE_OUT_OF_RANGE', 'VALIDATION_FAILED'], 'body.ttlSeconds')
  await unchanged(t, s)
})

t.test('patch: wrong types are not silently coerced', async (t) => {
  const s = await sessionIn('pending')
  const url = `/v1/sessions/${s.id}`
  problem(t, await call(app, 'PATCH', url, { title: 5 }), 400, 'VALIDATION_FAILED', 'body.title')
  problem(t, await call(app, 'PATCH', url, { ttlSeconds: '3600' }), 400, 'VALIDATION_FAILED', 'body.ttlSeconds')
  problem(t, await call(app, 'PATCH', url, { idleTimeoutSeconds: [120] }), 400, 'VALIDATION_FAILED', 'body.idleTimeoutSeconds')
  await unchanged(t, s)
})

t.test('If-Match: malformed is 400, stale is 412, and nothing changes', async (t) => {
  const s = await sessionIn('pending')
  const url = `/v1/sessions/${s.id}`
  for (const header of ['abc', '"abc"', '1.5', '"1', '"1",,', '"-1"', '"12345678901"']) {
    const body = problem(t, await call(app, 'PATCH', url, { title: 'x' }, { 'if-match': header }), 400, 'INVALID_IF_MATCH')
    t.match(body.detail, /If-Match/, `If-Match: ${header}`)
  }
  problem(t, await call(app, 'DELETE', url, undefined, { 'if-match': 'abc' }), 400, 'INVALID_IF_MATCH')
  problem(t, await call(app, 'POST', `${url}/transitions`, { to: 'active' }, { 'if-match': 'abc' }), 400, 'INVALID_IF_MATCH')
  problem(t, await call(app, 'POST', `${url}/heartbeat`, undefined, { 'if-match': 'abc' }), 400, 'INVALID_IF_MATCH')

  const stale = problem(t, await call(app, 'PATCH', url, { title: 'x' }, { 'if-match': '"7"' }), 412, 'SESSION_VERSION_CONFLICT')
  t.equal(stale.currentVersion, 1)
  problem(t, await call(app, 'PATCH', url, { title: 'x' }, { 'if-match': 'W/"1"' }), 412, 'SESSION_VERSION_CONFLICT')
  const staleTransition = problem(t, await call(app, 'POST', `${url}/transitions`, { to: 'active' }, { 'if-match': '"2"' }), 412, 'SESSION_VERSION_CONFLICT')
  t.equal(staleTransition.currentVersion, 1)
  t.equal(staleTransition.state, 'pending')
  problem(t, await call(app, 'DELETE', url, undefined, { 'if-match': '"2", "3"' }), 412, 'SESSION_VERSION_CONFLICT')
  problem(t, await call(app, 'POST', `${url}/heartbeat`, undefined, { 'if-match': '"5"' }), 412, 'SESSION_VERSION_CONFLICT')
  await unchanged(t, s)

  const active = await sessionIn('active')
  problem(t, await call(app, 'POST', `/v1/sessions/${active.id}/pause`, undefined, { 'if-match': '"1"' }), 412, 'SESSION_VERSION_CONFLICT')
  await unchanged(t, active)
  const paused = await sessionIn('paused')
  problem(t, await call(app, 'POST', `/v1/sessions/${paused.id}/resume`, undefined, { 'if-match': '"1"' }), 412, 'SESSION_VERSION_CONFLICT')
  await unchanged(t, paused)
})

t.test('invalid uuid in the path names params.id', async (t) => {
  const requests: [string, string, unknown?][] = [
    ['GET', '/v1/sessions/not-a-uuid'],
    ['PATCH', '/v1/sessions/not-a-uuid', { title: 'x' }],
    ['DELETE', '/v1/sessions/not-a-uuid'],
    ['POST', '/v1/sessions/123/transitions', { to: 'active' }],
    ['POST', '/v1/sessions/123/pause'],
    ['POST', '/v1/sessions/123/resume'],
    ['POST', '/v1/sessions/123/heartbeat'],
    ['GET', '/v1/sessions/123/history'],
    ['GET', '/v1/sessions/123/snapshots'],
    ['GET', `/v1/sessions/${UNKNOWN_ID}x`],
    ['GET', `/v1/sessions/${UNKNOWN_ID.replaceAll('-', '')}0`]
  ]
  for (const [method, url, body] of requests) {
    await t.test(`${method} ${url}`, async (t) => {
      problem(t, await call(app, method as 'GET', url, body), 400, 'VALIDATION_FAILED', 'params.id')
    })
  }
})

t.test('a uuid URN (urn:uuid:...) in the path or as snapshotId is refused or not found, never a 500', async (t) => {
  // ajv's "uuid" format accepts the urn:uuid: prefix, which Postgres' uuid type does not
  const urn = `urn:uuid:${UNKNOWN_ID}`
  for (const [method, suffix, body] of [
    ['GET', ''], ['PATCH', '', { title: 'x' }], ['DELETE', ''], ['POST', '/heartbeat'], ['POST', '/transitions', { to: 'active' }],
    ['GET', '/history']
  ] as [string, string, unknown?][]) {
    await t.test(`${method} /v1/sessions/${urn}${suffix}`, async (t) => {
      const res = await call(app, method as 'GET', `/v1/sessions/${urn}${suffix}`, body)
      if (res.status === 404) problem(t, res, 404, 'SESSION_NOT_FOUND')
      else problem(t, res, 400, 'VALIDATION_FAILED', 'params.id')
    })
  }
  const paused = await sessionIn('paused')
  const res = await call(app, 'POST', `/v1/sessions/${paused.id}/resume`, { snapshotId: urn })
  if (res.status === 404) problem(t, res, 404, 'SNAPSHOT_NOT_FOUND')
  else problem(t, res, 400, 'VALIDATION_FAILED', 'body.snapshotId')
  await unchanged(t, paused)
})

t.test('a malformed URL is a 400 problem too', async (t) => {
  // FST_ERR_BAD_URL is mapped to BAD_URL by the error handler, but only reaches it when Fastify
  // is told to route framework errors there
  problem(t, await call(app, 'GET', '/v1/sessions/%E0%A4%A'), 400, 'BAD_URL')
})

t.test('unknown routes are 404 ROUTE_NOT_FOUND', async (t) => {
  problem(t, await call(app, 'GET', '/v1/nope'), 404, 'ROUTE_NOT_FOUND')
  problem(t, await call(app, 'GET', '/v2/sessions'), 404, 'ROUTE_NOT_FOUND')
  problem(t, await call(app, 'POST', `/v1/sessions/${UNKNOWN_ID}/explode`, {}), 404, 'ROUTE_NOT_FOUND')
  problem(t, await raw('PUT', `/v1/sessions/${UNKNOWN_ID}`, '{}'), 404, 'ROUTE_NOT_FOUND')
  problem(t, await call(app, 'DELETE', '/v1/sessions'), 404, 'ROUTE_NOT_FOUND')
})

t.test('unknown sessions are 404 SESSION_NOT_FOUND on every endpoint', async (t) => {
  const requests: [string, string, unknown?][] = [
    ['GET', ''], ['PATCH', '', { title: 'x' }], ['DELETE', ''], ['POST', '/transitions', { to: 'active' }],
    ['POST', '/pause'], ['POST', '/resume'], ['POST', '/heartbeat'], ['GET', '/history'], ['GET', '/snapshots']
  ]
  for (const [method, suffix, body] of requests) {
    problem(t, await call(app, method as 'GET', `/v1/sessions/${UNKNOWN_ID}${suffix}`, body), 404, 'SESSION_NOT_FOUND')
  }
})

t.test('transitions: bad targets', async (t) => {
  const s = await sessionIn('pending')
  const url = `/v1/sessions/${s.id}/transitions`
  problem(t, await call(app, 'POST', url, { to: 'sleeping' }), 400, 'VALIDATION_FAILED', 'body.to')
  problem(t, await call(app, 'POST', url, { to: 'ACTIVE' }), 400, 'VALIDATION_FAILED', 'body.to')
  problem(t, await call(app, 'POST', url, { to: ['active'] }), 400, 'VALIDATION_FAILED', 'body.to')
  problem(t, await call(app, 'POST', url, { to: null }), 400, 'VALIDATION_FAILED', 'body.to')
  problem(t, await call(app, 'POST', url, {}), 400, 'VALIDATION_FAILED', 'body.to')
  problem(t, await raw('POST', url), 400, 'VALIDATION_FAILED', 'body.to')
  problem(t, await call(app, 'POST', url, { reason: 'no target' }), 400, 'VALIDATION_FAILED', 'body.to')
  problem(t, await call(app, 'POST', url, { to: 'active', reason: '' }), 400, 'VALIDATION_FAILED', 'body.reason')
  problem(t, await call(app, 'POST', url, { to: 'active', reason: 'r'.repeat(501) }), 400, 'VALIDATION_FAILED', 'body.reason')
  problem(t, await call(app, 'POST', url, { to: 'active', actor: 'system' }), 400, 'VALIDATION_FAILED', 'body.actor')
  problem(t, await raw('POST', url, '{"to":"active"'), 400, 'INVALID_JSON')

  const illegal = problem(t, await call(app, 'POST', url, { to: 'paused' }), 409, 'SESSION_INVALID_TRANSITION')
  t.equal(illegal.state, 'pending')
  t.same(illegal.allowedTargets, ['active', 'completed'])
  t.equal(illegal.currentVersion, 1)
  for (const to of ['pending', 'suspended', 'failed', 'expired']) {
    const p = problem(t, await call(app, 'POST', url, { to }), 409, 'SESSION_INVALID_TRANSITION')
    t.same([p.state, p.allowedTargets], ['pending', ['active', 'completed']], `pending → ${to}`)
  }
  await unchanged(t, s)
})

t.test('transitions: system-only targets asked by the user are 409', async (t) => {
  const s = await sessionIn('active')
  for (const to of ['failed', 'expired', 'pending', 'active']) {
    const p = problem(t, await transition(app, s.id, to), 409, 'SESSION_INVALID_TRANSITION')
    t.equal(p.state, 'active', `active → ${to}`)
    t.same(p.allowedTargets, ['suspended', 'paused', 'completed'])
  }
  await unchanged(t, s)

  const paused = await sessionIn('paused')
  for (const to of ['suspended', 'failed', 'expired']) {
    const p = problem(t, await transition(app, paused.id, to), 409, 'SESSION_INVALID_TRANSITION')
    t.same([p.state, p.allowedTargets], ['paused', ['active', 'completed']], `paused → ${to}`)
  }
  await unchanged(t, paused)

  const done = await sessionIn('completed')
  for (const to of ['active', 'completed', 'paused', 'failed']) {
    const res = await transition(app, done.id, to)
    t.equal(res.status, 409, `completed → ${to}`)
    t.match(res.contentType, /^application\/problem\+json/)
    t.ok(['SESSION_INVALID_TRANSITION', 'SESSION_TERMINAL'].includes(res.body.code), res.body.code)
    t.equal(res.body.state, 'completed')
    if (res.body.allowedTargets !== undefined) t.same(res.body.allowedTargets, [])
  }
  await unchanged(t, done)
})

t.test('list: bad queries', async (t) => {
  problem(t, await call(app, 'GET', '/v1/sessions?cursor=garbage'), 400, 'INVALID_CURSOR')
  problem(t, await call(app, 'GET', `/v1/sessions?cursor=${cursorOf([1, 2])}`), 400, 'INVALID_CURSOR')
  problem(t, await call(app, 'GET', `/v1/sessions?cursor=${cursorOf(['2030-01-01T00:00:00.000Z', 'not-a-uuid'])}`), 400, 'INVALID_CURSOR')
  problem(t, await call(app, 'GET', `/v1/sessions?cursor=${cursorOf(['yesterday', UNKNOWN_ID])}`), 400, 'INVALID_CURSOR')
  problem(t, await call(app, 'GET', `/v1/sessions?cursor=${cursorOf({ createdAt: '2030-01-01T00:00:00.000Z', id: UNKNOWN_ID })}`), 400, 'INVALID_CURSOR')
  problem(t, await call(app, 'GET', '/v1/sessions?cursor='), 400, 'VALIDATION_FAILED', 'querystring.cursor')
  problem(t, await call(app, 'GET', `/v1/sessions?cursor=${'a'.repeat(201)}`), 400, 'VALIDATION_FAILED', 'querystring.cursor')
  for (const limit of ['0', '100000', 'abc', '-1', '1.5', '201', '1e20']) {
    problem(t, await call(app, 'GET', `/v1/sessions?limit=${limit}`), 400, 'VALIDATION_FAILED', 'querystring.limit')
  }
  problem(t, await call(app, 'GET', '/v1/sessions?state=bogus'), 400, 'VALIDATION_FAILED', 'querystring.state')
  problem(t, await call(app, 'GET', '/v1/sessions?state=active&state=bogus'), 400, 'VALIDATION_FAILED', 'querystring.state')
  problem(t, await call(app, 'GET', '/v1/sessions?state='), 400, 'VALIDATION_FAILED', 'querystring.state')
  problem(t, await call(app, 'GET', '/v1/sessions?sort=asc'), 400, 'VALIDATION_FAILED', 'querystring.sort')
})

t.test('list: a well-formed cursor with a date the database cannot hold is 400, not 500', async (t) => {
  for (const at of ['+275760-09-13T00:00:00.000Z', '-271821-04-20T00:00:00.000Z', '0000-01-01T00:00:00.000Z', '-000001-01-01T00:00:00.000Z']) {
    const res = await call(app, 'GET', `/v1/sessions?cursor=${cursorOf([at, UNKNOWN_ID])}`)
    problem(t, res, 400, 'INVALID_CURSOR')
  }
  // the far edges Postgres can hold are fine
  const old = await call(app, 'GET', `/v1/sessions?cursor=${cursorOf(['1970-01-01T00:00:00.000Z', UNKNOWN_ID])}`)
  t.equal(old.status, 200)
  t.same(old.body, { items: [], nextCursor: null }, 'nothing is older than 1970')
})

t.test('history: bad queries', async (t) => {
  const s = await sessionIn('pending')
  const url = `/v1/sessions/${s.id}/history`
  problem(t, await call(app, 'GET', `${url}?cursor=abc`), 400, 'INVALID_CURSOR')
  problem(t, await call(app, 'GET', `${url}?cursor=${cursorOf(['2030-01-01T00:00:00.000Z', UNKNOWN_ID])}`), 400, 'INVALID_CURSOR')
  problem(t, await call(app, 'GET', `${url}?cursor=${Buffer.from('-1').toString('base64url')}`), 400, 'INVALID_CURSOR')
  for (const limit of ['0', '1001', 'abc', '-5']) {
    problem(t, await call(app, 'GET', `${url}?limit=${limit}`), 400, 'VALIDATION_FAILED', 'querystring.limit')
  }
  problem(t, await call(app, 'GET', `${url}?after=3`), 400, 'VALIDATION_FAILED', 'querystring.after')
  const far = await call(app, 'GET', `${url}?cursor=${Buffer.from('999999999999999').toString('base64url')}`)
  t.equal(far.status, 200, 'a cursor past the end is an empty page')
  t.same(far.body, { items: [], nextCursor: null })
})

t.test('pause and resume: bad requests', async (t) => {
  const pending = await sessionIn('pending')
  const p = problem(t, await call(app, 'POST', `/v1/sessions/${pending.id}/pause`), 409, 'SESSION_INVALID_TRANSITION')
  t.equal(p.state, 'pending')
  const r = problem(t, await call(app, 'POST', `/v1/sessions/${pending.id}/resume`), 409, ['SESSION_INVALID_TRANSITION', 'SESSION_NO_SNAPSHOT'])
  t.equal(r.state, 'pending')
  await unchanged(t, pending)

  const active = await sessionIn('active')
  problem(t, await call(app, 'POST', `/v1/sessions/${active.id}/pause`, { bogus: true }), 400, 'VALIDATION_FAILED', 'body.bogus')
  problem(t, await call(app, 'POST', `/v1/sessions/${active.id}/pause`, { reason: '' }), 400, 'VALIDATION_FAILED', 'body.reason')
  problem(t, await call(app, 'POST', `/v1/sessions/${active.id}/resume`), 409, 'SESSION_INVALID_TRANSITION')
  await unchanged(t, active)

  const paused = await sessionIn('paused')
  const url = `/v1/sessions/${paused.id}/resume`
  const missing = problem(t, await call(app, 'POST', url, { snapshotId: UNKNOWN_ID }), 404, 'SNAPSHOT_NOT_FOUND')
  t.match(missing.detail, UNKNOWN_ID)
  problem(t, await call(app, 'POST', url, { snapshotId: 'latest' }), 400, 'VALIDATION_FAILED', 'body.snapshotId')
  problem(t, await call(app, 'POST', url, { snapshotId: null }), 400, 'VALIDATION_FAILED', 'body.snapshotId')
  problem(t, await call(app, 'POST', url, { snapshot: UNKNOWN_ID }), 400, 'VALIDATION_FAILED', 'body.snapshot')
  problem(t, await call(app, 'POST', `/v1/sessions/${paused.id}/pause`), 409, 'SESSION_INVALID_TRANSITION')
  // a snapshot of another session is not this session's
  const other = await sessionIn('paused')
  const [foreign] = (await call(app, 'GET', `/v1/sessions/${other.id}/snapshots`)).body.items as { id: string }[]
  problem(t, await call(app, 'POST', url, { snapshotId: foreign!.id }), 404, 'SNAPSHOT_NOT_FOUND')
  await unchanged(t, paused)
  await unchanged(t, other)

  const done = await sessionIn('completed')
  problem(t, await call(app, 'POST', `/v1/sessions/${done.id}/resume`), 409, ['SESSION_INVALID_TRANSITION', 'SESSION_TERMINAL'])
  problem(t, await call(app, 'POST', `/v1/sessions/${done.id}/pause`), 409, ['SESSION_INVALID_TRANSITION', 'SESSION_TERMINAL'])
  await unchanged(t, done)
})

t.test('heartbeat on a terminal or unknown session', async (t) => {
  const done = await sessionIn('completed')
  const p = problem(t, await call(app, 'POST', `/v1/sessions/${done.id}/heartbeat`), 409, 'SESSION_TERMINAL')
  t.equal(p.state, 'completed')
  await unchanged(t, done)

  // a session that ends after heartbeats were answered (and cached) is refused too
  const s = await sessionIn('pending')
  t.equal((await call(app, 'POST', `/v1/sessions/${s.id}/heartbeat`)).status, 200)
  t.equal((await transition(app, s.id, 'completed')).status, 200)
  problem(t, await call(app, 'POST', `/v1/sessions/${s.id}/heartbeat`), 409, 'SESSION_TERMINAL')

  for (const to of ['failed', 'expired'] as const) {
    const x = await sessionIn('pending')
    t.equal((await call(app, 'POST', `/v1/sessions/${x.id}/heartbeat`)).status, 200)
    await app.sessions.transitionState(x.id, to, { actor: 'system', reason: 'test' })
    const q = problem(t, await call(app, 'POST', `/v1/sessions/${x.id}/heartbeat`), 409, 'SESSION_TERMINAL')
    t.equal(q.state, to)
  }

  problem(t, await call(app, 'POST', `/v1/sessions/${UNKNOWN_ID}/heartbeat`), 404, 'SESSION_NOT_FOUND')
})

t.test('no input produces a 500', async (t) => {
  const targets = {
    pending: await sessionIn('pending'),
    active: await sessionIn('active'),
    paused: await sessionIn('paused'),
    completed: await sessionIn('completed')
  }
  const values = [
    'null', '[]', '[1,2]', '{}', '"x"', '""', '0', '-1', '-0', '1.5', '1e20', '-1e20', '1e400', '9007199254740993',
    'true', '"\\u0000"', '"a\\u0000b"', '"ü漢字🙂\\u202e"', '"\\ud800"', '"\\uffff"', '{"__proto__":{"polluted":1}}',
    '{"constructor":{"prototype":{"polluted":1}}}', '"../../../../etc"', '"/etc/passwd"', `"${'a'.repeat(5000)}"`,
    '"2030-01-01T00:00:00Z"', '"0d6f3f0e-1b7a-4c55-8a51-6c1f3f2a9e01"', '"urn:uuid:0d6f3f0e-1b7a-4c55-8a51-6c1f3f2a9e01"', '"active"', '"paused"'
  ]
  const wholeBodies = [
    ...values,
    '{"__proto__":{"title":"x"}}', '{"title":"x","__proto__":{"polluted":1}}', '{"constructor":{"polluted":1}}',
    '{"title":"x","title":"y"}', '{"to":"active","to":"bogus"}', '  ', '{', '}', '\u0000', '{"a":' + '['.repeat(500) + ']'.repeat(500) + '}'
  ]
  const fields: Record<string, string[]> = {
    create: ['title', 'workdir', 'model', 'idleTimeoutSeconds', 'ttlSeconds', '__proto__', 'constructor'],
    patch: ['title', 'idleTimeoutSeconds', 'ttlSeconds', 'workdir'],
    transitions: ['to', 'reason'],
    pause: ['reason'],
    resume: ['snapshotId', 'reason'],
    heartbeat: ['reason']
  }
  const failures: string[] = []
  let sent = 0
  const send = async (method: string, url: string, payload?: string, headers: Record<string, string> = {}) => {
    sent++
    const res = await raw(method, url, payload, headers)
    if (res.status >= 500) failures.push(`${method} ${url} ${payload?.slice(0, 80) ?? ''} ${JSON.stringify(headers)} → ${res.status} ${res.body?.code}`)
    else if (res.status >= 400 && !/^application\/problem\+json/.test(res.contentType)) {
      failures.push(`${method} ${url} ${payload?.slice(0, 80) ?? ''} → ${res.status} without problem+json`)
    }
  }

  for (const body of wholeBodies) await send('POST', '/v1/sessions', body)
  for (const field of fields.create!) for (const v of values) await send('POST', '/v1/sessions', `{"${field}":${v}}`)

  for (const s of Object.values(targets)) {
    const base = `/v1/sessions/${s.id}`
    for (const body of wholeBodies) {
      await send('PATCH', base, body)
      for (const action of ['transitions', 'pause', 'resume', 'heartbeat']) await send('POST', `${base}/${action}`, body)
    }
    for (const v of values) {
      for (const field of fields.patch!) await send('PATCH', base, `{"${field}":${v}}`)
      for (const action of ['transitions', 'pause', 'resume', 'heartbeat'] as const) {
        for (const field of fields[action]!) {
          // a reason goes with a target no session can move to, so the targets keep their states
          const payload = action === 'transitions' && field === 'reason' ? `{"to":"pending","reason":${v}}` : `{"${field}":${v}}`
          await send('POST', `${base}/${action}`, payload)
        }
      }
    }
    for (const header of ['', ' ', '"', '""', '"-1"', '"1.5"', '*, "1"', 'W/"1"', '"99999999999"', '"2147483648"', '"9999999999"', '*'.repeat(3), '"1"'.repeat(100)]) {
      await send('PATCH', base, '{"title":"if-match"}', { 'if-match': header })
      await send('POST', `${base}/heartbeat`, undefined, { 'if-match': header })
      await send('POST', `${base}/transitions`, '{"to":"pending"}', { 'if-match': header })
    }
    await send('GET', `${base}/history?cursor=${Buffer.from('999999999999999').toString('base64url')}`)
    await send('GET', `${base}/history?cursor=${Buffer.from('9'.repeat(15)).toString('base64url')}&limit=1000`)
  }

  const odd = ['', 'x', '%00', '%ff', 'null', '[]', cursorOf(['+275760-09-13T00:00:00.000Z', UNKNOWN_ID]),
    cursorOf(['0000-01-01T00:00:00.000Z', UNKNOWN_ID]), cursorOf(['-000001-01-01T00:00:00.000Z', UNKNOWN_ID]),
    cursorOf(['2030-01-01T00:00:00.000Z', '00000000-0000-0000-0000-000000000000']), cursorOf([null, null]), cursorOf('x'.repeat(100))]
  for (const v of odd) {
    await send('GET', `/v1/sessions?cursor=${v}`)
    await send('GET', `/v1/sessions?state=${v}`)
    await send('GET', `/v1/sessions?limit=${v}`)
    await send('GET', `/v1/sessions/${targets.pending.id}/history?cursor=${v}`)
    await send('GET', `/v1/sessions/${targets.pending.id}/history?limit=${v}`)
  }
  await send('GET', '/v1/sessions?state[]=active')
  await send('GET', '/v1/sessions?limit=1&limit=2')
  await send('GET', '/v1/sessions?cursor=a&cursor=b')
  await send('GET', '/v1/sessions/%00')
  await send('GET', `/v1/sessions/urn:uuid:${UNKNOWN_ID}`)
  await send('GET', '/v1/sessions/%E0%A4%A')
  await send('DELETE', `/v1/sessions/${targets.completed.id}`, '{"bogus":1}')

  t.ok(sent > 1000, `${sent} odd requests sent`)
  t.same(failures, [], 'every answer is a 4xx problem or a success, never a 5xx')
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype was not polluted')
  const readiness = await call(app, 'GET', '/readyz')
  t.equal(readiness.status, 200, 'the service is still healthy afterwards')
})

t.test('a session id in upper case is the same session (found by the fuzz test)', async (t) => {
  const s = await createSession(app)
  const upper = s.id.toUpperCase()
  t.equal((await call(app, 'GET', `/v1/sessions/${upper}`)).body.id, s.id)
  t.equal((await transition(app, upper, 'active')).status, 200)
  const paused = await call(app, 'POST', `/v1/sessions/${upper}/pause`)
  t.equal(paused.status, 200)
  t.equal(paused.body.sessionId, s.id, 'the snapshot names the session as the service spells it')
  t.equal((await call(app, 'POST', `/v1/sessions/${upper}/resume`)).status, 200)
  t.equal((await transition(app, upper, 'suspended')).status, 200)
  const restarted = await call(app, 'POST', `/v1/sessions/${upper}/restart`)
  t.equal(restarted.status, 200, 'a restart by the upper-case id works')
  t.equal(restarted.body.state, 'active')
  await app.events.flush()
  const events = (await call(app, 'GET', `/v1/sessions/${upper}/events`)).body.items as { type: string, data: Record<string, unknown> }[]
  t.same(events.map((e) => e.type === 'state' ? `${String(e.data.from)}->${String(e.data.to)}` : String(e.type)),
    ['pending->active', 'active->paused', 'paused->active', 'active->suspended', 'suspended->active', 'status'], 'no event lost to the other spelling')
})

t.test('an event position beyond what a seq can be is a 400, not a 500 (found by the fuzz test)', async (t) => {
  const s = await createSession(app)
  for (const after of ['9223372036854775807', '99999999999999999999', '1e20', '1e400', String(Number.MAX_SAFE_INTEGER + 2)]) {
    const res = await call(app, 'GET', `/v1/sessions/${s.id}/events?after=${after}`)
    t.equal(res.status, 400, `after=${after}`)
    t.equal(res.body.code, 'VALIDATION_FAILED')
  }
  t.equal((await call(app, 'GET', `/v1/sessions/${s.id}/events?after=${Number.MAX_SAFE_INTEGER}`)).status, 200, 'the largest safe position is fine')
  t.equal((await call(app, 'GET', `/v1/sessions/${s.id}/snapshots?surprise=1`)).status, 400, 'snapshots take no query, like the other lists')
})
