import { createECDH } from 'node:crypto'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifySchema, FastifySchemaCompiler, FastifySchemaValidationError } from 'fastify'
import { Type } from 'typebox'
import type { DeviceRow } from '../db/schema.js'
import { DeviceNotFound, tooManyDevices } from '../errors.js'
import { createValidatorCompiler } from '../plugins/validators.js'
import { refuseUrl } from '../push/address-policy.js'
import type { DeviceRegistration } from '../push/device-repository.js'
import { problems } from '../schemas/common.js'
import {
  DeviceListSchema,
  DeviceParams,
  DeviceRegistrationBody,
  ExpoRegistration,
  RegisteredDeviceSchema,
  VapidPublicKeySchema,
  WebhookRegistration,
  WebPushRegistration,
  type DeviceRegistrationInput,
  type DeviceView,
  type RegisteredDeviceView
} from '../schemas/devices.js'

/** A body member that passed its schema but not a rule of its own: the same 400 VALIDATION_FAILED, naming it. */
function invalid (path: string, message: string): Error {
  return Object.assign(new Error(`body.${path.replaceAll('/', '.')} ${message}`), {
    statusCode: 400,
    validationContext: 'body',
    validation: [{ instancePath: `/${path}`, message, params: {} }]
  })
}

/**
 * The registration body, checked against the one branch its `kind` names: a union checked as a
 * whole reports every branch's complaints (a webhook "must have required property 'token'"),
 * where one branch's name the fields the client got wrong.
 */
type Validate = ReturnType<FastifySchemaCompiler<FastifySchema>>

function registrationCompiler (): FastifySchemaCompiler<FastifySchema> {
  const compile = createValidatorCompiler([])
  const branches = new Map(Object.entries({ expo: ExpoRegistration, webpush: WebPushRegistration, webhook: WebhookRegistration })
    .map(([kind, schema]) => [kind, compile({ schema: schema as FastifySchema, httpPart: 'body', method: 'POST', url: '/v1/devices' })]))
  const kinds = [...branches.keys()].join(', ')
  const issue = (instancePath: string, message: string): FastifySchemaValidationError =>
    ({ keyword: 'kind', instancePath, schemaPath: '#', params: {}, message })
  return (route) => {
    if (route.httpPart !== 'body') return compile(route)
    const validate: Validate = (data: unknown) => {
      const isObject = typeof data === 'object' && data !== null && !Array.isArray(data)
      const kind = isObject ? (data as { kind?: unknown }).kind : undefined
      const branch = typeof kind === 'string' ? branches.get(kind) : undefined
      if (!branch) {
        validate.errors = [isObject ? issue('/kind', `must be one of: ${kinds}`) : issue('', 'must be object')]
        return false
      }
      const ok = branch(data) === true
      validate.errors = branch.errors ?? null
      return ok
    }
    return validate
  }
}

/** A browser's P-256 public key: 65 bytes that make a point of the curve (web-push could not encrypt for anything else). */
function isP256Point (base64url: string): boolean {
  const point = Buffer.from(base64url, 'base64url')
  if (point.length !== 65 || point[0] !== 4) return false
  try {
    const ecdh = createECDH('prime256v1')
    ecdh.generateKeys()
    ecdh.computeSecret(point)
    return true
  } catch {
    return false
  }
}

/** A device as its user sees it: what it is, never its keys or secret. */
function view (d: DeviceRow): DeviceView {
  let target: string
  if (d.kind === 'expo') {
    const inner = /\[(.*)\]$/.exec(d.address)?.[1] ?? ''
    const shown = inner.slice(-Math.min(6, Math.floor(inner.length / 3)))
    target = `${d.address.slice(0, d.address.indexOf('['))}[…${shown}]`
  } else {
    target = new URL(d.address).origin
  }
  return { id: d.id, kind: d.kind, name: d.name, target, createdAt: d.createdAt.toISOString(), updatedAt: d.updatedAt.toISOString() }
}

