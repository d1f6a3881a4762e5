/**
 * Push notifications through each provider's local fake (test/helpers/fake-push-providers.ts): the
 * Expo API, a Web Push endpoint and a webhook receiver. The notifier is driven by the supervisor's
 * `attention` events (emitted by hand here: test/push-agent.test.ts has the real agent) with a
 * short group window and retry base. Covered: each provider's request (and nothing of the agent's
 * output in it), grouping of a burst into one notification, retries with backoff then success,
 * the attempt bound, devices the provider calls gone, silence while a stream client watches, and
 * the address policy. Tests wait for the notifier's own events and the fakes' requests, never sleep.
 */
import { createECDH, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type AddressInfo } from 'node:net'
import t from 'tap'
import type { App } from '../src/app.js'
import type { DeviceRow } from '../src/db/schema.js'
import type { AttentionKind } from '../src/domain/push-policy.js'
import { guardedLookup, refuseUrl, type AddressPolicy, type ResolveName } from '../src/push/address-policy.js'
import type { Sender, SendOutcome } from '../src/push/delivery.js'
import { PushHttpClient } from '../src/push/http-client.js'
import { PushNotifier, type NotifierEvents } from '../src/push/notifier.js'
import { createLogger } from '../src/logger.js'
import { call } from './helpers/api.js'
import { build } from './helpers/build.js'
import {
  EXPO_DEVICE_NOT_REGISTERED,
  expoMessages,
  fakeExpo,
  fakeWebhook,
  fakeWebPush,
  verifyWebhook
} from './helpers/fake-push-providers.js'

const GROUP_WINDOW_MS = 40
const RETRY_BASE_MS = 20

function browserKeys () {
  const ecdh = createECDH('prime256v1')
  ecdh.generateKeys()
  return { p256dh: ecdh.getPublicKey().toString('base64url'), auth: randomBytes(16).toString('base64url') }
}

