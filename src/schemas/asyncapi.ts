import type { TSchema } from 'typebox'
import { EVENT_TYPES, type EventType } from '../domain/event-types.js'
import {
  AckReplySchema,
  ErrorReplySchema,
  EVENT_FRAME_SCHEMAS,
  HeartbeatFrameSchema,
  HeartbeatReplySchema,
  InterruptFrameSchema,
  InterruptReplySchema,
  MessageFrameSchema,
  PermissionFrameSchema,
  PermissionReplySchema,
  StreamQuery
} from './events.js'
import { SessionStateSchema } from './session.js'

/**
 * The AsyncAPI 3.0 document of the WebSocket stream (GET /v1/sessions/{id}/stream), built from the
 * same TypeBox schemas that the stream code and the HTTP routes use. `npm run asyncapi` writes it
 * to asyncapi.yaml, `npm run asyncapi:check` fails when that file drifts, and the service serves it
 * at /asyncapi.json. The prose reference is docs/STREAM.md.
 *
 * The document describes the service: it *sends* events and replies, it *receives* client frames.
 */

/** Close codes of the stream, as the stream code uses them (a test holds them to STREAM_LIMITS). */
export const STREAM_CLOSE_CODES = {
  goingAway: 1001,
  messageTooBig: 1009,
  replayFailed: 1011,
  slowConsumer: 4008
} as const

const COMPONENT_SCHEMAS = '#/components/schemas/'
const CHANNEL = 'stream'

/** The schemas a message payload may name, by component name (the payloads reference them). */
const FRAME_SCHEMAS = {
  UserEvent: EVENT_FRAME_SCHEMAS.user,
  AgentEvent: EVENT_FRAME_SCHEMAS.agent,
  StatusEvent: EVENT_FRAME_SCHEMAS.status,
  StateEvent: EVENT_FRAME_SCHEMAS.state,
  ErrorEvent: EVENT_FRAME_SCHEMAS.error,
  PermissionRequestEvent: EVENT_FRAME_SCHEMAS.permission_request,
  QuestionEvent: EVENT_FRAME_SCHEMAS.question,
  PermissionResponseEvent: EVENT_FRAME_SCHEMAS.permission_response,
  PermissionCancelledEvent: EVENT_FRAME_SCHEMAS.permission_cancelled,
  AckReply: AckReplySchema,
  HeartbeatReply: HeartbeatReplySchema,
  PermissionReply: PermissionReplySchema,
  InterruptReply: InterruptReplySchema,
  ErrorReply: ErrorReplySchema,
  MessageFrame: MessageFrameSchema,
  HeartbeatFrame: HeartbeatFrameSchema,
  PermissionFrame: PermissionFrameSchema,
  InterruptFrame: InterruptFrameSchema
} as const satisfies Record<string, TSchema>

/** Schemas registered by `$id` that frames reference: emitted as components of the same name. */
const REFERENCED_SCHEMAS: Record<string, TSchema> = { SessionState: SessionStateSchema }

type Json = null | boolean | number | string | Json[] | { [key: string]: Json }

/**
 * A TypeBox schema as plain JSON Schema for the document: TypeBox's own markers are not
 * enumerable (JSON drops them), `$id` goes (the component name takes its place) and a `$ref` to a
 * registered `$id` points at the component of that name.
 */
function toDocumentSchema (schema: TSchema): Json {
  const rewrite = (node: Json): Json => {
    if (Array.isArray(node)) return node.map(rewrite)
    if (node === null || typeof node !== 'object') return node
    const out: Record<string, Json> = {}
    for (const [key, value] of Object.entries(node)) {
      if (key === '$id') continue
      out[key] = key === '$ref' && typeof value === 'string' && !value.includes('#') ? `${COMPONENT_SCHEMAS}${value}` : rewrite(value)
    }
    return out
  }
  return rewrite(JSON.parse(JSON.stringify(schema)) as Json)
}

