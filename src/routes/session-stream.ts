import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { MessageTooLarge } from '../errors.js'
import { StreamConnection } from '../events/stream-connection.js'
import { problems } from '../schemas/common.js'
import { StreamQuery } from '../schemas/events.js'
import { SessionParams } from '../schemas/session.js'

/** GET /sessions/{id}/stream: the session's events over a WebSocket, replayed then live. */
const sessionStreamRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { sessions, agents, events, eventBus, config } = app
  const connections = new Set<StreamConnection>()

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
        'without seq (`ack`, `heartbeat`, `error`). Client frames: `{"type":"message","text":…,"clientMessageId"?:…}` ' +
        'and `{"type":"heartbeat"}`. A client that falls behind is closed with 4008 and reconnects with ' +
        '?after=<last seq>. See docs/STREAM.md.',
      params: SessionParams,
      querystring: StreamQuery,
      response: { ...problems(400, 404) }
    },
    // an unknown session is refused before the upgrade, with a plain 404
    preHandler: async (request) => { await sessions.get((request.params as { id: string }).id) }
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
