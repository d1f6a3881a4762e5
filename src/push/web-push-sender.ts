import webpush from 'web-push'
import type { DeviceRow } from '../db/schema.js'
import { isUrgent } from '../domain/push-policy.js'
import { headline, openData, type Attempt, type Notification, type Sender, type SendOutcome } from './delivery.js'
import type { PushHttpClient } from './http-client.js'
import type { VapidKeys } from './vapid-keys.js'

/** How long a push service keeps a notification for a browser that is offline. */
const TTL_SECONDS = 86_400

/**
 * Web Push (RFC 8030) with VAPID (RFC 8292): web-push encrypts the payload for the browser's keys
 * (aes128gcm) and signs the VAPID header; the request itself goes through the push HTTP client,
 * which keeps it within the address policy and the timeout (web-push's own sender speaks https
 * only, and would follow no such policy). 404 and 410 mean the subscription is gone.
 */
export function createWebPushSender (o: { http: PushHttpClient, vapid: VapidKeys, subject: string }): Sender {
  const vapidDetails = { subject: o.subject, publicKey: o.vapid.publicKey, privateKey: o.vapid.privateKey }
  return {
    async send (device: DeviceRow, n: Notification, attempt: Attempt): Promise<SendOutcome> {
      if (device.p256dh === null || device.auth === null) return { status: 'failed', reason: 'the subscription has no keys' }
      let details: webpush.RequestDetails
      try {
        details = webpush.generateRequestDetails(
          { endpoint: device.address, keys: { p256dh: device.p256dh, auth: device.auth } },
          JSON.stringify({ ...headline(n), data: openData(n) }),
          {
            vapidDetails,
            TTL: TTL_SECONDS,
            urgency: isUrgent(n.kind) ? 'high' : 'normal',
            // a push service keeps only the latest undelivered message of a topic: one per session
            topic: n.sessionId.replaceAll('-', '')
          }
        )
      } catch (err) {
        // keys that do not make a P-256 point or an auth secret: no attempt will do better
        return { status: 'failed', reason: `cannot encrypt for this subscription: ${(err as Error).message}` }
      }
      const headers: Record<string, string> = {}
      for (const [name, value] of Object.entries(details.headers)) {
        // the HTTP client sets the length of the body it sends
        if (name.toLowerCase() !== 'content-length' && value !== undefined) headers[name.toLowerCase()] = String(value)
      }
      return o.http.post(details.endpoint, {
        headers,
        body: details.body ?? Buffer.alloc(0),
        signal: attempt.signal,
        gone: [404, 410]
      })
    },
    async close () {}
  }
}
