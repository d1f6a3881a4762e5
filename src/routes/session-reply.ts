import type { FastifyReply } from 'fastify'
import type { SessionRow } from '../db/schema.js'
import { etagOf } from '../domain/if-match.js'
import { toSessionView } from '../sessions/session-view.js'

/** Sends a session with its version as the ETag: every route that answers with a session. */
export function sendSession (reply: FastifyReply, row: SessionRow, now: Date, status = 200) {
  return reply.status(status).header('etag', etagOf(row.version)).send(toSessionView(row, now))
}
