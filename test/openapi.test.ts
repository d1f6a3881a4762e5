// Database-incidental: uses a database only as storage for what it tests, so CI runs it once, in the PostgreSQL pass (.ci/run).
/**
 * openapi.yaml is the contract with the mobile app: it must be a valid OpenAPI 3.1 document, it
 * must describe what the server really does (errors included), it must be what the server serves,
 * and a client generated from it must type-check and work against a real listening server.
 */
import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'
import SwaggerParser from '@apidevtools/swagger-parser'
import openapiTS, { astToString } from 'openapi-typescript'
import t from 'tap'
import YAML from 'yaml'
import type { SessionView, SnapshotView } from '../src/schemas/session.js'
import { build } from './helpers/build.js'
import { authHeader } from './helpers/api.js'

const root = fileURLToPath(new URL('../', import.meta.url))
const specUrl = new URL('../openapi.yaml', import.meta.url)
const generatedDir = fileURLToPath(new URL('./.generated/', import.meta.url))
const generatedFile = fileURLToPath(new URL('./.generated/openapi.d.ts', import.meta.url))
const sdkTsconfig = fileURLToPath(new URL('./fixtures/tsconfig.sdk.json', import.meta.url))
// imported through a computed specifier so that `tsc -p tsconfig.json` does not follow it into the
// fixture, which needs the generated file (the fixture is type-checked below, on its own config)
const sdkModuleUrl = new URL('./fixtures/sdk-client.ts', import.meta.url).href

const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'] as const
const PROBLEM_REF = '#/components/schemas/Problem'

interface ParameterObject { name: string, in: string, required?: boolean, schema?: { type?: string } }
interface MediaTypeObject { schema?: { $ref?: string } }
interface HeaderObject { description?: string, schema?: { type?: string } }
interface ResponseObject { description?: string, headers?: Record<string, HeaderObject>, content?: Record<string, MediaTypeObject> }
interface OperationObject {
  operationId?: string
  summary?: string
  description?: string
  parameters?: ParameterObject[]
  requestBody?: { required?: boolean, content?: Record<string, MediaTypeObject> }
  responses?: Record<string, ResponseObject>
}
interface OpenApiDocument {
  openapi: string
  paths: Record<string, Partial<Record<typeof METHODS[number], OperationObject>>>
  components: { schemas: Record<string, { required?: string[], properties?: Record<string, unknown> }> }
}
interface Operation { method: typeof METHODS[number], path: string, op: OperationObject }

function operationsOf (doc: OpenApiDocument): Operation[] {
  const ops: Operation[] = []
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of METHODS) {
      const op = item[method]
      if (op) ops.push({ method, path, op })
    }
  }
  return ops
}

function errorStatuses (op: OperationObject): number[] {
  return Object.keys(op.responses ?? {}).map(Number).filter((s) => s >= 400)
}

const committedText = await readFile(specUrl, 'utf8')
const committed = YAML.parse(committedText) as OpenApiDocument
const operations = operationsOf(committed)

/**
 * The responses that carry `ETag: "<version>"`: every session response (`sendSession`), the pause
 * (the paused session's), the heartbeat, and GET's 304. Any other success response must not
 * declare one.
 */
const ETAG_RESPONSES: Record<string, string[]> = {
  createSession: ['201'],
  getSession: ['200', '304'],
  updateSession: ['200'],
  transitionSession: ['200'],
  pauseSession: ['200'],
  resumeSession: ['200'],
  heartbeatSession: ['200'],
  restartSession: ['200']
}

/** A body each operation accepts, so that a probe reaches the handler (default `{}`). */
const VALID_BODIES: Record<string, unknown> = {
  transitionSession: { to: 'completed' },
  updateSession: { title: 'changed' },
  sendMessage: { text: 'hello' },
  answerPermission: { decision: 'allow' }
}

