import { SignJWT } from 'jose'

/** An HS256 token as `npm run token` mints it, with knobs for the tests of what is refused. */
export async function mintToken (o: {
  secret: string
  sub?: string | undefined
  ttlSeconds?: number | undefined
  issuer?: string | undefined
  audience?: string | undefined
  /** seconds since the epoch; default now */
  issuedAt?: number
  notBefore?: number
  withoutExp?: boolean
}): Promise<string> {
  const now = o.issuedAt ?? Math.floor(Date.now() / 1000)
  let jwt = new SignJWT({}).setProtectedHeader({ alg: 'HS256', typ: 'JWT' }).setIssuedAt(now)
  if (o.sub !== undefined) jwt = jwt.setSubject(o.sub)
  if (!o.withoutExp) jwt = jwt.setExpirationTime(now + (o.ttlSeconds ?? 3600))
  if (o.notBefore !== undefined) jwt = jwt.setNotBefore(o.notBefore)
  if (o.issuer !== undefined) jwt = jwt.setIssuer(o.issuer)
  if (o.audience !== undefined) jwt = jwt.setAudience(o.audience)
  return jwt.sign(new TextEncoder().encode(o.secret))
}
