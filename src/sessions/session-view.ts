import type { SessionRow, SnapshotRow, TransitionRow } from '../db/schema.js'
import type { PermissionRow } from './permission-repository.js'
import { activeMsAt } from '../domain/timers.js'
import type { SessionView, SnapshotView, TransitionView } from '../schemas/session.js'

const iso = (d: Date | null): string | null => (d ? d.toISOString() : null)

/** A session as the API shows it; `pending`: its open permission asks (read only when it has some). */
export function toSessionView (row: SessionRow, now: Date, pending: PermissionRow[] = []): SessionView {
  return {
    id: row.id,
    state: row.state,
    version: row.version,
    title: row.title,
    workdir: row.workdir,
    model: row.model,
    permissionMode: row.permissionMode,
    permissionTimeoutSeconds: row.permissionTimeoutSeconds,
    pendingPermissions: pending.filter((p) => p.sessionId === row.id).map((p) => ({
      requestId: p.requestId,
      kind: p.kind,
      toolName: p.toolName,
      seq: p.seq,
      createdAt: p.createdAt.toISOString(),
      expiresAt: p.expiresAt.toISOString()
    })),
    idleTimeoutSeconds: row.idleTimeoutSeconds,
    ttlSeconds: row.ttlSeconds,
    expiresAt: row.expiresAt.toISOString(),
    busy: row.busy,
    agentSessionId: row.agentSessionId,
    lastError: row.lastError,
    transitionCount: row.transitionCount,
    createdAt: row.createdAt.toISOString(),
    updatedAt: row.updatedAt.toISOString(),
    stateChangedAt: row.stateChangedAt.toISOString(),
    startedAt: iso(row.startedAt),
    endedAt: iso(row.endedAt),
    lastActivityAt: iso(row.lastActivityAt),
    lastHeartbeatAt: iso(row.lastHeartbeatAt),
    usage: {
      activeMs: activeMsAt({ activeMs: row.activeMs, activeSince: row.activeSince, now }),
      inputTokens: row.inputTokens,
      outputTokens: row.outputTokens,
      cacheReadTokens: row.cacheReadTokens,
      cacheCreationTokens: row.cacheCreationTokens,
      costUsd: row.costUsd,
      turns: row.turns
    }
  }
}

export type SnapshotData = SnapshotView['data']

/** Everything resume needs to bring the session back exactly as it was paused. */
export function snapshotDataOf (row: SessionRow, now: Date): SnapshotData {
  const view = toSessionView(row, now)
  return {
    state: row.state,
    title: row.title,
    workdir: row.workdir,
    model: row.model,
    idleTimeoutSeconds: row.idleTimeoutSeconds,
    ttlSeconds: row.ttlSeconds,
    agentSessionId: row.agentSessionId,
    busy: row.busy,
    lastError: row.lastError,
    lastActivityAt: view.lastActivityAt,
    usage: view.usage
  }
}

export function toSnapshotView (row: SnapshotRow): SnapshotView {
  return {
    id: row.id,
    sessionId: row.sessionId,
    version: row.version,
    createdAt: row.createdAt.toISOString(),
    data: row.data as SnapshotData
  }
}

export function toTransitionView (row: TransitionRow): TransitionView {
  return {
    from: row.fromState as TransitionView['from'],
    to: row.toState as TransitionView['to'],
    reason: row.reason,
    actor: row.actor,
    version: row.version,
    at: row.at.toISOString()
  }
}
