import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { InProcessEventBus, type EventBus } from '../events/event-bus.js'
import { EventLog } from '../events/event-log.js'
import { StateRecorder } from '../events/state-recorder.js'

declare module 'fastify' {
  interface FastifyInstance {
    events: EventLog
    eventBus: EventBus
  }
}

/**
 * The session event log (and the message queue it holds), its live fan-out, and the recording of
 * every transition as a `state` event. Closed after the agents (registered before them): what
 * their shutdown records is stored before the database closes.
 */
export default fp(async function eventsPlugin (app: FastifyInstance, opts: { clock?: () => Date }) {
  const bus = new InProcessEventBus()
  const log = new EventLog({ db: app.database.db, bus, logger: app.log.child({ component: 'event-log' }), ...(opts.clock ? { clock: opts.clock } : {}) })
  const recorder = new StateRecorder({ lifecycle: app.sessions, log })
  app.decorate('eventBus', bus)
  app.decorate('events', log)
  app.addHook('onClose', async () => { await recorder.close() })
}, { name: 'events', dependencies: ['database', 'sessions'] })
