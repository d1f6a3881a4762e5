/**
 * The thread that owns the embedded database. PGlite runs Postgres as WebAssembly on the thread
 * that calls it: on the service's main thread every statement stopped the event loop (heartbeats,
 * WebSocket frames, agent output) for as long as it ran. Here it runs beside it, one statement at
 * a time as before.
 */
import { parentPort, workerData } from 'node:worker_threads'
import { PGlite, parse, protocol, type PGliteOptions, type Results, type Transaction } from '@electric-sql/pglite'
import { plainError, type WorkerHello, type WorkerReply, type WorkerRequest, type WorkerResults } from './pglite-protocol.js'

const port = parentPort
if (!port) throw new Error('pglite-worker runs as a worker thread')

const identity = (value: unknown) => value
/** parsers that keep these types' text as it is (drizzle maps dates itself) */
const rawParsers = new Map<string, Record<number, (value: unknown) => unknown>>()
function parsersFor (oids: number[]): Record<number, (value: unknown) => unknown> | undefined {
  if (oids.length === 0) return undefined
  const key = oids.join(',')
  let parsers = rawParsers.get(key)
  if (!parsers) {
    parsers = Object.fromEntries(oids.map((oid) => [oid, identity]))
    rawParsers.set(key, parsers)
  }
  return parsers
}

interface OpenTransaction {
  tx: Transaction
  end: (commit: boolean) => void
  finished: Promise<void>
  /** COMMIT or ROLLBACK was asked for: statements that come later are refused */
  ending?: boolean
}

let db: PGlite
const transactions = new Map<number, OpenTransaction>()
let lastTx = 0

type BackendMessage = Awaited<ReturnType<PGlite['execProtocol']>>['messages'][number]

/**
 * Statements prepared once per SQL text, as postgres.js does: PGlite's own query() parses, plans
 * and describes every statement again, which was three quarters of a small statement's time.
 */
const MAX_PREPARED = 256
const prepared = new Map<string, { name: string, paramTypes: number[] }>()
let lastStatement = 0

async function wire (...messages: Uint8Array[]): Promise<BackendMessage[]> {
  const message = messages.length === 1 ? messages[0]! : Buffer.concat(messages)
  return (await db.execProtocol(message, { syncToFs: false })).messages
}

/** Sends `messages` then Sync, which ends the extended-protocol exchange even after an error. */
async function exchange (...messages: Uint8Array[]): Promise<BackendMessage[]> {
  const out: BackendMessage[] = []
  try {
    out.push(...await wire(...messages))
  } finally {
    out.push(...await wire(protocol.serialize.sync()))
  }
  return out
}

async function statementFor (sql: string): Promise<{ name: string, paramTypes: number[] }> {
  const known = prepared.get(sql)
  if (known) {
    // most recently used last, so the first one is the one to close when the cache is full
    prepared.delete(sql)
    prepared.set(sql, known)
    return known
  }
  const name = `mobvibe_${++lastStatement}`
  const described = await exchange(protocol.serialize.parse({ name, text: sql }), protocol.serialize.describe({ type: 'S', name }))
  const statement = { name, paramTypes: parse.parseDescribeStatementResults(described) }
  prepared.set(sql, statement)
  if (prepared.size > MAX_PREPARED) {
    const [oldestSql, oldest] = prepared.entries().next().value!
    prepared.delete(oldestSql)
    await exchange(protocol.serialize.close({ type: 'S', name: oldest.name }))
  }
  return statement
}

type RunOptions = { rowMode?: 'array' | 'object', parsers?: Record<number, (value: unknown) => unknown> }

/**
 * A cached statement can go stale: a schema change that alters its result type (0A000), or a
 * DEALLOCATE (26000). It is prepared again, and outside a transaction the statement is retried
 * once, as postgres.js does; inside one, the error has aborted the transaction anyway.
 */
async function runCached (sql: string, params: unknown[], options: RunOptions, inTransaction: boolean): Promise<Results> {
  try {
    return await runPrepared(sql, params, options)
  } catch (err) {
    const code = (err as { code?: unknown }).code
    if (code !== '0A000' && code !== '26000') throw err
    prepared.delete(sql)
    if (inTransaction) throw err
    return runPrepared(sql, params, options)
  }
}

async function runPrepared (sql: string, params: unknown[], options: RunOptions): Promise<Results> {
  const statement = await statementFor(sql)
  // as PGlite's query() serialises parameters: by the type the statement declared for each
  const values = params.map((value, i) => {
    if (value === null || value === undefined) return null
    const serializer = db.serializers[statement.paramTypes[i]!]
    return serializer ? serializer(value) : String(value)
  })
  const messages = await exchange(
    protocol.serialize.bind({ statement: statement.name, values }),
    protocol.serialize.describe({ type: 'P' }),
    protocol.serialize.execute({})
  )
  return parse.parseResults(messages, db.parsers, options)[0]!
}

async function handle (req: WorkerRequest): Promise<WorkerResults | number | null> {
  switch (req.op) {
    case 'query': {
      const parsers = parsersFor(req.rawTypes)
      const options = { ...(req.rowMode ? { rowMode: req.rowMode } : {}), ...(parsers ? { parsers } : {}) }
      let r: Results
      if (req.tx === undefined) {
        // the locks PGlite's query() takes: after any open transaction, one statement at a time
        r = await db._runExclusiveTransaction(() => db._runExclusiveQuery(async () => {
          await db._checkReady()
          const results = await runCached(req.sql, req.params, options, false)
          await db.syncToFs()
          return results
        }))
      } else {
        const open = transactions.get(req.tx)
        if (!open || open.ending) throw new Error(`transaction ${req.tx} is not open`)
        r = await db._runExclusiveQuery(() => runCached(req.sql, req.params, options, true))
      }
      return { rows: r.rows, fields: r.fields, affectedRows: r.affectedRows }
    }
    case 'begin': {
      const id = ++lastTx
      let started!: () => void
      const ready = new Promise<void>((resolve) => { started = resolve })
      let end!: (commit: boolean) => void
      const decided = new Promise<boolean>((resolve) => { end = resolve })
      // PGlite holds its lock for the whole callback: other statements wait, as on one connection
      const finished = db.transaction(async (tx) => {
        transactions.set(id, { tx, end, finished })
        started()
        if (!await decided) await tx.rollback()
      }).finally(() => transactions.delete(id))
      // a BEGIN that fails rejects `finished` before the callback runs
      await Promise.race([ready, finished])
      return id
    }
    case 'end': {
      const open = transactions.get(req.tx)
      if (!open || open.ending) throw new Error(`transaction ${req.tx} is not open`)
      open.ending = true
      open.end(req.commit)
      await open.finished
      return null
    }
    case 'close':
      if (!db.closed) await db.close()
      return null
  }
}

try {
  // the module compiled once by the process (pglite-thread.ts)
  const data = workerData as { dataDir: string, wasm: NonNullable<PGliteOptions['pgliteWasmModule']> }
  db = await PGlite.create(data.dataDir, { pgliteWasmModule: data.wasm })
  port.postMessage({ ready: true } satisfies WorkerHello)
} catch (err) {
  port.postMessage({ ready: false, error: plainError(err) } satisfies WorkerHello)
}

port.on('message', (req: WorkerRequest) => {
  handle(req).then(
    (value) => { port.postMessage({ id: req.id, ok: true, value } satisfies WorkerReply) },
    (err: unknown) => { port.postMessage({ id: req.id, ok: false, error: plainError(err) } satisfies WorkerReply) }
  )
})
