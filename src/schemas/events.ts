import { Type, type Static, type TSchema } from 'typebox'
import { EVENT_TYPES, type EventType } from '../domain/event-types.js'
import { ACTORS } from '../domain/state-machine.js'
import { DateTime, NO_NUL, Uuid, ref } from './common.js'
import { HeartbeatSchema, SessionStateSchema } from './session.js'

export const EventFrameSchema = Type.Object({
  seq: Type.Integer({ minimum: 1, description: 'Per-session sequence number: replay with ?after=<seq>' }),
  type: Type.Enum([...EVENT_TYPES], {
    description: '`user` a message as accepted; `agent` a stdout line of the CLI (stream-json) as `data`; ' +
      '`status` a notice ("Resuming session…"); `state` a transition {from, to, reason, actor, version}; `error` {code, message}; ' +
      '`permission_request` a tool use waiting for the user\'s decision; `question` the agent asks the user; ' +
      '`permission_response` how one was answered; `permission_cancelled` open ones that can no longer be answered'
  }),
  at: DateTime,
  data: Type.Unknown()
}, { $id: 'EventFrame', description: 'A persisted event, as on the stream' })

export const EventPageSchema = Type.Object({
  items: Type.Array(Type.Ref('EventFrame')),
  nextAfter: Type.Union([Type.Integer(), Type.Null()], { description: 'Pass as `after` for the next page; null when this page reached the end' })
}, { $id: 'EventPage' })

const ClientMessageId = Type.String({
  minLength: 1,
  maxLength: 200,
  pattern: NO_NUL,
  description: 'Chosen by the client: a retry with the same id is accepted once (idempotent)'
})

const MessageText = Type.String({ minLength: 1, pattern: NO_NUL, description: 'The user\'s message to the agent (at most MESSAGE_MAX_BYTES bytes of UTF-8)' })

export const MessageBody = Type.Object({
  text: MessageText,
  clientMessageId: Type.Optional(ClientMessageId)
}, { additionalProperties: false })

export const MessageAcceptedSchema = Type.Object({
  seq: Type.Integer({ description: 'The sequence number of the message\'s `user` event' }),
  duplicate: Type.Boolean({ description: 'true when this clientMessageId was already accepted; nothing was sent again' })
}, { $id: 'MessageAccepted' })

export const EventsQuery = Type.Object({
  after: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, default: 0, description: 'Events with a larger sequence number' })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 }))
}, { additionalProperties: false })

export const StreamQuery = Type.Object({
  after: Type.Optional(Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, default: 0, description: 'Replay events after this sequence number, then go live' })),
  access_token: Type.Optional(Type.String({ minLength: 1, maxLength: 8192, description: 'The bearer token, for WebSocket clients that cannot set an `Authorization` header (browsers); it is never logged. The header wins when both are sent' }))
}, { additionalProperties: false })

export const RestartBody = Type.Object({
  reason: Type.Optional(Type.String({ minLength: 1, maxLength: 500, pattern: NO_NUL }))
}, { additionalProperties: false })

const Decision = Type.Enum(['allow', 'deny'], { description: '`allow` lets the tool run (or answers the question); `deny` refuses it' })

const permissionAnswerMembers = {
  decision: Decision,
  message: Type.Optional(Type.String({ minLength: 1, maxLength: 4000, pattern: NO_NUL, description: 'A deny\'s reason, passed to the agent (the model reads it)' })),
  updatedInput: Type.Optional(Type.Object({}, { additionalProperties: true, description: 'Allow with this tool input instead of the agent\'s (a corrected command, an edited file content)' })),
  remember: Type.Optional(Type.Boolean({ description: 'Allow this for the rest of the session: the CLI\'s suggestions (`suggestions` of the request) are applied, for this session only' })),
  answers: Type.Optional(Type.Record(
    Type.String({ minLength: 1, maxLength: 4000 }),
    Type.String({ maxLength: 4000, pattern: NO_NUL }),
    { maxProperties: 50, description: 'A question\'s answers: each question\'s text → the chosen option\'s label, or free text (labels joined by ", " for multiSelect)' }
  ))
}

