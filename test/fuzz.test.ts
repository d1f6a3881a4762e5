/**
 * Property-based fuzzing of the HTTP API with fast-check: every operation of openapi.yaml (read at
 * run time, so a new route is covered without touching this file), and every other method on its
 * paths, with generated bodies, query strings, headers, path ids and If-Match values that mix the
 * valid with the subtly and grossly invalid.
 *
 * For every generated request:
 * - never a 5xx; every 4xx is application/problem+json with a string `code` and `detail`;
 * - a refused request (4xx), a GET and a HEAD change nothing: neither the session it aims at (its
 *   body and ETag, history, snapshots and events, read through the API before and after) nor any
 *   row of the database (triggers note every write this file's database takes);
 * - a success is a legal result for its operation (a PATCH bumps the version by exactly one, a
 *   heartbeat never changes it, a transition follows the state machine, …) and touches no other
 *   session;
 * - no message ever reaches an agent: messages go to paused or terminal sessions only (409);
 * - the Authorization header is one more generated input (the owner's token, mostly, in several
 *   spellings; none; malformed; expired; forged; another user's valid token): without a valid
 *   token the answer is 401 (or a 404 of the router, which no route hook sees) and nothing moved;
 *   another user's request on a session is answered exactly as for a session that does not exist
 *   (same status and code: 404, or the 400 of a request invalid whatever the session), and
 *   changes nothing; what another user creates is theirs, in their own area of the workspace.
 *
 * Failures are reproducible: the file prints its seed first, and a failure names it again with
 * the request and the answer; `FUZZ_SEED=<seed> npx tap --disable-coverage test/fuzz.test.ts`
 * replays the run. Other knobs:
 * - FUZZ_RUNS scales the number of generated requests (1 = the default, 5,900);
 * - FUZZ_KEEP_GOING=1 collects every distinct violation (reported in `totals`) instead of stopping
 *   at the first;
 * - FUZZ_TRACE=<file> appends one line per request: what was sent, the answer, the rows written;
 * - FUZZ_SHRINK=1 lets fast-check shrink a counterexample (slow: the service is stateful, so every
 *   step replays requests against it).
 */
import { appendFileSync, readFileSync } from 'node:fs'
import { readdir } from 'node:fs/promises'
import { isDeepStrictEqual } from 'node:util'
import { sql } from 'drizzle-orm'
import fc from 'fast-check'
import t, { type Test } from 'tap'
import YAML from 'yaml'
import { join } from 'node:path'
import { canTransition, isTerminal, SESSION_STATES, type SessionState } from '../src/domain/state-machine.js'
import { userKey } from '../src/domain/user-key.js'
import { build, manualClock, TEST_USER } from './helpers/build.js'
import { mintToken } from './helpers/tokens.js'

type Json = Record<string, any>

const clock = manualClock()
const SECRET = 'fuzz-hs256-secret-of-at-least-32-characters'
const { app, config, token } = await build(t, {
  startWorker: false,
  clock: clock.now,
  env: {
    // an agent must never start here: should one try, it fails at once instead of running `claude`
    CLAUDE_BIN: '/nonexistent/mobvibe-fuzz/claude',
    JWT_SECRET: SECRET,
    // thousands of requests of one user in a few minutes: the per-user limits would answer 429
    // (no 5xx, but requests that test nothing)
    RATE_LIMIT_PER_MINUTE: '0',
    HEARTBEAT_RATE_LIMIT_PER_MINUTE: '0',
    // no load shedding: this tests what every request does to the data, run on a shared 2-core CI
    // box whose event loop may well lag by a second; a 503 SERVICE_OVERLOADED there would be a
    // "5xx" that says nothing about correctness. Load shedding has a test of its own.
    MAX_EVENT_LOOP_DELAY_MS: '0'
  }
})
const root = config.workspaceRoot
/** the other user of the Authorization input: valid token, none of the sessions aimed at */
const OTHER_USER = 'fuzz-other-user'
const areaOf = (user: string) => join(root, userKey(user))
/** the tokens, minted once for the whole run (verification is real time, not the manual clock) */
const tokens = {
  owner: token,
  other: await mintToken({ secret: SECRET, sub: OTHER_USER, ttlSeconds: 6 * 3600 }),
  expired: await mintToken({ secret: SECRET, sub: TEST_USER, issuedAt: Math.floor(Date.now() / 1000) - 7200, ttlSeconds: 3600 }),
  forged: await mintToken({ secret: 'not-the-service-key-but-32-chars-long', sub: TEST_USER }),
  noSub: await mintToken({ secret: SECRET })
}
const SCALE = Number(process.env.FUZZ_RUNS ?? 1)
const SEED = process.env.FUZZ_SEED === undefined ? (Date.now() ^ Math.floor(Math.random() * 0x7fffffff)) | 0 : Number(process.env.FUZZ_SEED)
const SHRINK = process.env.FUZZ_SHRINK === '1'
t.comment(`fast-check seed ${SEED} (FUZZ_SEED=${SEED} replays this run)`)

// ---------------------------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------------------------

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const
type Method = typeof METHODS[number]

interface Param { name: string, in: string, required: boolean, schema: Json }
interface Operation {
  method: Method
  path: string
  operationId: string
  params: Param[]
  body: { schema: Json, required: boolean } | undefined
  /** `security: []` in the document: no token needed (health, readiness) */
  public: boolean
}

const doc = YAML.parse(readFileSync(new URL('../openapi.yaml', import.meta.url), 'utf8')) as Json

function deref (schema: Json): Json {
  let s = schema
  while (typeof s.$ref === 'string') {
    const name = (s.$ref as string).replace('#/components/schemas/', '')
    s = doc.components.schemas[name] as Json
  }
  return s
}

const operations: Operation[] = []
for (const [path, item] of Object.entries(doc.paths as Record<string, Json>)) {
  if (path.endsWith('/stream')) continue // the WebSocket route is not for inject
  for (const method of METHODS) {
    const op = item[method.toLowerCase()] as Json | undefined
    if (!op) continue
    const params = [...(item.parameters ?? []), ...(op.parameters ?? [])].map((p: Json) => ({
      name: p.name as string, in: p.in as string, required: Boolean(p.required), schema: deref(p.schema ?? {})
    }))
    const bodySchema = op.requestBody?.content?.['application/json']?.schema as Json | undefined
    operations.push({
      method,
      path,
      operationId: op.operationId ?? `${method} ${path}`,
      params,
      body: bodySchema ? { schema: deref(bodySchema), required: Boolean(op.requestBody.required) } : undefined,
      public: Array.isArray(op.security) && op.security.length === 0
    })
  }
}
const paths = [...new Set(operations.map((o) => o.path))]
const documented = new Set(operations.map((o) => `${o.method} ${o.path}`))

// ---------------------------------------------------------------------------------------------
// Values: raw JSON text, objects with duplicate or dangerous keys, values resolved at run time
// ---------------------------------------------------------------------------------------------

const show = Symbol.for('fast-check/toStringMethod')

/** JSON text sent as is (numbers JSON.stringify cannot write, escapes). */
class Raw {
  constructor (readonly text: string) {}
  [show] () { return `raw(${this.text.slice(0, 60)})` }
}

/** A JSON object as a list of members: keeps duplicates and `__proto__` as written. */
class Obj {
  constructor (readonly entries: [string, unknown][]) {}
  [show] () { return `obj(${JSON.stringify(this.entries).slice(0, 200)})` }
}

/** A value only known when the request is sent: it depends on the target's current state. */
type Late =
  | { late: 'etag', template: string }
  | { late: 'snapshot', which: 'own' | 'foreign', n: number, upper: boolean }
  | { late: 'next', param: string, n: number, tamper: Tamper | null }
type Tamper = 'flip' | 'append' | 'truncate' | 'pad' | 'double' | 'upper' | 'space'

const isLate = (v: unknown): v is Late => typeof v === 'object' && v !== null && 'late' in v

// ---------------------------------------------------------------------------------------------
// The world: the sessions aimed at, and what was last seen of them
// ---------------------------------------------------------------------------------------------

interface Observation {
  gone: boolean
  etag: string | undefined
  view: Json
  history: Json[]
  snapshots: Json[]
  events: Json[]
}

const pool = new Map<string, Observation>() // id → the session as last observed
const deleted: string[] = []
/** sessions the other user created: never in the owner's lists */
const othersSessions = new Set<string>()
/** no session has this id: another user's session must be answered as this one is */
const GHOST = '0f022000-0000-4000-8000-00000000f022'
const seenNext = new Map<string, unknown[]>() // param name → values the service handed out
let sent = 0
let injected = 0
const statuses = new Map<string, number>()

/**
 * app.inject as the owner of the sessions (TEST_USER) unless the headers carry an `authorization`
 * of their own, or `anonymous` (no Authorization header at all).
 */
async function inject (opts: { method: string, url: string, headers?: Record<string, string | string[]>, payload?: string, anonymous?: boolean }) {
  injected++
  const headers = { ...(opts.headers ?? {}) }
  if (headers.authorization === undefined && !opts.anonymous) headers.authorization = `Bearer ${tokens.owner}`
  return app.inject({ method: opts.method as 'GET', url: opts.url, headers, ...(opts.payload === undefined ? {} : { payload: opts.payload }) })
}

function injectAs (opts: { method: string, url: string }, bearer: string) {
  return inject({ ...opts, headers: { authorization: `Bearer ${bearer}` } })
}

function parse (body: string): any {
  try { return body === '' ? undefined : JSON.parse(body) } catch { return body }
}

