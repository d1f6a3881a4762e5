/**
 * Whether an error means "the database cannot be reached right now" (as opposed to a statement
 * that failed): the request may succeed if retried, so the client gets a 503, not a 500.
 */
const UNREACHABLE_CODES = new Set([
  // the network, as Node reports it
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH',
  // postgres.js
  'CONNECTION_CLOSED', 'CONNECTION_ENDED', 'CONNECTION_DESTROYED', 'CONNECT_TIMEOUT',
  // SQLSTATE: shutting down, starting up, out of connections
  '57P01', '57P02', '57P03', '53300',
  // the embedded database's thread is gone (pglite-thread.ts)
  'DATABASE_UNAVAILABLE'
])

export function isDatabaseUnavailable (err: unknown): boolean {
  // drizzle wraps the driver's error in `cause`; look a few levels down
  let current: unknown = err
  for (let depth = 0; depth < 4 && current && typeof current === 'object'; depth++) {
    const code = (current as { code?: unknown }).code
    // SQLSTATE class 08: connection exceptions
    if (typeof code === 'string' && (UNREACHABLE_CODES.has(code) || /^08[0-9A-Z]{3}$/.test(code))) return true
    current = (current as { cause?: unknown }).cause
  }
  return false
}
