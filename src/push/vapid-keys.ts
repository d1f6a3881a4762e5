import { chmod, mkdir, open, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import webpush from 'web-push'

export interface VapidKeys {
  /** base64url, an uncompressed P-256 point: the browser's `applicationServerKey` */
  publicKey: string
  /** base64url, 32 bytes */
  privateKey: string
}

const PUBLIC_KEY = /^[A-Za-z0-9_-]{87}$/
const PRIVATE_KEY = /^[A-Za-z0-9_-]{43}$/

function parse (text: string): VapidKeys | null {
  try {
    const keys = JSON.parse(text) as Partial<VapidKeys>
    if (typeof keys.publicKey === 'string' && PUBLIC_KEY.test(keys.publicKey) &&
      typeof keys.privateKey === 'string' && PRIVATE_KEY.test(keys.privateKey)) {
      return { publicKey: keys.publicKey, privateKey: keys.privateKey }
    }
  } catch {}
  return null
}

/**
 * The Web Push VAPID key pair of a deployment that configured none: read from
 * `$MOBVIBE_DATA_DIR/vapid-keys.json`, or generated there on first start (mode 0600, created
 * exclusively, as the JWT key is). The pair must outlive restarts: every browser subscription is
 * bound to the public key, and a new pair would silently end them all.
 */
export async function loadOrCreateVapidKeys (dataDir: string): Promise<{ keys: VapidKeys, path: string, created: boolean }> {
  const path = join(dataDir, 'vapid-keys.json')
  await mkdir(dataDir, { recursive: true })
  try {
    const file = await open(path, 'wx', 0o600)
    const generated = webpush.generateVAPIDKeys()
    const keys = { publicKey: generated.publicKey, privateKey: generated.privateKey }
    try {
      await file.writeFile(JSON.stringify(keys) + '\n')
      await file.sync()
    } finally {
      await file.close()
    }
    return { keys, path, created: true }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
  }
  // a private key readable by others lets anyone on the host push to this service's subscribers
  if (((await stat(path)).mode & 0o077) !== 0) await chmod(path, 0o600)
  // another process may be between creating the file and writing it: read until the pair is whole
  for (let attempt = 0; ; attempt++) {
    const keys = parse(await readFile(path, 'utf8'))
    if (keys) return { keys, path, created: false }
    if (attempt >= 50) throw new Error(`${path} does not hold a VAPID key pair: delete it to generate a new one (every browser then subscribes again)`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}