/** Resolves once `done()` holds, checked on each turn of the event loop; fails after `timeoutMs`. */
async function until (done: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`gave up after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setImmediate(resolve))
  }
}

/** The next event of the notifier with these facts, ignoring the others. */
async function nextEvent<E extends keyof NotifierEvents> (app: App, event: E, match: (e: NotifierEvents[E][0]) => boolean = () => true): Promise<NotifierEvents[E][0]> {
  const ac = new AbortController()
  try {
    for (;;) {
      const [e] = await once(app.push.notifier, event, { signal: ac.signal }) as NotifierEvents[E]
      if (match(e)) return e
    }
  } finally {
    ac.abort()
  }
}

t.test('push notifications', async (t) => {
  const expo = await fakeExpo(t)
  const webPush = await fakeWebPush(t)
  const webhook = await fakeWebhook(t)
  const built = await build(t, {
    env: {
      EXPO_API_URL: `${expo.url}/prefix`,
      PUSH_ALLOW_LOOPBACK: 'true',
      PUSH_GROUP_WINDOW_MS: String(GROUP_WINDOW_MS),
      PUSH_RETRY_BASE_MS: String(RETRY_BASE_MS),
      PUSH_MAX_ATTEMPTS: '4',
      PUSH_RETRY_WINDOW_MS: '10000',
      PUSH_REQUEST_TIMEOUT_MS: '3000'
    }
  })
  const { app } = built
  let users = 0

  /** A user of their own with one session titled `title` and the given devices. */
  async function userWith (title: string, devices: object[]) {
    const auth = { authorization: `Bearer ${await built.tokenFor(`push-user-${++users}`)}` }
    const session = await call(app, 'POST', '/v1/sessions', { title }, auth)
    t.equal(session.status, 201)
    const registered = []
    for (const device of devices) {
      const res = await call(app, 'POST', '/v1/devices', device, auth)
      if (res.status !== 201) throw new Error(`register: ${res.status} ${JSON.stringify(res.body)}`)
      registered.push(res.body as { id: string, secret?: string })
    }
    return { auth, sessionId: session.body.id as string, devices: registered }
  }

  const attention = (sessionId: string, kind: AttentionKind, seq: number) =>
    app.agents.emit('attention', { sessionId, kind, seq, at: new Date() })

  t.afterEach(async () => { await app.push.notifier.idle() })

  t.test('Expo: one message with the session title and what happened, at the configured URL', async (t) => {
    const token = 'ExponentPushToken[expo-device-one]'
    const u = await userWith('Fix the login bug', [{ kind: 'expo', token }])
    const delivered = nextEvent(app, 'delivered', (e) => e.sessionId === u.sessionId)
    attention(u.sessionId, 'turn_ended', 7)
    const request = await expo.next()
    t.equal(request.method, 'POST')
    t.equal(request.path, '/prefix/--/api/v2/push/send', 'EXPO_API_URL, its path prefix kept')
    t.same(expoMessages(request), [{
      to: token,
      title: 'Fix the login bug',
      body: 'The agent finished its turn',
      data: { sessionId: u.sessionId, seq: 7, kind: 'turn_ended' },
      sound: 'default',
      priority: 'default'
    }], 'short: the title, what happened, where to open; nothing the agent wrote')
    t.match(await delivered, { deviceId: u.devices[0]!.id, deviceKind: 'expo', attempts: 1 })
  })

  t.test('a burst sends one notification: the most important kind, the latest seq', async (t) => {
    const u = await userWith('burst', [{ kind: 'expo', token: 'ExponentPushToken[burst-device]' }])
    const before = expo.requests.length
    const notified = nextEvent(app, 'notified', (e) => e.sessionId === u.sessionId)
    attention(u.sessionId, 'turn_ended', 3)
    attention(u.sessionId, 'permission_request', 4)
    attention(u.sessionId, 'error', 5)
    attention(u.sessionId, 'turn_ended', 6)
    t.match(await notified, { kind: 'permission_request', seq: 6, devices: 1 })
    const [message] = expoMessages(await expo.next())
    t.match(message, { data: { kind: 'permission_request', seq: 6 }, priority: 'high', body: 'The agent asks for permission to use a tool' })
    await app.push.notifier.idle()
    t.equal(expo.requests.length, before + 1, 'one request for the whole burst')

    t.test('an error outranks a turn\'s end', async (t) => {
      const next = nextEvent(app, 'notified', (e) => e.sessionId === u.sessionId)
      attention(u.sessionId, 'error', 8)
      attention(u.sessionId, 'turn_ended', 9)
      t.match(await next, { kind: 'error', seq: 9 })
      await expo.next()
    })
  })

  t.test('Web Push: an encrypted body with VAPID authorization', async (t) => {
    const keys = browserKeys()
    const u = await userWith('web', [{ kind: 'webpush', subscription: { endpoint: `${webPush.url}/push/abc?x=1`, keys } }])
    const vapid = (await call(app, 'GET', '/v1/push/vapid-public-key', undefined, u.auth)).body.publicKey as string
    const delivered = nextEvent(app, 'delivered', (e) => e.sessionId === u.sessionId)
    attention(u.sessionId, 'question', 11)
    const r = await webPush.next()
    t.equal(r.path, '/push/abc?x=1')
    t.match(r.headers.authorization, new RegExp(`^vapid t=[\\w-]+\\.[\\w-]+\\.[\\w-]+, k=${vapid}$`), 'VAPID: a signed JWT and the public key')
    const jwt = JSON.parse(Buffer.from(String(r.headers.authorization).split('t=')[1]!.split('.')[1]!, 'base64url').toString('utf8'))
    t.equal(jwt.aud, webPush.url, 'the JWT is for the push service\'s origin')
    t.equal(r.headers['content-encoding'], 'aes128gcm')
    t.equal(r.headers['content-type'], 'application/octet-stream')
    t.equal(r.headers.ttl, '86400')
    t.equal(r.headers.urgency, 'high', 'a question waits for the user')
    t.equal(r.headers.topic, u.sessionId.replaceAll('-', ''), 'one undelivered message per session at the push service')
    t.ok(r.body.length > 100, 'an encrypted body')
    t.notOk(r.body.toString('latin1').includes('web'), 'not in clear')
    t.match(await delivered, { deviceKind: 'webpush' })
  })

  t.test('webhook: a signed JSON body a receiver can verify', async (t) => {
    const u = await userWith('hooked', [{ kind: 'webhook', url: `${webhook.url}/hook` }])
    const secret = u.devices[0]!.secret!
    attention(u.sessionId, 'error', 21)
    const r = await webhook.next()
    t.ok(verifyWebhook(r, secret), 'X-MobVibe-Signature is the HMAC-SHA256 of the raw body')
    t.notOk(verifyWebhook(r, 'another secret of 16+ chars'), 'and not with another key')
    const body = JSON.parse(r.body.toString('utf8'))
    t.same(Object.keys(body).sort(), ['at', 'body', 'deliveryId', 'event', 'kind', 'sentAt', 'seq', 'sessionId', 'sessionTitle', 'title'])
    t.match(body, { event: 'session.attention', sessionId: u.sessionId, seq: 21, kind: 'error', sessionTitle: 'hooked', title: 'hooked', body: 'The agent stopped with an error' })
    t.equal(r.headers['x-mobvibe-timestamp'], String(Math.floor(Date.parse(body.sentAt) / 1000)), 'the timestamp header is the signed sentAt')
    t.equal(r.headers['x-mobvibe-delivery'], body.deliveryId)
    t.equal(r.headers['x-mobvibe-event'], 'session.attention')
    t.equal(r.headers['content-type'], 'application/json')
  })

  t.test('a failing provider is retried with backoff, then delivers', async (t) => {
    const u = await userWith('flaky', [{ kind: 'webhook', url: `${webhook.url}/flaky`, secret: 'flaky-secret-0123456789' }])
    webhook.script.push({ status: 503 }, { status: 500 })
    const retries: number[] = []
    const onRetry = (e: NotifierEvents['retrying'][0]) => { if (e.sessionId === u.sessionId) retries.push(e.delayMs) }
    app.push.notifier.on('retrying', onRetry)
    t.teardown(() => { app.push.notifier.off('retrying', onRetry) })
    const delivered = nextEvent(app, 'delivered', (e) => e.sessionId === u.sessionId)
    attention(u.sessionId, 'turn_ended', 2)
    const attempts = [await webhook.next(), await webhook.next(), await webhook.next()]
    t.match(await delivered, { attempts: 3 })
    t.equal(retries.length, 2)
    t.ok(retries[0]! >= RETRY_BASE_MS / 2 && retries[0]! <= RETRY_BASE_MS, `first delay within [base/2, base]: ${retries[0]}`)
    t.ok(retries[1]! >= RETRY_BASE_MS && retries[1]! <= 2 * RETRY_BASE_MS, `second within [base, 2 base]: ${retries[1]}`)
    t.ok(attempts[1]!.at - attempts[0]!.at >= retries[0]! - 2, 'the second attempt waited its delay')
    t.ok(attempts[2]!.at - attempts[1]!.at >= retries[1]! - 2, 'the third too')
    t.equal(new Set(attempts.map((a) => a.headers['x-mobvibe-delivery'])).size, 1, 'one delivery id across attempts')
    t.ok(attempts.every((a) => verifyWebhook(a, 'flaky-secret-0123456789')), 'each attempt signed')

    t.test('a 429 with Retry-After waits at least that long', async (t) => {
      webhook.script.push({ status: 429, headers: { 'retry-after': '1' } })
      const retrying = nextEvent(app, 'retrying', (e) => e.sessionId === u.sessionId)
      attention(u.sessionId, 'turn_ended', 3)
      await webhook.next()
      t.equal((await retrying).delayMs, 1000)
      const second = await webhook.next()
      t.ok(second.headers['x-mobvibe-delivery'])
    })

    t.test('the attempts are bounded', async (t) => {
      webhook.script.push({ status: 500 }, { status: 500 }, { status: 500 }, { status: 500 }, { status: 500 })
      const failed = nextEvent(app, 'failed', (e) => e.sessionId === u.sessionId)
      const before = webhook.requests.length
      attention(u.sessionId, 'turn_ended', 4)
      t.match(await failed, { attempts: 4, reason: /^gave up: HTTP 500/ })
      t.equal(webhook.requests.length - before, 4, 'PUSH_MAX_ATTEMPTS requests, no more')
      webhook.script.length = 0
      t.equal((await call(app, 'GET', '/v1/devices', undefined, u.auth)).body.items.length, 1, 'a failing webhook is kept')
    })

    t.test('a refusal is not retried', async (t) => {
      webhook.script.push({ status: 400 })
      const failed = nextEvent(app, 'failed', (e) => e.sessionId === u.sessionId)
      attention(u.sessionId, 'turn_ended', 5)
      t.match(await failed, { attempts: 1, reason: 'HTTP 400' })
    })
  })

  t.test('Expo: a server error is retried', async (t) => {
    const u = await userWith('expo retry', [{ kind: 'expo', token: 'ExponentPushToken[expo-retry]' }])
    expo.script.push({ status: 502, body: 'bad gateway' })
    const delivered = nextEvent(app, 'delivered', (e) => e.sessionId === u.sessionId)
    attention(u.sessionId, 'turn_ended', 1)
    await expo.next()
    await expo.next()
    t.match(await delivered, { attempts: 2 })
  })

  t.test('a device its provider calls gone is removed', async (t) => {
    const u = await userWith('gone', [
      { kind: 'expo', token: 'ExponentPushToken[gone-expo]' },
      { kind: 'webpush', subscription: { endpoint: `${webPush.url}/gone-410`, keys: browserKeys() } },
      { kind: 'webpush', subscription: { endpoint: `${webPush.url}/gone-404`, keys: browserKeys() } },
      { kind: 'webhook', url: `${webhook.url}/gone` }
    ])
    expo.script.push(EXPO_DEVICE_NOT_REGISTERED)
    webPush.script.push({ status: 410 }, { status: 404 })
    webhook.script.push({ status: 410 })
    const gone: string[] = []
    const onGone = (e: NotifierEvents['gone'][0]) => { if (e.sessionId === u.sessionId) gone.push(`${e.deviceKind} ${e.reason}`) }
    app.push.notifier.on('gone', onGone)
    t.teardown(() => { app.push.notifier.off('gone', onGone) })
    attention(u.sessionId, 'turn_ended', 1)
    await app.push.notifier.idle()
    for (const fake of [expo, webPush, webPush, webhook]) await fake.next()
    t.same(gone.sort(), ['expo DeviceNotRegistered', 'webhook HTTP 410', 'webpush HTTP 404', 'webpush HTTP 410'])
    t.same((await call(app, 'GET', '/v1/devices', undefined, u.auth)).body.items, [], 'all four removed')
  })

  t.test('no notification while a stream client watches the session', async (t) => {
    const u = await userWith('watched', [{ kind: 'expo', token: 'ExponentPushToken[watched-device]' }])
    const ws = await app.injectWS(`/v1/sessions/${u.sessionId}/stream`, { headers: u.auth })
    t.equal(app.eventBus.subscriberCount(u.sessionId), 1, 'the stream is subscribed')
    const before = expo.requests.length
    const skipped = nextEvent(app, 'skipped', (e) => e.sessionId === u.sessionId)
    attention(u.sessionId, 'permission_request', 5)
    t.match(await skipped, { reason: 'watched', kind: 'permission_request' })
    t.equal(expo.requests.length, before, 'nothing sent')

    t.test('the check is made when the window ends, not when the event comes', async (t) => {
      const delivered = nextEvent(app, 'delivered', (e) => e.sessionId === u.sessionId)
      attention(u.sessionId, 'turn_ended', 6)
      const closed = once(ws, 'close')
      ws.terminate()
      await closed
      // the server side lets go of the subscription when the socket closes
      await until(() => app.eventBus.subscriberCount(u.sessionId) === 0, 'the closed stream to unsubscribe')
      t.match(expoMessages(await expo.next())[0], { data: { kind: 'turn_ended', seq: 6 } })
      await delivered
    })
  })

  t.test('a session without devices, or one gone, sends nothing', async (t) => {
    const u = await userWith('no devices', [])
    const skipped = nextEvent(app, 'skipped', (e) => e.sessionId === u.sessionId)
    attention(u.sessionId, 'turn_ended', 1)
    t.match(await skipped, { reason: 'no-devices' })
    const v = await userWith('deleted', [{ kind: 'expo', token: 'ExponentPushToken[deleted-session]' }])
    t.equal((await call(app, 'DELETE', `/v1/sessions/${v.sessionId}`, undefined, v.auth)).status, 204)
    const gone = nextEvent(app, 'skipped', (e) => e.sessionId === v.sessionId)
    attention(v.sessionId, 'turn_ended', 9)
    t.match(await gone, { reason: 'no-session' })
  })
})

t.test('the address policy', async (t) => {
  const closed = { allowLoopback: false, allowPrivateNetworks: false }
  const open = { allowLoopback: true, allowPrivateNetworks: true }
  t.equal(refuseUrl('https://hooks.example.com/x', closed), null)
  t.match(refuseUrl('http://127.0.0.1:8080/x', closed), /https/, 'plain http is refused without PUSH_ALLOW_LOOPBACK')
  t.match(refuseUrl('https://127.0.0.1/x', closed), /loopback/)
  t.match(refuseUrl('https://[::1]/x', closed), /loopback/)
  t.match(refuseUrl('https://[::ffff:127.0.0.1]/x', closed), /loopback/, 'an IPv4-mapped loopback address')
  t.match(refuseUrl('https://2130706433/x', closed), /loopback/, '127.0.0.1 as one number (URL parsing makes it dotted)')
  t.match(refuseUrl('https://localhost/x', closed), /localhost/)
  t.match(refuseUrl('https://LOCALHOST./x', closed), /localhost/, 'in any spelling')
  t.match(refuseUrl('https://192.168.1.10/x', closed), /private/)
  t.equal(refuseUrl('https://192.168.1.10/x', { ...closed, allowPrivateNetworks: true }), null, 'PUSH_ALLOW_PRIVATE_NETWORKS')
  t.match(refuseUrl('https://224.0.0.1/x', open), /reserved/, 'multicast, whatever the switches')
  t.equal(refuseUrl('http://127.0.0.1:8080/x', { ...closed, allowLoopback: true }), null)
  t.match(refuseUrl('http://127.0.0.2:8080/x', { ...closed, allowLoopback: true }), /https/, 'plain http to 127.0.0.1 and [::1] only')

  t.test('link-local and the metadata services: refused whatever the switches', async (t) => {
    for (const host of [
      '169.254.169.254', '169.254.0.1', '169.254.255.255', '169.254.170.2',
      '[fe80::1]', '[febf:ffff::1]', '[fd00:ec2::254]', '100.100.100.200',
      '[::ffff:169.254.169.254]', '[::169.254.169.254]', '[64:ff9b::169.254.169.254]', '[2002:a9fe:a9fe::1]'
    ]) {
      t.match(refuseUrl(`https://${host}/latest/meta-data/`, open), /link-local/, `${host} with both switches on`)
      t.match(refuseUrl(`https://${host}/latest/meta-data/`, closed), /link-local/, `${host} with both off`)
    }
    t.equal(refuseUrl('https://169.253.255.255/x', closed), null, 'the ranges end where they should: 169.253.255.255')
    t.equal(refuseUrl('https://169.255.0.1/x', closed), null, '169.255.0.1')
    t.equal(refuseUrl('https://[fec0::1]/x', { ...closed, allowPrivateNetworks: true }), refuseUrl('https://[fec0::1]/x', closed), 'fec0::/10 (site-local, deprecated) is no private network either')
    t.equal(refuseUrl('https://[fd00:ec2::253]/x', { ...closed, allowPrivateNetworks: true }), null, 'the rest of fc00::/7 is private')
    t.equal(refuseUrl('https://100.100.100.199/x', { ...closed, allowPrivateNetworks: true }), null, 'the rest of 100.64/10 is shared')
  })

  t.test('an IPv4 address inside an IPv6 one is judged as IPv4', async (t) => {
    /** `a.b.c.d` as two hex groups: `7f00:1` for 127.0.0.1 */
    const hexGroups = (v4: string) => {
      const [a, b, c, d] = v4.split('.').map(Number) as [number, number, number, number]
      return `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`
    }
    // each form, around a loopback, a private, a link-local and a public IPv4 address
    const forms: Array<[string, (v4: string) => string]> = [
      ['IPv4-mapped', (v4) => `::ffff:${v4}`],
      ['IPv4-translated', (v4) => `::ffff:0:${v4}`],
      ['IPv4-compatible', (v4) => `::${v4}`],
      ['NAT64 64:ff9b::/96', (v4) => `64:ff9b::${v4}`],
      ['6to4 2002::/16', (v4) => `2002:${hexGroups(v4)}::1`]
    ]
    for (const [form, embed] of forms) {
      const url = (v4: string) => `https://[${embed(v4)}]/x`
      t.match(refuseUrl(url('127.0.0.1'), closed), /loopback/, `${form}: loopback (${new URL(url('127.0.0.1')).hostname})`)
      t.equal(refuseUrl(url('127.0.0.1'), { ...closed, allowLoopback: true }), null, `${form}: loopback, with PUSH_ALLOW_LOOPBACK`)
      t.match(refuseUrl(url('10.0.0.1'), closed), /private/, `${form}: private`)
      t.equal(refuseUrl(url('10.0.0.1'), { ...closed, allowPrivateNetworks: true }), null, `${form}: private, with PUSH_ALLOW_PRIVATE_NETWORKS`)
      t.match(refuseUrl(url('169.254.169.254'), open), /link-local/, `${form}: the metadata service, whatever the switches`)
      t.match(refuseUrl(url('0.0.0.0'), open), /reserved/, `${form}: "this network"`)
      t.equal(refuseUrl(url('93.184.215.14'), closed), null, `${form}: a public address is one`)
    }
    t.match(refuseUrl('https://[::127.0.0.1]/x', closed), /loopback/, 'as URL parsing rewrites it: [::7f00:1]')
    t.equal(new URL('https://[::127.0.0.1]/x').hostname, '[::7f00:1]')
    t.match(refuseUrl('https://[::1]/x', closed), /loopback/, '::1 is IPv6 loopback, not 0.0.0.1')
    t.equal(refuseUrl('https://[::1]/x', { ...closed, allowLoopback: true }), null)
    t.match(refuseUrl('https://[::]/x', open), /reserved/)
  })

  t.test('Teredo and local-use NAT64: refused outright', async (t) => {
    for (const host of ['[2001::1]', '[2001:0:4136:e378:8000:63bf:3fff:fdd2]', '[64:ff9b:1::8.8.8.8]', '[64:ff9b:1:ffff::1]']) {
      t.match(refuseUrl(`https://${host}/x`, open), /reserved/, `${host}, whatever the switches`)
    }
    t.equal(refuseUrl('https://[2001:1::1]/x', closed), refuseUrl('https://[2001:4860::8888]/x', closed), 'the neighbours of 2001::/32 are not Teredo')
    t.equal(refuseUrl('https://[2001:4860::8888]/x', closed), null)
  })

  t.test('the lookup of each connection', async (t) => {
    const names = new Map<string, string[]>()
    const dns: ResolveName = (hostname, _options, callback) => {
      const addresses = names.get(hostname)
      if (addresses === undefined) callback(Object.assign(new Error(`${hostname} not found`), { code: 'ENOTFOUND' }), [])
      else callback(null, addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 })))
    }
    const lookupAll = (policy: AddressPolicy, hostname: string) => new Promise<{ err: NodeJS.ErrnoException | null, addresses: unknown }>((resolve) =>
      guardedLookup(policy, dns)(hostname, { all: true }, (err, addresses) => resolve({ err, addresses })))

    names.set('mixed.example.test', ['10.0.0.1', '93.184.215.14', '::ffff:127.0.0.1', '2606:4700::1'])
    t.same((await lookupAll(closed, 'mixed.example.test')).addresses, [{ address: '93.184.215.14', family: 4 }, { address: '2606:4700::1', family: 6 }], 'only the allowed answers are handed out')
    names.set('metadata.example.test', ['169.254.169.254', 'fd00:ec2::254', 'fe80::1%eth0'])
    t.equal((await lookupAll(open, 'metadata.example.test')).err?.code, 'EPUSHADDRESS', 'a name of the metadata service, whatever the switches')
    names.set('nat64.example.test', ['64:ff9b::7f00:1', '2002:a00:1::1'])
    t.equal((await lookupAll(closed, 'nat64.example.test')).err?.code, 'EPUSHADDRESS', 'NAT64 and 6to4 answers are judged by their IPv4 address')

    const real = await new Promise<NodeJS.ErrnoException | null>((resolve) => guardedLookup(closed)('localhost', { all: true }, (e) => resolve(e)))
    t.equal(real?.code, 'EPUSHADDRESS', 'with the system\'s DNS, localhost is refused where the connection is made')
  })

  t.test('a name re-pointed after its registration reaches nothing (DNS rebinding)', async (t) => {
    // a TCP server on 127.0.0.1 that counts the connections it gets
    const server = createServer((socket) => { socket.destroy() })
    const connected: number[] = []
    server.on('connection', () => connected.push(Date.now()))
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    t.teardown(() => { server.close() })
    const { port } = server.address() as AddressInfo
    const url = `https://hooks.example.test:${port}/x`

    // the name is public when the user registers it...
    let answer = '93.184.215.14'
    const asked: string[] = []
    const dns: ResolveName = (hostname, _options, callback) => {
      asked.push(hostname)
      callback(null, [{ address: answer, family: 4 }])
    }
    t.equal(refuseUrl(url, closed), null, 'the registration accepts the URL')
    const atRegistration = await new Promise<NodeJS.ErrnoException | null>((resolve) => guardedLookup(closed, dns)('hooks.example.test', { all: true }, (e) => resolve(e)))
    t.equal(atRegistration, null, 'and its name resolves to a public address then')

    // ... and answers 127.0.0.1 when the notification is posted
    answer = '127.0.0.1'
    asked.length = 0
    const http = new PushHttpClient({ policy: closed, timeoutMs: 2000, resolve: dns })
    t.teardown(() => http.close())
    t.equal(refuseUrl(url, closed), null, 'the URL itself still passes: only the lookup can catch it')
    const refused = await http.post(url, { headers: {}, body: '{}', signal: AbortSignal.timeout(5000), gone: [410] })
    t.match(refused, { status: 'failed', reason: /hooks\.example\.test resolves to no address that push may reach/ }, 'refused for good, no retry')
    t.same(asked, ['hooks.example.test'], 'by the request\'s own lookup')
    t.match(await http.post(`https://[::ffff:127.0.0.1]:${port}/x`, { headers: {}, body: '{}', signal: AbortSignal.timeout(5000), gone: [410] }),
      { status: 'failed', reason: /^the address must not lead to a loopback/ }, 'a literal address is refused before the request, for good')
    t.equal(connected.length, 0, 'the server on 127.0.0.1 saw no connection')

    // the control: where loopback is allowed, the same request does reach that server
    const loopback = new PushHttpClient({ policy: { ...closed, allowLoopback: true }, timeoutMs: 2000, resolve: dns })
    t.teardown(() => loopback.close())
    const reached = once(server, 'connection')
    const outcome = await loopback.post(url, { headers: {}, body: '{}', signal: AbortSignal.timeout(5000), gone: [410] })
    await reached
    t.equal(connected.length, 1, 'with PUSH_ALLOW_LOOPBACK the server sees the connection')
    t.equal(outcome.status, 'retry', 'which is no TLS server: a network error, retried')
  })
})

