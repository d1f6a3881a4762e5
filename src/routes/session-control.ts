import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { problems, ref } from '../schemas/common.js'
import { InterruptBody, InterruptResultSchema, PermissionAnswerBody, PermissionAnsweredSchema, PermissionParams } from '../schemas/events.js'
import { SessionParams } from '../schemas/session.js'

/** Steering the agent from the phone: answers to its permission asks and questions, stopping its turn. */
const sessionControlRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { agents } = app

  app.post('/sessions/:id/permissions/:requestId', {
    schema: {
      tags: ['agent'],
      operationId: 'answerPermission',
      summary: 'Answer the agent\'s permission request or question',
      description: 'A `permission_request` (a tool use waiting for a decision) is answered with `decision` ' +
        '(`allow`, optionally with `updatedInput` and `remember: true` for the rest of the session; `deny` with a ' +
        '`message` for the agent); a `question` with `decision: "allow"` and `answers`. The first answer wins and is ' +
        'stored as a `permission_response` event; a later one, or one after the timeout or a cancellation, is 409 ' +
        'PERMISSION_REQUEST_CLOSED; an unknown request id is 404. The same as the stream\'s `permission` frame.',
      params: PermissionParams,
      body: PermissionAnswerBody,
      response: { 200: ref(PermissionAnsweredSchema), ...problems(400, 404, 409, 413, 415) }
    }
  }, async (request) => {
    return agents.answerPermission(request.params.id, request.params.requestId, request.body)
  })

  app.post('/sessions/:id/interrupt', {
    schema: {
      tags: ['agent'],
      operationId: 'interruptTurn',
      summary: 'Stop the agent\'s running turn; the session stays active',
      description: 'The CLI ends the turn (its output so far stays stored, the turn\'s `result` follows), open permission ' +
        'requests are cancelled, and the session stays `active`, idle. Queued messages wait until the next message, or ' +
        'go on at once with `deliverQueued: true`. On an idle session nothing happens: `interrupted: false`. Answers once ' +
        'the turn has ended (or after a short bounded wait). The same as the stream\'s `interrupt` frame.',
      params: SessionParams,
      body: InterruptBody,
      response: { 200: ref(InterruptResultSchema), ...problems(400, 404, 413, 415) }
    }
  }, async (request) => {
    return agents.interrupt(request.params.id, request.body ?? {})
  })
}

export default sessionControlRoutes
