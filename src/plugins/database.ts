import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { acquireDataDirLock } from '../db/data-dir-lock.js'
import { openDatabase, type DatabaseHandle } from '../db/database.js'

declare module 'fastify' {
  interface FastifyInstance {
    database: DatabaseHandle
  }
}

/**
 * Locks the data directory, opens the database (PGlite under the data directory unless DATABASE_URL
 * is set) and applies migrations. Registered first, so Fastify closes it last.
 */
export default fp(async function database (app: FastifyInstance, opts: { config: Config }) {
  const { config } = opts
  await mkdir(config.dataDir, { recursive: true })
  const lock = await acquireDataDirLock(config.dataDir)
  let handle: DatabaseHandle
  try {
    handle = await openDatabase({
      url: config.databaseUrl,
      pgliteDir: join(config.dataDir, 'pglite'),
      poolSize: config.databasePoolSize
    })
  } catch (err) {
    await lock.release()
    throw err
  }
  app.log.info({ driver: handle.driver }, 'database ready')
  app.decorate('database', handle)
  app.addHook('onClose', async () => {
    await handle.close()
    await lock.release()
  })
}, { name: 'database' })
