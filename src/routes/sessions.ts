import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply } from 'fastify'
import { Type } from 'typebox'
import type { SessionRow } from '../db/schema.js'
import { decodeCursor, encodeCursor } from '../domain/cursor.js'
import { etagOf } from '../domain/if-match.js'
import { InvalidCursor } from '../errors.js'
import { IfMatchHeaders, problems, ref } from '../schemas/common.js'
import {
  CreateSessionBody,
  ListQuery,
  PatchSessionBody,
  SessionListSchema,
  SessionParams,
  SessionRef
} from '../schemas/session.js'
import { toSessionView } from '../sessions/session-view.js'
import { ifMatchOf } from './if-match-header.js'

/** Sends a session with its version as the ETag. */
export function sendSession (reply: FastifyReply, row: SessionRow, now: Date, status = 200) {
  return reply.status(status).header('etag', etagOf(row.version)).send(toSessionView(row, now))
}

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
      body: CreateSessionBody,
      response: { 201: SessionRef, ...problems(400, 413, 415) }
    }
  }, async (request, reply) => {
    const row = await sessions.create(request.body ?? {})
    reply.header('location', `/v1/sessions/${row.id}`)
    return sendSession(reply, row, sessions.now(), 201)
  })

  app.get('/sessions', {
    schema: {
      tags: ['sessions'],
      operationId: 'listSessions',
      summary: 'List sessions, newest first, with keyset pagination',
      querystring: ListQuery,
      response: { 200: ref(SessionListSchema), ...problems(400) }
    }
  }, async (request) => {
    const { state, limit = 50, cursor: rawCursor } = request.query
    const cursor = rawCursor === undefined ? undefined : decodeCursor(rawCursor)
    if (cursor === null) throw new InvalidCursor()
    // one row more than asked tells whether another page exists without a count
    const rows = await sessions.list({ states: state, cursor, limit: limit + 1 })
    const page = rows.slice(0, limit)
    const last = page[page.length - 1]
    const now = sessions.now()
    return {
      items: page.map((row) => toSessionView(row, now)),
      nextCursor: rows.length > limit && last ? encodeCursor({ createdAt: last.createdAt, id: last.id }) : null
    }
  })

  app.get('/sessions/:id', {
    schema: {
      tags: ['sessions'],
      operationId: 'getSession',
      summary: 'One session, with its metadata: durations, tokens, cost, timestamps',
      params: SessionParams,
      headers: IfNoneMatchHeaders,
      response: { 200: SessionRef, 304: Type.Null({ description: 'Not modified' }), ...problems(400, 404) }
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
      params: SessionParams,
      headers: IfMatchHeaders,
      body: PatchSessionBody,
      response: { 200: SessionRef, ...problems(400, 404, 409, 412, 413, 415) }
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