/** The session's observable state through the API (404 → gone), as its owner (`as`: another user's token). */
async function observe (id: string, as: string = tokens.owner): Promise<Observation> {
  const inject = (opts: { method: string, url: string }) => injectAs(opts, as)
  const res = await inject({ method: 'GET', url: `/v1/sessions/${id}` })
  if (res.statusCode === 404) return { gone: true, etag: undefined, view: {}, history: [], snapshots: [], events: [] }
  if (res.statusCode !== 200) throw new Error(`observing ${id}: ${res.statusCode} ${res.body}`)
  const history: Json[] = []
  for (let cursor: string | null = null; ;) {
    const page = parse((await inject({ method: 'GET', url: `/v1/sessions/${id}/history?limit=1000${cursor ? `&cursor=${cursor}` : ''}` })).body)
    history.push(...page.items)
    cursor = page.nextCursor
    if (!cursor) break
  }
  const events: Json[] = []
  for (let after = 0; ;) {
    const page = parse((await inject({ method: 'GET', url: `/v1/sessions/${id}/events?limit=1000&after=${after}` })).body)
    events.push(...page.items)
    if (page.nextAfter === null) break
    after = page.nextAfter
  }
  const snapshots = parse((await inject({ method: 'GET', url: `/v1/sessions/${id}/snapshots` })).body).items as Json[]
  const view = parse(res.body) as Json
  // the running stretch of an active session grows with the clock: everything else must hold still
  view.usage = { ...view.usage, activeMs: undefined }
  return { gone: false, etag: res.headers.etag as string, view, history, snapshots, events }
}

async function rows<T> (query: ReturnType<typeof sql>): Promise<T[]> {
  const result = await app.database.db.execute(query)
  return (Array.isArray(result) ? result : (result as unknown as { rows: T[] }).rows) as T[]
}

/**
 * Every write to every table of the service, noted by triggers this file adds to its own database
 * (a fresh one): a request that must change nothing is held to having written nothing at all,
 * and a success to having written only rows of its own session. `owner` is the session a row
 * belongs to, null for a table that is not per session.
 */
const serviceTables = await rows<{ name: string, owner: string | null }>(sql`
  select t.table_name::text as name,
    (select c.column_name::text from information_schema.columns c
     where c.table_schema = 'public' and c.table_name = t.table_name
       and c.column_name = case when t.table_name = 'sessions' then 'id' else 'session_id' end) as owner
  from information_schema.tables t
  where t.table_schema = 'public' and t.table_type = 'BASE TABLE'
    -- the instance's own lease, renewed on a timer whatever the requests do
    and t.table_name <> 'service_instances'
  order by 1`)
await app.database.db.execute(sql.raw('create table fuzz_writes (n bigserial primary key, tbl text not null, op text not null, owner text)'))
await app.database.db.execute(sql.raw(`create function fuzz_note_table () returns trigger language plpgsql as $$
  begin insert into fuzz_writes (tbl, op) values (TG_TABLE_NAME, TG_OP); return null; end $$`))
for (const [i, { name, owner }] of serviceTables.entries()) {
  // the owner column read as is: a row is never converted (to_jsonb would choke on a json payload
  // that holds a lone surrogate escape, which the json type itself stores happily)
  const ownerOf = (rec: string) => (owner ? `${rec}."${owner}"::text` : 'null')
  for (const statement of [
    `create function fuzz_note_${i} () returns trigger language plpgsql as $$
     begin
       insert into fuzz_writes (tbl, op, owner) values (TG_TABLE_NAME, TG_OP,
         case when TG_OP = 'DELETE' then ${ownerOf('OLD')} else ${ownerOf('NEW')} end);
       return null;
     end $$`,
    `create trigger fuzz_note_rows after insert or update or delete on "${name}" for each row execute function fuzz_note_${i}()`,
    `create trigger fuzz_note_truncate after truncate on "${name}" for each statement execute function fuzz_note_table()`
  ]) await app.database.db.execute(sql.raw(statement))
}

let watermark = '0'
interface Write { n: string, tbl: string, op: string, owner: string | null }

/** The writes since the last call. */
async function writes (): Promise<Write[]> {
  const list = await rows<Write>(sql`select n::text as n, tbl, op, owner from fuzz_writes w where w.n > ${watermark}::bigint order by w.n`)
  if (list.length > 0) watermark = list[list.length - 1]!.n
  return list
}

/** FUZZ_TRACE=<file>: one line per request sent, with the writes it made */
function trace (line: string): void {
  if (process.env.FUZZ_TRACE) appendFileSync(process.env.FUZZ_TRACE, `${line}\n`)
}

async function expectStatus (method: string, url: string, status: number, payload?: unknown): Promise<any> {
  const res = await inject({ method, url, ...(payload === undefined ? {} : { payload: JSON.stringify(payload), headers: { 'content-type': 'application/json' } }) })
  if (res.statusCode !== status) throw new Error(`setup ${method} ${url}: ${res.statusCode} ${res.body}`)
  // a transition's state event is stored after the answer: wait for it
  await app.events.flush()
  return parse(res.body)
}

/** A new session in `state`, made the way a client (or, for failed and expired, the system) would. */
async function seed (state: SessionState): Promise<string> {
  const s = await expectStatus('POST', '/v1/sessions', 201, { title: `fuzz ${state}` })
  const to = (target: string) => expectStatus('POST', `/v1/sessions/${s.id}/transitions`, 200, { to: target })
  if (state === 'active' || state === 'paused' || state === 'suspended') await to('active')
  if (state === 'paused') await expectStatus('POST', `/v1/sessions/${s.id}/pause`, 200)
  if (state === 'suspended') await to('suspended')
  if (state === 'completed') await to('completed')
  if (state === 'failed' || state === 'expired') await app.sessions.transitionState(s.id, state, { actor: 'system', reason: 'fuzz' })
  await app.events.flush()
  pool.set(s.id, await observe(s.id))
  trace(`seeded ${state} ${s.id}: ${JSON.stringify(await writes())}`)
  return s.id as string
}

async function seedDeleted (): Promise<string> {
  const s = await expectStatus('POST', '/v1/sessions', 201, { title: 'fuzz deleted' })
  await expectStatus('DELETE', `/v1/sessions/${s.id}`, 204)
  deleted.push(s.id)
  await writes()
  return s.id as string
}

const inState = (state: SessionState) => [...pool].filter(([, o]) => !o.gone && o.view.state === state).map(([id]) => id)

/**
 * At most a few sessions per state stay targets, so a request often meets one it changed before;
 * one with a long past retires (reading it back before and after every request would cost more
 * than it finds).
 */
