import { SignJWT } from 'jose'
import { loadOrCreateLocalSecret } from './auth/local-secret.js'
import { loadConfig } from './config.js'

/**
 * `npm run token -- <user> [--ttl 7d]`: mints a bearer token for `<user>` (its `sub`) with the
 * service's HS256 key (JWT_SECRET, or the one generated into the data directory, created here
 * if the service never ran), with JWT_ISSUER/JWT_AUDIENCE when set. The token is alone on the
 * last line of the output, for `TOKEN=$(npm run -s token -- alice)`.
 */
const USAGE = 'usage: npm run token -- <user> [--ttl <n>[s|m|h|d]]   (default --ttl 7d)'
const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 }
const MAX_TTL_SECONDS = 366 * 86400

function parseTtl (raw: string): number {
  const match = /^(\d+)([smhd]?)$/.exec(raw)
  if (!match) throw new Error(`--ttl ${raw}: expected a number of seconds, or a number with s, m, h or d`)
  const seconds = Number(match[1]) * UNIT_SECONDS[match[2] || 's']!
  if (seconds < 1 || seconds > MAX_TTL_SECONDS) throw new Error(`--ttl ${raw}: must be between 1 second and 366 days`)
  return seconds
}

async function main (argv: string[]): Promise<number> {
  let user: string | undefined
  let ttl = 7 * 86400
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === '--ttl') ttl = parseTtl(argv[++i] ?? '')
    else if (arg.startsWith('--ttl=')) ttl = parseTtl(arg.slice('--ttl='.length))
    else if (arg === '-h' || arg === '--help') { process.stdout.write(USAGE + '\n'); return 0 } else if (arg.startsWith('-') || user !== undefined) throw new Error(`unexpected argument ${arg}\n${USAGE}`)
    else user = arg
  }
  if (user === undefined || user.length > 255 || /\p{Cc}/u.test(user)) throw new Error(USAGE)
  const config = loadConfig()
  if (config.auth.jwksUrl !== undefined) throw new Error('JWT_JWKS_URL is set: tokens come from your identity provider, not from this command')
  const secret = config.auth.secret ?? (await loadOrCreateLocalSecret(config.dataDir)).secret
  let jwt = new SignJWT({}).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setSubject(user).setIssuedAt().setExpirationTime(`${ttl}s`)
  if (config.auth.issuer !== undefined) jwt = jwt.setIssuer(config.auth.issuer)
  if (config.auth.audience !== undefined) jwt = jwt.setAudience(config.auth.audience)
  process.stdout.write(await jwt.sign(new TextEncoder().encode(secret)) + '\n')
  return 0
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code }, (err: Error) => {
  process.stderr.write(`${err.message}\n`)
  process.exitCode = 2
})
