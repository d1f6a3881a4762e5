import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { MessageTooLarge } from '../errors.js'
import { problems, ref } from '../schemas/common.js'
import { EventPageSchema, EventsQuery, MessageAcceptedSchema, MessageBody, RestartBody } from '../schemas/events.js'
import { SessionParams, SessionResponse } from '../schemas/session.js'
import { sendSession } from './session-reply.js'

/** Talking to the agent over HTTP: messages, the persisted events, a fresh start. */
const sessionMessageRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { sessions, agents, events, config } = app

  app.post('/sessions/:id/messages', {
    schema: {
      tags: ['agent'],
      operationId: 'sendMessage',
      summary: 'Send a message to the session\'s agent',
      description: 'Stored first, then delivered: a pending session starts its agent, a suspended one resumes ' +
        'transparently (a status event "Resuming session…" comes first), a busy one queues it in order. ' +
        'A paused or terminal session answers 409. The reply comes on the stream and in GET /events.',
      params: SessionParams,
      body: MessageBody,
      response: { 202: ref(MessageAcceptedSchema), ...problems(400, 404, 409, 413, 415) }
    }
  }, async (request, reply) => {
    const { text, clientMessageId } = request.body
    const bytes = Buffer.byteLength(text)
    if (bytes > config.limits.messageBytes) throw new MessageTooLarge(bytes, config.limits.messageBytes)
    const accepted = await agents.sendMessage(request.params.id, { text, clientMessageId })
    return reply.status(202).send(accepted)
  })

  app.get('/sessions/:id/events', {
    schema: {
      tags: ['agent'],
      operationId: 'listEvents',
      summary: 'The persisted events after a sequence number (the HTTP fallback of the stream)',
      description: 'The same `{seq, type, at, data}` frames as the WebSocket stream replays, in `seq` order. ' +
        '`nextAfter` is set whenever the page is full: pass it as `after` for the next page (which may be ' +
        'empty). The frames are described in asyncapi.yaml.',
      params: SessionParams,
      querystring: EventsQuery,
      response: { 200: ref(EventPageSchema), ...problems(400, 404) }
    }
  }, async (request, reply) => {
    const { after = 0, limit = 100 } = request.query
    await sessions.get(request.params.id)
    const page = await events.page(request.params.id, after, limit)
    const last = page[page.length - 1]
    return reply.send({
      items: page.map((e) => ({ seq: e.seq, type: e.type, at: e.at.toISOString(), data: JSON.parse(e.json) as unknown })),
      nextAfter: page.length === limit && last ? last.seq : null
    })
  })

  app.post('/sessions/:id/restart', {
    schema: {
      tags: ['agent'],
      operationId: 'restartSession',
      summary: 'Start a fresh conversation (a new agent session id) and deliver the kept messages',
      description: 'For a suspended or active session, typically after a resume failed. 409 in any other state.',
      params: SessionParams,
      body: RestartBody,
      response: { 200: SessionResponse, ...problems(400, 404, 409, 413, 415) }
    }
  }, async (request, reply) => {
    const row = await agents.restart(request.params.id, request.body?.reason)
    return sendSession(reply, row, sessions.now())
  })
}

export default sessionMessageRoutes