function prune (): void {
  for (const [id, o] of pool) if (o.history.length > 24 || o.events.length > 48) pool.delete(id)
  for (const state of SESSION_STATES) for (const id of inState(state).slice(4)) pool.delete(id)
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const b64 = (s: string) => Buffer.from(s).toString('base64url')
/** What a string becomes once stored as UTF-8: lone surrogates turn into U+FFFD. */
const wellFormed = (s: string) => s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd')
const printable = (s: string) => /^[\t\x20-\x7e]*$/.test(s)
const big = 'x'.repeat(config.limits.bodyBytes + 1)
const w = <T>(weight: number, arbitrary: fc.Arbitrary<T>) => ({ weight, arbitrary })
/** `arb` in `percent` % of the cases, else `nil` */
const maybe = <T, N>(arb: fc.Arbitrary<T>, percent: number, nil: N): fc.Arbitrary<T | N> =>
  percent <= 0 ? fc.constant(nil) : fc.oneof(w(100 - percent, fc.constant(nil)), w(percent, arb))

/** Path id: an existing session in some state (as written, or spelled otherwise), or none. */
type IdForm = 'plain' | 'upper' | 'pct' | 'urn' | 'braces' | 'nodash' | 'suffix' | 'truncated' | 'space'
type TargetSpec =
  | { k: 'session', state: SessionState, n: number, form: IdForm }
  | { k: 'deleted', n: number }
  | { k: 'unknown', id: string }
  | { k: 'garbage', text: string, encode: boolean }

const idForm: fc.Arbitrary<IdForm> = fc.oneof(
  w(20, fc.constant<IdForm>('plain')),
  w(4, fc.constantFrom<IdForm>('upper', 'pct')),
  w(3, fc.constantFrom<IdForm>('urn', 'braces', 'nodash', 'suffix', 'truncated', 'space'))
)

function targetArb (allowed: readonly SessionState[] = SESSION_STATES): fc.Arbitrary<TargetSpec> {
  return fc.oneof(
    w(30, fc.record({ k: fc.constant('session' as const), state: fc.constantFrom(...allowed), n: fc.nat(7), form: idForm })),
    w(2, fc.record({ k: fc.constant('deleted' as const), n: fc.nat(7) })),
    w(3, fc.record({ k: fc.constant('unknown' as const), id: fc.oneof(fc.uuid(), fc.constantFrom('00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff')) })),
    w(3, fc.record({
      k: fc.constant('garbage' as const),
      text: fc.oneof(
        fc.string({ unit: 'binary', maxLength: 40 }),
        fc.constantFrom('', ' ', '.', '..', '%', '%00', '%zz', '%E0%A4%A', '%2F', '%2e%2e', 'null', 'undefined', '-1', '0', '1e9',
          'x'.repeat(300), '🙂', 'ü', '%u0041', '*', '\\', "'", '"', '<script>', '{}', '[]', '?', '#')
      ),
      encode: fc.boolean()
    }))
  )
}

function spell (id: string, form: IdForm): string {
  switch (form) {
    case 'plain': return id
    case 'upper': return id.toUpperCase()
    case 'pct': return [...id].map((c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join('')
    case 'urn': return `urn:uuid:${id}`
    case 'braces': return `%7B${id}%7D`
    case 'nodash': return id.replaceAll('-', '')
    case 'suffix': return `${id}0`
    case 'truncated': return id.slice(0, -1)
    case 'space': return `%20${id}`
  }
}

// -- JSON values -----------------------------------------------------------------------------

const oddScalars: unknown[] = [
  null, true, false, 0, -1, 1, 1.5, -0.5, '', ' ', '\t', '\u0000', 'a\u0000b', '\ud800', '\udfff', 'a\ud83d', '\u202e\u200b',
  '\u2028', '\u0001\u001f\u007f', '🙂'.repeat(100), 'x'.repeat(201), 'x'.repeat(501), 'x'.repeat(1025), 'é'.repeat(300),
  '600', '3600', '1e3', 'null', 'true', '[]', '{}', '__proto__', 'constructor', '../../etc', '/etc/passwd', 'C:\\Windows',
  2 ** 31, 2 ** 31 - 1, -(2 ** 31) - 1, 2 ** 32, 2 ** 53, Number.MAX_SAFE_INTEGER, 1e20, -1e20, Number.MAX_VALUE, Number.MIN_VALUE,
  [], [1], ['active'], {}, { a: 1 }
]
const oddRaw = [
  '1e400', '-1e400', '-0', '9007199254740993', '1E2', '6e2', '0.0', '600.0', '1.0000000000000001', '"\\u0000"', '"\\ud800"',
  '"\\uDBFF\\uDFFF"', '"\\\\"', '[[[[[[[[]]]]]]]]', '{"__proto__":{"polluted":1}}', '{"constructor":{"prototype":{"polluted":1}}}',
  '123456789012345678901234567890'
].map((s) => new Raw(s))

const anyJson = fc.jsonValue({ maxDepth: 2 })
const unicodeString = (minLength: number, maxLength: number) => fc.oneof(
  fc.string({ unit: 'grapheme', minLength, maxLength }),
  fc.string({ unit: 'grapheme-ascii', minLength, maxLength }),
  fc.string({ unit: 'binary', minLength, maxLength })
)

function generalOdd (): fc.Arbitrary<unknown> {
  return fc.oneof(
    w(6, fc.constantFrom(...oddScalars)),
    w(3, fc.constantFrom(...oddRaw)),
    w(2, anyJson),
    w(1, fc.string({ unit: 'binary', maxLength: 30 })),
    w(1, fc.integer()),
    w(1, fc.double({ noNaN: true, noDefaultInfinity: true }))
  )
}

/** What a PATCH may change (besides the version, updatedAt and, with a TTL, expiresAt). */
const PATCHABLE = ['title', 'idleTimeoutSeconds', 'ttlSeconds', 'model', 'permissionMode', 'permissionTimeoutSeconds']

function rangeOf (name: string): [number, number] | undefined {
  if (name === 'idleTimeoutSeconds') return [config.idleTimeout.minSeconds, config.idleTimeout.maxSeconds]
  if (name === 'ttlSeconds') return [config.ttl.minSeconds, config.ttl.maxSeconds]
  return undefined
}

const validWorkdir = fc.oneof(
  fc.stringMatching(/^[a-z0-9_-]{1,12}(\/[a-z0-9_-]{1,12}){0,2}$/),
  // absolute: inside the owner's area (for the other user, someone else's: refused)
  fc.stringMatching(/^[a-z0-9_-]{1,12}$/).map((s) => `${areaOf(TEST_USER)}/abs-${s}`)
)

/** A value valid for the schema (as far as the schema says: ranges come from the configuration). */
function validArb (schema: Json, name: string): fc.Arbitrary<unknown> {
  const s = deref(schema)
  if (Array.isArray(s.anyOf)) return fc.oneof(...(s.anyOf as Json[]).map((x) => validArb(x, name)))
  if (Array.isArray(s.enum)) return fc.constantFrom(...(s.enum as unknown[]))
  switch (s.type) {
    case 'null': return fc.constant(null)
    case 'boolean': return fc.boolean()
    case 'integer': {
      const range = rangeOf(name)
      const [min, max] = range ?? [s.minimum ?? -1000, s.maximum ?? 1000]
      return fc.oneof(fc.integer({ min, max }), fc.constantFrom(min, max))
    }
    case 'number': return fc.double({ noNaN: true, noDefaultInfinity: true })
    case 'string': {
      if (s.format === 'uuid') {
        return name === 'snapshotId'
          ? fc.record({ late: fc.constant('snapshot' as const), which: fc.constant('own' as const), n: fc.nat(5), upper: fc.boolean() })
          : fc.uuid()
      }
      if (name === 'workdir') return validWorkdir
      const min = s.minLength ?? 0
      const max = Math.min(s.maxLength ?? 40, 40)
      const noNul = (v: string) => !v.includes('\u0000')
      return fc.oneof(
        w(3, unicodeString(Math.max(min, 1), Math.max(min, max)).filter(noNul)),
        w(1, fc.constant('x'.repeat(s.maxLength ?? 200)))
      ).filter((v) => v.length >= min && noNul(v))
    }
    case 'array': return fc.array(validArb(s.items ?? {}, name), { maxLength: 3 })
    case 'object': return objectArb(s)
    default: return anyJson
  }
}

function objectArb (s: Json): fc.Arbitrary<Obj> {
  const props = Object.entries((s.properties ?? {}) as Record<string, Json>)
  const required = (s.required ?? []) as string[]
  const minProperties = (s.minProperties ?? 0) as number
  const record = fc.record(Object.fromEntries(props.map(([k, p]) => [k, validArb(p, k)])), { requiredKeys: required })
  return record.map((r) => new Obj(Object.entries(r))).filter((o) => o.entries.length >= minProperties)
}

/** A value wrong for the schema, or right at its edges. */
function oddArb (schema: Json, name: string): fc.Arbitrary<unknown> {
  const s = deref(schema)
  const specific: fc.Arbitrary<unknown>[] = []
  const types = Array.isArray(s.anyOf) ? (s.anyOf as Json[]).map((x) => deref(x)) : [s]
  for (const x of types) {
    if (Array.isArray(x.enum)) {
      const values = x.enum as string[]
      specific.push(fc.constantFrom(...values).chain((v) => fc.constantFrom(v.toUpperCase(), ` ${v}`, `${v}\u0000`, `${v}s`, v.slice(1), [v], { v })))
      specific.push(fc.constantFrom('sleeping', 'deleted', 'running', 'ACTIVE', ''))
    }
    if (x.type === 'integer') {
      const range = rangeOf(name)
      if (range) {
        const [min, max] = range
        specific.push(fc.constantFrom(min - 1, min, max, max + 1, 0, -min, max * 1000, String(min), new Raw(`${min}.0`), new Raw(`${max}.5`), new Raw(`${max}e0`)))
      }
      specific.push(fc.integer(), fc.constantFrom(0.1, -1, 2 ** 31, 2 ** 53 + 2, '1', new Raw('1e400'), new Raw('-0')))
    }
    if (x.type === 'string') {
      const max = (x.maxLength ?? 200) as number
      specific.push(fc.constantFrom('x'.repeat(max + 1), '🙂'.repeat(max), '🙂'.repeat(max + 1), 'é'.repeat(max + 1), '', 'x'.repeat(20000)))
      specific.push(fc.tuple(unicodeString(0, 10), unicodeString(0, 10)).map(([a, b]) => `${a}\u0000${b}`))
      specific.push(unicodeString(0, 60))
      if (x.format === 'uuid') {
        specific.push(fc.uuid().chain((u) => fc.constantFrom(u.toUpperCase(), `urn:uuid:${u}`, `{${u}}`, u.replaceAll('-', ''), `${u} `, u.slice(1))))
        specific.push(fc.record({ late: fc.constant('snapshot' as const), which: fc.constant('foreign' as const), n: fc.nat(5), upper: fc.boolean() }))
        specific.push(fc.uuid(), fc.constantFrom('00000000-0000-0000-0000-000000000000', 'latest'))
      }
      if (name === 'workdir') {
        specific.push(fc.constantFrom('.', '..', '../x', 'a/../../y', '/', '/etc', '/etc/mobvibe-fuzz', `${root}`, `${root}-evil/z`, `${root}/../z`,
          'x'.repeat(256), `${'d/'.repeat(600)}x`, 'a//b', './a', 'a/./b', '~', '~/x', '-rf', ' lead', 'trail ',
          // the workspace root itself, and another user's area
          `${root}/abs-x`, areaOf(TEST_USER), `${areaOf(OTHER_USER)}/x`, `../${userKey(OTHER_USER)}/x`, `${areaOf(TEST_USER)}/../${userKey(OTHER_USER)}/x`))
      }
    }
  }
  return fc.oneof(w(3, fc.oneof(...specific, generalOdd())), w(2, generalOdd()))
}

const strangeKeys = ['bogus', 'state', 'version', 'id', 'workdir', 'model', 'to', 'actor', 'text', 'snapshot', 'reason', 'title',
  '__proto__', 'constructor', 'prototype', '', ' ', 'TITLE', 'title\u0000', '$ref']

interface BodySpec {
  kind: 'none' | 'json' | 'text'
  /** Obj / Raw / Late / plain JSON for kind json */
  value?: unknown
  text?: string
  contentType?: string | undefined
  /** a body the schema accepts, sent as application/json */
  valid: boolean
}

const jsonTypes = fc.oneof(
  w(12, fc.constant('application/json')),
  w(1, fc.constantFrom('application/json; charset=utf-8', 'application/json;charset=UTF-8', 'Application/JSON', 'application/json ', 'application/json; foo=bar'))
)
const wrongTypes = fc.constantFrom('text/plain', 'application/xml', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x',
  'application/octet-stream', 'application/jsonp', 'application/json-patch+json', 'application/merge-patch+json', 'application/problem+json',
  '*/*', 'json', 'application/json; charset=latin1', 'application/json; charset=utf-16', 'application', 'text/json', ';', 'application/json, text/plain')
const textBodies = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 60 }),
  fc.constantFrom('{', '}', '[', ']', 'null', '""', ' ', '\n\t', '\ufeff{}', '{"title":"x",}', '{title:"x"}', "{'title':'x'}", '{"a":1}/*c*/',
    '{"to":"active"', '\u0000', 'NaN', 'undefined', '{"a":' + '['.repeat(3000) + ']'.repeat(3000) + '}', '1 2', '{}{}', 'true false'),
  anyJson.map((v) => JSON.stringify(v).slice(0, -1))
)