t.test('the committed openapi.yaml', async (t) => {
  t.test('is a valid OpenAPI 3.1 document for a real validator', async (t) => {
    t.match(committed.openapi, /^3\.1\.\d+$/, 'declares OpenAPI 3.1')
    // validate() dereferences in place: give it a copy
    const validated = await SwaggerParser.validate(structuredClone(committed) as never)
    t.equal((validated as { openapi?: string }).openapi, committed.openapi, 'swagger-parser accepts it')
    // the validator is no rubber stamp: the same document with a defect is refused
    const broken = structuredClone(committed)
    const getOne = broken.paths['/v1/sessions/{id}']?.get
    const idParam = getOne?.parameters?.find((p) => p.in === 'path')
    t.ok(idParam, 'GET /v1/sessions/{id} has a path parameter')
    if (idParam) idParam.required = false
    await t.rejects(SwaggerParser.validate(broken as never), /required/, 'a path parameter that is not required is refused')
  })

  t.test('every operation has a unique operationId', async (t) => {
    t.ok(operations.length >= 10, `${operations.length} operations`)
    const seen = new Map<string, string>()
    for (const { method, path, op } of operations) {
      const where = `${method.toUpperCase()} ${path}`
      t.match(op.operationId, /^[a-z][A-Za-z0-9]*$/, `${where} has an operationId`)
      if (op.operationId) {
        t.notOk(seen.has(op.operationId), `${op.operationId} is unique (${where}${seen.has(op.operationId) ? `, also ${seen.get(op.operationId)}` : ''})`)
        seen.set(op.operationId, where)
      }
    }
  })

  t.test('every operation has a description, not only a summary', async (t) => {
    for (const { method, path, op } of operations) {
      const where = `${op.operationId ?? ''} (${method.toUpperCase()} ${path})`
      t.ok(op.summary?.trim(), `${where} has a summary`)
      t.ok(op.description?.trim(), `${where} has a description`)
      if (op.description && op.summary) t.not(op.description.trim(), op.summary.trim(), `${where}: the description says more than the summary`)
    }
  })

  t.test('the response headers the server sets are declared', async (t) => {
    const declared = (response: ResponseObject | undefined, name: string) =>
      Object.entries(response?.headers ?? {}).find(([key]) => key.toLowerCase() === name.toLowerCase())?.[1]
    for (const operationId of Object.keys(ETAG_RESPONSES)) {
      t.ok(operations.some(({ op }) => op.operationId === operationId), `${operationId} exists`)
    }
    let retryAfters = 0
    for (const { method, path, op } of operations) {
      const where = `${op.operationId ?? ''} (${method.toUpperCase()} ${path})`
      const etagged = ETAG_RESPONSES[op.operationId ?? ''] ?? []
      for (const [status, response] of Object.entries(op.responses ?? {})) {
        const etag = declared(response, 'ETag')
        if (etagged.includes(status)) {
          t.ok(etag, `${where} ${status} declares ETag`)
          t.equal(etag?.schema?.type, 'string', `${where} ${status} ETag is a string`)
          t.ok(etag?.description, `${where} ${status} ETag is described`)
        } else {
          t.notOk(etag, `${where} ${status} declares no ETag`)
        }
        const location = declared(response, 'Location')
        if (op.operationId === 'createSession' && status === '201') t.ok(location?.schema?.type === 'string' && location.description, `${where} 201 declares Location`)
        else t.notOk(location, `${where} ${status} declares no Location`)
        const retryAfter = declared(response, 'Retry-After')
        if (status === '503' || status === '429') {
          retryAfters++
          t.equal(retryAfter?.schema?.type, 'integer', `${where} ${status} declares Retry-After (seconds)`)
        } else {
          t.notOk(retryAfter, `${where} ${status} declares no Retry-After`)
        }
      }
      // every route that uses the database lists 503 DATABASE_UNAVAILABLE
      if (path !== '/healthz') t.ok(op.responses?.['503'], `${where} documents 503`)
    }
    t.ok(retryAfters >= operations.length - 1, `${retryAfters} 503 responses declare Retry-After`)
  })

  t.test('every error response is application/problem+json with the Problem schema', async (t) => {
    const problem = committed.components.schemas.Problem
    t.ok(problem, 'components.schemas.Problem exists')
    t.same([...(problem?.required ?? [])].sort(), ['code', 'detail', 'status', 'title', 'type'], 'Problem requires the RFC 9457 members and a code')
    for (const { method, path, op } of operations) {
      const where = `${op.operationId ?? ''} (${method.toUpperCase()} ${path})`
      const responses = op.responses ?? {}
      t.ok(Object.keys(responses).length > 0, `${where} documents responses`)
      for (const [status, response] of Object.entries(responses)) {
        const content = response.content ?? {}
        if (Number(status) >= 400 || status === 'default' || /^[45]XX$/.test(status)) {
          t.same(Object.keys(content), ['application/problem+json'], `${where} ${status} is problem+json only`)
          t.equal(content['application/problem+json']?.schema?.$ref, PROBLEM_REF, `${where} ${status} uses the Problem schema`)
        } else {
          t.notOk('application/problem+json' in content, `${where} ${status} is not a problem`)
        }
      }
      if (path === '/healthz') continue
      const statuses = errorStatuses(op)
      t.ok(statuses.length > 0, `${where} documents its errors`)
      const params = op.parameters ?? []
      const expected = new Set<number>()
      if (params.some((p) => p.in === 'path') || params.some((p) => p.in === 'query')) expected.add(400)
      if (params.some((p) => p.in === 'path' && p.name === 'id')) expected.add(404)
      if (params.some((p) => p.in === 'header' && p.name === 'if-match')) expected.add(412).add(400)
      if (op.requestBody) expected.add(400).add(413).add(415)
      if (path.startsWith('/v1/')) expected.add(401).add(429)
      for (const s of expected) t.ok(statuses.includes(s), `${where} documents ${s}`)
    }
  })
})

