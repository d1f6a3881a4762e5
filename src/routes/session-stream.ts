import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { MessageTooLarge, tooManyStreams } from '../errors.js'
import { StreamConnection } from '../events/stream-connection.js'
import { StreamQuota } from '../events/stream-quota.js'
import { problems } from '../schemas/common.js'
import { StreamQuery } from '../schemas/events.js'
import { SessionParams } from '../schemas/session.js'

/** GET /sessions/{id}/stream: the session's events over a WebSocket, replayed then live. */
const sessionStreamRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { sessions, agents, events, eventBus, config } = app
  const connections = new Set<StreamConnection>()
  // MAX_STREAMS_PER_USER: a slot is taken before the upgrade and given back when the socket closes
  const quota = new StreamQuota(config.perUser.streams)
  // a slot held by a vanished client frees within one to two ping intervals
  const quotaRetryAfterSeconds = Math.max(1, Math.ceil(config.limits.wsPingIntervalMs / 1000))

  // Shutdown: every stream is told the service is going away (1001) before anything else stops
  app.addHook('preClose', async () => {
    for (const c of connections) c.close(1001, 'service shutting down')
  })

  app.get('/sessions/:id/stream', {
    websocket: true,
    schema: {
      tags: ['agent'],
      operationId: 'streamSession',
      summary: 'WebSocket: the session\'s events, replayed from ?after=<seq>, then live',
      description: 'Upgrade to a WebSocket. Server frames: persisted events `{seq, type, at, data}`, and replies ' +
        'without seq (`ack`, `heartbeat`, `permission`, `interrupt`, `error`). Client frames: `{"type":"message","text":…,"clientMessageId"?:…}`, ' +
        '`{"type":"heartbeat"}`, `{"type":"permission","requestId":…,"decision":…}` and `{"type":"interrupt"}`. A client that falls behind is closed with 4008 and reconnects with ' +
        '?after=<last seq>. See docs/STREAM.md.',
      params: SessionParams,
      querystring: StreamQuery,
      response: { ...problems(400, 404, 429) }
    },
    preHandler: [
      // an unknown session is refused before the upgrade, with a plain 404
      async (request) => { await sessions.get((request.params as { id: string }).id) },
      // so is one stream more than the user may have open: 429 TOO_MANY_STREAMS
      async (request) => {
        if (!request.ws) return
        const release = quota.tryAcquire(request.user.userId)
        if (!release) throw tooManyStreams(quota.limit, quotaRetryAfterSeconds)
        // every end of the connection closes its TCP socket (client or server close, ping
        // timeout, 4008, shutdown), and so does an upgrade that never completes
        request.raw.socket?.once('close', release)
      }
    ]
  }, async (socket, request) => {
    const sessionId = request.params.id
    const connection = new StreamConnection({
      socket,
      sessionId,
      after: request.query.after ?? 0,
      events,
      bus: eventBus,
      logger: request.log.child({ sessionId, stream: true }),
      pingIntervalMs: config.limits.wsPingIntervalMs,
      handlers: {
        message: async (text, clientMessageId) => {
          const bytes = Buffer.byteLength(text)
          if (bytes > config.limits.messageBytes) throw new MessageTooLarge(bytes, config.limits.messageBytes)
          return agents.sendMessage(sessionId, { text, clientMessageId })
        },
        permission: async ({ requestId, type: _, ...answer }) => {
          const answered = await agents.answerPermission(sessionId, requestId, answer)
          return { requestId, decision: answered.decision, responseSeq: answered.seq }
        },
        interrupt: (deliverQueued) => agents.interrupt(sessionId, { deliverQueued }),
        heartbeat: async () => {
          const beat = await sessions.heartbeat(sessionId)
          return { state: beat.state, version: beat.version, expiresAt: beat.expiresAt.toISOString(), serverTime: beat.serverTime.toISOString() }
        }
      }
    })
    connections.add(connection)
    socket.once('close', () => connections.delete(connection))
    await connection.run()
  })
}

export default sessionStreamRoutes