function mutations (s: Json): fc.Arbitrary<Obj> {
  const props = Object.entries((s.properties ?? {}) as Record<string, Json>)
  const base = objectArb(s)
  const variants: fc.Arbitrary<Obj>[] = [
    // one member added that the schema does not know
    fc.tuple(base, fc.oneof(fc.constantFrom(...strangeKeys), fc.string({ maxLength: 10 })), anyJson)
      .map(([o, k, v]) => new Obj([...o.entries, [k, v]]))
  ]
  if (props.length > 0) {
    // one member wrong, the others right
    variants.push(fc.tuple(base, fc.constantFrom(...props).chain(([k, p]) => oddArb(p, k).map((v) => [k, v] as [string, unknown])))
      .map(([o, [k, v]]) => new Obj([...o.entries.filter(([key]) => key !== k), [k, v]])))
    // a member twice: the second one wins, or is odd
    variants.push(fc.tuple(base, fc.constantFrom(...props).chain(([k, p]) => fc.tuple(fc.constant(k), validArb(p, k), oddArb(p, k))))
      .map(([o, [k, a, b]]) => new Obj([...o.entries, [k, a], [k, b]])))
  }
  for (const r of (s.required ?? []) as string[]) variants.push(base.map((o) => new Obj(o.entries.filter(([k]) => k !== r))))
  return fc.oneof(...variants)
}

function bodyArb (op: Operation | undefined): fc.Arbitrary<BodySpec> {
  const schema = op?.body?.schema
  const none = fc.constant<BodySpec>({ kind: 'none', valid: !op?.body?.required })
  const stray = fc.oneof(
    fc.constantFrom<BodySpec>({ kind: 'json', value: new Obj([]), contentType: 'application/json', valid: false },
      { kind: 'json', value: new Obj([['bogus', 1]]), contentType: 'application/json', valid: false }),
    anyJson.map((v): BodySpec => ({ kind: 'json', value: v, contentType: 'application/json', valid: false }))
  )
  const odd = [
    w(1, anyJson.map((v): BodySpec => ({ kind: 'json', value: v, contentType: 'application/json', valid: false }))),
    w(1, fc.tuple(textBodies, fc.option(jsonTypes, { nil: undefined })).map(([text, contentType]): BodySpec => ({ kind: 'text', text, contentType, valid: false }))),
    w(1, fc.tuple(textBodies, wrongTypes).map(([text, contentType]): BodySpec => ({ kind: 'text', text, contentType, valid: false }))),
    w(1, fc.constantFrom<BodySpec>({ kind: 'text', text: big, contentType: 'application/json', valid: false },
      { kind: 'text', text: `{"title":"${big}"}`, contentType: 'application/json', valid: false },
      { kind: 'text', text: big, contentType: 'text/plain', valid: false }))
  ]
  if (!schema) return fc.oneof(w(14, none), w(2, stray), ...odd)
  const objectBody = deref(schema).type === 'object'
  return fc.oneof(
    w(10, fc.tuple(objectBody ? objectArb(schema) : validArb(schema, 'body'), jsonTypes)
      .map(([value, contentType]): BodySpec => ({ kind: 'json', value, contentType, valid: contentType === 'application/json' }))),
    w(8, (objectBody ? mutations(schema) : oddArb(schema, 'body')).map((value): BodySpec => ({ kind: 'json', value, contentType: 'application/json', valid: false }))),
    w(1, fc.tuple(objectBody ? objectArb(schema) : validArb(schema, 'body'), wrongTypes)
      .map(([value, contentType]): BodySpec => ({ kind: 'json', value, contentType, valid: false }))),
    w(1, none),
    ...odd
  )
}

// -- headers ---------------------------------------------------------------------------------

const etagTemplates = fc.constantFrom('"{v}"', '"{v}"', '"{v}"', '*', '"{v}"', '"{v}"', '"{v}"', 'W/"{v}"', '"{v-1}"', '"{v+1}"', '"{v}", "{v+1}"', '"{v+1}", "{v}"', '{v}', ' "{v}" ',
  '*', '"{v}",', '"{v}",,"{v}"', '"0{v}"', '"{v}.0"', '"{v}', '{v}"', "'{v}'", '"-{v}"', 'W/"{v}", "{v+1}"', '"{v+1}", W/"{v}"', '*, "{v}"',
  '"99999999999"', '"2147483647"', '"2147483648"', '"4294967297"', '"9999999999"', '"0"', '"-1"', '""', '', ' ', '"1"'.repeat(50), 'W/', '"abc"')
const ifMatchArb: fc.Arbitrary<unknown> = fc.oneof(
  w(6, etagTemplates.map((template): Late => ({ late: 'etag', template }))),
  w(1, fc.string({ maxLength: 30 }).filter(printable)),
  w(1, fc.array(etagTemplates.map((template): Late => ({ late: 'etag', template })), { minLength: 2, maxLength: 3 }))
)

function headersArb (op: Operation | undefined, method: Method): fc.Arbitrary<Record<string, unknown>> {
  const named = new Set((op?.params ?? []).filter((p) => p.in === 'header').map((p) => p.name.toLowerCase()))
  // an undocumented method, and a route that takes no If-Match, meet one now and then too
  return fc.record({
    'if-match': maybe(ifMatchArb, named.has('if-match') ? 40 : 10, null),
    'if-none-match': maybe(ifMatchArb, named.has('if-none-match') ? 50 : method === 'GET' ? 5 : 0, null),
    accept: maybe(fc.constantFrom('application/xml', 'text/html', '*/*', 'application/problem+json', ''), 12, null)
  }).map((h) => Object.fromEntries(Object.entries(h).filter(([, v]) => v !== null)))
}

// -- the Authorization header ----------------------------------------------------------------

/**
 * Who sends the request: the owner of the sessions aimed at (a template with `{owner}`, for the
 * spellings the scheme allows), another user with a valid token, nobody, or a header that is no
 * valid bearer token (`{owner}`, `{expired}`, `{forged}`, `{noSub}`: the tokens minted above).
 */
type AuthSpec = { k: 'owner', header: string } | { k: 'other' } | { k: 'none' } | { k: 'invalid', header: string }

const invalidHeaders = fc.oneof(
  w(6, fc.constantFrom('Bearer {expired}', 'Bearer {forged}', 'Bearer {noSub}', 'Bearer {owner}x', 'Bearer x{owner}', 'Bearer {owner}.',
    'Bearer {owner}.x', 'Token {owner}', '{owner}', 'Basic {owner}', 'Bearer\t{owner}', 'Bearer "{owner}"', 'Bearer {owner} {owner}',
    'Bearer {owner},Bearer {owner}', 'Bearer', 'Bearer ', '', ' ', 'Basic dXNlcjpwYXNz', 'Bearer not.a.jwt', 'Bearer ...', 'Bearer =',
    'Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ0ZXN0LXVzZXIifQ.', `Bearer ${'a'.repeat(8000)}`)),
  w(1, fc.string({ maxLength: 40 }).filter(printable).map((v) => `Bearer ${v}`)),
  w(1, fc.string({ maxLength: 40 }).filter(printable))
)
const authArb: fc.Arbitrary<AuthSpec> = fc.oneof(
  w(80, fc.oneof(w(20, fc.constant('Bearer {owner}')), w(1, fc.constantFrom('bearer {owner}', 'BEARER {owner}', 'Bearer  {owner}', 'Bearer {owner} ')))
    .map((header): AuthSpec => ({ k: 'owner', header }))),
  w(8, fc.constant<AuthSpec>({ k: 'other' })),
  w(5, fc.constant<AuthSpec>({ k: 'none' })),
  w(7, invalidHeaders.map((header): AuthSpec => ({ k: 'invalid', header })))
)
const fillTokens = (template: string) => template.replace(/\{(owner|expired|forged|noSub)\}/g, (_, k: keyof typeof tokens) => tokens[k])

// -- query strings ---------------------------------------------------------------------------

/** A query value: [name, value, encode?] */
type QueryItem = [string, unknown, boolean]

const tamper = fc.constantFrom<Tamper>('flip', 'append', 'truncate', 'pad', 'double', 'upper', 'space')
const cursorPayloads: fc.Arbitrary<string> = fc.oneof(
  fc.tuple(fc.date({ noInvalidDate: true }), fc.uuid()).map(([d, u]) => b64(JSON.stringify([d.toISOString(), u]))),
  fc.constantFrom('+275760-09-13T00:00:00.000Z', '-271821-04-20T00:00:00.000Z', '0000-01-01T00:00:00.000Z', '1970-01-01T00:00:00.000Z',
    '2030-01-01T00:00:00.000Z', '2030-01-01T00:00:00Z', '2030-01-01', 'yesterday', '').chain((d) =>
    fc.constantFrom([d, '00000000-0000-0000-0000-000000000000'], [d, 'not-a-uuid'], [d], [d, d], { createdAt: d }, [null, null], [d, 1]).map((v) => b64(JSON.stringify(v)))),
  anyJson.map((v) => b64(JSON.stringify(v))),
  fc.oneof(fc.bigInt({ min: -10n, max: 10n ** 20n }), fc.constantFrom(0n, 1n, 2147483647n, 2147483648n, 999999999999999n)).map((n) => b64(String(n))),
  fc.constantFrom('', ' ', '=', 'a'.repeat(201), 'garbage', '%00', 'MA==', 'MA', 'LTE', '____', 'null')
)