t.test('against a real server', async (t) => {
  // a small body limit makes the 413 probe cheap
  const { app, baseUrl, token, tokenFor } = await build(t, { listen: true, env: { BODY_LIMIT_BYTES: '2048' } })

  t.test('the document served at /openapi.json is the committed openapi.yaml', async (t) => {
    const res = await fetch(`${baseUrl}/openapi.json`)
    t.equal(res.status, 200)
    const served = await res.json() as unknown
    t.strictSame(served, committed, 'served document equals the committed one (run `npm run openapi` if not)')
    // what `npm run openapi:check` compares: the generated YAML text, byte for byte
    t.equal(app.swagger({ yaml: true }), committedText, 'openapi.yaml is up to date with the route schemas')
  })

  t.test('the declared headers are the ones the server sends', async (t) => {
    const created = await fetch(`${baseUrl}/v1/sessions`, { method: 'POST', headers: { ...authHeader(app), 'content-type': 'application/json' }, body: '{}' })
    t.equal(created.status, 201)
    const session = await created.json() as SessionView
    t.equal(created.headers.get('location'), `/v1/sessions/${session.id}`, '201 Location')
    t.match(created.headers.get('etag'), /^"[0-9]+"$/, '201 ETag matches its declared pattern')
    const etagSchema = committed.paths['/v1/sessions']?.post?.responses?.['201']?.headers?.ETag?.schema as { pattern?: string } | undefined
    t.ok(etagSchema?.pattern && new RegExp(etagSchema.pattern).test(created.headers.get('etag') ?? ''), 'the declared pattern accepts the ETag sent')
    const notModified = await fetch(`${baseUrl}/v1/sessions/${session.id}`, { headers: { ...authHeader(app), 'if-none-match': created.headers.get('etag') ?? '' } })
    t.equal(notModified.status, 304)
    t.equal(notModified.headers.get('etag'), `"${session.version}"`, '304 ETag')
  })

  t.test('every error the server answers is documented, as problem+json', async (t) => {
    const created = await app.inject({ headers: authHeader(app), method: 'POST', url: '/v1/sessions', payload: { title: 'probe' } })
    t.equal(created.statusCode, 201)
    const session = created.json<SessionView>()
    const unknownId = randomUUID()

    const json = { 'content-type': 'application/json' }
    interface Probe { why: string, url: string, headers?: Record<string, string>, payload?: string, expect: number, as?: Record<string, string> }
    const stranger = { authorization: `Bearer ${await tokenFor('a-stranger')}` }
    for (const { method, path, op } of operations) {
      const params = op.parameters ?? []
      const hasId = params.some((p) => p.in === 'path' && p.name === 'id')
      const withId = (id: string) => path.replace('{id}', id)
      const intQuery = params.find((p) => p.in === 'query' && p.schema?.type === 'integer')
      const takesIfMatch = params.some((p) => p.in === 'header' && p.name === 'if-match')
      const probes: Probe[] = []
      // a body the operation accepts, so that a probe fails for its own reason only
      const valid = op.requestBody ? { headers: json, payload: JSON.stringify(VALID_BODIES[op.operationId ?? ''] ?? {}) } : {}
      if (hasId) {
        probes.push({ why: 'malformed id', url: withId('not-a-uuid'), ...valid, expect: 400 })
        probes.push({ why: 'unknown id', url: withId(unknownId), ...valid, expect: 404 })
        probes.push({ why: 'another user\'s session', url: withId(session.id), ...valid, as: stranger, expect: 404 })
      }
      if (path.startsWith('/v1/')) {
        probes.push({ why: 'no token', url: withId(session.id), ...valid, as: {}, expect: 401 })
        probes.push({ why: 'a forged token', url: withId(session.id), ...valid, as: { authorization: 'Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA' }, expect: 401 })
      }
      if (intQuery) probes.push({ why: `non-integer ${intQuery.name}`, url: `${withId(session.id)}?${intQuery.name}=abc`, expect: 400 })
      if (takesIfMatch) {
        probes.push({ why: 'malformed If-Match', url: withId(session.id), headers: { 'if-match': 'garbage', ...json }, payload: valid.payload ?? '', expect: 400 })
        // a stale If-Match fails before anything changes
        probes.push({ why: 'stale If-Match', url: withId(session.id), headers: { 'if-match': '"999"', ...json }, payload: valid.payload ?? '', expect: 412 })
      }
      if (method !== 'get') {
        probes.push({ why: 'foreign content type', url: withId(unknownId), headers: { 'content-type': 'application/xml' }, payload: '<a/>', expect: 415 })
        probes.push({ why: 'oversized body', url: withId(unknownId), headers: json, payload: JSON.stringify({ title: 'x'.repeat(4096) }), expect: 413 })
      }
      const name = op.operationId ?? `${method} ${path}`
      const documented = errorStatuses(op)
      for (const probe of probes) {
        const res = await app.inject({
          method: method.toUpperCase() as 'GET',
          url: probe.url,
          headers: { ...(probe.as ?? authHeader(app)), ...probe.headers },
          ...(probe.payload === undefined ? {} : { payload: probe.payload })
        })
        const label = `${name}, ${probe.why}: ${res.statusCode}`
        t.equal(res.statusCode, probe.expect, label)
        t.match(String(res.headers['content-type']), /^application\/problem\+json/, `${label} is problem+json`)
        const body = res.json<Record<string, unknown>>()
        t.match(body, { type: String, title: String, status: res.statusCode, detail: String, code: String }, `${label} is a Problem`)
        t.ok(documented.includes(res.statusCode), `${label} is documented`)
      }
    }
    const after = await app.inject({ headers: authHeader(app), method: 'GET', url: `/v1/sessions/${session.id}` })
    t.equal(after.json<SessionView>().version, session.version, 'no probe changed the session')
    t.equal(after.json<SessionView>().state, 'pending')
  })

  t.test('a client generated from openapi.yaml type-checks and drives the server', async (t) => {
    // 1. generate the types from the committed document, as an SDK user would
    const ast = await openapiTS(specUrl)
    const source = '// Generated from openapi.yaml by test/openapi.test.ts (openapi-typescript). Do not edit.\n' + astToString(ast)
    t.match(source, /export interface paths/, 'openapi-typescript produced the paths type')
    await mkdir(generatedDir, { recursive: true })
    // atomic: another run in the same checkout may type-check the file at this moment
    const tmp = `${generatedFile}.${process.pid}.tmp`
    await writeFile(tmp, source)
    await rename(tmp, generatedFile)

    // 2. type-check the client module against them: schema drift that breaks the SDK fails here
    const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc')
    const checked = await run(process.execPath, [tsc, '-p', sdkTsconfig, '--noEmit', '--pretty', 'false'], root)
    t.equal(checked.code, 0, 'tsc -p test/fixtures/tsconfig.sdk.json passes', { output: checked.output })

    // 3. run it against the real listening server
    const sdk = await import(sdkModuleUrl) as SdkModule
    const seen = await sdk.runLifecycle(baseUrl, token)
    const id = seen.created.id

    t.match(seen.created, { state: 'pending', version: 1, title: 'sdk lifecycle', ttlSeconds: 3600 }, 'created pending')
    t.equal(seen.createdEtag, '"1"')
    t.match(seen.activated, { id, state: 'active', version: 2 }, 'transitioned to active')
    t.equal(seen.activatedEtag, '"2"')
    t.match(seen.snapshot, { sessionId: id, data: { title: 'sdk lifecycle' } }, 'pause returned the snapshot')
    t.equal(seen.pausedEtag, '"3"', 'the pause ETag is the paused session\'s')
    t.match(seen.resumed, { id, state: 'active', version: 4 }, 'resumed from the snapshot')
    t.equal(seen.resumedEtag, '"4"')
    t.match(seen.heartbeat, { state: 'active', version: 4 }, 'heartbeat answers state and version')
    t.equal(seen.heartbeatEtag, '"4"', 'a heartbeat does not bump the version')
    t.ok(Date.parse(seen.heartbeat.expiresAt) > Date.parse(seen.heartbeat.serverTime), 'expiresAt lies ahead of serverTime')
    const listed = seen.listedActive.find((s) => s.id === id)
    t.ok(listed, 'the list of active sessions contains the session')
    t.match(listed, { state: 'active', version: 4 })
    t.ok(seen.listedActive.every((s) => s.state === 'active'), 'the state filter holds')
    t.match(seen.fetched, { id, state: 'active', version: 4 })

    t.equal(seen.illegalTransition.status, 409, 'an edge not in the table is 409')
    t.match(seen.illegalTransition.contentType, /^application\/problem\+json/)
    t.match(seen.illegalTransition.problem, { status: 409, state: 'active', currentVersion: 4 }, 'the problem carries the current state')
    t.same([...(seen.illegalTransition.problem.allowedTargets ?? [])].sort(), ['completed', 'paused', 'suspended'], '… and the allowed targets')
    t.equal(seen.staleIfMatch.status, 412, 'a stale If-Match is 412')
    t.match(seen.staleIfMatch.problem, { status: 412, currentVersion: 4 })

    // the history that the SDK left behind, seen independently of it
    const history = await app.inject({ headers: authHeader(app), method: 'GET', url: `/v1/sessions/${id}/history` })
    t.same(history.json<{ items: { to: string }[] }>().items.map((i) => i.to), ['pending', 'active', 'paused', 'active'])
  })
})

interface SeenProblem {
  status: number
  contentType: string | null
  problem: { status: number, code: string, state?: string, allowedTargets?: string[], currentVersion?: number }
}

/** The shape of test/fixtures/sdk-client.ts, restated: that module is type-checked on its own. */
interface SdkModule {
  runLifecycle (baseUrl: string, token: string): Promise<{
    created: SessionView
    createdEtag: string | null
    activated: SessionView
    activatedEtag: string | null
    snapshot: SnapshotView
    pausedEtag: string | null
    resumed: SessionView
    resumedEtag: string | null
    heartbeat: { state: string, version: number, expiresAt: string, serverTime: string }
    heartbeatEtag: string | null
    listedActive: SessionView[]
    fetched: SessionView
    illegalTransition: SeenProblem
    staleIfMatch: SeenProblem
  }>
}

function run (cmd: string, args: string[], cwd: string): Promise<{ code: number, output: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0
      resolve({ code, output: `${stdout}${stderr}` })
    })
  })
}