interface MessageSpec {
  schema: keyof typeof FRAME_SCHEMAS
  name: string
  title: string
  summary: string
  description?: string
  /** the member that ties a reply to its frame */
  correlatedBy?: 'clientMessageId' | 'requestId'
  example: Record<string, Json>
}

const EVENT_MESSAGES: Record<EventType, MessageSpec> = {
  user: {
    schema: 'UserEvent',
    name: 'user',
    title: 'Event: user',
    summary: 'A user message as accepted (POST /messages or a `message` frame), stored before delivery',
    description: 'Its `seq` is the one the 202 or the `ack` returns. It usually arrives before the `ack`.',
    example: { seq: 6, type: 'user', at: '2026-11-24T11:30:56.260Z', data: { text: 'Add a usage section', clientMessageId: 'a1b2c4' } }
  },
  agent: {
    schema: 'AgentEvent',
    name: 'agent',
    title: 'Event: agent',
    summary: 'One stdout line of the Claude Code CLI (stream-json)',
    description: '`system` (subtype `init` at the start of every turn), `assistant`, `user` (tool results), `result` ' +
      '(exactly one per turn: the turn is over), `control_response` and other notices; unknown types are passed on ' +
      'unchanged. A live frame carries the line byte for byte, a replayed one the stored JSON value: compare values, ' +
      'never bytes.',
    example: { seq: 9, type: 'agent', at: '2026-11-24T11:30:56.271Z', data: { type: 'result', subtype: 'success', is_error: false, result: 'echo: Add a usage section' } }
  },
  status: {
    schema: 'StatusEvent',
    name: 'status',
    title: 'Event: status',
    summary: 'A notice: "Resuming session…", "Waiting for a free agent slot…", "Starting a fresh conversation…"',
    example: { seq: 12, type: 'status', at: '2026-11-24T11:30:57.113Z', data: { message: 'Resuming session…' } }
  },
  state: {
    schema: 'StateEvent',
    name: 'state',
    title: 'Event: state',
    summary: 'A state transition, by a user or by the system; `version` is the session version it produced',
    description: 'The stream is not closed when the session ends: a `state` event announces completed, failed or ' +
      'expired (a deletion shows as completed, reason `deleted`), and the client closes the connection.',
    example: { seq: 45, type: 'state', at: '2026-11-24T11:31:02.004Z', data: { from: 'suspended', to: 'active', reason: 'message', actor: 'system', version: 14 } }
  },
  error: {
    schema: 'ErrorEvent',
    name: 'error',
    title: 'Event: error',
    summary: 'The agent failed (AGENT_START_FAILED, AGENT_RESUME_FAILED, AGENT_CRASHED); seen by every client',
    example: { seq: 20, type: 'error', at: '2026-11-24T11:32:10.500Z', data: { code: 'AGENT_CRASHED', message: 'The agent stopped unexpectedly (exit code 1). Send a message to resume the conversation.' } }
  },
  permission_request: {
    schema: 'PermissionRequestEvent',
    name: 'permission_request',
    title: 'Event: permission_request',
    summary: 'A tool use waits for the user\'s decision (the CLI\'s can_use_tool); the turn waits with it',
    description: 'Answer with a `permission` frame or POST /v1/sessions/{id}/permissions/{requestId}. Nobody answering by ' +
      '`expiresAt` denies it (a `permission_response` with `by: "timeout"`); an interrupt, a pause or the agent\'s end ' +
      'cancels it (`permission_cancelled`). The session lists its open ones in `pendingPermissions`.',
    example: { seq: 31, type: 'permission_request', at: '2026-11-24T11:33:00.120Z', data: { requestId: 'b7c1e0d2-3f4a-4b5c-8d6e-7f8091a2b3c4', toolName: 'Bash', input: { command: 'npm test', description: 'Run the tests' }, toolUseId: 'toolu_01ABC', suggestions: [{ type: 'addRules', rules: [{ toolName: 'Bash', ruleContent: 'npm test:*' }], behavior: 'allow', destination: 'localSettings' }], context: {}, expiresAt: '2026-11-24T12:03:00.120Z' } }
  },
  question: {
    schema: 'QuestionEvent',
    name: 'question',
    title: 'Event: question',
    summary: 'The agent asks the user (its AskUserQuestion tool); the turn waits for the answer',
    description: 'Answer with `decision: "allow"` and `answers` (each question\'s text → the chosen label), or `deny` to ' +
      'let the agent go on without one. Times out and is cancelled as a `permission_request` is.',
    example: { seq: 40, type: 'question', at: '2026-11-24T11:34:00.000Z', data: { requestId: 'c2d3e4f5-0a1b-4c2d-9e3f-405162738495', toolUseId: 'toolu_01DEF', questions: [{ question: 'Which test runner?', header: 'Tests', options: [{ label: 'tap', description: 'node-tap' }, { label: 'vitest', description: 'Vitest' }], multiSelect: false }], expiresAt: '2026-11-24T12:04:00.000Z' } }
  },
  permission_response: {
    schema: 'PermissionResponseEvent',
    name: 'permission_response',
    title: 'Event: permission_response',
    summary: 'How a permission request or question was answered: by the user (the first answer wins) or by the timeout',
    example: { seq: 33, type: 'permission_response', at: '2026-11-24T11:33:04.500Z', data: { requestId: 'b7c1e0d2-3f4a-4b5c-8d6e-7f8091a2b3c4', decision: 'allow', remember: false, by: 'user' } }
  },
  permission_cancelled: {
    schema: 'PermissionCancelledEvent',
    name: 'permission_cancelled',
    title: 'Event: permission_cancelled',
    summary: 'Open permission requests or questions that can no longer be answered (interrupt, pause, the agent\'s end, a restart)',
    example: { seq: 36, type: 'permission_cancelled', at: '2026-11-24T11:33:10.000Z', data: { requestIds: ['b7c1e0d2-3f4a-4b5c-8d6e-7f8091a2b3c4'], reason: 'interrupt' } }
  }
}