function queryValueArb (p: Param): fc.Arbitrary<QueryItem[]> {
  const s = p.schema
  const one = (v: fc.Arbitrary<unknown>) => v.map((x): QueryItem[] => [[p.name, x, true]])
  const next = (n: number) => fc.record({ late: fc.constant('next' as const), param: fc.constant(p.name), n: fc.constant(n), tamper: maybe(tamper, 40, null) })
  if (s.type === 'array') {
    const items = deref(s.items ?? {})
    const item = fc.oneof(w(4, Array.isArray(items.enum) ? fc.constantFrom(...(items.enum as string[])) : fc.string()),
      w(1, fc.constantFrom('', 'bogus', 'ACTIVE', 'active,paused', ' active', 'active\u0000')))
    return fc.oneof(
      fc.array(item, { minLength: 1, maxLength: 4 }).map((vs) => vs.map((v): QueryItem => [p.name, v, true])),
      fc.array(item, { minLength: 1, maxLength: 3 }).map((vs) => vs.map((v): QueryItem => [`${p.name}[]`, v, true])),
      item.map((v): QueryItem[] => [[p.name, v, true], [p.name, v, true]])
    )
  }
  if (s.type === 'integer') {
    const min = (s.minimum ?? -100) as number
    const max = (s.maximum ?? 100000) as number
    return one(fc.oneof(
      w(6, fc.integer({ min, max: Math.min(max, min + 1000) }).map(String)),
      w(2, fc.constantFrom(min, max, min - 1, max + 1, 0, -1).map(String)),
      w(2, fc.constantFrom('1.5', '1e2', '0x10', ' 5', '5 ', '+5', '05', 'abc', '', 'NaN', 'Infinity', '-0', '99999999999999999999',
        '9007199254740993', '1,2', '[1]', 'true', 'null', '١٢', String(2 ** 31), String(2 ** 63))),
      w(p.name === 'after' ? 3 : 0, fc.nat(9).chain((n) => next(n)))
    ))
  }
  if (p.name === 'cursor') {
    return one(fc.oneof(w(3, fc.nat(9).chain((n) => next(n))), w(4, cursorPayloads), w(1, fc.string({ unit: 'binary', maxLength: 30 }))))
  }
  return one(fc.oneof(unicodeString(0, 20), fc.constantFrom('', 'x'.repeat(300))))
}

/** A query value the schema accepts (a cursor only as the service handed one out). */
function validQueryArb (p: Param): fc.Arbitrary<QueryItem[]> {
  const s = p.schema
  if (s.type === 'array') {
    const items = deref(s.items ?? {})
    const values = Array.isArray(items.enum) ? items.enum as string[] : ['x']
    return fc.uniqueArray(fc.constantFrom(...values), { minLength: 1, maxLength: 3 }).map((vs) => vs.map((v): QueryItem => [p.name, v, true]))
  }
  if (s.type === 'integer') {
    const min = (s.minimum ?? 0) as number
    const max = Math.min((s.maximum ?? 1000) as number, min + 1000)
    const value = p.name === 'after'
      ? fc.oneof(fc.integer({ min, max: Math.min(max, 60) }).map(String), fc.record({ late: fc.constant('next' as const), param: fc.constant(p.name), n: fc.nat(9), tamper: fc.constant(null) }))
      : fc.oneof(fc.integer({ min, max: Math.min(max, min + 10) }), fc.integer({ min, max })).map(String)
    return value.map((v): QueryItem[] => [[p.name, v, true]])
  }
  if (p.name === 'cursor') return fc.nat(9).map((n): QueryItem[] => [[p.name, { late: 'next', param: p.name, n, tamper: null }, true]])
  return fc.string({ minLength: s.minLength ?? 0, maxLength: Math.min(s.maxLength ?? 20, 20) }).map((v): QueryItem[] => [[p.name, v, true]])
}

function queryArb (op: Operation | undefined): fc.Arbitrary<QueryItem[]> {
  const params = (op?.params ?? []).filter((p) => p.in === 'query')
  const valid = fc.tuple(...params.map((p) => maybe(validQueryArb(p), 50, [] as QueryItem[]))).map((ps) => ps.flat())
  const odd = fc.tuple(...params.map((p) => maybe(fc.oneof(w(2, queryValueArb(p)), w(1, validQueryArb(p))), 50, [] as QueryItem[]))).map((ps) => ps.flat())
  const extra = maybe(fc.tuple(
    fc.oneof(fc.constantFrom('sort', 'after', 'before', 'offset', 'page', 'limit', 'state', 'cursor', '__proto__', 'constructor', 'limit[]', ''), fc.string({ maxLength: 8 })),
    fc.oneof(fc.string({ maxLength: 10 }), fc.constantFrom('1', '0', '-1', 'active'))
  ).map(([k, v]): QueryItem[] => [[k, v, true]]), 15, [] as QueryItem[])
  const rawPart = maybe(fc.constantFrom('%', '%zz', '%00', '%ff', '&&', '=', '==', 'a=%E0%A4%A', '&limit', 'limit=%31', '?', 'x=1&x=2&x=3')
    .map((raw): QueryItem[] => [['', raw, false]]), 10, [] as QueryItem[])
  return fc.oneof(
    w(2, valid),
    w(3, fc.tuple(odd, extra, rawPart).map(([ps, e, r]) => [...ps, ...e, ...r]))
  )
}

// -- whole requests --------------------------------------------------------------------------

interface Plan {
  method: Method
  path: string
  target: TargetSpec | undefined
  query: QueryItem[]
  headers: Record<string, unknown>
  body: BodySpec
  auth: AuthSpec
  /** seconds the clock moves before the request */
  advance: number
}

/** Messages must never reach an agent: only sessions that refuse them are aimed at. */
const MESSAGE_TARGETS: readonly SessionState[] = ['paused', 'completed', 'failed', 'expired']
const advanceArb = fc.oneof(w(6, fc.constant(0)), w(1, fc.integer({ min: 1, max: 7200 })))

/** The documented operation a request is for (HEAD is GET without the body). */
function opOf (method: Method, path: string): Operation | undefined {
  return operations.find((o) => o.path === path && (o.method === method || (method === 'HEAD' && o.method === 'GET')))
}

function planArb (method: Method, path: string, opts: { target?: fc.Arbitrary<TargetSpec>, body?: fc.Arbitrary<BodySpec>, headers?: fc.Arbitrary<Record<string, unknown>>, auth?: fc.Arbitrary<AuthSpec> } = {}): fc.Arbitrary<Plan> {
  const op = opOf(method, path)
  const allowed = path.endsWith('/messages') ? MESSAGE_TARGETS : SESSION_STATES
  return fc.record({
    method: fc.constant(method),
    path: fc.constant(path),
    target: path.includes('{') ? (opts.target ?? targetArb(allowed)) : fc.constant(undefined),
    query: queryArb(op),
    headers: opts.headers ?? headersArb(op, method),
    body: opts.body ?? bodyArb(method === 'HEAD' ? undefined : op),
    auth: opts.auth ?? authArb,
    advance: advanceArb
  })
}

// ---------------------------------------------------------------------------------------------
// Sending a plan, and judging what came back
// ---------------------------------------------------------------------------------------------

interface Resolved {
  url: string
  /** the same request for a session that does not exist (spelled the same way), when it aims at one */
  ghostUrl: string | undefined
  /** who sent it: the owner, another user, or nobody with a valid token */
  auth: AuthSpec['k']
  /** the user of the valid token sent, if any */
  user: string | undefined
  /** no Authorization header at all */
  anonymous: boolean
  /** the existing session aimed at, and the id as the path spelled it (decoded) */
  id: string | undefined
  spelled: string
  headers: Record<string, string | string[]>
  payload: string | undefined
  sentBody: unknown
}

function applyTamper (s: string, how: Tamper): string {
  switch (how) {
    case 'flip': return s.length === 0 ? 'A' : `${s.slice(0, -1)}${s.endsWith('A') ? 'B' : 'A'}`
    case 'append': return `${s}A`
    case 'truncate': return s.slice(0, -1)
    case 'pad': return `${s}==`
    case 'double': return `${s}${s}`
    case 'upper': return s.toUpperCase()
    case 'space': return ` ${s}`
  }
}

function resolveLate (v: Late, id: string | undefined): string | undefined {
  const current = id ? pool.get(id) : undefined
  switch (v.late) {
    case 'etag': {
      const version = current && !current.gone ? current.view.version as number : 1
      return v.template.replace(/\{v([+-]\d+)?\}/g, (_, d: string | undefined) => String(version + Number(d ?? 0)))
    }
    case 'snapshot': {
      const own = current?.snapshots.map((s) => s.id as string) ?? []
      const foreign = [...pool].filter(([other]) => other !== id).flatMap(([, o]) => o.snapshots.map((s) => s.id as string))
      const list = v.which === 'own' ? own : foreign
      const picked = list.length > 0 ? list[v.n % list.length]! : '0d6f3f0e-1b7a-4c55-8a51-6c1f3f2a9e01'
      return v.upper ? picked.toUpperCase() : picked
    }
    case 'next': {
      // what the service handed out lately; nothing yet: no such parameter, or a tampered guess
      const seen = seenNext.get(v.param) ?? []
      if (seen.length === 0 && !v.tamper) return undefined
      const base = seen.length > 0 ? String(seen[seen.length - 1 - (v.n % seen.length)]) : v.param === 'cursor' ? b64(String(v.n)) : String(v.n)
      return v.tamper ? applyTamper(base, v.tamper) : base
    }
  }
}

function serialize (v: unknown, id: string | undefined): string {
  if (v instanceof Raw) return v.text
  if (v instanceof Obj) return `{${v.entries.map(([k, x]) => `${JSON.stringify(k)}:${serialize(x, id)}`).join(',')}}`
  if (isLate(v)) return JSON.stringify(resolveLate(v, id) ?? '')
  if (Array.isArray(v)) return `[${v.map((x) => serialize(x, id)).join(',')}]`
  if (v !== null && typeof v === 'object') return `{${Object.entries(v).map(([k, x]) => `${JSON.stringify(k)}:${serialize(x, id)}`).join(',')}}`
  return JSON.stringify(v) ?? 'null'
}

