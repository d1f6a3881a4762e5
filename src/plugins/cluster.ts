import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { Doorbell } from '../cluster/doorbell.js'
import { InstanceLease } from '../cluster/instance-lease.js'
import { createInstanceRepository, type InstanceRepository } from '../cluster/instance-repository.js'
import { NoticeQueueWatch } from '../cluster/notice-queue-watch.js'
import type { Config } from '../config.js'

declare module 'fastify' {
  interface FastifyInstance {
    instances: InstanceRepository
    instanceLease: InstanceLease
    doorbell: Doorbell
    /** PostgreSQL's notice queue, looked at by the sweeps; absent on PGlite (nobody listens) */
    noticeQueue: NoticeQueueWatch | undefined
    /** the instances whose sessions this one takes over at start-up (its previous run) */
    previousInstances: string[]
  }
}

/**
 * This process as one instance among several on one PostgreSQL: its lease (registered before any
 * session is touched), and the doorbell between instances. On PGlite the only instance; every row
 * of another there is a previous run. Closed after the agents (registered before them): the
 * sessions are handed back first, then the row is stopped, so that peers take over at once.
 */
export default fp(async function clusterPlugin (app: FastifyInstance, opts: { config: Config }) {
  const instances = createInstanceRepository(app.database.db)
  const lease = new InstanceLease({
    // its renewals on a connection of their own: a busy pool does not cost the lease
    repo: createInstanceRepository(app.database.leaseDb),
    dataDir: opts.config.dataDir,
    leaseSeconds: opts.config.instance.leaseSeconds,
    logger: app.log.child({ component: 'instance' }),
    fencing: app.database.pubsub !== undefined
  })
  const doorbell = new Doorbell({ pubsub: app.database.pubsub, logger: app.log.child({ component: 'doorbell' }), self: () => lease.id })
  const { id, previous } = await lease.start()
  doorbell.addOwnId(id)
  lease.on('registered', (e) => doorbell.addOwnId(e.id))
  // the previous run on this data directory is gone for sure (it held the directory's lock)
  if (previous !== null) await instances.stop(previous)
  const previousInstances = doorbell.shared ? (previous === null ? [] : [previous]) : await instances.stopOthers(id)
  await doorbell.start()
  app.decorate('instances', instances)
  app.decorate('instanceLease', lease)
  app.decorate('doorbell', doorbell)
  app.decorate('noticeQueue', doorbell.shared
    ? new NoticeQueueWatch({ repo: instances, cutAt: opts.config.instance.noticeQueueCutAt, logger: app.log.child({ component: 'notice-queue' }) })
    : undefined)
  app.decorate('previousInstances', previousInstances)
  app.addHook('onClose', async () => { await lease.close() })
}, { name: 'cluster', dependencies: ['database'] })
