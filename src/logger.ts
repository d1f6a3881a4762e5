import pino, { type Logger } from 'pino'
import type { Config } from './config.js'

/** JSON lines on stdout; secrets that could reach a log line are redacted. */
export function createLogger (config: Pick<Config, 'logLevel'>, destination?: pino.DestinationStream): Logger {
  return pino({
    level: config.logLevel,
    base: { service: 'mobvibe-session-service' },
    redact: ['req.headers.authorization', 'req.headers.cookie', 'config.databaseUrl'],
    timestamp: pino.stdTimeFunctions.isoTime
  }, destination)
}
