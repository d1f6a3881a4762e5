import { sql } from 'drizzle-orm'
import type { Database } from '../db/database.js'
import { prepareSql, rowMapper } from '../db/prepared-sql.js'
import { sessionPermissionRequests } from '../db/schema.js'

const p = sql.placeholder
const ts = (name: string) => sql`${p(name)}::timestamptz`

export type PermissionRow = typeof sessionPermissionRequests.$inferSelect
type PermissionKind = PermissionRow['kind']
/** How a request closed: answered (allowed or denied), unanswered in time, or cancelled. */
export type ClosedStatus = Exclude<PermissionRow['status'], 'pending'>

export interface NewPermissionRequest {
  sessionId: string
  requestId: string
  kind: PermissionKind
  toolName: string
  /** the CLI's request as it came: what the answer is built from */
  request: Record<string, unknown>
  createdAt: Date
  expiresAt: Date
}

/**
 * The agents' permission requests and questions. Opening and closing one also moves the session's
 * `pending_permissions` count, in the same statement; closing is a compare-and-set from `pending`,
 * so of two answers (two phones, an answer and the timeout, an answer and a cancellation) exactly
 * one wins.
 */
export function createPermissionRepository (db: Database) {
  const toRow = rowMapper(sessionPermissionRequests)

  const openStmt = prepareSql(db, 'permission_open', sql`
    with opened as (
      insert into session_permission_requests (session_id, request_id, kind, tool_name, request, created_at, expires_at)
      values (${p('id')}::uuid, ${p('rid')}::text, ${p('kind')}::text, ${p('tool')}::text, ${p('request')}::jsonb, ${ts('at')}, ${ts('expires')})
      on conflict do nothing
      returning request_id
    ), counted as (
      update sessions set pending_permissions = pending_permissions + 1
      where id = ${p('id')}::uuid and exists (select 1 from opened)
    )
    select request_id from opened`)

  const seqStmt = prepareSql(db, 'permission_seq', sql`
    update session_permission_requests set seq = ${p('seq')}::bigint
    where session_id = ${p('id')}::uuid and request_id = ${p('rid')}::text`)

  const closeStmt = prepareSql(db, 'permission_close', sql`
    with closed as (
      update session_permission_requests set status = ${p('status')}::text, closed_at = ${ts('at')}
      where session_id = ${p('id')}::uuid and request_id = ${p('rid')}::text and status = 'pending'
      returning *
    ), counted as (
      update sessions set pending_permissions = greatest(0, pending_permissions - 1)
      where id = ${p('id')}::uuid and exists (select 1 from closed)
    )
    select * from closed`)

  const cancelSessionStmt = prepareSql(db, 'permission_cancel_session', sql`
    with closed as (
      update session_permission_requests set status = 'cancelled', closed_at = ${ts('at')}
      where session_id = ${p('id')}::uuid and status = 'pending'
      returning request_id
    ), counted as (
      update sessions set pending_permissions = greatest(0, pending_permissions - (select count(*) from closed)::int)
      where id = ${p('id')}::uuid and exists (select 1 from closed)
    )
    select request_id from closed`)

  const cancelManyStmt = prepareSql(db, 'permission_cancel_many', sql`
    with closed as (
      update session_permission_requests set status = 'cancelled', closed_at = ${ts('at')}
      where status = 'pending' and session_id = any(${p('ids')}::uuid[])
      returning session_id, request_id
    ), counts as (
      select session_id, count(*)::int as n from closed group by session_id
    ), counted as (
      update sessions s set pending_permissions = greatest(0, s.pending_permissions - c.n)
      from counts c where s.id = c.session_id
    )
    select session_id, request_id from closed`)

  const pendingSessionsStmt = prepareSql(db, 'permission_pending_sessions', sql`
    select distinct session_id from session_permission_requests where status = 'pending'`)

  const findStmt = prepareSql(db, 'permission_find', sql`
    select * from session_permission_requests
    where session_id = ${p('id')}::uuid and request_id = ${p('rid')}::text`)

  const pendingStmt = prepareSql(db, 'permission_pending', sql`
    select * from session_permission_requests
    where session_id = any(${p('ids')}::uuid[]) and status = 'pending'
    order by session_id, created_at, request_id`)

  return {
    /** False when the request was already open (the CLI never repeats an id; a replayed line might). */
    async open (r: NewPermissionRequest): Promise<boolean> {
      const rows = await openStmt.execute({
        id: r.sessionId,
        rid: r.requestId,
        kind: r.kind,
        tool: r.toolName,
        request: JSON.stringify(r.request),
        at: r.createdAt.toISOString(),
        expires: r.expiresAt.toISOString()
      })
      return rows.length > 0
    },

    async setSeq (sessionId: string, requestId: string, seq: number): Promise<void> {
      await seqStmt.execute({ id: sessionId, rid: requestId, seq })
    },

    /** The compare-and-set: the closed row, or null when it was not pending (or does not exist). */
    async close (sessionId: string, requestId: string, status: ClosedStatus, at: Date): Promise<PermissionRow | null> {
      const [row] = await closeStmt.execute({ id: sessionId, rid: requestId, status, at: at.toISOString() })
      return row ? toRow(row) : null
    },

    /** Cancels every open request of a session; returns their ids. */
    async cancelOpen (sessionId: string, at: Date): Promise<string[]> {
      const rows = await cancelSessionStmt.execute({ id: sessionId, at: at.toISOString() })
      return rows.map((r) => String(r.request_id))
    },

    /** Sessions whose agents are gone (a previous run's, a dead instance's): the ids cancelled, by session. */
    async cancelOpenOf (sessionIds: string[], at: Date): Promise<Map<string, string[]>> {
      const bySession = new Map<string, string[]>()
      if (sessionIds.length === 0) return bySession
      for (const r of await cancelManyStmt.execute({ ids: sessionIds, at: at.toISOString() })) {
        const id = String(r.session_id)
        bySession.set(id, [...(bySession.get(id) ?? []), String(r.request_id)])
      }
      return bySession
    },

    /** The sessions with open requests, whoever's. */
    async pendingSessions (): Promise<string[]> {
      return (await pendingSessionsStmt.execute({})).map((r) => String(r.session_id))
    },

    async find (sessionId: string, requestId: string): Promise<PermissionRow | null> {
      const [row] = await findStmt.execute({ id: sessionId, rid: requestId })
      return row ? toRow(row) : null
    },

    /** The open requests of these sessions, oldest first. */
    async pendingOf (sessionIds: string[]): Promise<PermissionRow[]> {
      if (sessionIds.length === 0) return []
      return (await pendingStmt.execute({ ids: sessionIds })).map(toRow)
    }
  }
}

export type PermissionRepository = ReturnType<typeof createPermissionRepository>
