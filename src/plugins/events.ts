import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { RUN_FRAMES_MAX_BYTES } from '../cluster/event-notice.js'
import type { EventBus } from '../events/event-bus.js'
import { EventLog } from '../events/event-log.js'
import { SessionFeed } from '../events/session-feed.js'
import { StateRecorder } from '../events/state-recorder.js'

/** How often the sessions watched here are checked against the table (notices may be lost). */
const FEED_POLL_MS = 1000

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
  const { doorbell } = app
  const logger = app.log.child({ component: 'event-log' })
  const feed: SessionFeed = new SessionFeed({
    read: (sessionId, after, limit) => log.page(sessionId, after, limit),
    readMany: (from, limit) => log.pages(from, limit),
    lastSeqs: (ids) => log.lastSeqs(ids),
    logger
  })
  const log: EventLog = new EventLog({
    db: app.database.db,
    bus: feed,
    logger,
    // every group commit tells the other instances (small runs' frames included): the append
    // statement itself, or a ring after the drain for what no statement announced
    noticeFrom: () => doorbell.noticeFrom(),
    onStored: (runs) => doorbell.ringEvents(runs),
    ...(doorbell.shared ? { onStoredFramesMaxBytes: RUN_FRAMES_MAX_BYTES } : {}),
    ...(opts.clock ? { clock: opts.clock } : {})
  })
  const recorder = new StateRecorder({ lifecycle: app.sessions, log })
  const checkAll = () => { feed.checkAll().catch((err: Error) => logger.warn({ err }, 'checking the watched sessions failed')) }
  doorbell.on('events', (runs) => { feed.storedMany(runs) })
  // what was rung while the listener was away is lost: the table says
  doorbell.on('listening', checkAll)
  let poll: NodeJS.Timeout | undefined
  if (doorbell.shared) {
    poll = setInterval(checkAll, FEED_POLL_MS)
    poll.unref()
  }
  app.decorate('eventBus', feed)
  app.decorate('events', log)
  app.addHook('onClose', async () => {
    clearInterval(poll)
    await recorder.close()
  })
}, { name: 'events', dependencies: ['database', 'cluster', 'sessions'] })
