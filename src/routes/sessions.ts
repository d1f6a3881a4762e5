import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply } from 'fastify'
import { Type } from 'typebox'
import { decodeCursor, encodeCursor } from '../domain/cursor.js'
import { etagOf } from '../domain/if-match.js'
import { InvalidCursor } from '../errors.js'
import { ETagHeader, IfMatchHeaders, LocationHeader, problems, ref, withHeaders } from '../schemas/common.js'
import {
  CreateSessionBody,
  ListQuery,
  PatchSessionBody,
  SessionListSchema,
  SessionParams,
  SessionRef,
  SessionResponse
} from '../schemas/session.js'
import { ifMatchOf } from './if-match-header.js'
import { sendSession, sessionViews } from './session-reply.js'

const IfNoneMatchHeaders = Type.Object({
  'if-none-match': Type.Optional(Type.String({ description: 'An ETag the client holds; 304 when it is current' }))
})

/** Session CRUD and lists. */
const sessionRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const sessions = app.sessions

  app.post('/sessions', {
    schema: {
      tags: ['sessions'],
      operationId: 'createSession',
      summary: 'Create a session (pending, no agent yet)',
      description: 'Every member is optional: the workdir (inside the user\'s own area of the workspace root, ' +
        'created if missing) defaults to `<workspace root>/<user key>/<session id>`, the timeouts to the configured defaults. No agent starts ' +
        'until the first message. The answer is the session, with its ETag and its Location.',
      body: CreateSessionBody,
      response: { 201: withHeaders(SessionRef, { ETag: ETagHeader, Location: LocationHeader }), ...problems(400, 413, 415) }
    }
  }, async (request, reply) => {
    const row = await sessions.create(request.body ?? {}, request.user.userId)
    reply.header('location', `/v1/sessions/${row.id}`)
    return sendSession(reply, row, sessions.now(), 201)
  })

  app.get('/sessions', {
    schema: {
      tags: ['sessions'],
      operationId: 'listSessions',
      summary: 'List your sessions, newest first, with keyset pagination',
      description: 'Only the caller\'s own sessions; deleted sessions are not listed. Filter by `state` (repeat it for several states). A page ' +
        'holds at most `limit` sessions; `waiting=true` keeps those whose agent waits for the user (an open permission request or question); when more exist, `nextCursor` is set: pass it as `cursor` for the next ' +
        'page. A cursor this service did not issue is 400 INVALID_CURSOR.',
      querystring: ListQuery,
      response: { 200: ref(SessionListSchema), ...problems(400) }
    }
  }, async (request, reply) => {
    const { state, waiting, limit = 50, cursor: rawCursor } = request.query
    const cursor = rawCursor === undefined ? undefined : decodeCursor(rawCursor)
    if (cursor === null) throw new InvalidCursor()
    // one row more than asked tells whether another page exists without a count
    const rows = await sessions.list({ owner: request.user.userId, states: state, waiting, cursor, limit: limit + 1 })
    const page = rows.slice(0, limit)
    const last = page[page.length - 1]
    const now = sessions.now()
    return {
      items: await sessionViews(reply, page, now),
      nextCursor: rows.length > limit && last ? encodeCursor({ createdAt: last.createdAt, id: last.id }) : null
    }
  })

  app.get('/sessions/:id', {
    schema: {
      tags: ['sessions'],
      operationId: 'getSession',
      summary: 'One session, with its metadata: durations, tokens, cost, timestamps',
      description: 'The ETag is the session\'s version. With `If-None-Match` naming the current ETag (or `*`) ' +
        'the answer is 304 without a body, so a client can poll cheaply. A deleted session is 404.',
      params: SessionParams,
      headers: IfNoneMatchHeaders,
      response: {
        200: SessionResponse,
        304: withHeaders(Type.Null({ description: 'Not modified: the ETag the client holds is current' }), { ETag: ETagHeader }),
        ...problems(400, 404)
      }
    }
  }, async (request, reply) => {
    const row = await sessions.get(request.params.id)
    const etag = etagOf(row.version)
    const ifNoneMatch = request.headers['if-none-match']
    if (ifNoneMatch !== undefined && ifNoneMatch.split(',').some((t) => t.trim().replace(/^W\//, '') === etag || t.trim() === '*')) {
      // no body at all on a 304 (RFC 9110 §15.4.5): bypass the typed send
      return (reply as FastifyReply).status(304).header('etag', etag).send()
    }
    return sendSession(reply, row, sessions.now())
  })

  app.patch('/sessions/:id', {
    schema: {
      tags: ['sessions'],
      operationId: 'updateSession',
      summary: 'Change title, idle timeout or TTL (a TTL change recomputes the expiry deadline)',
      description: 'At least one member. A timeout outside the configured range is 400 VALUE_OUT_OF_RANGE; a ' +
        'completed, failed or expired session is 409 SESSION_TERMINAL. Bumps the version; with `If-Match` a ' +
        'stale version is 412.',
      params: SessionParams,
      headers: IfMatchHeaders,
      body: PatchSessionBody,
      response: { 200: SessionResponse, ...problems(400, 404, 409, 412, 413, 415) }
    }
  }, async (request, reply) => {
    const row = await sessions.update(request.params.id, request.body, { ifMatch: ifMatchOf(request) })
    return sendSession(reply, row, sessions.now())
  })

  app.delete('/sessions/:id', {
    schema: {
      tags: ['sessions'],
      operationId: 'deleteSession',
      summary: 'Stop the session\'s agent and archive it (any state); it is gone from the API afterwards',
      description: 'A session that is not terminal yet is completed first (reason `deleted`, seen on its stream), then archived: ' +
        'every later request about it is 404. Its working directory is left untouched. With `If-Match` a ' +
        'stale version is 412.',
      params: SessionParams,
      headers: IfMatchHeaders,
      response: { 204: Type.Null({ description: 'Deleted' }), ...problems(400, 404, 412, 413, 415) }
    }
  }, async (request, reply) => {
    await sessions.remove(request.params.id, { ifMatch: ifMatchOf(request) })
    return reply.status(204).send(null)
  })
}

export default sessionRoutes
