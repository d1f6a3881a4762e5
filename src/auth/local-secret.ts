import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { loadOrCreatePrivateFile } from '../system/private-file.js'

/** The generated HS256 key's file in the data directory. */
function localSecretPath (dataDir: string): string {
  return join(dataDir, 'jwt-secret')
}

/**
 * The HS256 key of a deployment that configured none: read from `$MOBVIBE_DATA_DIR/jwt-secret`,
 * or generated there on first use (256 random bits, mode 0600, created exclusively so that the
 * service and `npm run token` racing on a fresh directory agree on one key).
 */
export async function loadOrCreateLocalSecret (dataDir: string): Promise<{ secret: string, path: string, created: boolean }> {
  const path = localSecretPath(dataDir)
  const { value, created } = await loadOrCreatePrivateFile(path, {
    generate: () => randomBytes(32).toString('base64url'),
    serialize: (secret) => secret + '\n',
    parse: (text) => (text.trim().length >= 32 ? text.trim() : null),
    invalid: 'does not hold a key of at least 32 characters: delete it to generate a new one'
  })
  return { secret: value, path, created }
}
