import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { loadOrCreateLocalSecret } from '../auth/local-secret.js'
import { createTokenVerifier, type Principal, type TokenVerifier } from '../auth/token-verifier.js'
import type { Config } from '../config.js'
import { unauthorized } from '../errors.js'

declare module 'fastify' {
  interface FastifyRequest {
    /** the caller, set by `app.authenticate` on every /v1 route */
    user: Principal
  }
  interface FastifyInstance {
    /** onRequest hook: a valid bearer token, or 401 */
    authenticate: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  }
}

const BEARER = /^Bearer +([A-Za-z0-9\-_.~+/]+=*) *$/i

/**
 * The bearer token of a request: the Authorization header, or, for the stream's WebSocket upgrade
 * only (a browser's WebSocket cannot set headers), the `access_token` query parameter (RFC 6750 §2.3).
 * Everything else keeps tokens out of URLs, where proxies and histories record them.
 */
function tokenOf (request: FastifyRequest): string {
  const header = request.headers.authorization
  if (header !== undefined) {
    const match = BEARER.exec(header)
    if (!match) throw unauthorized('the Authorization header must be "Bearer <token>"', true)
    return match[1]!
  }
  if (request.headers.upgrade?.toLowerCase() === 'websocket' && request.routeOptions.url?.endsWith('/stream') === true) {
    const fromQuery = (request.query as { access_token?: unknown } | undefined)?.access_token
    if (typeof fromQuery === 'string' && fromQuery !== '') return fromQuery
  }
  throw unauthorized('a bearer token is required', false)
}

/**
 * Who is calling: checks the bearer token of every /v1 request (`app.authenticate`, added as an
 * onRequest hook by the /v1 context) and sets `request.user`. With neither JWT_SECRET nor
 * JWT_JWKS_URL, the key is the one generated into the data directory on first start.
 */
export default fp(async function auth (app: FastifyInstance, opts: { config: Config }) {
  const { auth } = opts.config
  let verifier: TokenVerifier
  if (auth.jwksUrl !== undefined) {
    verifier = createTokenVerifier(auth)
    app.log.info({ jwksUrl: auth.jwksUrl, issuer: auth.issuer, audience: auth.audience }, 'bearer tokens are checked against the identity provider\'s keys')
  } else if (auth.secret !== undefined) {
    verifier = createTokenVerifier(auth)
  } else {
    const local = await loadOrCreateLocalSecret(opts.config.dataDir)
    verifier = createTokenVerifier({ ...auth, secret: local.secret })
    app.log.info({ path: local.path, generated: local.created },
      'bearer tokens are checked with the HS256 key in the data directory (no JWT_SECRET or JWT_JWKS_URL): mint one with `npm run token -- <user>`')
  }

  app.decorateRequest('user', null as unknown as Principal)
  app.decorate('authenticate', async (request: FastifyRequest) => {
    request.user = await verifier.verify(tokenOf(request))
  })
}, { name: 'auth' })
