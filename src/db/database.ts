import { mkdir } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite'
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator'
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js'
import { migrate as migratePostgres } from 'drizzle-orm/postgres-js/migrator'
import { sql } from 'drizzle-orm'
import type { PgDatabase, PgQueryResultHKT } from 'drizzle-orm/pg-core'
import postgres from 'postgres'
import { PGliteThread } from './pglite-thread.js'
import * as schema from './schema.js'

export type Database = PgDatabase<PgQueryResultHKT, typeof schema>

/** LISTEN/NOTIFY of PostgreSQL (absent on PGlite: one instance, nobody to tell). */
export interface PubSub {
  /**
   * Listens on a dedicated connection (application_name `mobvibe-listen`), which is re-established
   * after a loss; `onListen` runs on every (re)connection: notices sent meanwhile are lost.
   */
  listen (channel: string, onMessage: (payload: string) => void, onListen: () => void): Promise<void>
  /**
   * Sends the payloads in order, in one statement, on a connection of its own
   * (application_name `mobvibe-notify`): statements sent one after another are pipelined and
   * their notices arrive in the order sent.
   */
  notify (channel: string, payloads: string[]): Promise<void>
}

export interface DatabaseHandle {
  readonly db: Database
  /**
   * The instance lease's renewals: on PostgreSQL a connection of their own (application_name
   * `mobvibe-lease`), so that a pool busy with requests never makes an instance give up its
   * lease; on PGlite the same as `db`.
   */
  readonly leaseDb: Database
  readonly driver: 'postgres' | 'pglite'
  readonly pubsub?: PubSub
  ping (): Promise<void>
  close (): Promise<void>
}

export interface OpenDatabaseOptions {
  /** postgres:// URL; when absent the embedded PGlite is used */
  url?: string | undefined
  /** PGlite data directory; `memory://` keeps it in memory (tests) */
  pgliteDir: string
  /** postgres.js pool size */
  poolSize?: number
}

/** How the pool behaves when Postgres goes away and comes back (test/database-outage.test.ts). */
const POSTGRES_RECONNECT = { backoffSeconds: 0.05, connectTimeoutSeconds: 5 } as const

export const MIGRATIONS_FOLDER = fileURLToPath(new URL('../../drizzle', import.meta.url))

/** Opens the database for either driver and applies every pending migration before returning. */
export async function openDatabase (opts: OpenDatabaseOptions): Promise<DatabaseHandle> {
  if (opts.url) return openPostgres(opts.url, opts.poolSize ?? 10)
  return openPglite(opts.pgliteDir)
}

async function openPostgres (url: string, max: number): Promise<DatabaseHandle> {
  const client = postgres(url, {
    max,
    onnotice: () => {},
    // Sessions are written under optimistic locking; nothing here needs a long-idle connection.
    idle_timeout: 60,
    // While the database is away every request answers 503 at once; when it is back the next
    // request reconnects. The default backoff grows to seconds and outlives the outage (it
    // resets only on a successful connect), which held requests long after recovery.
    backoff: () => POSTGRES_RECONNECT.backoffSeconds,
    // a server that does not answer (not even a refusal) is a 503 after this, not after 30 s
    connect_timeout: POSTGRES_RECONNECT.connectTimeoutSeconds,
    connection: { application_name: 'mobvibe-session-service' }
  })
  const db = drizzlePostgres(client, { schema }) as unknown as Database
  try {
    await migratePostgres(db as never, { migrationsFolder: MIGRATIONS_FOLDER })
  } catch (err) {
    await client.end({ timeout: 1 })
    throw err
  }
  // clients of their own, so that their connections are told apart (and can be found) by name
  const single = (name: string, settings: Record<string, string> = {}) => postgres(url, {
    max: 1,
    onnotice: () => {},
    backoff: () => POSTGRES_RECONNECT.backoffSeconds,
    connect_timeout: POSTGRES_RECONNECT.connectTimeoutSeconds,
    connection: { application_name: name, ...settings }
  })
  const listener = single('mobvibe-listen')
  const leaseClient = single('mobvibe-lease')
  // a notice is a hint that the tables hold the truth: its commit need not wait for the disk
  const notifier = single('mobvibe-notify', { synchronous_commit: 'off' })
  return {
    db,
    leaseDb: drizzlePostgres(leaseClient, { schema }) as unknown as Database,
    driver: 'postgres',
    pubsub: {
      listen: async (channel, onMessage, onListen) => { await listener.listen(channel, onMessage, onListen) },
      notify: async (channel, payloads) => {
        // one payload through notify() itself: the unnest statement for every ring was seen to
        // put rings out of order (test/doorbell.test.ts); a receiver reads any gap all the same
        if (payloads.length === 1) await notifier.notify(channel, payloads[0]!)
        else await notifier`select pg_notify(${channel}, p) from unnest(${payloads}::text[]) p`
      }
    },
    ping: async () => { await db.execute(sql`select 1`) },
    close: async () => {
      await Promise.all([listener.end({ timeout: 1 }), leaseClient.end({ timeout: 1 }), notifier.end({ timeout: 1 }), client.end({ timeout: 5 })])
    }
  }
}

async function openPglite (dir: string): Promise<DatabaseHandle> {
  if (!dir.startsWith('memory://')) await mkdir(dir, { recursive: true })
  // on its own thread: a statement running in PGlite would otherwise stop the event loop
  const client = await PGliteThread.open(dir)
  const db = drizzlePglite(client as never, { schema }) as unknown as Database
  try {
    await migratePglite(db as never, { migrationsFolder: MIGRATIONS_FOLDER })
  } catch (err) {
    await client.close()
    throw err
  }
  return {
    db,
    leaseDb: db,
    driver: 'pglite',
    ping: async () => { await db.execute(sql`select 1`) },
    close: async () => { if (!client.closed) await client.close() }
  }
}
