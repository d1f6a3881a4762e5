import { Type, type Static, type TSchema } from 'typebox'
import { EVENT_TYPES, type EventType } from '../domain/event-types.js'
import { ACTORS } from '../domain/state-machine.js'
import { DateTime, NO_NUL, ref } from './common.js'
import { HeartbeatSchema, SessionStateSchema } from './session.js'

export const EventFrameSchema = Type.Object({
  seq: Type.Integer({ minimum: 1, description: 'Per-session sequence number: replay with ?after=<seq>' }),
  type: Type.Enum([...EVENT_TYPES], {
    description: '`user` a message as accepted; `agent` a stdout line of the CLI (stream-json) as `data`; ' +
      '`status` a notice ("Resuming session…"); `state` a transition {from, to, reason, actor, version}; `error` {code, message}'
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

/** Frames a client may send on the stream. */
export const InboundFrameSchema = Type.Union([MessageFrameSchema, HeartbeatFrameSchema])
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

/** Reply to a frame that was refused; the connection stays open. */
export const ErrorReplySchema = Type.Object({
  type: Type.Literal('error'),
  code: Type.String({ description: 'The code the matching HTTP request would get (INVALID_FRAME for a frame that is not one)' }),
  message: Type.String({ description: 'What went wrong, for a person' }),
  clientMessageId: Type.Optional(Type.String({ description: 'The refused message frame\'s clientMessageId, when it had one' }))
})
/** @public for the stream code's replies */
export type ErrorReply = Static<typeof ErrorReplySchema>

/** What the server sends that carries no seq. @public for the stream code's replies */
export const StreamReplySchema = Type.Union([AckReplySchema, HeartbeatReplySchema, ErrorReplySchema])
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

/** The `data` of each event type. @public */
export const EVENT_DATA_SCHEMAS = {
  user: UserEventDataSchema,
  agent: AgentEventDataSchema,
  status: StatusEventDataSchema,
  state: StateEventDataSchema,
  error: ErrorEventDataSchema
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

/** The event frames by type, each with its `data` shape. */
export const EVENT_FRAME_SCHEMAS = {
  user: UserEventFrameSchema,
  agent: AgentEventFrameSchema,
  status: StatusEventFrameSchema,
  state: StateEventFrameSchema,
  error: ErrorEventFrameSchema
} as const satisfies Record<EventType, TSchema>

export const EVENT_SCHEMAS = [EventFrameSchema, EventPageSchema, MessageAcceptedSchema]