export const PermissionAnswerBody = Type.Object(permissionAnswerMembers, { additionalProperties: false })

export const PermissionParams = Type.Object({
  id: Uuid,
  requestId: Type.String({ minLength: 1, maxLength: 200, pattern: NO_NUL })
})

export const PermissionAnsweredSchema = Type.Object({
  requestId: Type.String(),
  decision: Decision,
  seq: Type.Integer({ description: 'The seq of the `permission_response` event that records it' })
}, { $id: 'PermissionAnswered' })

export const InterruptBody = Type.Object({
  deliverQueued: Type.Optional(Type.Boolean({ description: 'Then go on with the messages already queued; without it they wait for the next message (or an interrupt with `deliverQueued: true`)' }))
}, { additionalProperties: false })

export const InterruptResultSchema = Type.Object({
  interrupted: Type.Boolean({ description: 'A turn was running and has ended; false when the agent was idle (nothing to stop)' })
}, { $id: 'InterruptResult' })

// The stream's frames (docs/STREAM.md; asyncapi.yaml is generated from these schemas by
// scripts/asyncapi.ts, through src/schemas/asyncapi.ts)

/** Client frame: a message to the agent, as POST /messages; answered by an `ack` or an `error` reply. */
export const MessageFrameSchema = Type.Object({
  type: Type.Literal('message'),
  text: MessageText,
  clientMessageId: Type.Optional(ClientMessageId)
}, { additionalProperties: false })

/** Client frame: a heartbeat, as POST /heartbeat without If-Match; answered by a `heartbeat` or an `error` reply. */
export const HeartbeatFrameSchema = Type.Object({ type: Type.Literal('heartbeat') }, { additionalProperties: false })

/** Client frame: the answer to a permission request or question, as POST /permissions/{requestId}. */
export const PermissionFrameSchema = Type.Object({
  type: Type.Literal('permission'),
  requestId: Type.String({ minLength: 1, maxLength: 200, pattern: NO_NUL }),
  ...permissionAnswerMembers
}, { additionalProperties: false })

/** Client frame: stop the running turn, as POST /interrupt. */
export const InterruptFrameSchema = Type.Object({
  type: Type.Literal('interrupt'),
  deliverQueued: InterruptBody.properties.deliverQueued
}, { additionalProperties: false })

/** Frames a client may send on the stream. */
export const InboundFrameSchema = Type.Union([MessageFrameSchema, HeartbeatFrameSchema, PermissionFrameSchema, InterruptFrameSchema])
export type InboundFrame = Static<typeof InboundFrameSchema>

// Server replies: no `seq`, not stored, about one frame this client sent

/** Reply to a `message` frame that was stored. */
export const AckReplySchema = Type.Object({
  type: Type.Literal('ack'),
  messageSeq: Type.Integer({ minimum: 1, description: 'The seq of the message\'s `user` event, which arrives on the stream in order (an ack can overtake a replay: never "seen up to")' }),
  duplicate: Type.Boolean({ description: 'true when this clientMessageId was already accepted; nothing was sent again' }),
  clientMessageId: Type.Optional(Type.String({ description: 'The frame\'s clientMessageId, when it had one' }))
})
/** @public for the stream code's replies */
export type AckReply = Static<typeof AckReplySchema>

/** Reply to a `heartbeat` frame: the body of POST /heartbeat. */
export const HeartbeatReplySchema = Type.Object({
  type: Type.Literal('heartbeat'),
  ...HeartbeatSchema.properties
})
/** @public for the stream code's replies */
export type HeartbeatReply = Static<typeof HeartbeatReplySchema>

/** Reply to a `permission` frame whose answer was taken. */
export const PermissionReplySchema = Type.Object({
  type: Type.Literal('permission'),
  requestId: Type.String(),
  decision: Decision,
  responseSeq: Type.Integer({ minimum: 1, description: 'The seq of the `permission_response` event, which arrives on the stream in order' })
})
/** @public for the stream code's replies */
export type PermissionReply = Static<typeof PermissionReplySchema>