const REPLY_MESSAGES = {
  ackReply: {
    schema: 'AckReply',
    name: 'ack',
    title: 'Reply: ack',
    summary: 'A `message` frame was stored (no seq, not stored)',
    description: '`messageSeq` is the seq of its `user` event, which arrives on the stream in order; an ack can ' +
      'overtake a replay still in progress, so never treat it as "seen up to". `duplicate: true`: this ' +
      'clientMessageId was already accepted and nothing was sent again.',
    correlatedBy: 'clientMessageId',
    example: { type: 'ack', messageSeq: 6, duplicate: false, clientMessageId: 'a1b2c4' }
  },
  heartbeatReply: {
    schema: 'HeartbeatReply',
    name: 'heartbeat',
    title: 'Reply: heartbeat',
    summary: 'The answer to a `heartbeat` frame: the body of POST /heartbeat (no seq, not stored)',
    example: { type: 'heartbeat', state: 'active', version: 2, expiresAt: '2026-11-24T12:30:56.000Z', serverTime: '2026-11-24T11:30:56.000Z' }
  },
  permissionReply: {
    schema: 'PermissionReply',
    name: 'permission',
    title: 'Reply: permission',
    summary: 'A `permission` frame\'s answer was taken (no seq, not stored); `responseSeq` is its `permission_response` event',
    correlatedBy: 'requestId',
    example: { type: 'permission', requestId: 'b7c1e0d2-3f4a-4b5c-8d6e-7f8091a2b3c4', decision: 'allow', responseSeq: 33 }
  },
  interruptReply: {
    schema: 'InterruptReply',
    name: 'interrupt',
    title: 'Reply: interrupt',
    summary: 'The answer to an `interrupt` frame, once the turn has ended: `interrupted: false` when nothing ran',
    example: { type: 'interrupt', interrupted: true }
  },
  errorReply: {
    schema: 'ErrorReply',
    name: 'error',
    title: 'Reply: error',
    summary: 'A frame was refused; the connection stays open (no seq, not stored)',
    description: 'The `code` is the one the matching HTTP request would get as a 4xx problem: INVALID_FRAME (not JSON ' +
      'text, binary, not one of the client frames, or extra members), MESSAGE_TOO_LARGE, ' +
      'SESSION_NOT_ACCEPTING_MESSAGES, SESSION_NOT_FOUND, SESSION_TERMINAL, PERMISSION_REQUEST_NOT_FOUND, ' +
      'PERMISSION_REQUEST_CLOSED, INVALID_PERMISSION_ANSWER; DATABASE_UNAVAILABLE (send the frame ' +
      'again shortly; with the same clientMessageId a message is stored once); INTERNAL_ERROR for anything else.',
    correlatedBy: 'clientMessageId',
    example: { type: 'error', code: 'SESSION_NOT_ACCEPTING_MESSAGES', message: 'Session 0b6f8f43-5d6c-4f7e-9a51-3c2d1e0f9a87 does not take messages now: it is paused: resume it first', clientMessageId: 'a1b2c4' }
  }
} as const satisfies Record<string, MessageSpec>

