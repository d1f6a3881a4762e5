/**
 * Two users on one service: every route that names a session, and the stream, treat the other
 * user's session as one that does not exist (404, the same body as for an unknown id), change
 * nothing in it, and leave the owner's view whole. Lists and usage are each user's own.
 */
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import WebSocket from 'ws'
import type { SessionView } from '../src/schemas/session.js'
import { call, createSession, type ApiResponse } from './helpers/api.js'
import { build } from './helpers/build.js'

const FAKE = fileURLToPath(new URL('./fixtures/fake-claude.mjs', import.meta.url))
const { app, baseUrl, tokenFor } = await build(t, { listen: true, env: { CLAUDE_BIN: FAKE, KILL_GRACE_MS: '500' } })
const alice = { authorization: `Bearer ${await tokenFor('alice')}` }
const bob = { authorization: `Bearer ${await tokenFor('bob')}` }
const as = (who: Record<string, string>) => ({
  call: <T = any>(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, body?: unknown, headers: Record<string, string> = {}): Promise<ApiResponse<T>> =>
    call<T>(app, method, url, body, { ...who, ...headers })
})

const isResult = (e: { type: string, data: { type?: string } }) => e.type === 'agent' && e.data.type === 'result'

/** Waits, bounded, until the session's events include one that matches. */
async function eventually (what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 15_000
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

/** Everything alice can see of her session: what bob's requests must leave as it is. */
async function aliceView (id: string) {
  const session = await as(alice).call<SessionView>('GET', `/v1/sessions/${id}`)
  const events = await as(alice).call('GET', `/v1/sessions/${id}/events?limit=1000`)
  const history = await as(alice).call('GET', `/v1/sessions/${id}/history`)
  const snapshots = await as(alice).call('GET', `/v1/sessions/${id}/snapshots`)
  // activeMs of an active session grows with the clock: everything else must stay as it was
  const { usage: { activeMs: _live, ...usage }, ...rest } = session.body
  return { session: { ...rest, usage }, events: events.body.items, history: history.body.items, snapshots: snapshots.body.items }
}

t.test('every route naming alice\'s session is 404 for bob, identical to an unknown id, and changes nothing', async (t) => {
  const created = await as(alice).call<SessionView>('POST', '/v1/sessions', { title: 'alice\'s secret project' })
  t.equal(created.status, 201)
  const id = created.body.id
  // a live session with an agent, a turn, a pause and a resume behind it: every record has rows
  t.equal((await as(alice).call('POST', `/v1/sessions/${id}/messages`, { text: 'hello', clientMessageId: 'a-1' })).status, 202)
  await eventually('the first turn', async () => (await as(alice).call('GET', `/v1/sessions/${id}/events?limit=1000`)).body.items.some(isResult))
  t.equal((await as(alice).call('POST', `/v1/sessions/${id}/pause`, {})).status, 200)
  t.equal((await as(alice).call('POST', `/v1/sessions/${id}/resume`, {})).status, 200)
  // state events are stored after the transition's answer: all of them in, before the comparison
  await app.events.flush()
  const before = await aliceView(id)
  const unknown = '7a1c9f0e-2b3d-4c5e-8f60-718293a4b5c6'

  const requests: [method: 'GET' | 'POST' | 'PATCH' | 'DELETE', path: string, body?: unknown, headers?: Record<string, string>][] = [
    ['GET', ''],
    ['GET', '', undefined, { 'if-none-match': `"${before.session.version}"` }],
    ['PATCH', '', { title: 'bob was here' }],
    ['PATCH', '', { title: 'bob was here' }, { 'if-match': `"${before.session.version}"` }],
    ['POST', '/transitions', { to: 'completed' }],
    ['POST', '/transitions', { to: 'paused' }, { 'if-match': '*' }],
    ['POST', '/pause', {}],
    ['POST', '/resume', {}],
    ['POST', '/restart', {}],
    ['POST', '/heartbeat'],
    ['POST', '/messages', { text: 'rm -rf ~', clientMessageId: 'b-1' }],
    ['GET', '/events'],
    ['GET', '/events?after=0&limit=1000'],
    ['GET', '/history'],
    ['GET', '/snapshots'],
    ['DELETE', ''],
    ['DELETE', '', undefined, { 'if-match': `"${before.session.version}"` }]
  ]
  for (const [method, path, body, headers] of requests) {
    const theirs = await as(bob).call(method, `/v1/sessions/${id}${path}`, body, headers)
    const none = await as(bob).call(method, `/v1/sessions/${unknown}${path}`, body, headers)
    t.equal(theirs.status, 404, `${method} ${path || '/'}: 404`)
    t.equal(theirs.body?.code, 'SESSION_NOT_FOUND', `${method} ${path || '/'}: SESSION_NOT_FOUND`)
    // the same answer as for an id that does not exist, but for the id itself
    t.same({ ...theirs.body, detail: theirs.body?.detail?.replace(id, 'ID'), instance: undefined, requestId: undefined },
      { ...none.body, detail: none.body?.detail?.replace(unknown, 'ID'), instance: undefined, requestId: undefined },
      `${method} ${path || '/'}: indistinguishable from an unknown session`)
  }
  await app.events.flush()
  t.same(await aliceView(id), before, 'alice\'s session, events, history and snapshots are untouched')

  // and the same requests by alice still work: the refusals were about bob, not the session
  t.equal((await as(alice).call('POST', `/v1/sessions/${id}/heartbeat`)).status, 200)
  t.equal((await as(alice).call('PATCH', `/v1/sessions/${id}`, { title: 'still mine' })).status, 200)
})

t.test('the stream: bob cannot open alice\'s, with the header or ?access_token=', async (t) => {
  const { id } = await as(alice).call<SessionView>('POST', '/v1/sessions', {}).then((r) => r.body)
  const wsUrl = `${baseUrl.replace(/^http/, 'ws')}/v1/sessions/${id}/stream`
  const refused = async (url: string, headers: Record<string, string>) => {
    const ws = new WebSocket(url, { headers })
    ws.on('error', () => {})
    const [, res] = await once(ws, 'unexpected-response') as [unknown, { statusCode: number }]
    ws.terminate()
    return res.statusCode
  }
  t.equal(await refused(wsUrl, bob), 404, 'bob with a header: 404 before the upgrade')
  t.equal(await refused(`${wsUrl}?access_token=${bob.authorization.slice(7)}`, {}), 404, 'bob with ?access_token=: 404')
  const ws = new WebSocket(`${wsUrl}?after=0`, { headers: alice })
  await once(ws, 'open')
  t.pass('alice opens her own')
  ws.close(1000)
  await once(ws, 'close')
})

t.test('lists, usage and working directories are each user\'s own', async (t) => {
  const bobs = await createSession(app, { title: 'default user' }) // the test helper's own user
  const own = await as(bob).call<SessionView>('POST', '/v1/sessions', { title: 'bob\'s', workdir: 'shared-name' })
  const alices = await as(alice).call<SessionView>('POST', '/v1/sessions', { title: 'alice\'s', workdir: 'shared-name' })
  t.equal(own.status, 201)
  t.equal(alices.status, 201)
  t.not(own.body.workdir, alices.body.workdir, 'the same relative workdir is two directories, one per user')

  const listOf = async (who: Record<string, string>) => (await as(who).call<{ items: SessionView[] }>('GET', '/v1/sessions?limit=200')).body.items.map((s) => s.id)
  const bobList = await listOf(bob)
  const aliceList = await listOf(alice)
  t.ok(bobList.includes(own.body.id), 'bob lists his session')
  t.notOk(bobList.includes(alices.body.id), 'not alice\'s')
  t.notOk(bobList.includes(bobs.id), 'nor the default user\'s')
  t.notOk(aliceList.includes(own.body.id), 'alice does not list bob\'s')
  const filtered = await as(bob).call<{ items: SessionView[] }>('GET', '/v1/sessions?state=pending&state=active&state=paused&limit=200')
  t.notOk(filtered.body.items.some((s) => s.id === alices.body.id), 'nor with a state filter (the other index)')

  const into = await as(bob).call('POST', '/v1/sessions', { workdir: alices.body.workdir })
  t.equal(into.status, 400, 'bob cannot put a session in alice\'s directory')
  t.equal(into.body.code, 'WORKDIR_OUTSIDE_ROOT')

  const usage = await as(bob).call('GET', '/v1/usage?groupBy=session')
  t.equal(usage.status, 200)
  t.notOk(JSON.stringify(usage.body).includes(alices.body.id), 'bob\'s usage names no session of alice')
})

t.test('bob\'s message never reaches alice\'s agent', async (t) => {
  const { id } = await as(alice).call<SessionView>('POST', '/v1/sessions', {}).then((r) => r.body)
  t.equal((await as(bob).call('POST', `/v1/sessions/${id}/messages`, { text: 'from bob' })).status, 404)
  t.equal((await as(alice).call('POST', `/v1/sessions/${id}/messages`, { text: 'from alice' })).status, 202)
  await eventually('alice\'s reply', async () => (await as(alice).call('GET', `/v1/sessions/${id}/events?limit=1000`)).body.items.some(isResult))
  const events = JSON.stringify((await as(alice).call('GET', `/v1/sessions/${id}/events?limit=1000`)).body.items)
  t.ok(events.includes('from alice'))
  t.notOk(events.includes('from bob'), 'nothing of bob\'s message was stored or delivered')
})
