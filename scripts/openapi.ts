/**
 * Writes openapi.yaml from the route schemas (`npm run openapi`), or with --check fails when the
 * committed file differs from what the routes produce (`npm run openapi:check`, run by CI).
 */
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { buildApp } from '../src/app.js'
import { loadConfig } from '../src/config.js'
import { createLogger } from '../src/logger.js'
import { writeOrCheck } from './generated-file.js'

const target = fileURLToPath(new URL('../openapi.yaml', import.meta.url))

export async function generateOpenApiYaml (): Promise<string> {
  // The document depends only on the routes: build on a throwaway in-memory setup
  const dir = await mkdtemp(join(tmpdir(), 'mobvibe-openapi-'))
  const config = loadConfig({ MOBVIBE_DATA_DIR: join(dir, 'data'), MOBVIBE_WORKSPACE_ROOT: join(dir, 'ws'), LOG_LEVEL: 'silent' })
  const app = await buildApp({ config, logger: createLogger(config), startWorker: false })
  try {
    await app.ready()
    return app.swagger({ yaml: true })
  } finally {
    await app.close()
    await rm(dir, { recursive: true, force: true })
  }
}

await writeOrCheck({ target, text: await generateOpenApiYaml(), source: 'the route schemas', command: 'npm run openapi' })
