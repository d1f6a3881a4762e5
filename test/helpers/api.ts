import type { App } from '../../src/app.js'
import type { SessionView } from '../../src/schemas/session.js'

type Method = 'GET' | 'POST' | 'PATCH' | 'DELETE'

export interface ApiResponse<T = any> {
  status: number
  headers: Record<string, string | string[] | number | undefined>
  body: T
  contentType: string
}

const defaultTokens = new WeakMap<object, string>()

/** The token `call` sends for this app when the headers carry no Authorization (set by build()). */
export function registerDefaultToken (app: object, token: string): void {
  defaultTokens.set(app, token)
}

/** `{ authorization: 'Bearer <the default token of app>' }`, for requests made without `call`. */
export function authHeader (app: object): { authorization: string } {
  const token = defaultTokens.get(app)
  if (token === undefined || token === '') throw new Error('this app has no default token')
  return { authorization: `Bearer ${token}` }
}

/**
 * Thin inject wrapper: JSON in, parsed JSON out, as the default user unless `headers` has its
 * own `authorization` (an empty one: no Authorization header at all).
 */
export async function call<T = any> (app: App, method: Method, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<ApiResponse<T>> {
  const token = defaultTokens.get(app)
  let sent: Record<string, string> = headers
  if (headers.authorization === undefined && token) sent = { authorization: `Bearer ${token}`, ...headers }
  else if (headers.authorization === '') sent = Object.fromEntries(Object.entries(headers).filter(([k]) => k !== 'authorization'))
  const res = await app.inject({
    method,
    url,
    headers: body === undefined ? sent : { 'content-type': 'application/json', ...sent },
    ...(body === undefined ? {} : { payload: JSON.stringify(body) })
  })
  return {
    status: res.statusCode,
    headers: res.headers,
    body: res.body === '' ? undefined as T : JSON.parse(res.body) as T,
    contentType: String(res.headers['content-type'] ?? '').split(';')[0]!.trim()
  }
}

export async function createSession (app: App, body: Record<string, unknown> = {}): Promise<SessionView> {
  const res = await call<SessionView>(app, 'POST', '/v1/sessions', body)
  if (res.status !== 201) throw new Error(`create failed: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body
}

export async function getSession (app: App, id: string): Promise<SessionView> {
  const res = await call<SessionView>(app, 'GET', `/v1/sessions/${id}`)
  if (res.status !== 200) throw new Error(`get failed: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body
}

export async function transition (app: App, id: string, to: string, headers: Record<string, string> = {}) {
  return call(app, 'POST', `/v1/sessions/${id}/transitions`, { to }, headers)
}
