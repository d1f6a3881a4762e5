import closeWithGrace from 'close-with-grace'
import { buildApp } from './app.js'
import { ConfigError, loadConfig, type Config } from './config.js'
import { createLogger } from './logger.js'

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

  closeWithGrace({ delay: config.agent.killGraceMs * 3 + 10_000, logger }, async ({ signal, err }) => {
    if (err) logger.error({ err }, 'shutting down after an error')
    else logger.info({ signal }, 'shutting down')
    await app.close()
  })

  await app.listen({ host: config.host, port: config.port })
}

await main()
