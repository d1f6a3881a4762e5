import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import { revivedError, type WorkerHello, type WorkerReply, type WorkerRequest, type WorkerResults } from './pglite-protocol.js'

/** a request before it is numbered (distributes over the union, unlike a plain Omit) */
type Unnumbered<T> = T extends unknown ? Omit<T, 'id'> : never
type Request = Unnumbered<WorkerRequest>

interface QueryOptions {
  rowMode?: 'array' | 'object'
  /** drizzle asks for some types' text as it is: by identity parsers, which cannot cross threads */
  parsers?: Record<number, (value: unknown) => unknown>
}

// the built service runs .js; tests, the bench and `npm run dev` run the TypeScript sources
const FROM_SOURCES = import.meta.url.endsWith('.ts')
const WORKER_URL = new URL(FROM_SOURCES ? './pglite-worker.ts' : './pglite-worker.js', import.meta.url)

/** a compiled WebAssembly.Module (the DOM library, which types it, is not in this project's lib) */
type WasmModule = object
declare const WebAssembly: { compile: (bytes: Uint8Array) => Promise<WasmModule> }

/**
 * PGlite's WebAssembly, compiled once per process and handed to every database thread: a process
 * that opens the database again (a restart of the thread; the tests, which build many apps) does
 * not compile and optimise nine megabytes of WebAssembly each time.
 */
let compiled: Promise<WasmModule> | undefined
function pgliteModule (): Promise<WasmModule> {
  const file = fileURLToPath(new URL('pglite.wasm', import.meta.resolve('@electric-sql/pglite')))
  compiled ??= readFile(file).then((bytes) => WebAssembly.compile(bytes))
  // a failure is not kept: the next open tries again
  compiled.catch(() => { compiled = undefined })
  return compiled
}

function spawnWorker (dataDir: string, wasm: WasmModule): Worker {
  const workerData = { dataDir, wasm }
  if (!FROM_SOURCES) return new Worker(WORKER_URL, { workerData })
  // tsx's loader stays on the main thread (tsx#354): the worker registers it before loading the .ts
  const tsx = import.meta.resolve('tsx/esm/api')
  const boot = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(WORKER_URL.href)}) })`
  return new Worker(boot, { eval: true, workerData })
}

/** The statements of one transaction, run in order on the thread that holds it open. */
class ThreadTransaction {
  constructor (readonly thread: PGliteThread, readonly id: number) {}

  query (sql: string, params: unknown[] = [], options?: QueryOptions): Promise<WorkerResults> {
    return this.thread.query(sql, params, options, this.id)
  }
}

/**
 * PGlite on a worker thread (pglite-worker.ts), with the part of PGlite's interface that drizzle
 * uses: `query` and `transaction`. Statements run one at a time, those of an open transaction
 * before anything queued behind it; the thread keeps the process alive only while a request is
 * outstanding, as a socket with a request in flight would.
 */
export class PGliteThread {
  readonly #worker: Worker
  readonly #pending = new Map<number, { resolve: (value: unknown) => void, reject: (err: Error) => void }>()
  #lastId = 0
  /** close() was called: no new request is taken */
  #closing = false
  #closed = false
  #failure: Error | undefined

  private constructor (worker: Worker) {
    this.#worker = worker
    worker.on('message', (reply: WorkerReply) => this.#settle(reply))
    worker.on('error', (err) => this.#fail(err))
    worker.on('exit', (code) => this.#fail(new Error(`the database thread exited (code ${code})`)))
    // after the listeners: adding a 'message' listener refs the worker again
    worker.unref()
  }

  /** Starts the thread and opens the database in `dataDir` (`memory://` for one in memory). */
  static async open (dataDir: string): Promise<PGliteThread> {
    const worker = spawnWorker(dataDir, await pgliteModule())
    const [hello] = await Promise.race([
      once(worker, 'message') as Promise<[WorkerHello]>,
      once(worker, 'error').then(([err]) => { throw err instanceof Error ? err : new Error(String(err)) })
    ])
    if (!hello.ready) {
      await worker.terminate()
      throw revivedError(hello.error)
    }
    return new PGliteThread(worker)
  }

  get closed (): boolean {
    return this.#closed
  }

  query (sql: string, params: unknown[] = [], options?: QueryOptions, tx?: number): Promise<WorkerResults> {
    const rawTypes = options?.parsers ? Object.keys(options.parsers).map(Number) : []
    return this.#request({ op: 'query', sql, params, rowMode: options?.rowMode, rawTypes, tx }) as Promise<WorkerResults>
  }

  /** Runs `fn` in one transaction: committed when it resolves, rolled back when it throws. */
  async transaction<T> (fn: (tx: ThreadTransaction) => Promise<T>): Promise<T> {
    const id = await this.#request({ op: 'begin' }) as number
    let result: T
    try {
      result = await fn(new ThreadTransaction(this, id))
    } catch (err) {
      await this.#request({ op: 'end', tx: id, commit: false }).catch(() => {})
      throw err
    }
    await this.#request({ op: 'end', tx: id, commit: true })
    return result
  }

  /** Lets what was asked before finish, then closes the database and ends the thread. */
  async close (): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    try {
      await this.#send({ op: 'close' })
    } finally {
      this.#closed = true
      this.#fail(new Error('the database is closed'))
      await this.#worker.terminate()
    }
  }

  #request (req: Request): Promise<unknown> {
    // once closing, no new work; an open transaction may still finish (close() waits for it)
    const newWork = req.op === 'begin' || (req.op === 'query' && req.tx === undefined)
    if (this.#closing && newWork && !this.#failure) return Promise.reject(unavailable(new Error('the database is closed')))
    return this.#send(req)
  }

  #send (req: Request): Promise<unknown> {
    if (this.#failure) return Promise.reject(this.#failure)
    const id = ++this.#lastId
    return new Promise((resolve, reject) => {
      // throws on what cannot be cloned (a function, a symbol): nothing is registered then
      this.#worker.postMessage({ ...req, id })
      if (this.#pending.size === 0) this.#worker.ref()
      this.#pending.set(id, { resolve, reject })
    })
  }

  #settle (reply: WorkerReply): void {
    const waiting = this.#pending.get(reply.id)
    if (!waiting) return
    this.#pending.delete(reply.id)
    if (this.#pending.size === 0) this.#worker.unref()
    if (reply.ok) waiting.resolve(reply.value)
    else waiting.reject(revivedError(reply.error))
  }

  /** From now on every request fails, and so does every one still waiting for an answer. */
  #fail (err: Error): void {
    this.#failure ??= this.#closed ? unavailable(err) : unavailable(new Error(`the embedded database is unavailable: ${err.message}`, { cause: err }))
    for (const waiting of this.#pending.values()) waiting.reject(this.#failure)
    this.#pending.clear()
    this.#worker.unref()
  }
}

/** Marks the error as the database being out of reach (a 503 for the client, see database-errors.ts). */
function unavailable (err: Error): Error {
  return Object.assign(err, { code: 'DATABASE_UNAVAILABLE' })
}
