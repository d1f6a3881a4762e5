/**
 * Authentication: every /v1 route and the stream need a valid bearer token; what is refused is a
 * 401 problem with an RFC 6750 challenge; health and the API documents stay public; the key of a
 * deployment without JWT settings is generated into the data directory and `npm run token` mints
 * tokens with it; a JWKS identity provider works; a token in the URL never reaches a log line.
 */
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose'
import t, { type Test } from 'tap'
import WebSocket from 'ws'
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'
import { createLogger } from '../src/logger.js'
import { authHeader, call, createSession } from './helpers/api.js'
import { build, freshDatabaseUrl } from './helpers/build.js'
import { mintToken } from './helpers/tokens.js'
import { seedPglite } from './helpers/pglite-template.js'

const run = promisify(execFile)
const ROOT = fileURLToPath(new URL('../', import.meta.url))
const SECRET = 'an-hs256-test-secret-of-at-least-32-chars'
const now = () => Math.floor(Date.now() / 1000)
const NOBODY = '00000000-0000-4000-8000-000000000000'

function isUnauthorized (t: Test, res: { statusCode: number, headers: Record<string, unknown>, json: () => any }, challenge: RegExp, what: string) {
  t.equal(res.statusCode, 401, `${what}: 401`)
  t.match(String(res.headers['content-type']), /^application\/problem\+json/, `${what}: problem+json`)
  t.equal(res.json().code, 'UNAUTHORIZED', `${what}: code`)
  t.match(String(res.headers['www-authenticate']), challenge, `${what}: challenge`)
}

// one app for the tests that need nothing but the key (and the default 30 s of skew)
const { app } = await build(t, { env: { JWT_SECRET: SECRET } })

t.test('no token, or a header that is not Bearer: 401 with the bare challenge or invalid_token', async (t) => {
  const routes: [string, string][] = [
    ['GET', '/v1/sessions'], ['POST', '/v1/sessions'], ['GET', `/v1/sessions/${NOBODY}`],
    ['PATCH', `/v1/sessions/${NOBODY}`], ['DELETE', `/v1/sessions/${NOBODY}`],
    ['POST', `/v1/sessions/${NOBODY}/transitions`], ['POST', `/v1/sessions/${NOBODY}/pause`],
    ['POST', `/v1/sessions/${NOBODY}/resume`], ['POST', `/v1/sessions/${NOBODY}/heartbeat`],
    ['GET', `/v1/sessions/${NOBODY}/history`], ['GET', `/v1/sessions/${NOBODY}/snapshots`],
    ['POST', `/v1/sessions/${NOBODY}/messages`], ['GET', `/v1/sessions/${NOBODY}/events`],
    ['POST', `/v1/sessions/${NOBODY}/restart`], ['GET', `/v1/sessions/${NOBODY}/stream`]
  ]
  for (const [method, url] of routes) {
    const res = await app.inject({ method: method as 'GET', url })
    isUnauthorized(t, res, /^Bearer realm="mobvibe"$/, `${method} ${url}`)
  }
  for (const header of ['Basic dXNlcjpwYXNz', 'Bearer', 'Bearer a b', 'Token abc']) {
    const res = await app.inject({ method: 'GET', url: '/v1/sessions', headers: { authorization: header } })
    isUnauthorized(t, res, /error="invalid_token"/, JSON.stringify(header))
  }
  // a rejected request is rejected before its body is read: nothing was created
  const list = await call(app, 'GET', '/v1/sessions')
  t.equal(list.status, 200)
  t.same(list.body.items, [], 'no session came out of the refused creates')
})

