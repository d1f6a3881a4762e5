// Database-independent: opens no database, so CI runs it once, in the PGlite pass (.ci/run).
import t from 'tap'
import { ConfigError, loadConfig } from '../src/config.js'
import { decodeCursor, decodeSeqCursor, encodeCursor, encodeSeqCursor } from '../src/domain/cursor.js'
import { etagOf, ifMatchAccepts, parseIfMatch } from '../src/domain/if-match.js'
import { activeMsAt, addSeconds, planHeartbeat } from '../src/domain/timers.js'
import { LivenessCache } from '../src/sessions/liveness-cache.js'

const T0 = new Date('2030-01-01T00:00:00.000Z')

t.test('planHeartbeat: pushes out, never earlier, coalesces small moves', async (t) => {
  const ttl = 100
  const plan = (nowOffsetS: number, expiresOffsetS: number, fraction?: number) => planHeartbeat({
    now: addSeconds(T0, nowOffsetS), expiresAt: addSeconds(T0, expiresOffsetS), ttlSeconds: ttl, ...(fraction === undefined ? {} : { coalesceFraction: fraction })
  })
  t.same(plan(10, 100), { write: true, expiresAt: addSeconds(T0, 110) }, 'a gain of 10% is written')
  t.same(plan(4.999, 100), { write: false, expiresAt: addSeconds(T0, 100) }, 'below 5% is coalesced')
  t.same(plan(5, 100), { write: true, expiresAt: addSeconds(T0, 105) }, 'exactly 5% is written')
  t.same(plan(0, 200), { write: false, expiresAt: addSeconds(T0, 200) }, 'a later deadline is never moved earlier')
  t.same(plan(0.001, 100, 0), { write: true, expiresAt: addSeconds(T0, 100.001) }, 'fraction 0 writes every gain')
  t.same(plan(0, 100, 0), { write: false, expiresAt: addSeconds(T0, 100) }, 'but never a zero move')
})

t.test('activeMsAt counts the running stretch', async (t) => {
  t.equal(activeMsAt({ activeMs: 500, activeSince: null, now: T0 }), 500)
  t.equal(activeMsAt({ activeMs: 500, activeSince: T0, now: addSeconds(T0, 2) }), 2500)
  t.equal(activeMsAt({ activeMs: 0, activeSince: addSeconds(T0, 5), now: T0 }), 0, 'clock skew never makes it negative')
})

t.test('If-Match parsing and strong comparison', async (t) => {
  t.equal(parseIfMatch(undefined), undefined)
  t.equal(parseIfMatch('*'), '*')
  t.same(parseIfMatch('"3"'), [3])
  t.same(parseIfMatch('"3", "5"'), [3, 5])
  t.same(parseIfMatch('7'), [7], 'a bare number is accepted')
  t.same(parseIfMatch('W/"3"'), [], 'a weak tag never matches')
  t.same(parseIfMatch('"2147483648", "5"'), [5], 'nor does a version no integer column can hold')
  for (const bad of ['abc', '"3', '"-1"', '""', '"3",,', '"1e3"', '"99999999999"']) t.equal(parseIfMatch(bad), null, `${bad} is malformed`)
  t.ok(ifMatchAccepts(undefined, 4))
  t.ok(ifMatchAccepts('*', 4))
  t.ok(ifMatchAccepts([3, 4], 4))
  t.notOk(ifMatchAccepts([3], 4))
  t.notOk(ifMatchAccepts([], 4))
  t.equal(etagOf(12), '"12"')
})

t.test('cursors round-trip and reject forgeries', async (t) => {
  const c = { createdAt: new Date('2030-01-02T03:04:05.678Z'), id: '0b5c9c3e-5f8a-4c52-9a39-1d7f0f3e2a10' }
  t.same(decodeCursor(encodeCursor(c)), c)
  for (const bad of ['', 'not-base64!', Buffer.from('[1,2]').toString('base64url'), Buffer.from('["2030-01-01T00:00:00.000Z","x"]').toString('base64url'),
    Buffer.from('["yesterday","0b5c9c3e-5f8a-4c52-9a39-1d7f0f3e2a10"]').toString('base64url'), Buffer.from('{}').toString('base64url')]) {
    t.equal(decodeCursor(bad), null, `rejects ${JSON.stringify(bad)}`)
  }
  t.equal(decodeSeqCursor(encodeSeqCursor(42)), 42)
  t.equal(decodeSeqCursor(Buffer.from('-1').toString('base64url')), null)
  t.equal(decodeSeqCursor(Buffer.from('1.5').toString('base64url')), null)
})