async function resolve (plan: Plan): Promise<Resolved> {
  let id: string | undefined
  let segment = ''
  const tg = plan.target
  if (tg?.k === 'session') {
    let ids = inState(tg.state)
    if (ids.length === 0) ids = [await seed(tg.state)]
    id = ids[tg.n % ids.length]!
    segment = spell(id, tg.form)
  } else if (tg?.k === 'deleted') {
    const dead = deleted.length > 0 ? deleted[tg.n % deleted.length]! : await seedDeleted()
    segment = dead
  } else if (tg?.k === 'unknown') {
    segment = tg.id
  } else if (tg?.k === 'garbage') {
    segment = tg.encode ? encodeURIComponent(wellFormed(tg.text)) : wellFormed(tg.text).replace(/[^\x21-\x7e]/gu, (c: string) => encodeURIComponent(c))
  }
  const query = plan.query.flatMap(([k, v, encode]) => {
    const value = isLate(v) ? resolveLate(v, id) : typeof v === 'string' ? v : serialize(v, id)
    if (value === undefined) return []
    if (!encode) return [value]
    return [`${encodeURIComponent(wellFormed(k))}=${encodeURIComponent(wellFormed(value))}`]
  })
  const urlWith = (seg: string) => plan.path.replace(/\{[^}]+\}/g, seg) + (query.length > 0 ? `?${query.join('&')}` : '')
  const url = urlWith(segment)
  const ghostUrl = tg?.k === 'session' ? urlWith(spell(GHOST, tg.form)) : undefined
  const headers: Record<string, string | string[]> = {}
  for (const [k, v] of Object.entries(plan.headers)) {
    headers[k] = Array.isArray(v) ? v.map((x) => (isLate(x) ? resolveLate(x, id) ?? '' : String(x))) : isLate(v) ? resolveLate(v, id) ?? '' : String(v)
  }
  let payload: string | undefined
  let sentBody: unknown
  if (plan.body.kind === 'json') {
    payload = serialize(plan.body.value, id)
    try { sentBody = JSON.parse(payload) } catch { sentBody = undefined }
  } else if (plan.body.kind === 'text') {
    payload = plan.body.text
  }
  if (plan.body.kind !== 'none' && plan.body.contentType !== undefined) headers['content-type'] = plan.body.contentType
  const auth = plan.auth
  if (auth.k === 'owner' || auth.k === 'invalid') headers.authorization = fillTokens(auth.header)
  else if (auth.k === 'other') headers.authorization = `Bearer ${tokens.other}`
  const user = auth.k === 'owner' ? TEST_USER : auth.k === 'other' ? OTHER_USER : undefined
  let spelled = segment
  try { spelled = decodeURIComponent(segment) } catch {}
  return { url, ghostUrl, auth: auth.k, user, anonymous: auth.k === 'none', id, spelled, headers, payload, sentBody }
}

class Violation extends Error {
  override name = 'Violation'
  /** the first line of the explanation: what the request broke */
  readonly why: string
  constructor (explanation: string, readonly route: string, request: string) {
    super(`${explanation}\n${request}`)
    this.why = explanation.split('\n')[0]!
  }
}

/** FUZZ_KEEP_GOING=1: every distinct violation is collected (and reported at the end) instead of stopping at the first */
const KEEP_GOING = process.env.FUZZ_KEEP_GOING === '1'
const violations = new Map<string, { count: number, example: string }>()
let stopped = false

function describe (plan: Plan, r: Resolved, res: { statusCode: number, headers: Json, body: string } | undefined): string {
  const body = r.payload === undefined ? '' : `\n  body (${r.payload.length} chars): ${JSON.stringify(r.payload.slice(0, 400))}`
  const answer = res ? `\n→ ${res.statusCode} ${String(res.headers['content-type'] ?? '')} ${res.body.slice(0, 600)}` : ''
  // the tokens by name: they are long, and the same for the whole run
  const { authorization: _authorization, ...headers } = r.headers
  const auth = plan.auth.k === 'owner' || plan.auth.k === 'invalid' ? `${plan.auth.k} ${JSON.stringify(plan.auth.header.slice(0, 80))}` : plan.auth.k
  return `${plan.method} ${r.url.slice(0, 300)}\n  authorization: ${auth}\n  headers: ${JSON.stringify(headers).slice(0, 300)}${body}${answer}`
}

function strip (o: Observation): Json {
  // what a rejected request must leave exactly as it was
  return { gone: o.gone, etag: o.etag, view: o.view, history: o.history, snapshots: o.snapshots, events: o.events }
}

/** The strong tags an If-Match names, or '*' (what a 2xx, or a 412, must agree with). */
function admitted (header: string | string[] | undefined): { any: boolean, versions: number[] } | undefined {
  if (header === undefined) return undefined
  const value = (Array.isArray(header) ? header.join(',') : header).trim()
  if (value === '*') return { any: true, versions: [] }
  const versions = value.split(',').map((p) => /^"(\d{1,10})"$|^(\d{1,10})$/.exec(p.trim())).filter((m) => m !== null).map((m) => Number(m[1] ?? m[2]))
  return { any: false, versions }
}

const lastOf = (o: Obj | Json | undefined, key: string): unknown => {
  if (o === undefined || o === null || typeof o !== 'object') return undefined
  return Object.hasOwn(o, key) ? (o as Json)[key] : undefined
}

function legal (plan: Plan, r: Resolved, status: number, resBody: any, resHeaders: Json, before: Observation | undefined, after: Observation | undefined): string | undefined {
  const op = opOf(plan.method, plan.path)
  const opId = op && op.method === plan.method ? op.operationId : undefined
  const b = before?.view ?? {}
  const a = after?.view ?? {}
  const sentBody = r.sentBody as Json | undefined
  const ifMatch = admitted(r.headers['if-match'])
  const ifMatchOk = ifMatch === undefined || ifMatch.any || ifMatch.versions.includes(b.version as number)
  const etagOk = () => resHeaders.etag === `"${a.version}"`
  const sameBut = (...keys: string[]) => {
    const strip = (v: Json) => Object.fromEntries(Object.entries(v).filter(([k]) => !keys.includes(k)))
    return isDeepStrictEqual(strip(a), strip(b))
  }
  // history and events grow at the end, snapshots (newest first) at the front
  const appended = (list: 'history' | 'snapshots' | 'events', n: number) => {
    if (!before || !after || after[list].length !== before[list].length + n) return false
    const kept = list === 'snapshots' ? after[list].slice(n) : after[list].slice(0, before[list].length)
    return isDeepStrictEqual(kept, before[list])
  }
  const needs = (cond: unknown, what: string) => (cond ? undefined : what)
  switch (opId) {
    case 'createSession': {
      const area = areaOf(r.user ?? TEST_USER)
      const range = (v: unknown, [min, max]: [number, number]) => typeof v === 'number' && v >= min && v <= max
      return needs(status === 201, 'created with 201') ??
        needs(resBody?.state === 'pending' && resBody?.version === 1, 'a new session is pending at version 1') ??
        needs(resHeaders.etag === '"1"' && resHeaders.location === `/v1/sessions/${resBody.id}`, 'ETag "1" and Location') ??
        needs(UUID_RE.test(resBody.id), 'a uuid') ??
        needs(typeof resBody.workdir === 'string' && resBody.workdir.startsWith(`${area}/`), 'the workdir is inside the area of its user in the workspace root') ??
        needs(range(resBody.idleTimeoutSeconds, [config.idleTimeout.minSeconds, config.idleTimeout.maxSeconds]), 'idle timeout in range') ??
        needs(range(resBody.ttlSeconds, [config.ttl.minSeconds, config.ttl.maxSeconds]), 'TTL in range') ??
        needs(lastOf(sentBody, 'title') === undefined || resBody.title === wellFormed(lastOf(sentBody, 'title') as string), 'the title as sent') ??
        needs(lastOf(sentBody, 'ttlSeconds') === undefined || resBody.ttlSeconds === lastOf(sentBody, 'ttlSeconds'), 'the TTL as sent')
    }
    case 'updateSession':
      return needs(ifMatchOk, 'If-Match admitted the version') ??
        needs(!isTerminal(b.state), 'a terminal session is not patched') ??
        needs(a.version === b.version + 1, 'the version bumped by exactly one') ??
        needs(a.state === b.state, 'the state unchanged') ?? needs(etagOk(), 'the ETag of the new version') ??
        needs(isDeepStrictEqual({ ...resBody, usage: { ...resBody.usage, activeMs: undefined } }, a), 'the answer is the session as stored') ??
        needs(PATCHABLE.every((k) => lastOf(sentBody, k) === undefined ||
          a[k] === (typeof lastOf(sentBody, k) === 'string' ? wellFormed(lastOf(sentBody, k) as string) : lastOf(sentBody, k))), 'the members as sent') ??
        needs(sameBut('version', 'updatedAt', 'expiresAt', ...PATCHABLE), 'nothing else changed') ??
        needs(appended('history', 0) && appended('snapshots', 0), 'history and snapshots unchanged')
    case 'deleteSession':
      return needs(status === 204 && after?.gone, 'deleted is gone') ?? needs(ifMatchOk, 'If-Match admitted the version')
    case 'transitionSession': {
      const to = lastOf(sentBody, 'to') as SessionState
      const last = after?.history.at(-1)
      return needs(ifMatchOk, 'If-Match admitted the version') ??
        needs(canTransition(b.state, to, 'user'), `${b.state} → ${to} is a user edge`) ??
        needs(a.state === to && a.version === b.version + 1, 'the new state, one version on') ?? needs(etagOk(), 'the ETag of the new version') ??
        needs(appended('history', 1) && last?.from === b.state && last?.to === to && last?.actor === 'user' && last?.version === a.version, 'one history item') ??
        needs(lastOf(sentBody, 'reason') === undefined || last?.reason === wellFormed(lastOf(sentBody, 'reason') as string), 'the reason as sent') ??
        needs(appended('snapshots', to === 'paused' ? 1 : 0), 'a snapshot for a pause only') ??
        needs(appended('events', 1) && after?.events.at(-1)?.type === 'state', 'one state event')
    }
    case 'pauseSession':
      return needs(ifMatchOk, 'If-Match admitted the version') ??
        needs(canTransition(b.state, 'paused', 'user'), `${b.state} may be paused`) ??
        needs(a.state === 'paused' && a.version === b.version + 1, 'paused, one version on') ?? needs(etagOk(), 'the ETag of the paused session') ??
        needs(appended('snapshots', 1) && resBody?.sessionId === a.id && after?.snapshots.some((s) => s.id === resBody.id), 'the snapshot taken') ??
        needs(appended('history', 1) && appended('events', 1), 'one history item, one event')
    case 'resumeSession': {
      const snapshotId = lastOf(sentBody, 'snapshotId') as string | undefined
      return needs(ifMatchOk, 'If-Match admitted the version') ??
        needs(b.state === 'paused', 'only a paused session resumes') ??
        needs(a.state === 'active' && a.version === b.version + 1, 'active, one version on') ?? needs(etagOk(), 'the ETag of the new version') ??
        needs(snapshotId === undefined || before?.snapshots.some((s) => s.id === snapshotId.toLowerCase()), 'a snapshot of this session') ??
        needs(appended('history', 1) && appended('snapshots', 0) && appended('events', 1), 'one history item, one event, no snapshot')
    }
    case 'heartbeatSession':
      return needs(ifMatchOk, 'If-Match admitted the version') ??
        needs(!isTerminal(b.state), 'a terminal session takes no heartbeat') ??
        needs(a.version === b.version && a.state === b.state, 'neither the version nor the state changes') ??
        needs(resBody?.version === b.version && resBody?.state === b.state && resHeaders.etag === `"${b.version}"`, 'the answer names the version') ??
        needs(a.expiresAt >= b.expiresAt && resBody?.expiresAt === a.expiresAt, 'the deadline never earlier, and as answered') ??
        needs(sameBut('expiresAt', 'lastHeartbeatAt', 'updatedAt'), 'nothing else changed') ??
        needs(appended('history', 0) && appended('snapshots', 0) && appended('events', 0), 'no history, snapshot or event')
    case 'restartSession':
      return needs(b.state === 'active' || b.state === 'suspended', 'only an active or suspended session restarts') ??
        needs(a.state === 'active' && a.version === b.version + (b.state === 'suspended' ? 1 : 0), 'active, one version on from suspended') ??
        needs(a.agentSessionId === null, 'a fresh conversation') ??
        needs(appended('snapshots', 0) && appended('history', b.state === 'suspended' ? 1 : 0), 'history as the state moved')
    case 'sendMessage':
      return 'a message was accepted: only paused or terminal sessions are aimed at, which must refuse it'
    default:
      // reads, and operations this file does not know yet: checked by the writes they make only
      return undefined
  }
}

