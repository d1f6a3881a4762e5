import { Type, type Static } from 'typebox'
import { PERMISSION_MODES } from '../domain/permission-modes.js'
import { ACTORS, SESSION_STATES } from '../domain/state-machine.js'
import { DateTime, ETagHeader, NO_NUL, Nullable, Uuid, ref, withHeaders } from './common.js'

export const SessionStateSchema = Type.Enum([...SESSION_STATES], {
  $id: 'SessionState',
  description: 'pending → active → completed | failed, plus paused, suspended, expired'
})
const StateRef = ref(SessionStateSchema)

const UsageSchema = Type.Object({
  activeMs: Type.Integer({ description: 'Wall time spent in `active`, including the running stretch' }),
  inputTokens: Type.Integer(),
  outputTokens: Type.Integer(),
  cacheReadTokens: Type.Integer(),
  cacheCreationTokens: Type.Integer(),
  costUsd: Type.Number(),
  turns: Type.Integer()
}, { $id: 'Usage' })

const PendingPermissionSchema = Type.Object({
  requestId: Type.String({ description: 'Answer it with POST /v1/sessions/{id}/permissions/{requestId}' }),
  kind: Type.Enum(['permission', 'question'], { description: '`permission`: a tool use waits for a decision; `question`: the agent asks the user' }),
  toolName: Type.String(),
  seq: Nullable(Type.Integer({ description: 'The seq of its `permission_request` or `question` event, with the details' })),
  createdAt: DateTime,
  expiresAt: DateTime
}, { $id: 'PendingPermission' })

const PermissionModeSchema = Type.Enum([...PERMISSION_MODES], {
  $id: 'PermissionMode',
  description: 'The CLI\'s permission mode: `default` asks for every tool that changes something, `acceptEdits` lets file edits through, `plan` only plans, `bypassPermissions` asks for nothing (only where ALLOWED_PERMISSION_MODES lists it)'
})

const SessionSchema = Type.Object({
  id: Uuid,
  state: StateRef,
  version: Type.Integer({ minimum: 1, description: 'Bumped by every change of state or settings; the ETag' }),
  title: Nullable(Type.String()),
  workdir: Type.String({ description: 'Absolute working directory of the agent' }),
  model: Nullable(Type.String()),
  permissionMode: Nullable(ref(PermissionModeSchema), { description: 'null: the service\'s default (CLAUDE_PERMISSION_MODE, else the CLI\'s `default`)' }),
  permissionTimeoutSeconds: Nullable(Type.Integer(), { description: 'null: PERMISSION_TIMEOUT_SECONDS' }),
  pendingPermissions: Type.Array(ref(PendingPermissionSchema), { description: 'The agent\'s permission requests and questions waiting for the user, oldest first' }),
  idleTimeoutSeconds: Type.Integer(),
  ttlSeconds: Type.Integer(),
  expiresAt: DateTime,
  busy: Type.Boolean({ description: 'A turn of the agent is running (or waits for a permission answer)' }),
  agentSessionId: Nullable(Uuid),
  lastError: Nullable(Type.String()),
  transitionCount: Type.Integer(),
  createdAt: DateTime,
  updatedAt: DateTime,
  stateChangedAt: DateTime,
  startedAt: Nullable(DateTime),
  endedAt: Nullable(DateTime),
  lastActivityAt: Nullable(DateTime),
  lastHeartbeatAt: Nullable(DateTime),
  usage: ref(UsageSchema)
}, { $id: 'Session' })
export type SessionView = Static<typeof SessionSchema>
export const SessionRef = ref(SessionSchema)
/** A session as a response: `sendSession` sends its version as the ETag */
export const SessionResponse = withHeaders(SessionRef, { ETag: ETagHeader })

export const SessionListSchema = Type.Object({
  items: Type.Array(SessionRef),
  nextCursor: Nullable(Type.String())
}, { $id: 'SessionList' })

const TransitionSchema = Type.Object({
  from: Nullable(StateRef),
  to: StateRef,
  reason: Nullable(Type.String()),
  actor: Type.Enum([...ACTORS]),
  version: Type.Integer({ description: 'The session version this transition produced (unique within the session)' }),
  at: DateTime
}, { $id: 'Transition' })
export type TransitionView = Static<typeof TransitionSchema>

export const HistorySchema = Type.Object({
  items: Type.Array(ref(TransitionSchema)),
  nextCursor: Nullable(Type.String())
}, { $id: 'History' })