const CLIENT_MESSAGES = {
  messageFrame: {
    schema: 'MessageFrame',
    name: 'message',
    title: 'Client frame: message',
    summary: 'A message to the agent: the same as POST /v1/sessions/{id}/messages',
    description: 'Stored first, then delivered. `text` is 1 character to MESSAGE_MAX_BYTES bytes (UTF-8), without ' +
      'NUL; a retry with the same clientMessageId is accepted once. Replies come when the work is done, not ' +
      'necessarily in the order the frames were sent: match them by clientMessageId.',
    correlatedBy: 'clientMessageId',
    example: { type: 'message', text: 'Add a usage section', clientMessageId: 'a1b2c4' }
  },
  heartbeatFrame: {
    schema: 'HeartbeatFrame',
    name: 'heartbeat',
    title: 'Client frame: heartbeat',
    summary: 'Keeps the session from expiring: the same as POST /v1/sessions/{id}/heartbeat without If-Match',
    description: 'About the session\'s TTL only; the connection itself is kept alive by the protocol pings.',
    example: { type: 'heartbeat' }
  },
  permissionFrame: {
    schema: 'PermissionFrame',
    name: 'permission',
    title: 'Client frame: permission',
    summary: 'The answer to a `permission_request` or `question`: the same as POST /v1/sessions/{id}/permissions/{requestId}',
    description: 'The first answer wins; a later one gets an `error` reply PERMISSION_REQUEST_CLOSED, an unknown ' +
      'requestId PERMISSION_REQUEST_NOT_FOUND.',
    correlatedBy: 'requestId',
    example: { type: 'permission', requestId: 'b7c1e0d2-3f4a-4b5c-8d6e-7f8091a2b3c4', decision: 'allow', remember: true }
  },
  interruptFrame: {
    schema: 'InterruptFrame',
    name: 'interrupt',
    title: 'Client frame: interrupt',
    summary: 'Stops the running turn: the same as POST /v1/sessions/{id}/interrupt',
    example: { type: 'interrupt' }
  }
} as const satisfies Record<string, MessageSpec>

const eventMessageId = (type: EventType) => `${type}Event`

function message (spec: MessageSpec): Json {
  return {
    name: spec.name,
    title: spec.title,
    summary: spec.summary,
    ...(spec.description ? { description: spec.description } : {}),
    contentType: 'application/json',
    ...(spec.correlatedBy ? { correlationId: { description: `The ${spec.correlatedBy} of the frame`, location: `$message.payload#/${spec.correlatedBy}` } } : {}),
    payload: { $ref: `${COMPONENT_SCHEMAS}${spec.schema}` },
    examples: [{ payload: spec.example }]
  }
}

