import { join } from 'node:path'
import webpush from 'web-push'
import { loadOrCreatePrivateFile } from '../system/private-file.js'

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
  const { value, created } = await loadOrCreatePrivateFile(path, {
    generate: () => {
      const generated = webpush.generateVAPIDKeys()
      return { publicKey: generated.publicKey, privateKey: generated.privateKey }
    },
    serialize: (keys) => JSON.stringify(keys) + '\n',
    parse,
    invalid: 'does not hold a VAPID key pair: delete it to generate a new one (every browser then subscribes again)'
  })
  return { keys: value, path, created }
}