t.test('the notifier on its own', async (t) => {
  const logger = createLogger({ logLevel: process.env.TEST_LOG_LEVEL as 'info' ?? 'silent' })
  const device = (id: string): DeviceRow => ({ id, owner: 'u', kind: 'webhook', address: 'https://x.example/', name: null, p256dh: null, auth: null, secret: 's', createdAt: new Date(), updatedAt: new Date() })
  function make (o: { devices: DeviceRow[], send: () => Promise<SendOutcome>, queueMax?: number }) {
    const sender: Sender = { send: o.send, close: async () => {} }
    const removed: string[] = []
    const notifier = new PushNotifier({
      devices: { list: async () => o.devices, removeGone: async (id) => { removed.push(id) } },
      senders: { expo: sender, webpush: sender, webhook: sender },
      isWatched: () => false,
      sessionInfo: async (id) => id === 'legacy' ? { owner: null, title: null } : { owner: 'u', title: 't' },
      groupWindowMs: 1,
      retry: { maxAttempts: 3, baseMs: 1, windowMs: 1000 },
      queueMax: o.queueMax ?? 100,
      logger,
      random: () => 0.5
    })
    t.teardown(() => notifier.close())
    return { notifier, removed }
  }

  t.test('a sender that throws is retried; notify never throws', async (t) => {
    let calls = 0
    const { notifier } = make({ devices: [device('d1')], send: async () => { if (++calls < 2) throw new Error('boom'); return { status: 'delivered' } } })
    const delivered = once(notifier, 'delivered')
    notifier.notify({ sessionId: 's1', kind: 'turn_ended', seq: 1, at: new Date() })
    t.match((await delivered)[0], { attempts: 2 })
  })

  t.test('the queue is bounded', async (t) => {
    let release!: () => void
    const held = new Promise<void>((resolve) => { release = resolve })
    const { notifier } = make({ devices: [device('d1'), device('d2'), device('d3')], queueMax: 2, send: async () => { await held; return { status: 'delivered' } } })
    const dropped = once(notifier, 'dropped')
    notifier.notify({ sessionId: 's2', kind: 'turn_ended', seq: 1, at: new Date() })
    t.match((await dropped)[0], { sessionId: 's2', reason: 'queue full' })
    t.equal(notifier.pending, 2)
    release()
    await notifier.idle()
    t.equal(notifier.pending, 0)
  })

  t.test('a session nobody owns notifies nobody', async (t) => {
    const { notifier } = make({ devices: [device('d1')], send: async () => ({ status: 'delivered' }) })
    const skipped = once(notifier, 'skipped')
    notifier.notify({ sessionId: 'legacy', kind: 'turn_ended', seq: 1, at: new Date() })
    t.match((await skipped)[0], { reason: 'no-session' })
  })

  t.test('shutdown drops the bursts not yet decided and takes no more', async (t) => {
    let sent = 0
    const { notifier } = make({ devices: [device('d1')], send: async () => { sent++; return { status: 'delivered' } } })
    notifier.notify({ sessionId: 's3', kind: 'turn_ended', seq: 1, at: new Date() })
    await notifier.close()
    notifier.notify({ sessionId: 's3', kind: 'turn_ended', seq: 2, at: new Date() })
    await notifier.idle()
    t.equal(sent, 0)
  })
})
