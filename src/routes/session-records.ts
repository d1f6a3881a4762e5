import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { decodeSeqCursor, encodeSeqCursor } from '../domain/cursor.js'
import { PG_INT_MAX } from '../domain/limits.js'
import { InvalidCursor } from '../errors.js'
import { problems, ref } from '../schemas/common.js'
import { HistoryQuery, HistorySchema, SessionParams, SnapshotListSchema } from '../schemas/session.js'
import { toSnapshotView, toTransitionView } from '../sessions/session-view.js'

/** What a session leaves behind: its transition history and its snapshots. */
const sessionRecordRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const sessions = app.sessions

  app.get('/sessions/:id/history', {
    schema: {
      tags: ['sessions'],
      operationId: 'getSessionHistory',
      summary: 'The state-transition history, oldest first, from creation on',
      description: 'One item per version of the session: who moved it (`user` or `system`), from what, to ' +
        'what, and why. When more exist, `nextCursor` is set: pass it as `cursor` for the next page.',
      params: SessionParams,
      querystring: HistoryQuery,
      response: { 200: ref(HistorySchema), ...problems(400, 404) }
    }
  }, async (request) => {
    const { limit = 100, cursor } = request.query
    const decoded = cursor === undefined ? 0 : decodeSeqCursor(cursor)
    if (decoded === null) throw new InvalidCursor()
    // versions are Postgres integers: a cursor beyond them is past the end
    const after = Math.min(decoded, PG_INT_MAX)
    const rows = await sessions.history(request.params.id, after, limit + 1)
    const page = rows.slice(0, limit)
    const last = page[page.length - 1]
    return {
      items: page.map(toTransitionView),
      nextCursor: rows.length > limit && last ? encodeSeqCursor(last.version) : null
    }
  })

  app.get('/sessions/:id/snapshots', {
    schema: {
      tags: ['sessions'],
      operationId: 'listSessionSnapshots',
      summary: 'The snapshots taken at pauses, newest first',
      description: 'Each pause takes one. POST /resume starts from the latest, or from the one named by ' +
        '`snapshotId`.',
      params: SessionParams,
      querystring: Type.Object({}, { additionalProperties: false }),
      response: { 200: ref(SnapshotListSchema), ...problems(400, 404) }
    }
  }, async (request) => {
    const rows = await sessions.snapshots(request.params.id)
    return { items: rows.map(toSnapshotView) }
  })
}

export default sessionRecordRoutes
