/**
 * POST/GET/DELETE /v1/devices and GET /v1/push/vapid-public-key: registration of each kind, its
 * validation (a 400 that names the field), idempotency, the per-user bound, the generated webhook
 * secret shown once, isolation between users (another user's device is a 404, a push token
 * registered by another user moves to them), and the VAPID key pair kept in the data directory.
 */
import { createECDH, randomBytes } from 'node:crypto'
import { readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import t from 'tap'
import { call } from './helpers/api.js'
import { build } from './helpers/build.js'

/** A browser's subscription keys: a real P-256 point and a 16-byte auth secret. */
function browserKeys () {
  const ecdh = createECDH('prime256v1')
  ecdh.generateKeys()
  return { p256dh: ecdh.getPublicKey().toString('base64url'), auth: randomBytes(16).toString('base64url') }
}

const expo = (token = 'ExponentPushToken[abcdefghijklmnopqrstuv]', name?: string) => ({ kind: 'expo', token, ...(name ? { name } : {}) })

t.test('devices', async (t) => {
  const built = await build(t, { env: { PUSH_MAX_DEVICES_PER_USER: '3', PUSH_ALLOW_LOOPBACK: 'true' } })
  const { app } = built
  const bob = { authorization: `Bearer ${await built.tokenFor('bob')}` }
  const carol = { authorization: `Bearer ${await built.tokenFor('carol')}` }

  t.test('each kind registers, lists without secrets, and deletes', async (t) => {
    const keys = browserKeys()
    const a = await call(app, 'POST', '/v1/devices', expo('ExponentPushToken[abcdefghijklmnopqrstuv]', 'Pixel'), carol)
    t.equal(a.status, 201, 'an Expo token')
    t.match(a.body, { kind: 'expo', name: 'Pixel', target: 'ExponentPushToken[…qrstuv]' })
    t.notOk('secret' in a.body)
    const b = await call(app, 'POST', '/v1/devices', {
      kind: 'webpush',
      subscription: { endpoint: 'https://fcm.googleapis.com/fcm/send/abc123', expirationTime: null, keys }
    }, carol)
    t.equal(b.status, 201, 'a Web Push subscription, as PushSubscription.toJSON() gives it')
    t.match(b.body, { kind: 'webpush', name: null, target: 'https://fcm.googleapis.com' })
    const c = await call(app, 'POST', '/v1/devices', { kind: 'webhook', url: 'https://hooks.example.com/secret-path/T0001?token=x' }, carol)
    t.equal(c.status, 201, 'a webhook')
    t.match(c.body, { kind: 'webhook', target: 'https://hooks.example.com' }, 'the URL\'s path and query (which may hold a token) are not shown')
    t.match(c.body.secret, /^[A-Za-z0-9_-]{43}$/, 'a generated secret, shown once')

    const list = await call(app, 'GET', '/v1/devices', undefined, carol)
    t.equal(list.status, 200)
    t.same(list.body.items.map((d: { id: string }) => d.id), [a.body.id, b.body.id, c.body.id], 'oldest first')
    const text = JSON.stringify(list.body)
    for (const secret of [c.body.secret, keys.auth, keys.p256dh, 'abcdefghijklmnopqrstuv', 'secret-path', 'abc123']) {
      t.notOk(text.includes(secret), `the list does not show ${secret.slice(0, 12)}…`)
    }
    for (const item of list.body.items) t.same(Object.keys(item).sort(), ['createdAt', 'id', 'kind', 'name', 'target', 'updatedAt'])

    const gone = await call(app, 'DELETE', `/v1/devices/${b.body.id}`, undefined, carol)
    t.equal(gone.status, 204)
    const again = await call(app, 'DELETE', `/v1/devices/${b.body.id}`, undefined, carol)
    t.equal(again.status, 404)
    t.equal(again.body.code, 'DEVICE_NOT_FOUND')
    t.same((await call(app, 'GET', '/v1/devices', undefined, carol)).body.items.map((d: { id: string }) => d.id), [a.body.id, c.body.id])
    for (const d of [a, c]) t.equal((await call(app, 'DELETE', `/v1/devices/${String(d.body.id).toUpperCase()}`, undefined, carol)).status, 204, 'an id in upper case is the same id')
  })

  t.test('registering the same token, endpoint or URL again is the same device', async (t) => {
    const first = await call(app, 'POST', '/v1/devices', expo('ExpoPushToken[same-token-1234]'))
    t.equal(first.status, 201)
    const second = await call(app, 'POST', '/v1/devices', expo('ExpoPushToken[same-token-1234]', 'renamed'))
    t.equal(second.status, 200, '200: known already')
    t.equal(second.body.id, first.body.id)
    t.equal(second.body.name, 'renamed', 'a name given again replaces the old one')
    const third = await call(app, 'POST', '/v1/devices', expo('ExpoPushToken[same-token-1234]'))
    t.equal(third.body.name, 'renamed', 'no name: the old one stays')

    const hook = await call(app, 'POST', '/v1/devices', { kind: 'webhook', url: 'http://127.0.0.1:9/hook' })
    t.equal(hook.status, 201, 'http://127.0.0.1 with PUSH_ALLOW_LOOPBACK')
    const hookAgain = await call(app, 'POST', '/v1/devices', { kind: 'webhook', url: 'http://127.0.0.1:9/hook' })
    t.equal(hookAgain.status, 200)
    t.equal(hookAgain.body.id, hook.body.id)
    t.notOk('secret' in hookAgain.body, 'the secret is never shown again')
    const [row] = await app.push.devices.list('test-user').then((rows) => rows.filter((r) => r.id === hook.body.id))
    t.equal(row?.secret, hook.body.secret, 'and was kept')
    const rotated = await call(app, 'POST', '/v1/devices', { kind: 'webhook', url: 'http://127.0.0.1:9/hook', secret: 'a-new-secret-of-mine-0123' })
    t.equal(rotated.status, 200)
    t.notOk('secret' in rotated.body, 'a secret the user gave is not echoed')
    const [rotatedRow] = await app.push.devices.list('test-user').then((rows) => rows.filter((r) => r.id === hook.body.id))
    t.equal(rotatedRow?.secret, 'a-new-secret-of-mine-0123', 'a secret given again replaces the old one')

    t.test('at the bound, a new device is 409; a known one still registers', async (t) => {
      const third = await call(app, 'POST', '/v1/devices', expo('ExpoPushToken[third-device]'))
      t.equal(third.status, 201)
      const fourth = await call(app, 'POST', '/v1/devices', expo('ExpoPushToken[fourth-device]'))
      t.equal(fourth.status, 409)
      t.match(fourth.body, { code: 'TOO_MANY_DEVICES', limit: 3 })
      t.match(fourth.contentType, 'application/problem+json')
      t.equal((await call(app, 'POST', '/v1/devices', expo('ExpoPushToken[same-token-1234]'))).status, 200)
      const racing = await Promise.all([1, 2, 3].map((i) => call(app, 'POST', '/v1/devices', expo(`ExpoPushToken[racer-${i}]`), bob)))
      t.same(racing.map((r) => r.status).sort(), [201, 201, 201], 'bob has room for three')
      const over = await Promise.all([4, 5].map((i) => call(app, 'POST', '/v1/devices', expo(`ExpoPushToken[racer-${i}]`), bob)))
      t.same(over.map((r) => r.status), [409, 409])
      t.equal((await call(app, 'GET', '/v1/devices', undefined, bob)).body.items.length, 3, 'concurrent registrations do not pass the bound')
      for (const d of (await call(app, 'GET', '/v1/devices', undefined, bob)).body.items) await call(app, 'DELETE', `/v1/devices/${d.id}`, undefined, bob)
    })
  })

  t.test('users are isolated', async (t) => {
    const mine = await call(app, 'POST', '/v1/devices', { kind: 'webhook', url: 'https://hooks.example.com/shared', secret: 'secret-of-bob-0123456' }, bob)
    t.equal(mine.status, 201)
    const theirs = await call(app, 'POST', '/v1/devices', { kind: 'webhook', url: 'https://hooks.example.com/shared' }, carol)
    t.equal(theirs.status, 201, 'two users may share a webhook URL, each with a secret of their own')
    t.not(theirs.body.id, mine.body.id)
    t.equal((await call(app, 'DELETE', `/v1/devices/${mine.body.id}`, undefined, carol)).status, 404, 'another user\'s device is 404')
    t.same((await call(app, 'GET', '/v1/devices', undefined, carol)).body.items.map((d: { id: string }) => d.id), [theirs.body.id], 'lists are one\'s own')
    t.equal((await call(app, 'GET', '/v1/devices', undefined, bob)).body.items.length, 1, 'bob\'s webhook is still there')

    const phone = await call(app, 'POST', '/v1/devices', expo('ExponentPushToken[handed-on-phone]'), bob)
    t.equal(phone.status, 201)
    const moved = await call(app, 'POST', '/v1/devices', expo('ExponentPushToken[handed-on-phone]'), carol)
    t.equal(moved.status, 201, 'a push token registered by another user moves to them: the phone is signed in as carol now')
    t.not(moved.body.id, phone.body.id, 'under a new id')
    t.notOk((await call(app, 'GET', '/v1/devices', undefined, bob)).body.items.some((d: { id: string }) => d.id === phone.body.id), 'bob no longer notifies it')
    t.equal((await call(app, 'DELETE', `/v1/devices/${phone.body.id}`, undefined, bob)).status, 404)
    for (const u of [bob, carol]) {
      for (const d of (await call(app, 'GET', '/v1/devices', undefined, u)).body.items) await call(app, 'DELETE', `/v1/devices/${d.id}`, undefined, u)
    }
    t.equal((await call(app, 'GET', '/v1/devices', undefined, { authorization: '' })).status, 401, 'a token is needed')
  })

  t.test('a bad registration is a 400 that names the field', async (t) => {
    const keys = browserKeys()
    const cases: Array<[string, unknown, string]> = [
      ['no kind', { token: 'ExponentPushToken[x]' }, 'body.kind'],
      ['an unknown kind', { kind: 'sms', to: '+1' }, 'body.kind'],
      ['not an object', [1], 'body'],
      ['a token that is no Expo token', { kind: 'expo', token: 'abc' }, 'body.token'],
      ['an Expo token with spaces', { kind: 'expo', token: 'ExponentPushToken[a b]' }, 'body.token'],
      ['a member of another kind', { kind: 'expo', token: 'ExponentPushToken[abc]', url: 'https://x.example' }, 'body.url'],
      ['a webhook without url', { kind: 'webhook' }, 'body.url'],
      ['a plain http webhook', { kind: 'webhook', url: 'http://hooks.example.com/x' }, 'body.url'],
      ['a webhook with credentials', { kind: 'webhook', url: 'https://user:pw@hooks.example.com/x' }, 'body.url'],
      ['a webhook on a private address', { kind: 'webhook', url: 'https://10.1.2.3/x' }, 'body.url'],
      ['a webhook on a link-local address', { kind: 'webhook', url: 'https://169.254.169.254/latest' }, 'body.url'],
      ['a webhook on a mapped private address', { kind: 'webhook', url: 'https://[::ffff:10.0.0.1]/x' }, 'body.url'],
      ['a webhook that is not a URL', { kind: 'webhook', url: 'hooks' }, 'body.url'],
      ['a short secret', { kind: 'webhook', url: 'https://hooks.example.com/x', secret: 'short' }, 'body.secret'],
      ['a ftp endpoint', { kind: 'webpush', subscription: { endpoint: 'ftp://push.example.com/x', keys } }, 'body.subscription.endpoint'],
      ['keys missing', { kind: 'webpush', subscription: { endpoint: 'https://push.example.com/x' } }, 'body.subscription.keys'],
      ['a p256dh that is no point', { kind: 'webpush', subscription: { endpoint: 'https://push.example.com/x', keys: { ...keys, p256dh: randomBytes(65).toString('base64url') } } }, 'body.subscription.keys.p256dh'],
      ['a short auth', { kind: 'webpush', subscription: { endpoint: 'https://push.example.com/x', keys: { ...keys, auth: 'AAAA' } } }, 'body.subscription.keys.auth'],
      ['a name too long', { kind: 'expo', token: 'ExponentPushToken[abc]', name: 'x'.repeat(101) }, 'body.name']
    ]
    for (const [why, body, field] of cases) {
      const res = await call(app, 'POST', '/v1/devices', body)
      t.equal(res.status, 400, why)
      t.equal(res.contentType, 'application/problem+json', `${why}: problem+json`)
      t.equal(res.body.code, 'VALIDATION_FAILED', `${why}: VALIDATION_FAILED`)
      t.ok(res.body.errors.some((e: { field: string }) => e.field === field), `${why}: names ${field} (${JSON.stringify(res.body.errors)})`)
    }
    t.same((await call(app, 'GET', '/v1/devices')).body.items.filter((d: { name: string | null }) => d.name !== 'renamed').length, 2, 'nothing was registered by them')
    t.equal((await call(app, 'DELETE', '/v1/devices/not-a-uuid')).status, 400)
  })

  t.test('the VAPID public key stays in the data directory, readable by the service alone', async (t) => {
    const res = await call(app, 'GET', '/v1/push/vapid-public-key')
    t.equal(res.status, 200)
    t.match(res.body.publicKey, /^[A-Za-z0-9_-]{87}$/)
    t.equal(Buffer.from(res.body.publicKey, 'base64url')[0], 4, 'an uncompressed P-256 point')
    const path = join(built.config.dataDir, 'vapid-keys.json')
    t.equal((await stat(path)).mode & 0o777, 0o600)
    t.equal(JSON.parse(await readFile(path, 'utf8')).publicKey, res.body.publicKey)
    t.equal((await call(app, 'GET', '/v1/push/vapid-public-key', undefined, { authorization: '' })).status, 401)
  })
})

t.test('VAPID keys from the environment', async (t) => {
  const ecdh = createECDH('prime256v1')
  ecdh.generateKeys()
  const publicKey = ecdh.getPublicKey().toString('base64url')
  const privateKey = ecdh.getPrivateKey().toString('base64url').padStart(43, 'A')
  const { app, config } = await build(t, { env: { VAPID_PUBLIC_KEY: publicKey, VAPID_PRIVATE_KEY: privateKey } })
  t.equal((await call(app, 'GET', '/v1/push/vapid-public-key')).body.publicKey, publicKey)
  await t.rejects(stat(join(config.dataDir, 'vapid-keys.json')), { code: 'ENOENT' }, 'nothing generated')
})
