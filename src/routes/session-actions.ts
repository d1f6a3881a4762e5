import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { etagOf } from '../domain/if-match.js'
import { ETagHeader, IfMatchHeaders, problems, ref, withHeaders } from '../schemas/common.js'
import {
  HeartbeatSchema,
  PauseBody,
  ResumeBody,
  SessionParams,
  SessionResponse,
  SnapshotSchema,
  TransitionBody
} from '../schemas/session.js'
import { toSnapshotView } from '../sessions/session-view.js'
import { ifMatchOf } from './if-match-header.js'
import { sendSession } from './session-reply.js'

/** State changes and liveness: transitions, pause/resume with snapshots, heartbeats. */
const sessionActionRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const sessions = app.sessions

  app.post('/sessions/:id/transitions', {
    schema: {
      tags: ['sessions'],
      operationId: 'transitionSession',
      summary: 'Move the session to another state',
      description: '`{to: paused}` is the same as POST /pause (it takes a snapshot); `{to: active}` from paused ' +
        'is the same as POST /resume from the latest snapshot. An edge not in the table, or a target only ' +
        'the system may choose, is 409 with the current state and the allowed targets.',
      params: SessionParams,
      headers: IfMatchHeaders,
      body: TransitionBody,
      response: { 200: SessionResponse, ...problems(400, 404, 409, 412, 413, 415) }
    }
  }, async (request, reply) => {
    const { to, reason } = request.body
    const row = await sessions.transitionState(request.params.id, to, { ifMatch: ifMatchOf(request), reason })
    return sendSession(reply, row, sessions.now())
  })

  app.post('/sessions/:id/pause', {
    schema: {
      tags: ['sessions'],
      operationId: 'pauseSession',
      summary: 'Snapshot the session and pause it; returns the snapshot (the ETag is the paused session\'s)',
      description: 'From active or suspended. A busy agent is interrupted, then stopped; the snapshot holds ' +
        'everything a resume needs. The session then waits in `paused` until POST /resume (messages to it are ' +
        '409). The ETag is the version of the paused session, not of the snapshot.',
      params: SessionParams,
      headers: IfMatchHeaders,
      body: PauseBody,
      response: { 200: withHeaders(ref(SnapshotSchema), { ETag: ETagHeader }), ...problems(400, 404, 409, 412, 413, 415) }
    }
  }, async (request, reply) => {
    const { session, snapshot } = await sessions.pauseSession(request.params.id, {
      ifMatch: ifMatchOf(request),
      reason: request.body?.reason
    })
    return reply.header('etag', etagOf(session.version)).send(toSnapshotView(snapshot))
  })

  app.post('/sessions/:id/resume', {
    schema: {
      tags: ['sessions'],
      operationId: 'resumeSession',
      summary: 'Resume a paused session from its latest snapshot, or from the one named',
      description: 'Only a paused session (else 409); `snapshotId` names one of its snapshots (404 if it has ' +
        'no such snapshot). The session becomes active; its agent starts with the next message, or at once when ' +
        'messages were kept by the pause.',
      params: SessionParams,
      headers: IfMatchHeaders,
      body: ResumeBody,
      response: { 200: SessionResponse, ...problems(400, 404, 409, 412, 413, 415) }
    }
  }, async (request, reply) => {
    const row = await sessions.resumeSession(request.params.id, {
      ifMatch: ifMatchOf(request),
      snapshotId: request.body?.snapshotId,
      reason: request.body?.reason
    })
    return sendSession(reply, row, sessions.now())
  })

  app.post('/sessions/:id/heartbeat', {
    schema: {
      tags: ['sessions'],
      operationId: 'heartbeatSession',
      summary: 'Keep-alive: pushes the expiry deadline out (never earlier); does not change the version',
      description: 'The session expires when neither a heartbeat nor activity comes within its TTL. The answer ' +
        'is the state, the version (also as the ETag), the new deadline and the server\'s clock. A completed, ' +
        'failed or expired session is 409 SESSION_TERMINAL. The stream\'s `heartbeat` frame does the same.',
      params: SessionParams,
      headers: IfMatchHeaders,
      response: { 200: withHeaders(ref(HeartbeatSchema), { ETag: ETagHeader }), ...problems(400, 404, 409, 412, 413, 415) }
    }
  }, async (request, reply) => {
    const beat = await sessions.heartbeat(request.params.id, ifMatchOf(request))
    return reply.header('etag', etagOf(beat.version)).send({
      state: beat.state,
      version: beat.version,
      expiresAt: beat.expiresAt.toISOString(),
      serverTime: beat.serverTime.toISOString()
    })
  })
}

export default sessionActionRoutes