/** The workspace root two levels down: the users' areas, and what is in them. */
async function workspaceTree (): Promise<string[]> {
  const areas = (await readdir(root).catch(() => [])).sort()
  const inside = await Promise.all(areas.map(async (a) => (await readdir(join(root, a)).catch(() => [])).map((e) => `${a}/${e}`)))
  return [...areas, ...inside.flat()].sort()
}

async function exercise (plan: Plan): Promise<void> {
  if (plan.advance > 0) clock.advance(plan.advance * 1000)
  const r = await resolve(plan)
  const isCreate = opOf(plan.method, plan.path)?.operationId === 'createSession' && plan.method === 'POST'
  let before = r.id ? pool.get(r.id) : undefined
  if (r.id && !before) before = await observe(r.id)
  const rootBefore = isCreate ? await workspaceTree() : undefined

  sent++
  const res = await inject({ method: plan.method, url: r.url, headers: r.headers, anonymous: r.anonymous, ...(r.payload === undefined ? {} : { payload: r.payload }) })
  const key = `${opOf(plan.method, plan.path)?.method === plan.method ? opOf(plan.method, plan.path)!.operationId : `${plan.method} ${plan.path}`} ${res.statusCode}${r.auth === 'owner' ? '' : ` (${r.auth})`}`
  statuses.set(key, (statuses.get(key) ?? 0) + 1)
  await app.events.flush()
  // whatever the request set going for the session (under the id as spelled, too) is done
  if (r.id) await Promise.all([app.agents.settled(r.id), app.agents.settled(r.spelled)])

  // what the next request starts from, recorded before any verdict so one failure does not cascade
  const after = r.id ? await observe(r.id) : undefined
  const written = await writes()
  trace(`${describe(plan, r, res).replaceAll('\n', ' ')} | wrote ${JSON.stringify(written)}`)
  if (r.id && after) {
    if (after.gone) {
      pool.delete(r.id)
      if (!before?.gone && !deleted.includes(r.id)) deleted.push(r.id)
    } else {
      pool.set(r.id, after)
    }
  }
  const created = isCreate && res.statusCode === 201 ? (parse(res.body)?.id as string | undefined) : undefined
  // read back as the user who created it: the other user's sessions are theirs, not targets
  const fresh = created ? await observe(created, r.user === OTHER_USER ? tokens.other : tokens.owner) : undefined
  if (created && r.user === OTHER_USER) othersSessions.add(created)
  else if (created && fresh && !fresh.gone && inState('pending').length < 4) pool.set(created, fresh)
  prune()

  const route = `${plan.method} ${plan.path}`
  const fail = (why: string): never => { throw new Violation(why, route, describe(plan, r, res)) }
  const status = res.statusCode
  const contentType = String(res.headers['content-type'] ?? '')
  const body = plan.method === 'HEAD' ? undefined : parse(res.body)
  if (status >= 500) fail(`a ${status}`)
  if (status >= 400) {
    if (!contentType.startsWith('application/problem+json')) fail(`a ${status} that is not application/problem+json`)
    if (plan.method !== 'HEAD' && (typeof body?.code !== 'string' || typeof body?.detail !== 'string' || body?.status !== status)) {
      fail(`a ${status} problem without a string code, detail and its status`)
    }
  }

  const changed = [...new Set(written.map((x) => `${x.op} ${x.tbl}${x.owner ? ` of ${x.owner}` : ''}`))]
  const readOnly = plan.method === 'GET' || plan.method === 'HEAD'

  // -- who may do what: no valid token, 401; another user's session, as if it did not exist
  // a path of the document's public operations needs no token, whatever the method
  const isPublic = operations.some((o) => o.path === plan.path && o.public)
  if ((r.auth === 'none' || r.auth === 'invalid') && !isPublic) {
    // The router answers a URL that names no route (404) or cannot be decoded (400) before any
    // route's hook, the authentication included; a URL no route has is the not-found route's,
    // which may refuse the body first (400, 413, 415); CORS answers OPTIONS at the root
    // (a garbage id such as `..` may lead to no route at all: /v1/sessions/.. is /v1/)
    const routed = opOf(plan.method, plan.path) !== undefined && plan.target?.k !== 'garbage'
    const byRouter = !routed || (plan.method === 'HEAD' ? status === 404 || status === 400 : ['ROUTE_NOT_FOUND', 'BAD_URL'].includes(body?.code))
    if (status !== 401 && !byRouter && plan.method !== 'OPTIONS') fail(`a ${status} without a valid token: 401 expected`)
    if (status < 400 && plan.method !== 'OPTIONS') fail(`a ${status} without a valid token`)
    if (status === 401 && !/^Bearer realm="mobvibe"/.test(String(res.headers['www-authenticate'] ?? ''))) fail('a 401 without a Bearer challenge')
    if (status === 401 && plan.method !== 'HEAD' && body?.code !== 'UNAUTHORIZED') fail('a 401 whose code is not UNAUTHORIZED')
    if (changed.length > 0) fail(`written without a valid token: ${changed.join(', ')}`)
  }
  if (r.auth === 'other' && r.id) {
    if (status < 400) fail(`another user's request on a session answered ${status}`)
    if (changed.length > 0) fail(`another user's request wrote: ${changed.join(', ')}`)
    // indistinguishable from a session that does not exist: same status, same code
    const twin = await inject({ method: plan.method, url: r.ghostUrl!, headers: r.headers, ...(r.payload === undefined ? {} : { payload: r.payload }) })
    await app.events.flush()
    const twinWrites = await writes()
    const twinCode = plan.method === 'HEAD' ? undefined : parse(twin.body)?.code
    if (twin.statusCode !== status || twinCode !== body?.code) {
      fail(`another user's session answered ${status} ${body?.code}, a session that does not exist ${twin.statusCode} ${twinCode}`)
    }
    if (twinWrites.length > 0) fail('the request for a session that does not exist wrote something')
  }

  if (status >= 300 || readOnly) {
    // refused, or only read: nothing moved, anywhere
    if (before && after && !isDeepStrictEqual(strip(after), strip(before))) {
      fail(`the session changed under a ${status}:\n  ${diff(before, after)}`)
    }
    if (changed.length > 0) fail(`written under a ${status}: ${changed.join(', ')}`)
    if (rootBefore) {
      const rootAfter = await workspaceTree()
      if (!isDeepStrictEqual(rootAfter, rootBefore)) fail(`a refused create left something in the workspace root: ${rootAfter.filter((p) => !rootBefore.includes(p)).join(', ')}`)
    }
    if (status === 412 && before && !before.gone) {
      const m = admitted(r.headers['if-match'])
      if (!m || m.any || m.versions.includes(before.view.version as number)) fail('412 though If-Match names the current version')
      if (body?.currentVersion !== before.view.version) fail('412 names another version than the current one')
    }
    if (status === 409 && before && !before.gone && body?.state !== undefined && body.state !== before.view.state) fail('409 names another state')
    if (opOf(plan.method, plan.path)?.operationId === 'sendMessage' && plan.method === 'POST' && plan.body.valid && r.auth === 'owner' && before && !before.gone && plan.target?.k === 'session' &&
      ['plain', 'upper', 'pct'].includes(plan.target.form) && status !== 409) {
      fail('a valid message to a paused or terminal session is not a 409')
    }
    if (readOnly && status === 200 && plan.method === 'GET') noteNext(body)
    if (readOnly && status < 300) checkRead(plan, r, body, fail)
    if (opOf(plan.method, plan.path)?.operationId === 'getSession' && (status === 200 || status === 304) && after && res.headers.etag !== after.etag) {
      fail('the ETag is not the version')
    }
  } else {
    // a success: legal for its operation, and nothing else touched
    const problem = legal(plan, r, status, body, res.headers as Json, before, after)
    if (problem) {
      fail(`an illegal ${status}: ${problem}\n  ${diff(before, after)}`)
    }
    const foreign = written.filter((x) => x.owner === null || (x.owner !== r.id && x.owner !== created))
    if (foreign.length > 0) fail(`a ${status} wrote rows of other sessions or tables: ${[...new Set(foreign.map((x) => `${x.op} ${x.tbl} of ${x.owner}`))].join(', ')}`)
    if (fresh && (fresh.gone || !isDeepStrictEqual(fresh.view, { ...body, usage: { ...body.usage, activeMs: undefined } }))) {
      fail('the created session reads back differently')
    }
  }
}

