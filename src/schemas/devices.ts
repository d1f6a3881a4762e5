import { Type, type Static } from 'typebox'
import { DEVICE_KINDS } from '../domain/push-policy.js'
import { DateTime, NO_NUL, Nullable, Uuid } from './common.js'

/** A URL a user gives: printable, no spaces, bounded (the policy checks the scheme and the host). */
const Url = (description: string) => Type.String({ minLength: 1, maxLength: 2048, pattern: '^[^\\s\\u0000]+$', description })
/** base64url as browsers write a subscription's keys (padding tolerated) */
const Base64Url = (description: string) => Type.String({ minLength: 1, maxLength: 256, pattern: '^[A-Za-z0-9_-]+={0,2}$', description })

const Name = Type.Optional(Type.String({
  minLength: 1,
  maxLength: 100,
  pattern: NO_NUL,
  description: 'A label for the user\'s own lists ("Pixel 8", "work laptop"); registering again with a name replaces it'
}))

export const ExpoRegistration = Type.Object({
  kind: Type.Literal('expo'),
  token: Type.String({
    maxLength: 300,
    pattern: '^(ExponentPushToken|ExpoPushToken)\\[[^\\]\\s\\u0000]{1,255}\\]$',
    description: 'The app\'s Expo push token, `ExponentPushToken[…]` or `ExpoPushToken[…]` (`getExpoPushTokenAsync`)'
  }),
  name: Name
}, { additionalProperties: false, title: 'Expo push token' })

export const WebPushRegistration = Type.Object({
  kind: Type.Literal('webpush'),
  subscription: Type.Object({
    endpoint: Url('The push service URL of the browser\'s subscription: https'),
    expirationTime: Type.Optional(Nullable(Type.Number({ description: 'As `PushSubscription.toJSON()` gives it; not used' }))),
    keys: Type.Object({
      p256dh: Base64Url('The browser\'s P-256 public key (65 bytes, base64url)'),
      auth: Base64Url('The browser\'s authentication secret (16 bytes, base64url)')
    }, { additionalProperties: false })
  }, { additionalProperties: false, description: 'The browser\'s `PushSubscription.toJSON()`, made with the key of `GET /v1/push/vapid-public-key`' }),
  name: Name
}, { additionalProperties: false, title: 'Web Push subscription' })

export const WebhookRegistration = Type.Object({
  kind: Type.Literal('webhook'),
  url: Url('Where the service POSTs the notifications: https'),
  secret: Type.Optional(Type.String({
    minLength: 16,
    maxLength: 256,
    pattern: '^[\\x21-\\x7e]+$',
    description: 'The HMAC-SHA256 key of the `X-MobVibe-Signature` header (16–256 printable ASCII characters, no spaces). ' +
      'Omitted: a new webhook gets a generated one, returned once in `secret`; a known one keeps its own'
  })),
  name: Name
}, { additionalProperties: false, title: 'Webhook' })

/** The three kinds, told apart by `kind` (validated one branch at a time, so errors name the fields of that kind). */
export const DeviceRegistrationBody = Type.Union([ExpoRegistration, WebPushRegistration, WebhookRegistration], {
  description: 'A device to notify, by `kind`. The same token, endpoint or URL again is the same device (its keys, secret and name refreshed)'
})
export type DeviceRegistrationInput = Static<typeof DeviceRegistrationBody>

const DeviceSchema = Type.Object({
  id: Uuid,
  kind: Type.Enum([...DEVICE_KINDS]),
  name: Nullable(Type.String()),
  target: Type.String({
    description: 'Which device this is, without its secrets: `ExponentPushToken[…last 6]`, or the origin of the Web Push endpoint or webhook URL'
  }),
  createdAt: DateTime,
  updatedAt: Type.String({ format: 'date-time', description: 'The last registration of the same token, endpoint or URL' })
}, { additionalProperties: false })
export type DeviceView = Static<typeof DeviceSchema>

export const RegisteredDeviceSchema = Type.Object({
  ...DeviceSchema.properties,
  secret: Type.Optional(Type.String({ description: 'Only when a webhook was created without a secret: the generated HMAC key. Shown this once: keep it' }))
}, { additionalProperties: false })
export type RegisteredDeviceView = Static<typeof RegisteredDeviceSchema>

export const DeviceListSchema = Type.Object({
  items: Type.Array(DeviceSchema, { description: 'The user\'s devices, oldest first' })
}, { additionalProperties: false })

export const DeviceParams = Type.Object({ deviceId: Uuid }, { additionalProperties: false })

export const VapidPublicKeySchema = Type.Object({
  publicKey: Type.String({
    pattern: '^[A-Za-z0-9_-]{87}$',
    description: 'The VAPID public key (base64url, an uncompressed P-256 point): the browser\'s `applicationServerKey` for `pushManager.subscribe`'
  })
}, { additionalProperties: false })
