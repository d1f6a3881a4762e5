import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PGlite } from '@electric-sql/pglite'
import type { sql } from 'drizzle-orm'
import { drizzle as drizzlePglite } from 'drizzle-orm/pglite'
import { migrate as migratePglite } from 'drizzle-orm/pglite/migrator'
import { drizzle as drizzlePostgres } from 'drizzle-orm/postgres-js'
import { migrate as migratePostgres } from 'drizzle-orm/postgres-js/migrator'
import postgres from 'postgres'
import type { Test } from 'tap'
import { MIGRATIONS_FOLDER } from '../../src/db/database.js'
import { freshDatabaseUrl } from './build.js'

type Query = ReturnType<typeof sql>

export interface MigrationDatabase {
  /** the migrations of `drizzle/` up to, not including, the one tagged `before` */
  readonly earlier: string
  /** the drizzle database itself, for code under test that takes one */
  readonly db: unknown
  execute (q: Query): Promise<unknown>
  rows (q: Query): Promise<Record<string, unknown>[]>
  /** applies the migrations of a folder (`earlier`, then MIGRATIONS_FOLDER for the one under test) */
  migrateTo (folder: string): Promise<void>
}

/**
 * A database as an earlier release left it, for a test of the migration tagged `before`: a copy of
 * `drizzle/` whose journal stops short of that migration, and an empty database (a fresh Postgres
 * one when DATABASE_URL is set, else an in-memory PGlite) to apply migrations to. All of it goes in
 * the test's teardown.
 */
export async function migrationDatabase (t: Test, before: string): Promise<MigrationDatabase> {
  const earlier = await mkdtemp(join(tmpdir(), 'mobvibe-migrations-'))
  t.teardown(() => rm(earlier, { recursive: true, force: true }))
  await cp(MIGRATIONS_FOLDER, earlier, { recursive: true })
  const journalPath = join(earlier, 'meta', '_journal.json')
  const journal = JSON.parse(await readFile(journalPath, 'utf8')) as { entries: { tag: string }[] }
  const at = journal.entries.findIndex((e) => e.tag.endsWith(before))
  if (at <= 0) throw new Error(`no migration tagged …${before} after the first`)
  await writeFile(journalPath, JSON.stringify({ ...journal, entries: journal.entries.slice(0, at) }))

  const url = await freshDatabaseUrl(t)
  let db: unknown
  let execute: (q: Query) => Promise<unknown>
  let migrateTo: (folder: string) => Promise<void>
  if (url) {
    const client = postgres(url, { max: 1, onnotice: () => {} })
    t.teardown(() => client.end())
    const d = drizzlePostgres(client)
    db = d
    execute = (q) => d.execute(q)
    migrateTo = (migrationsFolder) => migratePostgres(d, { migrationsFolder })
  } else {
    const client = await PGlite.create()
    t.teardown(() => client.close())
    const d = drizzlePglite(client)
    db = d
    execute = (q) => d.execute(q)
    migrateTo = (migrationsFolder) => migratePglite(d, { migrationsFolder })
  }
  return {
    earlier,
    db,
    execute,
    migrateTo,
    async rows (q) {
      const r = await execute(q)
      return (Array.isArray(r) ? r : (r as { rows: unknown[] }).rows) as Record<string, unknown>[]
    }
  }
}
