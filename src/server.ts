import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { ConfigError, loadConfig, type Config } from './config.js'
import { createLogger } from './logger.js'

/**
 * How long a graceful shutdown may take before it is cut short: every agent's stop sequence runs
 * at once (stdin closed, then SIGTERM, each waited for up to KILL_GRACE_MS, then SIGKILL), so
 * `stopGraces` graces cover it with one to spare; `flushMs` covers storing the last events and
 * closing the database.
 */
const SHUTDOWN_BUDGET = { stopGraces: 3, flushMs: 10_000 } as const

/** The launcher: configuration, logger, listen, graceful shutdown. */
async function main (): Promise<void> {
  let config: Config
  try {
    config = loadConfig()
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err
    createLogger({ logLevel: 'info' }).fatal(err.message)
    process.exitCode = 1
    return
  }
  const logger = createLogger(config)
  const app = await buildApp({ config, logger }).catch((err: Error) => {
    logger.fatal({ err }, `start-up failed: ${err.message}`)
    process.exit(1)
  })

  closeWithGrace({ delay: config.agent.killGraceMs * SHUTDOWN_BUDGET.stopGraces + SHUTDOWN_BUDGET.flushMs, logger }, async ({ signal, err }) => {
    if (err) logger.error({ err }, 'shutting down after an error')
    else logger.info({ signal }, 'shutting down')
    await app.close()
  })

  await app.listen({ host: config.host, port: config.port })
}

await main()