t.test('configuration: defaults, conversion, and errors naming the variable', async (t) => {
  const c = loadConfig({})
  t.equal(c.host, '127.0.0.1')
  t.equal(c.port, 3000)
  t.equal(c.databaseUrl, undefined)
  t.equal(c.idleTimeout.defaultSeconds, 600)
  t.same([c.idleTimeout.minSeconds, c.idleTimeout.maxSeconds], [60, 86400])
  t.same([c.ttl.defaultSeconds, c.ttl.minSeconds, c.ttl.maxSeconds], [86400, 60, 2592000])
  t.equal(c.sweepIntervalMs, 1000)
  t.equal(c.agent.killGraceMs, 5000)
  t.equal(c.agent.maxLive, 32)
  t.same(c.agent.envPassthrough, ['ANTHROPIC_API_KEY', 'ANTHROPIC_BASE_URL'])
  t.ok(c.agent.configDir.endsWith('/.data/claude'), 'agent state lives under the data directory')
  t.equal(c.limits.bodyBytes, 1_048_576)
  t.equal(c.limits.messageBytes, 262_144)
  t.equal(loadConfig({ PORT: '8080', DATABASE_URL: 'postgres://u@h/db' }).port, 8080)
  t.equal(loadConfig({ PORT: '' }).port, 3000, 'an empty variable is unset')

  const cases: [Record<string, string>, RegExp][] = [
    [{ PORT: 'abc' }, /PORT/],
    [{ PORT: '70000' }, /PORT/],
    [{ SWEEP_INTERVAL_MS: '0' }, /SWEEP_INTERVAL_MS/],
    [{ DATABASE_URL: 'mysql://x' }, /DATABASE_URL/],
    [{ LOG_LEVEL: 'loud' }, /LOG_LEVEL/],
    [{ IDLE_TIMEOUT_DEFAULT_SECONDS: '5' }, /IDLE_TIMEOUT_DEFAULT_SECONDS/],
    [{ IDLE_TIMEOUT_MIN_SECONDS: '100', IDLE_TIMEOUT_MAX_SECONDS: '50' }, /IDLE_TIMEOUT_MIN_SECONDS/],
    [{ SESSION_TTL_SECONDS: '10' }, /SESSION_TTL_SECONDS/],
    [{ HEARTBEAT_COALESCE_FRACTION: '2' }, /HEARTBEAT_COALESCE_FRACTION/]
  ]
  for (const [env, name] of cases) {
    t.throws(() => loadConfig(env), { name: 'ConfigError', message: name }, `${JSON.stringify(env)} is refused by name`)
  }
  t.ok(new ConfigError('x') instanceof Error)
  t.same(loadConfig({ CLAUDE_EXTRA_ARGS: '--bare  --verbose' }).agent.extraArgs, ['--bare', '--verbose'])
  t.same(loadConfig({ CLAUDE_EXTRA_ARGS: '["--setting-sources", ""]' }).agent.extraArgs, ['--setting-sources', ''], 'a JSON array keeps empty arguments')
  t.throws(() => loadConfig({ CLAUDE_EXTRA_ARGS: '[1, 2]' }), { message: /CLAUDE_EXTRA_ARGS/ })
  t.throws(() => loadConfig({ CLAUDE_EXTRA_ARGS: '[oops' }), { message: /CLAUDE_EXTRA_ARGS/ })
})

t.test('the liveness cache ages entries out and stays bounded', async (t) => {
  const cache = new LivenessCache(2)
  const entry = { state: 'active' as const, version: 1, expiresAt: T0, ttlSeconds: 60, cachedAt: 0 }
  cache.set('a', entry)
  t.same(cache.get('a', LivenessCache.MAX_AGE_MS), entry, 'fresh')
  t.equal(cache.get('a', LivenessCache.MAX_AGE_MS + 1), undefined, 'too old: gone')
  cache.set('a', entry)
  cache.set('b', entry)
  cache.set('c', entry)
  t.equal(cache.size, 2, 'bounded')
  t.equal(cache.get('a', 0), undefined, 'the oldest went first')
  cache.delete('b')
  t.equal(cache.get('b', 0), undefined)
})

