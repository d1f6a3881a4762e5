import { once } from 'node:events'
import { Worker } from 'node:worker_threads'
import { revivedError, type WorkerHello, type WorkerReply, type WorkerRequest, type WorkerResults } from './pglite-protocol.js'

type Request = WorkerRequest extends infer R ? R extends WorkerRequest ? Omit<R, 'id'> : never : never

interface QueryOptions {
  rowMode?: 'array' | 'object'
  /** drizzle asks for some types' text as it is: by identity parsers, which cannot cross threads */
  parsers?: Record<number, (value: unknown) => unknown>
}

// the built service runs .js; tests, the bench and `npm run dev` run the TypeScript sources
const FROM_SOURCES = import.meta.url.endsWith('.ts')
const WORKER_URL = new URL(FROM_SOURCES ? './pglite-worker.ts' : './pglite-worker.js', import.meta.url)

function spawnWorker (dataDir: string): Worker {
  if (!FROM_SOURCES) return new Worker(WORKER_URL, { workerData: { dataDir } })
  // tsx's loader stays on the main thread (tsx#354): the worker registers it before loading the .ts
  const tsx = import.meta.resolve('tsx/esm/api')
  const boot = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(WORKER_URL.href)}) })`
  return new Worker(boot, { eval: true, workerData: { dataDir } })
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
 * uses: `query` and `transaction`. Requests are answered in order; the thread keeps the process
 * alive only while one is outstanding, as a socket with a request in flight would.
 */
export class PGliteThread {
  readonly #worker: Worker
  readonly #pending = new Map<number, { resolve: (value: unknown) => void, reject: (err: Error) => void }>()
  #lastId = 0
  #closed = false
  #failure: Error | undefined

  private constructor (worker: Worker) {
    this.#worker = worker
    worker.on('message', (reply: WorkerReply) => this.#settle(reply))
    worker.on('error', (err) => this.#fail(err))
    worker.on('exit', (code) => this.#fail(new Error(`the database thread exited (code ${code})`)))
  }

  /** Starts the thread and opens the database in `dataDir` (`memory://` for one in memory). */
  static async open (dataDir: string): Promise<PGliteThread> {
    const worker = spawnWorker(dataDir)
    const [hello] = await Promise.race([
      once(worker, 'message') as Promise<[WorkerHello]>,
      once(worker, 'error').then(([err]) => { throw err instanceof Error ? err : new Error(String(err)) })
    ])
    if (!hello.ready) {
      await worker.terminate()
      throw revivedError(hello.error)
    }
    worker.unref()
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

  async close (): Promise<void> {
    if (this.#closed) return
    try {
      await this.#request({ op: 'close' })
    } finally {
      this.#closed = true
      await this.#worker.terminate()
    }
  }

  #request (req: Request): Promise<unknown> {
    if (this.#failure) return Promise.reject(this.#failure)
    if (this.#closed) return Promise.reject(Object.assign(new Error('the database is closed'), { code: 'DATABASE_UNAVAILABLE' }))
    const id = ++this.#lastId
    return new Promise((resolve, reject) => {
      if (this.#pending.size === 0) this.#worker.ref()
      this.#pending.set(id, { resolve, reject })
      this.#worker.postMessage({ ...req, id })
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

  #fail (err: Error): void {
    if (this.#closed) return
    this.#failure ??= Object.assign(new Error(`the embedded database is unavailable: ${err.message}`, { cause: err }), { code: 'DATABASE_UNAVAILABLE' })
    for (const waiting of this.#pending.values()) waiting.reject(this.#failure)
    this.#pending.clear()
    this.#worker.unref()
  }
}
