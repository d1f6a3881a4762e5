import pino, { type Bindings, type Logger } from 'pino'
import type { Config } from './config.js'

/**
 * What components need of a logger: levels and child loggers. Fastify's `app.log` is one, and so
 * is a pino instance, so components log without depending on Fastify.
 */
export interface Log {
  fatal: pino.LogFn
  error: pino.LogFn
  warn: pino.LogFn
  info: pino.LogFn
  debug: pino.LogFn
  trace: pino.LogFn
  child (bindings: Bindings): Log
}

/** JSON lines on stdout; secrets that could reach a log line are redacted. */
export function createLogger (config: Pick<Config, 'logLevel'>, destination?: pino.DestinationStream): Logger {
  return pino({
    level: config.logLevel,
    base: { service: 'mobvibe-session-service' },
    redact: ['req.headers.authorization', 'req.headers.cookie', 'config.databaseUrl'],
    timestamp: pino.stdTimeFunctions.isoTime
  }, destination)
}
