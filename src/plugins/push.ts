import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../config.js'
import { SessionNotFound } from '../errors.js'
import type { AddressPolicy } from '../push/address-policy.js'
import { createDeviceRepository, type DeviceRepository } from '../push/device-repository.js'
import { createExpoSender } from '../push/expo-sender.js'
import { PushHttpClient } from '../push/http-client.js'
import { PushNotifier } from '../push/notifier.js'
import { loadOrCreateVapidKeys, type VapidKeys } from '../push/vapid-keys.js'
import { createWebPushSender } from '../push/web-push-sender.js'
import { createWebhookSender } from '../push/webhook-sender.js'

declare module 'fastify' {
  interface FastifyInstance {
    push: {
      devices: DeviceRepository
      notifier: PushNotifier
      addressPolicy: AddressPolicy
      vapidPublicKey: string
    }
  }
}

/**
 * Push notifications: the users' devices, the VAPID keys of Web Push, the three providers, and the
 * notifier that listens to the supervisor's attention events. Its preClose hook runs before the
 * streams close (root hooks first), so the shutdown sends no "nobody is watching" notifications.
 */
export default fp(async function pushPlugin (app: FastifyInstance, opts: { config: Config }) {
  const { push } = opts.config
  let vapid: VapidKeys
  if (push.vapid) {
    vapid = push.vapid
  } else {
    const local = await loadOrCreateVapidKeys(opts.config.dataDir)
    vapid = local.keys
    app.log.info({ path: local.path, generated: local.created }, 'Web Push uses the VAPID key pair in the data directory (no VAPID_PUBLIC_KEY/VAPID_PRIVATE_KEY)')
  }
  const addressPolicy: AddressPolicy = { allowLoopback: push.allowLoopback, allowPrivateNetworks: push.allowPrivateNetworks }
  if (push.allowLoopback) app.log.warn('PUSH_ALLOW_LOOPBACK is on: users may register webhooks and Web Push endpoints on this host\'s loopback address (tests and development only)')
  const http = new PushHttpClient({ policy: addressPolicy, timeoutMs: push.requestTimeoutMs })
  const devices = createDeviceRepository(app.database.db)
  const notifier = new PushNotifier({
    devices,
    senders: {
      expo: createExpoSender({ apiUrl: push.expoApiUrl, accessToken: push.expoAccessToken, timeoutMs: push.requestTimeoutMs, retryBaseMs: push.retryBaseMs }),
      webpush: createWebPushSender({ http, vapid, subject: push.vapidSubject }),
      webhook: createWebhookSender({ http })
    },
    isWatched: (sessionId) => app.eventBus.subscriberCount(sessionId) > 0,
    sessionInfo: async (sessionId) => {
      try {
        const row = await app.sessions.get(sessionId)
        return { owner: row.owner, title: row.title }
      } catch (err) {
        if (err instanceof SessionNotFound) return undefined
        throw err
      }
    },
    groupWindowMs: push.groupWindowMs,
    retry: { maxAttempts: push.maxAttempts, baseMs: push.retryBaseMs, windowMs: push.retryWindowMs },
    queueMax: push.queueMax,
    logger: app.log.child({ component: 'push' })
  })
  app.agents.on('attention', (notice) => notifier.notify(notice))
  app.decorate('push', { devices, notifier, addressPolicy, vapidPublicKey: vapid.publicKey })
  app.addHook('preClose', async () => {
    await notifier.close()
    await http.close()
  })
}, { name: 'push', dependencies: ['database', 'sessions', 'events', 'agents'] })
