import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { SessionLifecycleManager } from '../sessions/lifecycle-manager.js'
import { createSessionRepository } from '../sessions/session-repository.js'
import { SessionTimeoutWorker } from '../sessions/timeout-worker.js'

declare module 'fastify' {
  interface FastifyInstance {
    sessions: SessionLifecycleManager
    timeoutWorker: SessionTimeoutWorker
  }
}

export interface SessionsPluginOptions {
  config: Config
  clock?: () => Date
  /** false leaves the worker stopped (tests that drive sweeps themselves) */
  startWorker?: boolean
}

/** The session components: repository, lifecycle manager (the one writer), timeout worker. */
export default fp(async function sessionsPlugin (app: FastifyInstance, opts: SessionsPluginOptions) {
  const postgres = app.database.driver === 'postgres'
  const repo = createSessionRepository(app.database.db, {
    sweepPartitions: postgres ? 2 : 1,
    heartbeatStatementsInFlight: postgres ? Infinity : 1
  })
  const manager = new SessionLifecycleManager({
    repo,
    config: opts.config,
    logger: app.log.child({ component: 'lifecycle' }),
    ...(opts.clock ? { clock: opts.clock } : {})
  })
  const worker = new SessionTimeoutWorker({
    manager,
    intervalMs: opts.config.sweepIntervalMs,
    logger: app.log.child({ component: 'timeout-worker' })
  })
  app.decorate('sessions', manager)
  app.decorate('timeoutWorker', worker)
  if (opts.startWorker !== false) app.addHook('onReady', async () => { worker.start() })
  app.addHook('preClose', async () => { await worker.stop() })
}, { name: 'sessions', dependencies: ['database'] })