/** Devices of the caller (`/devices`) and the Web Push key (`/push/vapid-public-key`). */
const deviceRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { devices, addressPolicy, vapidPublicKey } = app.push
  const { maxDevicesPerUser } = app.config.push

  /** The body as the repository stores it, after the rules a schema cannot say. */
  function registrationOf (body: DeviceRegistrationInput): DeviceRegistration {
    const name = body.name === undefined ? {} : { name: body.name }
    switch (body.kind) {
      case 'expo':
        return { kind: 'expo', address: body.token, ...name }
      case 'webpush': {
        const { endpoint, keys } = body.subscription
        const refused = refuseUrl(endpoint, addressPolicy)
        if (refused !== null) throw invalid('subscription/endpoint', refused)
        if (!isP256Point(keys.p256dh)) throw invalid('subscription/keys/p256dh', 'must be a P-256 public key (65 bytes, base64url)')
        if (Buffer.from(keys.auth, 'base64url').length !== 16) throw invalid('subscription/keys/auth', 'must be 16 bytes (base64url)')
        // stored unpadded, as web-push wants them
        const bare = (k: string) => k.replace(/=+$/, '')
        return { kind: 'webpush', address: endpoint, p256dh: bare(keys.p256dh), auth: bare(keys.auth), ...name }
      }
      case 'webhook': {
        const refused = refuseUrl(body.url, addressPolicy)
        if (refused !== null) throw invalid('url', refused)
        return { kind: 'webhook', address: body.url, secret: body.secret, ...name }
      }
    }
  }

  app.post('/devices', {
    validatorCompiler: registrationCompiler(),
    schema: {
      tags: ['push'],
      operationId: 'registerDevice',
      summary: 'Register a phone, browser or webhook for the user\'s push notifications',
      description: 'An Expo push token, a browser\'s Web Push subscription, or a webhook URL (https; with ' +
        '`PUSH_ALLOW_LOOPBACK`, also `http://127.0.0.1`). The same token, endpoint or URL again is the same device: ' +
        '200 with its keys, secret (when given) and name refreshed. A push token or endpoint another user registered ' +
        'moves to the caller, under a new id. A new webhook without `secret` gets one generated, returned this once. ' +
        'At most `PUSH_MAX_DEVICES_PER_USER` devices: one more is 409 TOO_MANY_DEVICES. Notifications go to every ' +
        'device of the user when a session nobody watches ends a turn, asks for permission or a choice, or fails (docs/PUSH.md).',
      body: DeviceRegistrationBody,
      response: {
        200: { ...RegisteredDeviceSchema, description: 'The device was registered already' },
        201: { ...RegisteredDeviceSchema, description: 'A new device' },
        ...problems(400, 409, 413, 415)
      }
    }
  }, async (request, reply) => {
    const result = await devices.register(request.user.userId, registrationOf(request.body), { maxPerUser: maxDevicesPerUser, now: app.sessions.now() })
    if (result.status === 'limit') throw tooManyDevices(maxDevicesPerUser)
    const body: RegisteredDeviceView = { ...view(result.device), ...(result.generatedSecret === undefined ? {} : { secret: result.generatedSecret }) }
    return reply.status(result.status === 'created' ? 201 : 200).send(body)
  })

  app.get('/devices', {
    schema: {
      tags: ['push'],
      operationId: 'listDevices',
      summary: 'The user\'s registered devices',
      description: 'The caller\'s own devices, oldest first, without their tokens, keys or secrets (`target` tells them apart).',
      response: { 200: DeviceListSchema, ...problems() }
    }
  }, async (request) => ({ items: (await devices.list(request.user.userId)).map(view) }))

  app.delete('/devices/:deviceId', {
    schema: {
      tags: ['push'],
      operationId: 'deleteDevice',
      summary: 'Stop notifying a device',
      description: 'The device gets no further notification. Another user\'s device is 404, as an unknown one.',
      params: DeviceParams,
      response: { 204: Type.Null({ description: 'Deleted' }), ...problems(400, 404, 413, 415) }
    }
  }, async (request, reply) => {
    if (!await devices.remove(request.user.userId, request.params.deviceId)) throw new DeviceNotFound(request.params.deviceId)
    return reply.status(204).send(null)
  })

  app.get('/push/vapid-public-key', {
    schema: {
      tags: ['push'],
      operationId: 'getVapidPublicKey',
      summary: 'The Web Push application server key',
      description: 'The VAPID public key a browser subscribes with (`pushManager.subscribe({applicationServerKey})`) ' +
        'before `POST /v1/devices` with `kind: "webpush"`. It stays the same across restarts (VAPID_PUBLIC_KEY, or the ' +
        'pair generated into the data directory on first start).',
      response: { 200: VapidPublicKeySchema, ...problems() }
    }
  }, async () => ({ publicKey: vapidPublicKey }))
}

export default deviceRoutes
