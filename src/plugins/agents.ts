import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { AgentSupervisor } from '../agents/agent-supervisor.js'
import { ProcessRegistry } from '../agents/process-registry.js'
import type { Config } from '../config.js'
import { createPermissionRepository } from '../sessions/permission-repository.js'

declare module 'fastify' {
  interface FastifyInstance {
    agents: AgentSupervisor
  }
}

/**
 * The supervisor of Claude Code processes. It writes session state only through the lifecycle
 * manager, turn facts through the turn store, and events through the log. Closed first of the
 * components (registered last) and after the WebSockets (their preClose).
 */
export default fp(async function agentsPlugin (app: FastifyInstance, opts: { config: Config, clock?: () => Date }) {
  const supervisor = new AgentSupervisor({
    config: opts.config,
    manager: app.sessions,
    permissions: createPermissionRepository(app.database.db),
    turns: app.turns,
    events: app.events,
    registry: new ProcessRegistry({ dataDir: opts.config.dataDir, logger: app.log.child({ component: 'process-registry' }) }),
    cluster: {
      lease: app.instanceLease,
      doorbell: app.doorbell,
      isLive: (id) => app.instances.isLive(id),
      livePeer: (me) => app.instances.livePeer(me)
    },
    logger: app.log.child({ component: 'agent-supervisor' }),
    ...(opts.clock ? { clock: opts.clock } : {})
  })
  app.decorate('agents', supervisor)
  app.addHook('onClose', async () => { await supervisor.close() })
}, { name: 'agents', dependencies: ['database', 'cluster', 'sessions', 'events'] })
