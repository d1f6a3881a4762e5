import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { SessionLifecycleManager } from '../sessions/lifecycle-manager.js'
import { createSessionRepository } from '../sessions/session-repository.js'
import { SessionTimeoutWorker } from '../sessions/timeout-worker.js'
import { createTurnStore, type TurnStore } from '../sessions/turn-store.js'

declare module 'fastify' {
  interface FastifyInstance {
    sessions: SessionLifecycleManager
    timeoutWorker: SessionTimeoutWorker
    turns: TurnStore
  }
}

/**
 * The session components: the repository, the lifecycle manager (the one writer of state), the
 * timeout worker (started by the app once start-up is done), and the turn store for the agents.
 */
/** Dead instances' rows are deleted every this many sweeps (10 minutes at the default interval). */
const PRUNE_EVERY_SWEEPS = 600
/** The notice queue is looked at every this many sweeps (10 s at the default interval) */
const NOTICE_QUEUE_EVERY_SWEEPS = 10

export default fp(async function sessionsPlugin (app: FastifyInstance, opts: { config: Config, clock?: () => Date }) {
  let sweeps = 0
  const postgres = app.database.driver === 'postgres'
  const repo = createSessionRepository(app.database.db, {
    sweepPartitions: postgres ? 2 : 1,
    heartbeatStatementsInFlight: postgres ? Infinity : 1
  })
  const manager = new SessionLifecycleManager({
    repo,
    config: opts.config,
    worker: () => app.instanceLease.id,
    logger: app.log.child({ component: 'lifecycle' }),
    ...(opts.clock ? { clock: opts.clock } : {})
  })
  const worker = new SessionTimeoutWorker({
    manager,
    // the rows of instances whose lease ran out are stopped (one that comes back finds it so);
    // now and then those dead for a while go, and the notice queue is looked at
    housekeeping: async () => {
      await app.instances.markDead()
      if (++sweeps % PRUNE_EVERY_SWEEPS === 0) await app.instances.prune()
      if (sweeps % NOTICE_QUEUE_EVERY_SWEEPS === 0) await app.noticeQueue?.look()
    },
    intervalMs: opts.config.sweepIntervalMs,
    logger: app.log.child({ component: 'timeout-worker' })
  })
  if (opts.config.unownedSessionsOwner !== undefined) {
    const adopted = await repo.adoptUnowned(opts.config.unownedSessionsOwner)
    if (adopted > 0) app.log.info({ adopted, owner: opts.config.unownedSessionsOwner }, 'sessions created before users existed now belong to UNOWNED_SESSIONS_OWNER')
  }
  app.decorate('sessions', manager)
  app.decorate('timeoutWorker', worker)
  app.decorate('turns', createTurnStore(repo))
  app.addHook('preClose', async () => { await worker.stop() })
}, { name: 'sessions', dependencies: ['database', 'cluster'] })