const channelMessage = (id: string) => ({ $ref: `#/channels/${CHANNEL}/messages/${id}` })

const STREAM_DESCRIPTION = `Each session has one stream. It first replays the stored events with \`seq > after\`, then goes live: a client that reconnects with \`?after=<last seq>\` gets exactly what it missed, nothing lost, nothing twice, in increasing \`seq\` order.

Every frame is one JSON text message. Server frames are **events** (\`{seq, type, at, data}\`: stored, replayable, the same as GET /v1/sessions/{id}/events returns) or **replies** (\`ack\`, \`heartbeat\`, \`permission\`, \`interrupt\`, \`error\`: no \`seq\`, not stored, about one frame this client sent). Remember the highest \`seq\` of the events only.

The request is checked before the upgrade: a refused client gets an HTTP problem (\`application/problem+json\`) and no WebSocket: 404 SESSION_NOT_FOUND (no such session, or deleted), 400 VALIDATION_FAILED (the id is not a UUID, \`after\` is not an integer ≥ 0, or another query parameter). A GET without \`Upgrade: websocket\` is 404.

The server pings every WS_PING_INTERVAL_MS (default 30 s); a peer that did not answer the previous ping is dropped (the client sees 1006).

Close codes:

| code | reason | meaning | what the client does |
| --- | --- | --- | --- |
| ${STREAM_CLOSE_CODES.goingAway} | \`service shutting down\` | going away: the service is stopping | reconnect with back-off |
| ${STREAM_CLOSE_CODES.slowConsumer} | \`too slow: reconnect with ?after=<seq>\` | slow consumer: more than 8 MiB unsent | reconnect at once with the last \`seq\` |
| ${STREAM_CLOSE_CODES.replayFailed} | \`replay failed\` | reading the log failed (the database) | reconnect with back-off |
| ${STREAM_CLOSE_CODES.messageTooBig} | | a client frame larger than WS_MAX_FRAME_BYTES (1 MiB) | send smaller frames |
| 1006 | | dropped (seen by the client), e.g. after an unanswered ping | reconnect with back-off |

The stream is not closed when the session ends: a \`state\` event announces it. The upgrade needs the same bearer token as the HTTP API (the \`Authorization\` header, or \`?access_token=\` where headers cannot be set): without one it is refused with 401, and another user's session is a 404.`