t.test('tokens that are expired, not yet valid, forged, unsigned, without exp or sub: 401 saying why', async (t) => {
  const get = (token: string) => app.inject({ method: 'GET', url: '/v1/sessions', headers: { authorization: `Bearer ${token}` } })
  const cases: [string, string, RegExp][] = [
    ['expired beyond the skew', await mintToken({ secret: SECRET, sub: 'a', issuedAt: now() - 7200, ttlSeconds: 3600 }), /expired/],
    ['not valid for another minute', await mintToken({ secret: SECRET, sub: 'a', notBefore: now() + 120 }), /not valid yet/],
    ['signed with another key', await mintToken({ secret: 'another-secret-that-is-32-chars-long!', sub: 'a' }), /signature/],
    ['without exp', await mintToken({ secret: SECRET, sub: 'a', withoutExp: true }), /exp claim is missing/],
    ['without sub', await mintToken({ secret: SECRET }), /sub claim is missing/],
    ['with a control character in sub', await mintToken({ secret: SECRET, sub: 'a\u0007b' }), /printable/],
    ['with a sub of 256 characters', await mintToken({ secret: SECRET, sub: 'x'.repeat(256) }), /printable/],
    ['garbage', 'not.a.jwt', /not a valid/]
  ]
  // alg "none": a JWT anyone can write
  const header = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url')
  const payload = Buffer.from(JSON.stringify({ sub: 'a', exp: now() + 3600 })).toString('base64url')
  cases.push(['unsigned (alg none)', `${header}.${payload}.`, /algorithm|not a valid/])
  for (const [what, token, why] of cases) {
    const res = await get(token)
    isUnauthorized(t, res, /^Bearer realm="mobvibe", error="invalid_token", error_description="/, what)
    t.match(res.json().detail, why, `${what}: the detail says why`)
    t.notOk(String(res.headers['www-authenticate']).includes(token), `${what}: the challenge does not echo the token`)
  }
  const skewed = await mintToken({ secret: SECRET, sub: 'a', issuedAt: now() - 3610, ttlSeconds: 3600 })
  t.equal((await get(skewed)).statusCode, 200, 'expired 10 s ago is within the 30 s skew')
  t.equal((await get(await mintToken({ secret: SECRET, sub: 'a' }))).statusCode, 200, 'a valid token passes')
})

t.test('a remembered token stops working when it expires', async (t) => {
  const { app } = await build(t, { env: { JWT_SECRET: SECRET, JWT_CLOCK_TOLERANCE_SECONDS: '0' } })
  const token = await mintToken({ secret: SECRET, sub: 'a', ttlSeconds: 2 })
  const get = () => app.inject({ method: 'GET', url: '/v1/sessions', headers: { authorization: `Bearer ${token}` } })
  t.equal((await get()).statusCode, 200, 'valid now (and remembered as verified)')
  // waiting for the clock itself, not for an event: bounded
  const deadline = Date.now() + 10_000
  let status = 200
  while (status === 200 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    status = (await get()).statusCode
  }
  t.equal(status, 401, 'refused once exp has passed, cache or not')
})

t.test('JWT_ISSUER and JWT_AUDIENCE are checked when set', async (t) => {
  const { app } = await build(t, { env: { JWT_SECRET: SECRET, JWT_ISSUER: 'https://id.example', JWT_AUDIENCE: 'mobvibe' } })
  const get = async (o: { issuer?: string, audience?: string }) =>
    (await app.inject({ method: 'GET', url: '/v1/sessions', headers: { authorization: `Bearer ${await mintToken({ secret: SECRET, sub: 'a', ...o })}` } }))
  t.equal((await get({ issuer: 'https://id.example', audience: 'mobvibe' })).statusCode, 200, 'both right')
  const wrongIssuer = await get({ issuer: 'https://evil.example', audience: 'mobvibe' })
  isUnauthorized(t, wrongIssuer, /invalid_token/, 'another issuer')
  t.match(wrongIssuer.json().detail, /iss/)
  isUnauthorized(t, await get({ issuer: 'https://id.example', audience: 'other-app' }), /invalid_token/, 'another audience')
  isUnauthorized(t, await get({ audience: 'mobvibe' }), /invalid_token/, 'no issuer')
})

t.test('health, readiness, docs and the API documents need no token', async (t) => {
  for (const url of ['/healthz', '/readyz', '/openapi.json', '/asyncapi.json', '/docs/']) {
    const res = await app.inject({ method: 'GET', url })
    t.equal(res.statusCode, 200, `${url} is public`)
  }
  const doc = (await app.inject({ method: 'GET', url: '/openapi.json' })).json()
  t.same(doc.security, [{ bearerAuth: [] }], 'the document declares the bearer scheme globally')
  t.equal(doc.components.securitySchemes.bearerAuth.scheme, 'bearer')
  for (const [path, item] of Object.entries<Record<string, any>>(doc.paths)) {
    for (const [method, op] of Object.entries<any>(item)) {
      if (path.startsWith('/v1/')) {
        t.ok(op.responses['401'] && op.responses['429'], `${method} ${path} declares 401 and 429`)
      } else {
        t.same(op.security, [], `${method} ${path} is public in the document too`)
      }
    }
  }
})

/** An identity provider's key set on 127.0.0.1, whose keys the test changes. */
async function jwksServer (t: Test): Promise<{ url: string, keys: JWK[], server: Server, requests: () => number, fail: (on: boolean) => void }> {
  const state = { keys: [] as JWK[], requests: 0, failing: false }
  const server = createServer((req, res) => {
    state.requests++
    if (state.failing) {
      res.writeHead(500).end()
      return
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: state.keys }))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`,
    keys: state.keys,
    server,
    requests: () => state.requests,
    fail: (on) => { state.failing = on }
  }
}

t.test('JWT_JWKS_URL: tokens of the identity provider, RS256 and ES256, by kid; its outage is a 503', async (t) => {
  const idp = await jwksServer(t)
  const rsa = await generateKeyPair('RS256')
  const ec = await generateKeyPair('ES256')
  idp.keys.push({ ...await exportJWK(rsa.publicKey), kid: 'rsa-1', alg: 'RS256', use: 'sig' })
  idp.keys.push({ ...await exportJWK(ec.publicKey), kid: 'ec-1', alg: 'ES256', use: 'sig' })
  const { app } = await build(t, { env: { JWT_JWKS_URL: idp.url, JWT_ISSUER: 'https://id.example' } })
  const sign = (key: CryptoKey, alg: string, kid: string, sub: string) => new SignJWT({})
    .setProtectedHeader({ alg, kid }).setSubject(sub).setIssuer('https://id.example').setIssuedAt().setExpirationTime('1h').sign(key)

  const rsaToken = await sign(rsa.privateKey, 'RS256', 'rsa-1', 'carol')
  const created = await call(app, 'POST', '/v1/sessions', {}, { authorization: `Bearer ${rsaToken}` })
  t.equal(created.status, 201, 'an RS256 token of the provider creates a session')
  const ecToken = await sign(ec.privateKey, 'ES256', 'ec-1', 'carol')
  const got = await call(app, 'GET', `/v1/sessions/${created.body.id}`, undefined, { authorization: `Bearer ${ecToken}` })
  t.equal(got.status, 200, 'an ES256 token of the same user sees it')

  const stranger = await generateKeyPair('RS256')
  const forged = await sign(stranger.privateKey, 'RS256', 'rsa-1', 'carol')
  const refused = await app.inject({ method: 'GET', url: '/v1/sessions', headers: { authorization: `Bearer ${forged}` } })
  isUnauthorized(t, refused, /invalid_token/, 'a key the provider does not publish, under its kid')
  const hmac = await mintToken({ secret: SECRET, sub: 'carol', issuer: 'https://id.example' })
  isUnauthorized(t, await app.inject({ method: 'GET', url: '/v1/sessions', headers: { authorization: `Bearer ${hmac}` } }), /invalid_token/, 'an HS256 token when only the provider signs')

  // a rotated key: unknown kid, so jose fetches the set again (after its cooldown) — here the
  // provider is down, which is the provider's trouble: 503 + Retry-After, not a 401 that logs out
  idp.fail(true)
  const rotated = await generateKeyPair('ES256')
  const before = idp.requests()
  const down = await app.inject({ method: 'GET', url: '/v1/sessions', headers: { authorization: `Bearer ${await sign(rotated.privateKey, 'ES256', 'ec-2', 'carol')}` } })
  if (idp.requests() > before) {
    t.equal(down.statusCode, 503, 'the key set cannot be fetched: 503')
    t.equal(down.json().code, 'AUTH_KEYS_UNAVAILABLE')
    t.ok(down.headers['retry-after'], 'with Retry-After')
  } else {
    isUnauthorized(t, down, /invalid_token/, 'an unknown kid within the cooldown')
  }
})

t.test('the key set, fetched again for an unknown kid, accepts a rotated key', async (t) => {
  const idp = await jwksServer(t)
  const first = await generateKeyPair('ES256')
  idp.keys.push({ ...await exportJWK(first.publicKey), kid: 'k1', alg: 'ES256' })
  const { createTokenVerifier } = await import('../src/auth/token-verifier.js')
  // the service waits 30 s between two fetches of the set (jose's cooldown); a short one here
  const verifier = createTokenVerifier({ jwksUrl: idp.url, clockToleranceSeconds: 0, cacheMs: 0, jwksCooldownMs: 200 })
  const sign = (key: CryptoKey, kid: string) => new SignJWT({}).setProtectedHeader({ alg: 'ES256', kid }).setSubject('dan').setExpirationTime('1h').sign(key)
  t.same(await verifier.verify(await sign(first.privateKey, 'k1')), { userId: 'dan' })
  const second = await generateKeyPair('ES256')
  idp.keys.push({ ...await exportJWK(second.publicKey), kid: 'k2', alg: 'ES256' })
  // jose fetches the set again for an unknown kid once its cooldown since the last fetch is over
  const token = await sign(second.privateKey, 'k2')
  const deadline = Date.now() + 10_000
  let result: unknown
  while (Date.now() < deadline) {
    result = await verifier.verify(token).catch((err: Error) => err)
    if (!(result instanceof Error)) break
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  t.same(result, { userId: 'dan' }, 'the new key is found without a restart')
  t.ok(idp.requests() >= 2, 'by fetching the set again')
})

t.test('the stream takes the token from ?access_token=, and no log line holds it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-auth-log-'))
  const databaseUrl = await freshDatabaseUrl(t)
  const lines: string[] = []
  const sink = new Writable({ write (chunk: Buffer, _enc, done) { lines.push(chunk.toString('utf8')); done() } })
  const config = loadConfig({
    MOBVIBE_DATA_DIR: join(dir, 'data'),
    MOBVIBE_WORKSPACE_ROOT: join(dir, 'workspaces'),
    JWT_SECRET: SECRET,
    LOG_LEVEL: 'trace',
    ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {})
  })
  if (config.databaseUrl === undefined) await seedPglite(config.dataDir)
  const app = await buildApp({ config, logger: createLogger(config, sink), startWorker: false })
  t.teardown(async () => {
    await app.close()
    await rm(dir, { recursive: true, force: true })
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const port = (app.server.address() as AddressInfo).port
  const token = await mintToken({ secret: SECRET, sub: 'erin' })
  const session = (await call(app, 'POST', '/v1/sessions', {}, { authorization: `Bearer ${token}` })).body

  const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/sessions/${session.id}/stream?after=0&access_token=${token}`)
  await once(ws, 'open')
  ws.close(1000)
  await once(ws, 'close')
  t.pass('the upgrade with ?access_token= is accepted')

  const refused = new WebSocket(`ws://127.0.0.1:${port}/v1/sessions/${session.id}/stream?access_token=${token}x`)
  refused.on('error', () => {}) // terminate() during the handshake reports an error: expected here
  const [, response] = await once(refused, 'unexpected-response') as [unknown, { statusCode: number }]
  t.equal(response.statusCode, 401, 'a bad token in the URL is refused before the upgrade')
  refused.terminate()

  const elsewhere = await app.inject({ method: 'GET', url: `/v1/sessions?access_token=${token}`, headers: { upgrade: 'websocket', connection: 'upgrade' } })
  t.equal(elsewhere.statusCode, 401, 'an Upgrade header does not make a token in the URL acceptable outside the stream')
  const plain = await fetch(`http://127.0.0.1:${port}/v1/sessions?access_token=${token}`)
  t.equal(plain.status, 401, 'outside a WebSocket upgrade a token in the URL is not accepted')
  const problem = await plain.json() as { instance: string }
  t.notOk(problem.instance.includes(token), 'nor echoed in the problem')

  const logged = lines.join('')
  t.ok(logged.includes('access_token=[redacted]'), 'the URLs are logged with the token redacted')
  t.notOk(logged.includes(token.split('.')[2]!), 'no log line holds the token')
})

