import { createRemoteJWKSet, errors, jwtVerify, type JWTVerifyGetKey, type JWTVerifyOptions } from 'jose'
import { authKeysUnavailable, unauthorized } from '../errors.js'

/** Who a request acts for: the token's `sub`. */
export interface Principal {
  userId: string
}

export interface TokenVerifier {
  /** The principal of a valid token; rejects with a 401 (or a 503 when the keys are out of reach). */
  verify (token: string): Promise<Principal>
}

export interface VerifierSettings {
  /** HS256 key; exclusive with jwksUrl */
  secret?: string | undefined
  jwksUrl?: string | undefined
  issuer?: string | undefined
  audience?: string | undefined
  clockToleranceSeconds: number
  /** how long a verified token is trusted without checking it again (never past its `exp`) */
  cacheMs?: number
  /** verified tokens kept at most */
  cacheSize?: number
  /** the least time between two fetches of the key set (an unknown kid fetches it again) */
  jwksCooldownMs?: number
}

/** What an identity provider may sign with: asymmetric only, so its public keys cannot sign HMACs. */
const ASYMMETRIC = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519']

/** `sub` becomes a row's owner and a directory key's source: bounded, and printable. */
const MAX_SUBJECT_LENGTH = 255

const VERIFY_CACHE = { ms: 60_000, size: 10_000 } as const

const REASONS: Record<string, string> = {
  ERR_JWT_EXPIRED: 'the token has expired',
  ERR_JWS_SIGNATURE_VERIFICATION_FAILED: 'the token signature does not verify',
  ERR_JOSE_ALG_NOT_ALLOWED: 'the token is signed with an algorithm this service does not accept',
  ERR_JWKS_NO_MATCHING_KEY: "no key of the identity provider matches the token's kid",
  ERR_JWKS_MULTIPLE_MATCHING_KEYS: "several keys of the identity provider match the token's kid",
  ERR_JWS_INVALID: 'the token is not a valid JWS',
  ERR_JWT_INVALID: 'the token is not a valid JWT',
  ERR_JOSE_NOT_SUPPORTED: 'the token uses an unsupported algorithm or key'
}

/**
 * Checks bearer tokens with `jose`: HS256 with a shared secret, or the identity provider's keys
 * from its JWKS (cached by jose, fetched again when a token names an unknown `kid`). `exp` and
 * `sub` are required; `iss`/`aud` are checked when configured.
 *
 * A verified token is remembered for a minute (never past its `exp`): a token is immutable, and
 * phones send the same one with every heartbeat, so the signature check runs about once a minute
 * per phone instead of once a request.
 */
export function createTokenVerifier (settings: VerifierSettings): TokenVerifier {
  const key: Uint8Array | JWTVerifyGetKey = settings.jwksUrl !== undefined
    ? createRemoteJWKSet(new URL(settings.jwksUrl), { timeoutDuration: 5000, cooldownDuration: settings.jwksCooldownMs ?? 30_000, cacheMaxAge: 600_000 })
    : new TextEncoder().encode(settings.secret ?? '')
  if (settings.jwksUrl === undefined && (settings.secret ?? '').length < 32) throw new Error('an HS256 secret of at least 32 characters is required')
  const options: JWTVerifyOptions = {
    algorithms: settings.jwksUrl !== undefined ? ASYMMETRIC : ['HS256'],
    requiredClaims: ['exp', 'sub'],
    clockTolerance: settings.clockToleranceSeconds,
    ...(settings.issuer !== undefined ? { issuer: settings.issuer } : {}),
    ...(settings.audience !== undefined ? { audience: settings.audience } : {})
  }
  const cacheMs = settings.cacheMs ?? VERIFY_CACHE.ms
  const cacheSize = settings.cacheSize ?? VERIFY_CACHE.size
  const verified = new Map<string, { principal: Principal, until: number }>()

  async function check (token: string): Promise<Principal> {
    let payload
    try {
      payload = typeof key === 'function'
        ? (await jwtVerify(token, key, options)).payload
        : (await jwtVerify(token, key, options)).payload // two calls: jwtVerify's overloads take one kind of key each
    } catch (err) {
      throw toAuthError(err)
    }
    const sub = payload.sub
    if (typeof sub !== 'string' || sub.length === 0 || sub.length > MAX_SUBJECT_LENGTH || /\p{Cc}/u.test(sub)) {
      throw unauthorized(`the token's sub must be 1 to ${MAX_SUBJECT_LENGTH} printable characters`, true)
    }
    const principal = { userId: sub }
    const until = Math.min(Date.now() + cacheMs, (payload.exp ?? 0) * 1000)
    if (cacheMs > 0 && until > Date.now()) {
      // oldest first: a full cache forgets the token verified longest ago
      if (verified.size >= cacheSize) verified.delete(verified.keys().next().value!)
      verified.set(token, { principal, until })
    }
    return principal
  }

  return {
    async verify (token) {
      const hit = verified.get(token)
      if (hit !== undefined) {
        if (hit.until > Date.now()) return hit.principal
        verified.delete(token)
      }
      return check(token)
    }
  }
}

function toAuthError (err: unknown): Error {
  if (err instanceof errors.JWTClaimValidationFailed) {
    const reason = err.claim === 'nbf' || err.claim === 'iat' ? 'the token is not valid yet' : `the token's ${err.claim} claim ${err.reason === 'missing' ? 'is missing' : 'is not accepted'}`
    return unauthorized(reason, true)
  }
  // a key set that times out, is not JSON, or answers other than 200 (jose's generic error) is the
  // provider's trouble, not the client's: retryable, not a 401 that would log the user out
  if (err instanceof errors.JWKSTimeout || err instanceof errors.JWKSInvalid || (err instanceof errors.JOSEError && err.code === 'ERR_JOSE_GENERIC')) {
    return authKeysUnavailable(err.message)
  }
  if (err instanceof errors.JOSEError) return unauthorized(REASONS[err.code] ?? 'the token is not valid', true)
  // not jose's own: the key set could not be fetched (network, TLS, HTTP status)
  return authKeysUnavailable(err instanceof Error ? err.message : String(err))
}