/** Reply to an `interrupt` frame. */
export const InterruptReplySchema = Type.Object({
  type: Type.Literal('interrupt'),
  interrupted: InterruptResultSchema.properties.interrupted
})

/** Reply to a frame that was refused; the connection stays open. */
export const ErrorReplySchema = Type.Object({
  type: Type.Literal('error'),
  code: Type.String({ description: 'The code the matching HTTP request would get (INVALID_FRAME for a frame that is not one)' }),
  message: Type.String({ description: 'What went wrong, for a person' }),
  clientMessageId: Type.Optional(Type.String({ description: 'The refused message frame\'s clientMessageId, when it had one' })),
  requestId: Type.Optional(Type.String({ description: 'The refused permission frame\'s requestId' }))
})
/** @public for the stream code's replies */
export type ErrorReply = Static<typeof ErrorReplySchema>

/** What the server sends that carries no seq. @public for the stream code's replies */
export const StreamReplySchema = Type.Union([AckReplySchema, HeartbeatReplySchema, PermissionReplySchema, InterruptReplySchema, ErrorReplySchema])
/** @public for the stream code's replies */
export type StreamReply = Static<typeof StreamReplySchema>

// The `data` of each event type (@public: for the code that writes and reads events)

/** @public */
export const UserEventDataSchema = Type.Object({
  text: Type.String(),
  clientMessageId: Type.Optional(Type.String())
}, { description: 'A user message, as accepted' })

/** @public */
export const AgentEventDataSchema = Type.Object({}, {
  additionalProperties: true,
  description: 'One stdout line of the Claude Code CLI (stream-json): `system`, `assistant`, `user`, `result`, … ' +
    'unknown types passed on unchanged; a line that is not a JSON object is `{"type": "unparsed", "line": "…"}`'
})

/** @public */
export const StatusEventDataSchema = Type.Object({
  message: Type.String({ description: '"Resuming session…", "Waiting for a free agent slot…", "Starting a fresh conversation…"' })
}, { description: 'A notice about the session' })

/** @public */
export const StateEventDataSchema = Type.Object({
  from: ref(SessionStateSchema),
  to: ref(SessionStateSchema),
  reason: Type.Union([Type.String(), Type.Null()]),
  actor: Type.Enum([...ACTORS]),
  version: Type.Integer({ description: 'The session version the transition produced' })
}, { description: 'A state transition' })

/** @public */
export const ErrorEventDataSchema = Type.Object({
  code: Type.String({ description: 'AGENT_START_FAILED, AGENT_RESUME_FAILED or AGENT_CRASHED' }),
  message: Type.String({ description: 'What happened and what the user can do' })
}, { description: 'The agent failed' })

const RequestId = Type.String({ description: 'The request\'s id: answer it with POST /v1/sessions/{id}/permissions/{requestId} or a `permission` frame' })
const ExpiresAt = Type.String({ format: 'date-time', description: 'When it is denied if nobody answers (PERMISSION_TIMEOUT_SECONDS, or the session\'s permissionTimeoutSeconds)' })

/** @public */
export const PermissionRequestEventDataSchema = Type.Object({
  requestId: RequestId,
  toolName: Type.String({ description: 'The tool the agent wants to use: `Bash`, `Write`, `Edit`, `WebFetch`, an MCP tool…' }),
  input: Type.Object({}, { additionalProperties: true, description: 'The tool\'s input as the agent wrote it (the command, the file and its content…)' }),
  toolUseId: Type.Union([Type.String(), Type.Null()], { description: 'The `tool_use` block of the agent\'s `assistant` line this is about' }),
  suggestions: Type.Array(Type.Unknown(), { description: 'The CLI\'s `permission_suggestions`: the rules `remember: true` applies for the rest of the session' }),
  context: Type.Object({}, { additionalProperties: true, description: 'Anything else the CLI said about the ask (`blocked_path`, `decision_reason`…), as it said it' }),
  expiresAt: ExpiresAt
}, { description: 'A tool use waits for the user\'s decision; the turn waits with it' })

