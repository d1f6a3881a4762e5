// Database-incidental: uses a database only as storage for what it tests, so CI runs it once, in the PostgreSQL pass (.ci/run).
/**
 * What every response carries whatever the route: a request id (the client's when sane, echoed,
 * logged, in problems), security headers, and CORS for the configured origins only.
 */
import { Writable } from 'node:stream'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { buildApp } from '../src/app.js'
import { ConfigError, loadConfig } from '../src/config.js'
import { createLogger } from '../src/logger.js'
import { build, freshDatabaseUrl } from './helpers/build.js'
import { mintToken } from './helpers/tokens.js'
import { authHeader } from './helpers/api.js'
import { seedPglite } from './helpers/pglite-template.js'

const SECRET = 'http-hygiene-test-secret-of-32-chars!'
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

t.test('request ids: the client\'s when sane, a fresh one otherwise, echoed and in problems', async (t) => {
  const { app } = await build(t)
  const given = await app.inject({ method: 'GET', url: '/healthz', headers: { ...authHeader(app), 'x-request-id': 'phone-42.retry:3' } })
  t.equal(given.headers['x-request-id'], 'phone-42.retry:3', 'a sane client id is kept')
  const none = await app.inject({ headers: authHeader(app), method: 'GET', url: '/healthz' })
  t.match(String(none.headers['x-request-id']), UUID, 'none given: a fresh UUID')
  for (const bad of ['has space', 'x'.repeat(129), 'line\\nbreak', '{"json":1}', '']) {
    const res = await app.inject({ method: 'GET', url: '/healthz', headers: { ...authHeader(app), 'x-request-id': bad } })
    t.match(String(res.headers['x-request-id']), UUID, `${JSON.stringify(bad.slice(0, 20))} is replaced`)
  }
  const problem = await app.inject({ method: 'GET', url: '/v1/sessions/00000000-0000-4000-8000-000000000000', headers: { ...authHeader(app), 'x-request-id': 'trace-me' } })
  t.equal(problem.statusCode, 404)
  t.equal(problem.headers['x-request-id'], 'trace-me')
  t.equal(problem.json().requestId, 'trace-me', 'the problem names the request')
  const notFound = await app.inject({ headers: authHeader(app), method: 'GET', url: '/nowhere' })
  t.equal(notFound.json().requestId, notFound.headers['x-request-id'], 'so does a 404 for no route')
  const invalid = await app.inject({ method: 'POST', url: '/v1/sessions', payload: '{', headers: { ...authHeader(app), 'content-type': 'application/json' } })
  t.equal(invalid.statusCode, 400)
  t.equal(invalid.json().requestId, invalid.headers['x-request-id'], 'and a body that does not parse')
})

/** The service with its log lines kept, and a token for it. */
async function loggedApp (t: Test, env: Record<string, string> = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-reqid-'))
  const databaseUrl = await freshDatabaseUrl(t)
  const lines: Record<string, unknown>[] = []
  const sink = new Writable({
    write (chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(line) as Record<string, unknown>)
      done()
    }
  })
  const config = loadConfig({
    MOBVIBE_DATA_DIR: join(dir, 'data'),
    MOBVIBE_WORKSPACE_ROOT: join(dir, 'workspaces'),
    LOG_LEVEL: 'info',
    JWT_SECRET: SECRET,
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
    ...env
  })
  if (config.databaseUrl === undefined) await seedPglite(config.dataDir)
  const app = await buildApp({ config, logger: createLogger(config, sink), startWorker: false })
  const auth = { authorization: `Bearer ${await mintToken({ secret: SECRET, sub: 'logged-user' })}` }
  t.teardown(async () => {
    await app.close()
    await rm(dir, { recursive: true, force: true })
  })
  await app.ready()
  return { app, lines, auth }
}

t.test('the request id is on the service\'s log lines for that request', async (t) => {
  const { app, lines, auth } = await loggedApp(t)
  await app.inject({ method: 'GET', url: '/v1/sessions/00000000-0000-4000-8000-000000000000', headers: { ...auth, 'x-request-id': 'find-me-in-logs' } })
  const mine = lines.filter((l) => l.reqId === 'find-me-in-logs')
  t.ok(mine.some((l) => l.msg === 'incoming request'), 'the request line')
  t.ok(mine.some((l) => l.code === 'SESSION_NOT_FOUND'), 'the error line')
  t.ok(mine.some((l) => l.msg === 'request completed'), 'the response line')
})

