import { createHmac } from 'node:crypto'
import type { DeviceRow } from '../db/schema.js'
import { headline, type Attempt, type Notification, type Sender, type SendOutcome } from './delivery.js'
import type { PushHttpClient } from './http-client.js'

/** The headers of a webhook delivery (docs/PUSH.md tells a receiver how to check them). */
const WEBHOOK_HEADERS = {
  signature: 'x-mobvibe-signature',
  timestamp: 'x-mobvibe-timestamp',
  delivery: 'x-mobvibe-delivery',
  event: 'x-mobvibe-event'
} as const

const EVENT = 'session.attention'

/** `sha256=<hex>`: the HMAC-SHA256 of the raw body, keyed with the device's secret. */
function webhookSignature (secret: string, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(body, 'utf8').digest('hex')}`
}

/**
 * Webhooks: a JSON POST signed with the device's secret. The body carries `sentAt`, the same instant
 * as the timestamp header, so the signature covers the time too and a receiver can refuse replays
 * of an old request; `deliveryId` is the same on every attempt of one delivery, to drop duplicates.
 * 410 Gone removes the webhook; 2xx is delivered.
 */
export function createWebhookSender (o: { http: PushHttpClient, clock?: () => Date }): Sender {
  const clock = o.clock ?? (() => new Date())
  return {
    async send (device: DeviceRow, n: Notification, attempt: Attempt): Promise<SendOutcome> {
      if (device.secret === null) return { status: 'failed', reason: 'the webhook has no secret' }
      const sentAt = clock()
      const body = JSON.stringify({
        event: EVENT,
        deliveryId: attempt.deliveryId,
        sentAt: sentAt.toISOString(),
        sessionId: n.sessionId,
        seq: n.seq,
        kind: n.kind,
        at: n.at.toISOString(),
        sessionTitle: n.sessionTitle,
        ...headline(n)
      })
      return o.http.post(device.address, {
        headers: {
          'content-type': 'application/json',
          'user-agent': 'mobvibe-push',
          [WEBHOOK_HEADERS.event]: EVENT,
          [WEBHOOK_HEADERS.delivery]: attempt.deliveryId,
          [WEBHOOK_HEADERS.timestamp]: String(Math.floor(sentAt.getTime() / 1000)),
          [WEBHOOK_HEADERS.signature]: webhookSignature(device.secret, body)
        },
        body,
        signal: attempt.signal,
        gone: [410]
      })
    },
    async close () {}
  }
}