/** @public */
export const QuestionEventDataSchema = Type.Object({
  requestId: RequestId,
  toolUseId: Type.Union([Type.String(), Type.Null()]),
  questions: Type.Array(Type.Unknown(), { description: 'The agent\'s questions (the CLI\'s AskUserQuestion input): `{question, header, options: [{label, description}], multiSelect}`' }),
  expiresAt: ExpiresAt
}, { description: 'The agent asks the user; answer with `answers`: each question\'s text → the chosen label (labels joined by ", " for multiSelect)' })

/** @public */
export const PermissionResponseEventDataSchema = Type.Object({
  requestId: Type.String(),
  decision: Type.Enum(['allow', 'deny']),
  message: Type.Optional(Type.String({ description: 'A deny\'s reason, as the agent got it' })),
  updatedInput: Type.Optional(Type.Object({}, { additionalProperties: true })),
  answers: Type.Optional(Type.Record(Type.String(), Type.String())),
  remember: Type.Boolean({ description: 'Allowed for the rest of the session (the CLI\'s suggestions applied)' }),
  by: Type.Enum(['user', 'timeout'], { description: '`timeout`: nobody answered in time, the service denied it' })
}, { description: 'A permission request or question was answered; the first answer wins' })

/** @public */
export const PermissionCancelledEventDataSchema = Type.Object({
  requestIds: Type.Array(Type.String()),
  reason: Type.String({ description: 'Why they can no longer be answered: `interrupt`, `pause`, `crash`, `shutdown`, `restart`, `idle`, `agent` (the CLI withdrew it)…' })
}, { description: 'Open permission requests or questions that were cancelled; an answer to one gets 409' })

/** The `data` of each event type. @public */
export const EVENT_DATA_SCHEMAS = {
  user: UserEventDataSchema,
  agent: AgentEventDataSchema,
  status: StatusEventDataSchema,
  state: StateEventDataSchema,
  error: ErrorEventDataSchema,
  permission_request: PermissionRequestEventDataSchema,
  question: QuestionEventDataSchema,
  permission_response: PermissionResponseEventDataSchema,
  permission_cancelled: PermissionCancelledEventDataSchema
} as const satisfies Record<EventType, TSchema>

/** An event frame of one type: EventFrameSchema with its `type` fixed and its `data` known. */
function eventFrameOf<T extends EventType> (type: T) {
  const { seq, at } = EventFrameSchema.properties
  return Type.Object({ seq, type: Type.Literal(type), at, data: EVENT_DATA_SCHEMAS[type] })
}

/** @public */
export const UserEventFrameSchema = eventFrameOf('user')
/** @public */
export const AgentEventFrameSchema = eventFrameOf('agent')
/** @public */
export const StatusEventFrameSchema = eventFrameOf('status')
/** @public */
export const StateEventFrameSchema = eventFrameOf('state')
/** @public */
export const ErrorEventFrameSchema = eventFrameOf('error')

/** @public */
export const PermissionRequestEventFrameSchema = eventFrameOf('permission_request')
/** @public */
export const QuestionEventFrameSchema = eventFrameOf('question')
/** @public */
export const PermissionResponseEventFrameSchema = eventFrameOf('permission_response')
/** @public */
export const PermissionCancelledEventFrameSchema = eventFrameOf('permission_cancelled')

/** The event frames by type, each with its `data` shape. */
export const EVENT_FRAME_SCHEMAS = {
  user: UserEventFrameSchema,
  agent: AgentEventFrameSchema,
  status: StatusEventFrameSchema,
  state: StateEventFrameSchema,
  error: ErrorEventFrameSchema,
  permission_request: PermissionRequestEventFrameSchema,
  question: QuestionEventFrameSchema,
  permission_response: PermissionResponseEventFrameSchema,
  permission_cancelled: PermissionCancelledEventFrameSchema
} as const satisfies Record<EventType, TSchema>

export const EVENT_SCHEMAS = [EventFrameSchema, EventPageSchema, MessageAcceptedSchema, PermissionAnsweredSchema, InterruptResultSchema]
