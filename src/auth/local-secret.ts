import { randomBytes } from 'node:crypto'
import { chmod, mkdir, open, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'

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
  await mkdir(dataDir, { recursive: true })
  try {
    const file = await open(path, 'wx', 0o600)
    const secret = randomBytes(32).toString('base64url')
    try {
      await file.writeFile(secret + '\n')
      await file.sync()
    } finally {
      await file.close()
    }
    return { secret, path, created: true }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
  }
  // a key readable by others is a key anyone on the host can mint tokens with
  if (((await stat(path)).mode & 0o077) !== 0) await chmod(path, 0o600)
  // the writer may be between creating the file and writing it: read until the key is whole
  for (let attempt = 0; ; attempt++) {
    const secret = (await readFile(path, 'utf8')).trim()
    if (secret.length >= 32) return { secret, path, created: false }
    if (attempt >= 50) throw new Error(`${path} does not hold a key of at least 32 characters: delete it to generate a new one`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