t.test('behind a load balancer: the client\'s address in the logs, from X-Forwarded-For of the proxies named only', async (t) => {
  /** The address the request line logs for a request from `peer` that says it forwards for 203.0.113.7. */
  const loggedAddress = async (app: Awaited<ReturnType<typeof loggedApp>>, peer: string, id: string) => {
    await app.app.inject({ method: 'GET', url: '/healthz', remoteAddress: peer, headers: { 'x-request-id': id, 'x-forwarded-for': '203.0.113.7' } })
    const line = app.lines.find((l) => l.reqId === id && l.msg === 'incoming request') as { req?: { remoteAddress?: string } } | undefined
    return line?.req?.remoteAddress
  }
  const none = await loggedApp(t)
  t.equal(await loggedAddress(none, '127.0.0.1', 'unset'), '127.0.0.1', 'TRUST_PROXY unset: the peer, whatever the header says')
  const named = await loggedApp(t, { TRUST_PROXY: '127.0.0.1, 10.0.0.0/8' })
  t.equal(await loggedAddress(named, '10.1.2.3', 'named'), '203.0.113.7', 'from a proxy in a named range: the client it forwarded for')
  t.equal(await loggedAddress(named, '198.51.100.9', 'stranger'), '198.51.100.9', 'from anyone else: the peer (a forged header is not believed)')
  const hops = await loggedApp(t, { TRUST_PROXY: '1' })
  t.equal(await loggedAddress(hops, '172.18.0.5', 'hop'), '203.0.113.7', 'one hop: the address the balancer saw')
  for (const bad of ['0', '11', 'nginx', '10.0.0.0/33', '0.0.0.0/0', '1.2.3.4/8/9', 'true', ',', 'fe80::1%eth0', '::ffff:10.0.0.0/104']) {
    t.throws(() => loadConfig({ TRUST_PROXY: bad }), /TRUST_PROXY/, `${bad}: refused, naming the variable`)
  }
  t.same(loadConfig({ TRUST_PROXY: '::1,fd00::/8' }).trustProxy, ['::1', 'fd00::/8'])
})

t.test('security headers on API responses, problems and the docs', async (t) => {
  const { app } = await build(t)
  for (const url of ['/healthz', '/v1/sessions', '/v1/sessions/not-a-uuid', '/docs/']) {
    const res = await app.inject({ headers: authHeader(app), method: 'GET', url })
    t.equal(res.headers['x-content-type-options'], 'nosniff', `${url}: nosniff`)
    t.equal(res.headers['x-frame-options'], 'SAMEORIGIN', `${url}: no framing by others`)
    t.match(String(res.headers['content-security-policy']), /default-src 'self'/, `${url}: a CSP`)
  }
  t.equal((await app.inject({ headers: authHeader(app), method: 'GET', url: '/docs/' })).statusCode, 200, 'the Swagger UI still serves')
})

t.test('CORS: none unless configured, then exactly the configured origins', async (t) => {
  const preflight = (origin: string) => ({
    method: 'OPTIONS' as const,
    url: '/v1/sessions',
    headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type,if-match' }
  })
  await t.test('unset', async (t) => {
    const { app } = await build(t)
    const res = await app.inject({ method: 'GET', url: '/v1/sessions', headers: { ...authHeader(app), origin: 'https://evil.example' } })
    t.equal(res.statusCode, 200)
    t.notOk(res.headers['access-control-allow-origin'], 'no page of another origin may read it')
    t.notOk((await app.inject(preflight('https://app.example'))).headers['access-control-allow-origin'])
  })
  await t.test('configured', async (t) => {
    const { app } = await build(t, { env: { CORS_ORIGINS: 'https://app.example, http://localhost:8081' } })
    const ok = await app.inject(preflight('https://app.example'))
    t.equal(ok.statusCode, 204)
    t.equal(ok.headers['access-control-allow-origin'], 'https://app.example')
    t.match(String(ok.headers['access-control-allow-methods']), /PATCH/)
    t.match(String(ok.headers['access-control-allow-headers']).toLowerCase(), /authorization/, 'a browser may send the bearer token')
    t.equal((await app.inject(preflight('http://localhost:8081'))).headers['access-control-allow-origin'], 'http://localhost:8081')
    t.notOk((await app.inject(preflight('https://evil.example'))).headers['access-control-allow-origin'], 'another origin is not allowed')
    const created = await app.inject({ method: 'POST', url: '/v1/sessions', payload: {}, headers: { ...authHeader(app), origin: 'https://app.example' } })
    t.equal(created.headers['access-control-allow-origin'], 'https://app.example')
    t.match(String(created.headers['access-control-expose-headers']), /ETag.*Location.*Retry-After.*X-Request-Id.*WWW-Authenticate.*RateLimit-Limit.*RateLimit-Remaining.*RateLimit-Reset/, 'a browser client can read the version, the new resource, the challenge and the limits')
  })
  t.test('a bad origin stops start-up, naming the variable', async (t) => {
    for (const bad of ['app.example', 'ftp://app.example', 'https://app.example/path']) {
      t.throws(() => loadConfig({ CORS_ORIGINS: bad }), ConfigError)
      t.throws(() => loadConfig({ CORS_ORIGINS: bad }), /CORS_ORIGINS/)
    }
    t.same(loadConfig({ CORS_ORIGINS: 'https://a.example/,https://b.example:8443' }).corsOrigins, ['https://a.example', 'https://b.example:8443'])
  })
})
