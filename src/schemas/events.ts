import { Type, type Static } from 'typebox'
import { EVENT_TYPES } from '../events/event-log.js'
import { DateTime, NO_NUL } from './common.js'

export const EventFrameSchema = Type.Object({
  seq: Type.Integer({ minimum: 1, description: 'Per-session sequence number: replay with ?after=<seq>' }),
  type: Type.Enum([...EVENT_TYPES], {
    description: '`user` a message as accepted; `agent` a stdout line of the CLI (stream-json) as `data`; ' +
      '`status` a notice ("Resuming session…"); `state` a transition {from, to, reason, actor, version}; `error` {code, message}'
  }),
  at: DateTime,
  data: Type.Unknown()
}, { $id: 'EventFrame', description: 'A persisted event, as on the stream' })
export type EventFrame = Static<typeof EventFrameSchema>

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

export const MessageBody = Type.Object({
  text: Type.String({ minLength: 1, pattern: NO_NUL, description: 'The user\'s message to the agent (at most MESSAGE_MAX_BYTES bytes of UTF-8)' }),
  clientMessageId: Type.Optional(ClientMessageId)
}, { additionalProperties: false })

export const MessageAcceptedSchema = Type.Object({
  seq: Type.Integer({ description: 'The sequence number of the message\'s `user` event' }),
  duplicate: Type.Boolean({ description: 'true when this clientMessageId was already accepted; nothing was sent again' })
}, { $id: 'MessageAccepted' })

export const EventsQuery = Type.Object({
  after: Type.Optional(Type.Integer({ minimum: 0, default: 0, description: 'Events with a larger sequence number' })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 }))
}, { additionalProperties: false })

export const StreamQuery = Type.Object({
  after: Type.Optional(Type.Integer({ minimum: 0, default: 0, description: 'Replay events after this sequence number, then go live' }))
}, { additionalProperties: false })

export const RestartBody = Type.Object({
  reason: Type.Optional(Type.String({ minLength: 1, maxLength: 500, pattern: NO_NUL }))
}, { additionalProperties: false })

/** Frames a client may send on the stream. */
export const InboundFrameSchema = Type.Union([
  Type.Object({ type: Type.Literal('message'), text: Type.String({ minLength: 1, pattern: NO_NUL }), clientMessageId: Type.Optional(ClientMessageId) }, { additionalProperties: false }),
  Type.Object({ type: Type.Literal('heartbeat') }, { additionalProperties: false })
])
export type InboundFrame = Static<typeof InboundFrameSchema>

export const EVENT_SCHEMAS = [EventFrameSchema, EventPageSchema, MessageAcceptedSchema]