/** The AsyncAPI 3.0 document of the session stream. */
export function asyncApiDocument (version: string): Record<string, Json> {
  const channelMessages: Record<string, Json> = {}
  const componentMessages: Record<string, Json> = {}
  for (const type of EVENT_TYPES) {
    componentMessages[eventMessageId(type)] = message(EVENT_MESSAGES[type])
  }
  for (const [id, spec] of Object.entries({ ...REPLY_MESSAGES, ...CLIENT_MESSAGES })) componentMessages[id] = message(spec)
  for (const id of Object.keys(componentMessages)) channelMessages[id] = { $ref: `#/components/messages/${id}` }

  const schemas: Record<string, Json> = {}
  for (const [name, schema] of Object.entries({ ...FRAME_SCHEMAS, ...REFERENCED_SCHEMAS })) schemas[name] = toDocumentSchema(schema)

  return {
    asyncapi: '3.0.0',
    info: {
      title: 'MobVibe session stream',
      version,
      description: 'The WebSocket stream of a coding session: everything that happens in it (the user\'s messages, ' +
        'every line the agent prints, notices, state changes, errors), replayed from a sequence number, then live. ' +
        'This document describes the service, which sends events and replies and receives client frames. The HTTP ' +
        'API is described by openapi.yaml; the prose reference is docs/STREAM.md.'
    },
    defaultContentType: 'application/json',
    servers: {
      service: {
        host: '{host}',
        protocol: 'ws',
        pathname: '/v1',
        title: 'The session service',
        description: 'The stream is served by the HTTP API\'s own host and port (`wss` behind a TLS proxy).',
        variables: {
          host: { default: 'localhost:3000', description: 'host[:port] of the HTTP API, as in its requests' }
        },
        // either one: the header where the client can set it, the query parameter where it cannot
        security: [{ $ref: '#/components/securitySchemes/bearer' }, { $ref: '#/components/securitySchemes/accessToken' }]
      }
    },
    channels: {
      [CHANNEL]: {
        address: '/sessions/{id}/stream',
        title: 'A session\'s stream',
        summary: 'The session\'s events, replayed from ?after=<seq>, then live; client frames to talk to the agent',
        description: STREAM_DESCRIPTION,
        servers: [{ $ref: '#/servers/service' }],
        parameters: {
          id: { description: 'The session id (a UUID)' }
        },
        messages: channelMessages,
        bindings: {
          ws: { method: 'GET', query: toDocumentSchema(StreamQuery), bindingVersion: '0.1.0' }
        }
      }
    },
    operations: {
      sendEvents: {
        action: 'send',
        channel: { $ref: `#/channels/${CHANNEL}` },
        title: 'Events',
        summary: 'Every stored event with seq > after, in order and exactly once, then each new one as it is stored',
        description: 'Persist, then publish: an event is on the stream only once it is stored. A new connection ' +
          'subscribes before it replays, holds live events back until the replay has caught up, and drops any it ' +
          'already sent (by seq).',
        messages: EVENT_TYPES.map((type) => channelMessage(eventMessageId(type)))
      },
      receiveMessage: {
        action: 'receive',
        channel: { $ref: `#/channels/${CHANNEL}` },
        title: 'A message to the agent',
        summary: 'Stored, then delivered to the agent; the `user` event comes on the stream, the reply is `ack` or `error`',
        messages: [channelMessage('messageFrame')],
        reply: {
          channel: { $ref: `#/channels/${CHANNEL}` },
          messages: [channelMessage('ackReply'), channelMessage('errorReply')]
        }
      },
      receiveHeartbeat: {
        action: 'receive',
        channel: { $ref: `#/channels/${CHANNEL}` },
        title: 'A heartbeat',
        summary: 'Pushes the session\'s expiry deadline out; the reply is `heartbeat` or `error`',
        messages: [channelMessage('heartbeatFrame')],
        reply: {
          channel: { $ref: `#/channels/${CHANNEL}` },
          messages: [channelMessage('heartbeatReply'), channelMessage('errorReply')]
        }
      },
      receivePermission: {
        action: 'receive',
        channel: { $ref: `#/channels/${CHANNEL}` },
        title: 'An answer to the agent\'s permission request or question',
        summary: 'The first answer wins and reaches the agent; the reply is `permission` or `error`',
        messages: [channelMessage('permissionFrame')],
        reply: {
          channel: { $ref: `#/channels/${CHANNEL}` },
          messages: [channelMessage('permissionReply'), channelMessage('errorReply')]
        }
      },
      receiveInterrupt: {
        action: 'receive',
        channel: { $ref: `#/channels/${CHANNEL}` },
        title: 'Stop the running turn',
        summary: 'The turn ends, the session stays active; the reply is `interrupt` or `error`',
        messages: [channelMessage('interruptFrame')],
        reply: {
          channel: { $ref: `#/channels/${CHANNEL}` },
          messages: [channelMessage('interruptReply'), channelMessage('errorReply')]
        }
      }
    },
    components: {
      schemas,
      messages: componentMessages,
      securitySchemes: {
        bearer: {
          type: 'http',
          scheme: 'bearer',
          bearerFormat: 'JWT',
          description: 'The same token as the HTTP API (`Authorization: Bearer <JWT>` on the upgrade request). ' +
            'Missing or invalid: the upgrade is refused with 401; another user\'s session: 404'
        },
        accessToken: {
          type: 'httpApiKey',
          name: 'access_token',
          in: 'query',
          description: 'For WebSocket clients that cannot set headers (browsers): the token as `?access_token=`; never logged'
        }
      }
    }
  }
}