t.test('no JWT setting: a key generated into the data directory (0600), kept across starts, used by npm run token', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-auth-local-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const env = { MOBVIBE_DATA_DIR: join(dir, 'data'), MOBVIBE_WORKSPACE_ROOT: join(dir, 'ws'), LOG_LEVEL: 'silent' }
  const start = async () => {
    const databaseUrl = await freshDatabaseUrl(t)
    const config = loadConfig({ ...env, ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}) })
    if (config.databaseUrl === undefined) await seedPglite(config.dataDir)
    const app = await buildApp({ config, logger: createLogger(config), startWorker: false })
    await app.ready()
    return app
  }
  const mint = async (...args: string[]) => {
    const { stdout } = await run(process.execPath, ['--import', 'tsx', 'src/token.ts', ...args], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env }
    })
    return stdout.trim().split('\n').pop()!
  }

  let app = await start()
  const path = join(dir, 'data', 'jwt-secret')
  t.equal((await stat(path)).mode & 0o777, 0o600, 'the generated key is readable by the service\'s user only')
  const key = await readFile(path, 'utf8')
  t.ok(key.trim().length >= 32, 'a key of at least 256 bits')
  const token = await mint('frank', '--ttl', '2h')
  t.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, 'the token alone on the last line')
  const payload = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8')) as { sub: string, exp: number, iat: number }
  t.equal(payload.sub, 'frank')
  t.equal(payload.exp - payload.iat, 7200, '--ttl 2h')
  const created = await app.inject({ method: 'POST', url: '/v1/sessions', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, payload: '{}' })
  t.equal(created.statusCode, 201, 'the service accepts the minted token')
  await app.close()

  await chmod(path, 0o644)
  app = await start()
  t.teardown(() => app.close())
  t.equal(await readFile(path, 'utf8'), key, 'a restart keeps the key')
  t.equal((await stat(path)).mode & 0o777, 0o600, 'and takes back a mode that let others read it')
  const again = await app.inject({ method: 'GET', url: '/v1/sessions', headers: { authorization: `Bearer ${token}` } })
  t.equal(again.statusCode, 200, 'tokens minted before the restart still work')

  await t.rejects(mint(), 'no user: usage error')
  await t.rejects(mint('frank', '--ttl', '10y'), 'a ttl it cannot read')
  await writeFile(join(dir, 'x'), '')
})

t.test('JWT_SECRET and JWT_JWKS_URL together, or a short secret, stop start-up', async (t) => {
  t.throws(() => loadConfig({ JWT_SECRET: SECRET, JWT_JWKS_URL: 'https://id.example/jwks.json' }), /exclusive/)
  t.throws(() => loadConfig({ JWT_SECRET: 'short' }), /JWT_SECRET=\(value hidden\)/)
})

t.test('the default user of the tests is a real user: another token sees none of its sessions', async (t) => {
  const { app, tokenFor } = await build(t)
  const mine = await createSession(app, { title: 'mine' })
  const other = { authorization: `Bearer ${await tokenFor('someone-else')}` }
  t.equal((await call(app, 'GET', `/v1/sessions/${mine.id}`, undefined, other)).status, 404)
  t.equal((await call(app, 'GET', `/v1/sessions/${mine.id}`, undefined, authHeader(app))).status, 200)
})
