import type { FastifyReply } from 'fastify'
import type { SessionRow } from '../db/schema.js'
import { etagOf } from '../domain/if-match.js'
import type { SessionView } from '../schemas/session.js'
import { toSessionView } from '../sessions/session-view.js'

/**
 * Sessions as the API shows them: their open permission asks are read (one query for a whole
 * page) only for the sessions whose count says they have some.
 */
export async function sessionViews (reply: FastifyReply, rows: SessionRow[], now: Date): Promise<SessionView[]> {
  const { agents } = reply.server
  const asking = rows.filter((r) => r.pendingPermissions > 0 || agents.isAsking(r.id)).map((r) => r.id)
  const pending = asking.length > 0 ? await agents.pendingPermissions(asking) : []
  return rows.map((row) => toSessionView(row, now, pending))
}

/** Sends a session with its version as the ETag: every route that answers with a session. */
export async function sendSession (reply: FastifyReply, row: SessionRow, now: Date, status = 200) {
  const [view] = await sessionViews(reply, [row], now)
  return reply.status(status).header('etag', etagOf(row.version)).send(view)
}
