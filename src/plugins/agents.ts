import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { AgentSupervisor } from '../agents/agent-supervisor.js'
import { ProcessRegistry } from '../agents/process-registry.js'
import type { Config } from '../config.js'
import { EventHub } from '../events/event-hub.js'
import { EventLog } from '../events/event-log.js'
import { createSessionRepository } from '../sessions/session-repository.js'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    agents: AgentSupervisor
    events: EventLog
    eventHub: EventHub
  }
}

/**
 * The agent side: the event log and its live fan-out, and the supervisor of Claude Code processes.
 * Closed before the database (registered after it) and after the WebSockets (their preClose).
 */
export default fp(async function agentsPlugin (app: FastifyInstance, opts: { config: Config, clock?: () => Date }) {
  const hub = new EventHub()
  const events = new EventLog({ db: app.database.db, hub, logger: app.log.child({ component: 'event-log' }), ...(opts.clock ? { clock: opts.clock } : {}) })
  const supervisor = new AgentSupervisor({
    config: opts.config,
    manager: app.sessions,
    repo: createSessionRepository(app.database.db),
    events,
    registry: new ProcessRegistry({ dataDir: opts.config.dataDir, logger: app.log.child({ component: 'process-registry' }) }),
    logger: app.log.child({ component: 'agent-supervisor' }),
    ...(opts.clock ? { clock: opts.clock } : {})
  })
  app.decorate('config', opts.config)
  app.decorate('eventHub', hub)
  app.decorate('events', events)
  app.decorate('agents', supervisor)
  app.addHook('onClose', async () => { await supervisor.close() })
}, { name: 'agents', dependencies: ['database', 'sessions'] })
