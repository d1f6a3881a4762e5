/**
 * The messages between the service and the thread that runs PGlite (pglite-thread.ts and
 * pglite-worker.ts). Plain data only: everything here crosses a structured clone.
 */
export type WorkerRequest =
  | { id: number, op: 'query', sql: string, params: unknown[], rowMode?: 'array' | 'object' | undefined, rawTypes: number[], tx?: number | undefined }
  | { id: number, op: 'begin' }
  | { id: number, op: 'end', tx: number, commit: boolean }
  | { id: number, op: 'close' }

export interface WorkerResults {
  /** objects, or arrays in rowMode 'array' */
  rows: Record<string, unknown>[]
  fields: { name: string, dataTypeID: number }[]
  affectedRows?: number | undefined
}

/** A database error as plain fields (code, detail, constraint…), without the query and its parameters. */
export type WorkerError = Record<string, unknown> & { message: string }

export type WorkerReply =
  | { id: number, ok: true, value: WorkerResults | number | null }
  | { id: number, ok: false, error: WorkerError }

/** The first message of the thread: the database is open, or why it is not. */
export type WorkerHello = { ready: true } | { ready: false, error: WorkerError }

/** What of an error may cross: its own fields but the (possibly huge) statement and parameters. */
export function plainError (err: unknown): WorkerError {
  if (!(err instanceof Error)) return { message: String(err) }
  const out: WorkerError = { message: err.message, name: err.name }
  for (const [key, value] of Object.entries(err)) {
    if (key === 'query' || key === 'params' || key === 'cause') continue
    if (value === undefined || typeof value === 'function') continue
    out[key] = value
  }
  return out
}

/** The error back as an Error with the same fields, so callers read `code` as from PGlite itself. */
export function revivedError (fields: WorkerError): Error {
  const err = new Error(fields.message)
  Object.assign(err, fields)
  return err
}