t.test('the liveness cache keeps no answer that a write overtook', async (t) => {
  const cache = new LivenessCache()
  const v1 = { state: 'active' as const, version: 1, expiresAt: T0, ttlSeconds: 60, cachedAt: 0 }
  const v2 = { ...v1, version: 2 }
  // a read, then a write of this instance invalidates while it is in flight: its v1 is not cached
  const overtaken = cache.beginRead('a')
  cache.delete('a')
  cache.endRead(overtaken, v1)
  t.equal(cache.get('a', 0), undefined, 'the overtaken answer is dropped')
  // a read with no write meanwhile is cached
  const clean = cache.beginRead('a')
  cache.endRead(clean, v2)
  t.same(cache.get('a', 0), v2)
  // two reads in flight, one write: neither is cached; another session's write touches neither
  cache.delete('a')
  const r1 = cache.beginRead('a')
  const r2 = cache.beginRead('a')
  const other = cache.beginRead('b')
  cache.delete('a')
  cache.endRead(r1, v1)
  cache.endRead(r2, v1)
  cache.endRead(other, v1)
  t.equal(cache.get('a', 0), undefined)
  t.same(cache.get('b', 0), v1, 'a write to a does not spoil a read of b')
  // a read that ends without an answer (an error) leaves nothing behind
  cache.endRead(cache.beginRead('c'))
  t.equal(cache.readsInFlight, 0, 'no read is left in flight')
})

t.test('uuid ranges cover the whole id space without overlap', async (t) => {
  const { uuidRanges } = await import('../src/sessions/session-repository.js')
  t.same(uuidRanges(1), [['00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff']])
  t.same(uuidRanges(2), [
    ['00000000-0000-0000-0000-000000000000', '7fffffff-ffff-ffff-ffff-ffffffffffff'],
    ['80000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff']
  ])
  const four = uuidRanges(4)
  for (let i = 1; i < four.length; i++) {
    const prevHi = BigInt('0x' + four[i - 1]![1].replaceAll('-', ''))
    const lo = BigInt('0x' + four[i]![0].replaceAll('-', ''))
    t.equal(lo, prevHi + 1n, `range ${i} starts right after range ${i - 1}`)
  }
})

t.test('agent lines: turn boundaries found, text Postgres cannot hold replaced, nothing dropped', async (t) => {
  const { parseAgentLine, turnUsage } = await import('../src/agents/stream-json.js')
  t.equal(parseAgentLine('{"type":"system","subtype":"init","session_id":"x"}').kind, 'init')
  t.equal(parseAgentLine('{"type":"result","subtype":"success"}').kind, 'result')
  const plain = '{"type":"assistant","message":{"content":[]}}'
  t.same(parseAgentLine(plain), { kind: 'other', json: plain }, 'a line is kept exactly as printed')
  const nul = parseAgentLine('{"type":"assistant","text":"a\\u0000b"}')
  t.same(JSON.parse(nul.json), { type: 'assistant', text: 'a\uFFFDb' }, 'U+0000 becomes U+FFFD')
  const ask = parseAgentLine('{"type":"control_request","request_id":"r","request":{"subtype":"can_use_tool","tool_name":"Bash","input":{"command":"a\\u0000b"}}}')
  t.same(ask.kind === 'control_request' && ask.message.request, { subtype: 'can_use_tool', tool_name: 'Bash', input: { command: 'a\uFFFDb' } },
    'and in the message the supervisor reads (a permission ask is stored from it)')
  t.same(JSON.parse(parseAgentLine('not json \u0000').json), { type: 'unparsed', line: 'not json \uFFFD' }, 'non-JSON is wrapped, not lost')
  t.same(JSON.parse(parseAgentLine('[1,2]').json), { type: 'unparsed', line: '[1,2]' })
  t.same(turnUsage({ usage: { input_tokens: 5, output_tokens: 7, cache_read_input_tokens: 3, cache_creation_input_tokens: 1 }, total_cost_usd: 0.25 }),
    { inputTokens: 5, outputTokens: 7, cacheReadTokens: 3, cacheCreationTokens: 1, totalCostUsd: 0.25 })
  t.same(turnUsage({ usage: { input_tokens: -1, output_tokens: 'x' } }), { inputTokens: 0, outputTokens: 0, cacheReadTokens: 0, cacheCreationTokens: 0, totalCostUsd: 0 },
    'garbage counts as nothing')
})
