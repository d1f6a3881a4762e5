/**
 * Permission requests across the service's own end, through the real launcher: a graceful stop
 * (SIGTERM) cancels the open request with reason `shutdown`; after a kill -9, the next start
 * cancels what was left open (reason `restart`). Either way the session shows nothing pending and
 * a late answer is a 409 that says the request was cancelled.
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { agentEnv, markedPids, waitUntil, type Frame } from './helpers/agents.js'
import { freshDatabaseUrl } from './helpers/build.js'
import { launch, type Service } from './helpers/service-process.js'
import { seedPglite } from './helpers/pglite-template.js'

const dir = await mkdtemp(join(tmpdir(), 'mobvibe-perm-restart-'))
const ids: string[] = []
t.teardown(async () => {
  for (const id of ids) {
    for (const pid of await markedPids(id)) {
      try { process.kill(pid, 'SIGKILL') } catch {}
    }
  }
  await rm(dir, { recursive: true, force: true })
})
const databaseUrl = await freshDatabaseUrl(t)
const env = {
  ...agentEnv({ KILL_GRACE_MS: '200' }),
  HOST: '127.0.0.1',
  PORT: '0',
  MOBVIBE_DATA_DIR: join(dir, 'data'),
  MOBVIBE_WORKSPACE_ROOT: join(dir, 'workspaces'),
  LOG_LEVEL: 'info',
  ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {})
}
if (!databaseUrl) await seedPglite(env.MOBVIBE_DATA_DIR)

async function json (service: Service, path: string, init: RequestInit = {}) {
  const res = await service.fetch(path, { ...init, headers: { 'content-type': 'application/json', ...init.headers } })
  return { status: res.status, body: await res.json() as any }
}

async function events (service: Service, id: string): Promise<Frame[]> {
  return (await json(service, `/v1/sessions/${id}/events?limit=1000`)).body.items as Frame[]
}

/** A session whose agent waits for the answer to a tool use; its request id. */
async function waitingSession (t: Test, service: Service): Promise<{ id: string, requestId: string }> {
  const created = await json(service, '/v1/sessions', { method: 'POST', body: '{}' })
  const id = created.body.id as string
  ids.push(id)
  const sent = await json(service, `/v1/sessions/${id}/messages`, { method: 'POST', body: JSON.stringify({ text: '/tool Bash {"command":"make"}' }) })
  t.equal(sent.status, 202)
  const ask = await waitUntil('the permission request', async () => (await events(service, id)).find((f) => f.type === 'permission_request'))
  return { id, requestId: ask.data.requestId }
}

async function closedAfter (t: Test, service: Service, id: string, requestId: string, reason: string): Promise<void> {
  const frames = await waitUntil(`a permission_cancelled (${reason})`, async () => {
    const all = await events(service, id)
    return all.some((f) => f.type === 'permission_cancelled') ? all : undefined
  })
  t.match(frames.find((f) => f.type === 'permission_cancelled')?.data, { requestIds: [requestId], reason })
  const session = await json(service, `/v1/sessions/${id}`)
  t.same(session.body.pendingPermissions, [], 'nothing pending')
  t.equal(session.body.busy, false)
  const late = await json(service, `/v1/sessions/${id}/permissions/${requestId}`, { method: 'POST', body: '{"decision":"allow"}' })
  t.equal(late.status, 409)
  t.match(late.body, { code: 'PERMISSION_REQUEST_CLOSED', requestStatus: 'cancelled' })
}

t.test('a graceful stop cancels the open request (shutdown)', async (t) => {
  const first = launch(t, 'graceful', env)
  await first.ready()
  const { id, requestId } = await waitingSession(t, first)
  t.same(await first.stop('SIGTERM'), { code: 0, signal: null }, 'a clean exit')
  const second = launch(t, 'after graceful', env)
  await second.ready()
  await closedAfter(t, second, id, requestId, 'shutdown')
  await second.stop('SIGTERM')
})

t.test('after a kill -9, the next start cancels what was left open (restart)', async (t) => {
  const first = launch(t, 'killed', env)
  await first.ready()
  const { id, requestId } = await waitingSession(t, first)
  t.same(await first.stop('SIGKILL'), { code: null, signal: 'SIGKILL' })
  const second = launch(t, 'after kill', env)
  await second.ready()
  await closedAfter(t, second, id, requestId, 'restart')
  await second.stop('SIGTERM')
})