/** What moved between two observations of a session, briefly. */
function diff (before: Observation | undefined, after: Observation | undefined): string {
  if (!before || !after) return `before ${JSON.stringify(before ?? null).slice(0, 300)}, after ${JSON.stringify(after ?? null).slice(0, 300)}`
  const short = (v: unknown) => String(JSON.stringify(v)).slice(0, 120)
  const lines: string[] = []
  if (before.gone !== after.gone) lines.push(`gone: ${before.gone} → ${after.gone}`)
  if (before.etag !== after.etag) lines.push(`ETag: ${before.etag} → ${after.etag}`)
  for (const k of new Set([...Object.keys(before.view), ...Object.keys(after.view)])) {
    if (!isDeepStrictEqual(before.view[k], after.view[k])) lines.push(`${k}: ${short(before.view[k])} → ${short(after.view[k])}`)
  }
  for (const list of ['history', 'snapshots', 'events'] as const) {
    const [a, b] = [before[list], after[list]]
    if (isDeepStrictEqual(a, b)) continue
    let i = 0
    while (i < a.length && isDeepStrictEqual(a[i], b[i])) i++
    lines.push(`${list}: ${a.length} → ${b.length} items, from #${i}: ${short(a.slice(i, i + 2))} → ${short(b.slice(i, i + 2))}`)
  }
  return lines.join('\n  ')
}

function noteNext (body: any): void {
  if (body === null || typeof body !== 'object') return
  for (const [k, v] of Object.entries(body as Json)) {
    if (!k.startsWith('next') || v === null || v === undefined) continue
    const param = k.slice(4, 5).toLowerCase() + k.slice(5)
    const seen = seenNext.get(param) ?? []
    seen.push(v)
    if (seen.length > 20) seen.shift()
    seenNext.set(param, seen)
  }
}

/** Whatever a read returns must agree with what it was asked. */
function checkRead (plan: Plan, r: Resolved, body: any, fail: (why: string) => never): void {
  if (plan.method !== 'GET') return
  const q = new URLSearchParams(r.url.split('?')[1] ?? '')
  const declares = (name: string) => opOf(plan.method, plan.path)?.params.some((p) => p.in === 'query' && p.name === name)
  const limit = declares('limit') && /^\d+$/.test(q.get('limit') ?? '') ? Number(q.get('limit')) : undefined
  const items = Array.isArray(body?.items) ? body.items as Json[] : undefined
  if (limit !== undefined && items && items.length > limit) fail(`${items.length} items for limit=${limit}`)
  if (opOf(plan.method, plan.path)?.operationId === 'listSessions' && items) {
    const states = q.getAll('state')
    if (states.length > 0 && items.some((s) => !states.includes(s.state))) fail('a session outside the state filter')
    // a list holds the caller's own sessions only
    const foreign = r.user === OTHER_USER ? items.filter((s) => pool.has(s.id) || deleted.includes(s.id)) : items.filter((s) => othersSessions.has(s.id))
    if (foreign.length > 0) fail(`a list shows another user's sessions: ${foreign.map((s) => s.id).join(', ')}`)
  }
  if (opOf(plan.method, plan.path)?.operationId === 'listEvents' && items) {
    const after = /^\d+$/.test(q.get('after') ?? '') ? Number(q.get('after')) : 0
    if (items.some((e, i) => e.seq <= after || (i > 0 && e.seq <= items[i - 1]!.seq))) fail('events not in order after `after`')
  }
  if (opOf(plan.method, plan.path)?.operationId === 'getSession' && r.id && body?.id !== undefined && body.id !== r.id) fail('another session answered')
}

function check (t: Test, name: string, arb: fc.Arbitrary<Plan>, numRuns: number, seedOffset: number): void {
  const runs = Math.max(1, Math.round(numRuns * SCALE))
  t.test(name, async (t) => {
    const start = sent
    const startedAt = Date.now()
    const property = async (plan: Plan) => {
      try {
        await exercise(plan)
      } catch (err) {
        if (!KEEP_GOING || !(err instanceof Violation)) throw err
        const key = `${err.route}: ${err.why.replace(/\d+/g, 'N')}`
        const seen = violations.get(key)
        if (seen) seen.count++
        else violations.set(key, { count: 1, example: err.message })
      }
    }
    const out = await fc.check(fc.asyncProperty(arb, property), { numRuns: runs, seed: SEED + seedOffset, endOnFailure: !SHRINK })
    if (out.failed) {
      stopped = true
      const err = out.errorInstance as Error | undefined
      t.fail(err instanceof Violation ? err.why : String(err?.message ?? err).split('\n')[0]!, {
        diagnostic: true,
        // the service outlives every run, so a replay is of the whole file
        replay: `FUZZ_SEED=${SEED} npx tap --disable-coverage test/fuzz.test.ts`,
        request: err?.message,
        fastCheck: fc.defaultReportMessage(out)
      })
      return
    }
    t.pass(`${sent - start} requests in ${Date.now() - startedAt} ms`)
  })
}

// ---------------------------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------------------------

const validBody = (op: Operation): fc.Arbitrary<BodySpec> => op.body
  ? objectArb(op.body.schema).map((value): BodySpec => ({ kind: 'json', value, contentType: 'application/json', valid: true }))
  : fc.constant<BodySpec>({ kind: 'none', valid: true })
const plainTarget = (states: readonly SessionState[]) =>
  fc.record({ k: fc.constant('session' as const), state: fc.constantFrom(...states), n: fc.nat(7), form: fc.constant<IdForm>('plain') })

t.test('the targets', async (t) => {
  t.ok(operations.length >= 10, `${operations.length} operations on ${paths.length} paths read from openapi.yaml`)
  for (const state of SESSION_STATES) await seed(state)
  await seedDeleted()
  t.equal(inState('pending').length, 1, 'one session in each state, and a deleted one')
  // the other user has an area already: a refused create of theirs is held to leaving it as it was
  const theirs = await inject({ method: 'POST', url: '/v1/sessions', headers: { authorization: `Bearer ${tokens.other}`, 'content-type': 'application/json' }, payload: '{}' })
  t.equal(theirs.statusCode, 201, 'the other user has a session of their own')
  othersSessions.add(parse(theirs.body).id)
  await writes()
})

check(t, 'every documented operation, with generated inputs',
  fc.constantFrom(...operations).chain((op) => planArb(op.method, op.path)), 4200, 0)

check(t, 'every other method on every documented path',
  fc.constantFrom(...paths.filter((path) => METHODS.some((m) => !documented.has(`${m} ${path}`)))).chain((path) => fc.constantFrom(...METHODS.filter((m) => !documented.has(`${m} ${path}`))).chain((m) => planArb(m, path))), 500, 1)

const conditional = operations.filter((o) => o.params.some((p) => p.in === 'header' && p.name.toLowerCase() === 'if-match'))
t.ok(conditional.length > 0, 'operations that take If-Match')
if (conditional.length > 0) {
  check(t, 'If-Match on every conditional operation: 412 exactly when it names another version',
    fc.constantFrom(...conditional).chain((op) => planArb(op.method, op.path, {
      target: plainTarget(SESSION_STATES),
      headers: ifMatchArb.map((v) => ({ 'if-match': v })),
      body: validBody(op)
    })), 800, 2)
}

const messages = operations.filter((o) => o.path.endsWith('/messages') && o.method === 'POST')
t.ok(messages.length > 0, 'the message route')
if (messages.length > 0) {
  check(t, 'a valid message to a paused or terminal session is refused with 409 and starts nothing',
    fc.constantFrom(...messages).chain((op) => planArb(op.method, op.path, { target: plainTarget(MESSAGE_TARGETS), body: validBody(op) })), 400, 3)
}

t.test('totals', async (t) => {
  t.comment([...statuses].sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => `${k}: ${n}`).join('\n'))
  t.comment(`${sent} generated requests, ${injected} requests in all`)
  if (!stopped) t.ok(sent >= Math.round(5000 * SCALE), `${sent} generated requests`)
  for (const [key, { count, example }] of violations) t.fail(`${key} (${count}×)`, { diagnostic: true, example })
  t.equal(({} as Json).polluted, undefined, 'Object.prototype was not polluted')
  t.equal(app.agents.liveCount, 0, 'no agent ever started')
  const ready = await app.inject({ method: 'GET', url: '/readyz' })
  t.equal(ready.statusCode, 200, 'still ready')
})
