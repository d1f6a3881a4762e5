/**
 * Push notifications end to end, with the fake CLI as the agent and the fake Expo API as the
 * provider: a turn that ends while no stream client watches sends one push, whose seq is the turn's
 * stored result; the same turn watched by a stream sends none; a permission request is a push of its
 * own while the turn waits; an agent's crash is an `error` push.
 */
import { once } from 'node:events'
import t from 'tap'
import { authHeader, call, createSession } from './helpers/api.js'
import { agentEnv, isResult, send, waitEvents, waitResults } from './helpers/agents.js'
import { build } from './helpers/build.js'
import { expoMessages, fakeExpo } from './helpers/fake-push-providers.js'

t.test('a turn that ends unwatched sends one push', async (t) => {
  const expo = await fakeExpo(t)
  const { app } = await build(t, { env: agentEnv({ EXPO_API_URL: expo.url, PUSH_GROUP_WINDOW_MS: '50' }) })
  const token = 'ExponentPushToken[agent-device]'
  t.equal((await call(app, 'POST', '/v1/devices', { kind: 'expo', token })).status, 201)

  t.test('unwatched: one push for the turn, at its result', async (t) => {
    const session = await createSession(app, { title: 'e2e' })
    const notified = once(app.push.notifier, 'notified')
    await send(app, session.id, 'hello')
    const frames = await waitResults(app, session.id, 1)
    const result = frames.find(isResult)!
    const request = await expo.next()
    const arrived = Date.now()
    const [message] = expoMessages(request)
    t.same(message, {
      to: token,
      title: 'e2e',
      body: 'The agent finished its turn',
      data: { sessionId: session.id, seq: result.seq, kind: 'turn_ended' },
      sound: 'default',
      priority: 'default'
    })
    t.notOk(request.body.toString('utf8').includes('echo: hello'), 'nothing of the agent\'s reply')
    t.match((await notified)[0], { sessionId: session.id, kind: 'turn_ended', seq: result.seq, devices: 1 })
    t.comment(`turn's end to the push request: ${arrived - Date.parse(result.at)} ms (group window 50 ms)`)
    await app.push.notifier.idle()
    t.equal(expo.requests.length, 1, 'one push, no more')
  })

  t.test('watched by a stream: no push', async (t) => {
    const session = await createSession(app, { title: 'watched' })
    const ws = await app.injectWS(`/v1/sessions/${session.id}/stream`, { headers: authHeader(app) })
    t.teardown(() => ws.terminate())
    const skipped = once(app.push.notifier, 'skipped')
    const before = expo.requests.length
    await send(app, session.id, 'while you watch')
    await waitResults(app, session.id, 1)
    t.match((await skipped)[0], { sessionId: session.id, reason: 'watched' })
    await app.push.notifier.idle()
    t.equal(expo.requests.length, before, 'nothing sent')
  })

  t.test('a permission request is a high-priority push, while the turn waits', async (t) => {
    const session = await createSession(app, { title: 'asks' })
    const notified = once(app.push.notifier, 'notified')
    await send(app, session.id, '/tool Bash {"command":"ls"}')
    const frames = await waitEvents(app, session.id, 'the permission request', (f) => f.some((e) => e.type === 'permission_request'))
    const ask = frames.find((e) => e.type === 'permission_request')!
    const [message] = expoMessages(await expo.next())
    t.same(message?.data, { sessionId: session.id, seq: ask.seq, kind: 'permission_request' })
    t.equal(message?.priority, 'high')
    t.notOk(JSON.stringify(message).includes('ls'), 'not the tool\'s input')
    t.match((await notified)[0], { kind: 'permission_request', seq: ask.seq })
    const answered = await call(app, 'POST', `/v1/sessions/${session.id}/permissions/${ask.data.requestId}`, { decision: 'deny', message: 'not now' })
    t.equal(answered.status, 200)
    await waitResults(app, session.id, 1)
    t.match(expoMessages(await expo.next())[0], { data: { kind: 'turn_ended' } }, 'then the turn\'s end, a push of its own')
  })

  t.test('a crash is an error push', async (t) => {
    const session = await createSession(app, { title: 'crashy' })
    const notified = once(app.push.notifier, 'notified')
    await send(app, session.id, '/crash boom')
    const frames = await waitEvents(app, session.id, 'the error event', (f) => f.some((e) => e.type === 'error'))
    const error = frames.find((e) => e.type === 'error')!
    const [message] = expoMessages(await expo.next())
    t.match(message, { body: 'The agent stopped with an error', data: { sessionId: session.id, kind: 'error', seq: error.seq } })
    t.match((await notified)[0], { kind: 'error' })
  })
})
