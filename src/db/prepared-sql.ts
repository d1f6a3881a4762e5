import { getTableColumns, type SQL, type Table } from 'drizzle-orm'
import { PgDialect } from 'drizzle-orm/pg-core'
import type { Database } from './database.js'

const dialect = new PgDialect()

export interface PreparedSql {
  execute (values: Record<string, unknown>): Promise<Record<string, unknown>[]>
}

/**
 * A named, server-side prepared statement for SQL the query builder cannot express (data-modifying
 * CTEs). Values are bound with `sql.placeholder(name)`; rows come back as the driver gives them.
 */
export function prepareSql (db: Database, name: string, query: SQL): PreparedSql {
  const prepared = db._.session.prepareQuery(dialect.sqlToQuery(query), undefined, name, false)
  return {
    async execute (values) {
      const result = await prepared.execute(values) as unknown
      // postgres.js answers with an array of rows, PGlite with { rows }
      return (Array.isArray(result) ? result : (result as { rows: Record<string, unknown>[] }).rows)
    }
  }
}

/** Maps a raw row (SQL column names, driver values) to the table's typed row, as drizzle does. */
export function rowMapper<T extends Table> (table: T): (raw: Record<string, unknown>) => T['$inferSelect'] {
  const columns = Object.entries(getTableColumns(table))
  return (raw) => {
    const row: Record<string, unknown> = {}
    for (const [key, column] of columns) {
      const value = raw[column.name]
      row[key] = value === null || value === undefined ? null : column.mapFromDriverValue(value)
    }
    return row as T['$inferSelect']
  }
}
