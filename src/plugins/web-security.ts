import cors from '@fastify/cors'
import helmet from '@fastify/helmet'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'

/** The headers a client reads across origins: versions, new resources, back-off, tracing. */
const EXPOSED_HEADERS = ['ETag', 'Location', 'Retry-After', 'X-Request-Id']

/**
 * Security headers on every response (helmet's defaults: nosniff, frame denial, a strict CSP
 * that the Swagger UI at /docs lives with), and CORS for the configured origins only: with none
 * configured, no browser page of another origin can read the API.
 */
export default fp(async function webSecurity (app: FastifyInstance, opts: { config: Pick<Config, 'corsOrigins'> }) {
  await app.register(helmet, { global: true })
  if (opts.config.corsOrigins.length === 0) return
  await app.register(cors, {
    origin: opts.config.corsOrigins,
    methods: ['GET', 'POST', 'PATCH', 'DELETE'],
    exposedHeaders: EXPOSED_HEADERS,
    maxAge: 600
  })
}, { name: 'web-security' })