export const SnapshotSchema = Type.Object({
  id: Uuid,
  sessionId: Uuid,
  version: Type.Integer({ description: 'The session version at the moment of the snapshot' }),
  createdAt: DateTime,
  data: Type.Object({
    state: StateRef,
    title: Nullable(Type.String()),
    workdir: Type.String(),
    model: Nullable(Type.String()),
    idleTimeoutSeconds: Type.Integer(),
    ttlSeconds: Type.Integer(),
    agentSessionId: Nullable(Uuid),
    busy: Type.Boolean(),
    lastError: Nullable(Type.String()),
    lastActivityAt: Nullable(DateTime),
    usage: ref(UsageSchema)
  }, { description: 'The complete session state that resume needs, taken at pause' })
}, { $id: 'Snapshot' })
export type SnapshotView = Static<typeof SnapshotSchema>

export const SnapshotListSchema = Type.Object({
  items: Type.Array(ref(SnapshotSchema))
}, { $id: 'SnapshotList' })

export const HeartbeatSchema = Type.Object({
  state: StateRef,
  version: Type.Integer(),
  expiresAt: DateTime,
  serverTime: DateTime
}, { $id: 'Heartbeat' })

const Title = Type.String({ maxLength: 200, pattern: NO_NUL, description: 'Free text shown in session lists' })
const IdleTimeout = Type.Integer({ description: 'Seconds without activity before the agent is suspended; range from IDLE_TIMEOUT_MIN_SECONDS..IDLE_TIMEOUT_MAX_SECONDS' })
const Ttl = Type.Integer({ description: 'Seconds without heartbeat or activity before the session expires; range from SESSION_TTL_MIN_SECONDS..SESSION_TTL_MAX_SECONDS' })

const Model = Type.String({ minLength: 1, maxLength: 200, pattern: NO_NUL, description: 'The model (`--model`, or `set_model` for a live agent); null in a PATCH: back to CLAUDE_MODEL' })
const PermissionTimeout = Type.Integer({ minimum: 1, maximum: 604_800, description: 'Seconds a permission request or question waits for an answer before it is denied; null in a PATCH: back to PERMISSION_TIMEOUT_SECONDS' })

export const CreateSessionBody = Type.Object({
  title: Type.Optional(Title),
  workdir: Type.Optional(Type.String({ minLength: 1, maxLength: 1024, pattern: NO_NUL, description: 'Relative to the workspace root (or absolute inside it); created if missing' })),
  model: Type.Optional(Model),
  permissionMode: Type.Optional(ref(PermissionModeSchema)),
  permissionTimeoutSeconds: Type.Optional(PermissionTimeout),
  idleTimeoutSeconds: Type.Optional(IdleTimeout),
  ttlSeconds: Type.Optional(Ttl)
}, { additionalProperties: false })
export type CreateSessionInput = Static<typeof CreateSessionBody>

export const PatchSessionBody = Type.Object({
  title: Type.Optional(Nullable(Title)),
  model: Type.Optional(Nullable(Model)),
  permissionMode: Type.Optional(Nullable(ref(PermissionModeSchema))),
  permissionTimeoutSeconds: Type.Optional(Nullable(PermissionTimeout)),
  idleTimeoutSeconds: Type.Optional(IdleTimeout),
  ttlSeconds: Type.Optional(Ttl)
}, { additionalProperties: false, minProperties: 1 })
export type PatchSessionInput = Static<typeof PatchSessionBody>

const Reason = Type.String({ minLength: 1, maxLength: 500, pattern: NO_NUL })

export const TransitionBody = Type.Object({
  to: StateRef,
  reason: Type.Optional(Reason)
}, { additionalProperties: false })

export const PauseBody = Type.Object({
  reason: Type.Optional(Reason)
}, { additionalProperties: false })

export const ResumeBody = Type.Object({
  snapshotId: Type.Optional(Uuid),
  reason: Type.Optional(Reason)
}, { additionalProperties: false })

export const ListQuery = Type.Object({
  state: Type.Optional(Type.Array(Type.Enum([...SESSION_STATES]), { description: 'Only sessions in these states (repeat the parameter for several)' })),
  waiting: Type.Optional(Type.Boolean({ description: '`true`: only sessions whose agent waits for the user (a permission request or question is open)' })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 200, default: 50 })),
  cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 200 }))
}, { additionalProperties: false })

export const HistoryQuery = Type.Object({
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
  cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 200 }))
}, { additionalProperties: false })

export const SessionParams = Type.Object({ id: Uuid })

export const SHARED_SCHEMAS = [
  SessionStateSchema, PermissionModeSchema, PendingPermissionSchema, UsageSchema, SessionSchema, SessionListSchema, TransitionSchema, HistorySchema,
  SnapshotSchema, SnapshotListSchema, HeartbeatSchema
]
